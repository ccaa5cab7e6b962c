"""Charging control against a rack written by someone else from docs/register-map.md alone.

The peer (tests/peers/rack.py, on pyModbusTCP) is a naive charger: it draws what its limit
says and ignores the BMS, switches off only when told, and can freeze its heartbeat, slow
down, clamp or ignore a limit. Each test here is a defect an independent rack found in the
controller with every test against our own simulator green (issue 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.runtime.daemon import Daemon
from controller.runtime.station import Station
from tests.peers.rack import PeerRack
from tests.rig import daemon_in_process, until
from tests.support import REPO


@dataclass
class PeerRig:
    """The daemon in-process against one peer rack."""

    daemon: Daemon
    rack: PeerRack
    task: asyncio.Task[int]

    @property
    def station(self) -> Station:
        assert self.daemon.station is not None
        return self.daemon.station

    def alarm_codes(self, scope: str | None = None) -> set[str]:
        return {a.code for a in self.station.control.alarms.active(scope)}

    def on_writes(self, i: int) -> list[float]:
        """When charge_enable = 1 was written to slot position i and stored."""
        return [
            w.at
            for w in self.rack.writes
            if w.slot == i and w.name == "charge_enable" and w.value == 1 and w.outcome == "stored"
        ]

    def limit_writes(self, i: int) -> list[float]:
        return [w.value for w in self.rack.writes if w.slot == i and w.name == "current_limit"]


def rack_toml(port: int, *, poll_s: float = 0.1, slots: list[int] | None = None) -> str:
    return (
        "[[racks]]\n"
        'name = "p"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
        f"port = {port}\nunit_id = 1\nslots = {slots or [1, 2, 3, 4]}\n"
        f"poll_period_s = {poll_s}\nheartbeat_timeout_s = 1.0\n"
    )


@contextlib.asynccontextmanager
async def peer_station(
    tmp_path: Path,
    rack: PeerRack,
    *,
    sections: str = "",
    poll_s: float = 0.1,
    min_on_off_s: float = 0.5,
    ticking: bool = True,
) -> AsyncIterator[PeerRig]:
    """Start the peer (ticking every 50 ms) and the daemon; stop both on exit."""
    port = rack.start()
    text = (
        f'station_id = "peer"\nprofiles_dir = "{REPO / "config" / "profiles"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n'
        f'[storage]\ndir = "{tmp_path / "state"}"\n'
        f"[charging]\nmin_on_s = {min_on_off_s}\nmin_off_s = {min_on_off_s}\n"
        f"{sections}\n{rack_toml(port, poll_s=poll_s, slots=slots_of(rack))}"
    )
    path = tmp_path / "station.toml"
    path.write_text(text)
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            rack.tick(0.05)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await stop.wait()

    ticker = asyncio.create_task(tick()) if ticking else None
    try:
        async with daemon_in_process(path) as (daemon, task):
            yield PeerRig(daemon, rack, task)
    finally:
        stop.set()
        if ticker is not None:
            await ticker
        rack.stop()


def slots_of(rack: PeerRack) -> list[int]:
    """Slot numbers 1..n for the rack's n slots (position i is slot i + 1)."""
    return list(range(1, rack.slot_count + 1))


def full_pack(rack: PeerRack, i: int, *, bms_a: float = 0.0) -> None:
    rack.set_pack(i, f"PK-F{i}", soc=100.0, bms_current_max=bms_a)
    rack.set_status(i, "full")


async def watch(seconds: float) -> None:
    """Let the station run for a window: a window to observe, not a synchronisation."""
    await asyncio.sleep(seconds)


# --- 1. a BMS limit of 0 A is 0 A --------------------------------------------------------------


async def test_a_full_pack_whose_bms_allows_0_a_is_never_switched_on(tmp_path: Path) -> None:
    rack = PeerRack(4)
    full_pack(rack, 0)  # slot 1: full, BMS 0 A
    rack.set_pack(1, "PK-80", soc=40.0, bms_current_max=80.0)  # slot 2: BMS 80 A
    rack.set_pack(2, "PK-OK", soc=40.0)  # slot 3: BMS 200 A, the charger's 150 A rules
    async with peer_station(tmp_path, rack) as rig:
        await until(lambda: rack.charger_on(1) and rack.charger_on(2), what="slots 2, 3 on")
        await watch(1.0)
        assert rig.on_writes(0) == [], "a pack whose BMS allows 0 A was switched on"
        assert not rack.charger_on(0)
        assert rack.limit_a(1) == 80.0 and rack.limit_a(2) == 150.0
        blockers = rig.station.control.blockers(1)
        assert any("BMS allows no charge current" in b for b in blockers), blockers


async def test_an_unknown_bms_limit_is_0(tmp_path: Path) -> None:
    rack = PeerRack(2)
    rack.set_pack(0, "PK-X", soc=40.0)
    rack.set_raw(0, "bms_current_max", [60_000])  # 6000 A: implausible, so unknown
    rack.set_pack(1, "PK-OK", soc=40.0)
    async with peer_station(tmp_path, rack) as rig:
        await until(lambda: rack.charger_on(1), what="slot 2 on")
        await watch(0.5)
        assert rig.on_writes(0) == []


