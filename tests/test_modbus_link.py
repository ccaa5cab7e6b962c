"""The Modbus link: adaptive timeout, and errors named for what the caller does next."""

from __future__ import annotations

from pathlib import Path

import pytest

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
