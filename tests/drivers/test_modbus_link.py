"""The Modbus link: adaptive timeout, and errors named for what the caller does next."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.errors import DeviceConnectionError, DeviceRejectedError, DeviceTimeoutError
from drivers.modbus.link import LinkParams, ModbusLink, RttEstimator, TcpParams
from drivers.modbus.profile import load_profile
from simstation.broker import free_port
from simstation.rack import SimRack
from tests.support import REPO


def test_timeout_follows_measured_latency_within_bounds() -> None:
    rtt = RttEstimator(min_s=0.05, max_s=1.0)
    assert rtt.timeout == 1.0  # nothing measured yet: the upper bound
    for _ in range(20):
        rtt.sample(0.002)
    assert rtt.timeout == 0.05  # fast device: clamped to the lower bound
    for _ in range(20):
        rtt.sample(0.2)
    assert 0.2 < rtt.timeout < 1.0
    rtt.timed_out()
    rtt.timed_out()
    assert rtt.timeout == 1.0  # backed off, clamped to the upper bound
    rtt.sample(0.2)
    assert rtt.timeout < 1.0


@given(
    fast=st.lists(st.floats(0.0005, 0.01), min_size=1, max_size=50),
    slow=st.floats(0.0, 0.99),
    lo=st.sampled_from([0.01, 0.02, 0.05]),
)
def test_a_device_that_slows_down_is_waited_for_within_the_bound(
    fast: list[float], slow: float, lo: float
) -> None:
    """However fast it was, a device now answering within timeout_max_s is waited for."""
    rtt = RttEstimator(min_s=lo, max_s=1.0)
    for sample in fast:
        rtt.sample(sample)
    timeouts = 0
    while rtt.timeout < slow:  # each attempt until one outlasts the reply
        rtt.timed_out()
        timeouts += 1
        assert timeouts <= 8, f"never waits {slow:.3f} s: timeout {rtt.timeout:.3f} s"
    rtt.sample(slow)
    # Re-seeded by the reply: the next request waits for the device's new speed at once.
    assert rtt.timeout >= min(1.0, slow)


async def test_errors_by_kind(tmp_path: Path) -> None:
    refused = ModbusLink(LinkParams("x", tcp=TcpParams("127.0.0.1", free_port())))
    with pytest.raises(DeviceConnectionError, match="cannot connect"):
        await refused.read_registers("input", 1, 0, 1)
    await refused.close()

    sim = SimRack(load_profile(REPO / "config" / "profiles" / "simrack.toml"), [1])
    port = await sim.start_tcp()
    link = ModbusLink(
        LinkParams("x", tcp=TcpParams("127.0.0.1", port), timeout_min_s=0.02, timeout_max_s=0.1)
    )
    try:
        assert len(await link.read_registers("input", 1, 1000, 29)) == 29
        with pytest.raises(DeviceRejectedError, match="illegal data address") as info:
            await link.read_registers("input", 1, 500, 1)
        assert info.value.code == 2
        sim.silent = True
        with pytest.raises(DeviceTimeoutError, match="no reply after 2 attempt"):
            await link.read_registers("input", 1, 1000, 1)
        assert isinstance(DeviceTimeoutError("x"), TimeoutError)
        sim.silent = False
        assert len(await link.read_registers("input", 1, 1000, 1)) == 1
        assert link.stats.timeouts >= 2
    finally:
        await link.close()
        await sim.stop()


@given(st.binary(max_size=260))
def test_the_fast_register_decode_is_pymodbus_s_own(data: bytes) -> None:
    """Our one-unpack register decode gives pymodbus's registers, or refuses what it cannot."""
    from pymodbus.exceptions import ModbusIOException
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

    from drivers.modbus.link import FAST_REGISTER_RESPONSES

    theirs = ReadHoldingRegistersResponse()
    try:
        theirs.decode(data)
        expected: list[int] | None = list(theirs.registers)
    except (ModbusIOException, struct.error, IndexError):
        expected = None
    for cls in FAST_REGISTER_RESPONSES:
        ours = cls()
        if expected is None or (data and data[0] % 2):
            with pytest.raises(ModbusIOException):
                ours.decode(data)
        else:
            ours.decode(data)
            assert ours.registers == expected