# --- 2. no contactor chatter -------------------------------------------------------------------


async def test_a_full_pack_under_a_grid_limit_does_not_toggle(tmp_path: Path) -> None:
    rack = PeerRack(4)
    full_pack(rack, 0)
    rack.set_pack(1, "PK-OK", soc=40.0)
    grid = "[power]\ngrid_limit_kw = 200\n"
    async with peer_station(tmp_path, rack, sections=grid) as rig:
        await until(lambda: rack.charger_on(1), what="slot 2 on")
        requests = rack.requests
        await watch(3.0)
        assert rack.enable_transitions(0) == [], "the full pack's contactor was cycled"
        assert rig.on_writes(0) == []
        # Polls and the occasional write, not a storm (the defect: ~2,400 requests a second).
        assert rack.requests - requests < 200


async def test_a_charger_that_drops_out_is_switched_on_again_only_after_its_off_time(
    tmp_path: Path,
) -> None:
    rack = PeerRack(2)
    rack.set_pack(0, "PK-A", soc=40.0)
    async with peer_station(tmp_path, rack, min_on_off_s=0.8) as rig:
        await until(lambda: rack.charger_on(0), what="on")
        for _ in range(4):  # the charger drops out by itself, again and again
            await until(lambda: rack.charger_on(0), timeout=5, what="on again")
            rack.set_setpoint(0, "charge_enable", 0)
            await watch(0.05)
        ons = rig.on_writes(0)
        assert len(ons) >= 4
        gaps = [b - a for a, b in itertools.pairwise(ons)]
        assert min(gaps) >= 0.8 - 0.05, f"switched on again after {min(gaps):.3f} s: {gaps}"


# --- 3. unknown beyond its timeout, where the rack answers: off ----------------------------


async def test_a_frozen_heartbeat_switches_the_charger_off(tmp_path: Path) -> None:
    rack = PeerRack(2)
    rack.set_pack(0, "PK-A", soc=40.0)
    rack.set_pack(1, "PK-B", soc=40.0)
    async with peer_station(tmp_path, rack) as rig:
        await until(lambda: rack.charger_on(0) and rack.charger_on(1), what="charging")
        rack.freeze_heartbeat(0)
        frozen_at = time.monotonic()
        await until(lambda: not rack.charger_on(0), timeout=5, what="switched off")
        took = time.monotonic() - frozen_at
        assert took < 1.0 + 0.5, f"off {took:.2f} s after the heartbeat froze (timeout 1 s)"
        assert "slot_data_stale" in rig.alarm_codes("slot:1")
        assert rack.charger_on(1), "the other charger of the rack goes on"
        await watch(0.5)
        assert rig.on_writes(0)[-1] < frozen_at, "switched on again while unknown"
        rack.freeze_heartbeat(0, frozen=False)
        await until(lambda: rack.charger_on(0), timeout=5, what="on again once known")
        await until(lambda: "slot_data_stale" not in rig.alarm_codes("slot:1"), what="cleared")


# --- 4. a rack that slows down after a fast start -----------------------------------------------


@pytest.mark.parametrize("delay_s", [0.2, 0.5])
async def test_a_rack_that_slows_down_is_read_again(tmp_path: Path, delay_s: float) -> None:
    rack = PeerRack(2)
    rack.set_pack(0, "PK-A", soc=40.0)
    async with peer_station(tmp_path, rack, poll_s=0.2) as rig:
        book = rig.station.book
        await until(lambda: rack.charger_on(0), what="charging")
        rack.delay_s = delay_s  # both under timeout_max_s (1.0 s by default)
        slowed = time.monotonic()
        # The timeout follows the device: the slot's data is fresh again within seconds ...
        await until(
            lambda: (
                (v := book.view(1, time.monotonic())).fresh is not None
                and v.fresh.at > slowed + delay_s
            ),
            timeout=15,
            what="fresh data from the slowed rack",
        )
        # ... and stays fresh: read every poll, never declared offline for good.
        poller = rig.station.pollers["p"]
        cycles = poller.stats.cycles
        await watch(3 * delay_s + 1.0)
        assert poller.stats.cycles > cycles + 1
        assert poller.online
        view = book.view(1, time.monotonic())
        assert view.age_s is not None and view.age_s < 3 * delay_s + 1.0


# --- 5. the limit is verified before the charger is switched on ---------------------------------


@pytest.mark.parametrize("fault", ["ignores the limit", "clamps the limit"])
async def test_a_charger_that_did_not_take_its_limit_is_not_switched_on(
    tmp_path: Path, fault: str
) -> None:
    rack = PeerRack(2)
    rack.set_pack(0, "PK-A", soc=40.0)
    if fault == "ignores the limit":
        rack.ignore_limit_writes = True
    else:
        rack.clamp_limit_a = 100.0  # asked 150 A, holds 100 A
    async with peer_station(tmp_path, rack) as rig:
        await until(lambda: rig.limit_writes(0) != [], what="a limit written")
        await until(lambda: "setpoint_not_applied" in rig.alarm_codes("slot:1"), what="alarm")
        await watch(0.5)
        assert rig.on_writes(0) == [], "switched on although its limit did not take"
        assert not rack.charger_on(0)
