"""A charging station run step by step on a virtual clock, against the independent peer rack.

The real link (over Modbus TCP), driver, slot book, safety supervisor, actuators, slot control
and journal (a real SQLite file); each `step(dt)` advances the clock, ticks the rack's physics,
polls once and runs the control step that poll wakes (the daemon's own event-driven path).
Used by the adversarial stateful test and by the regressions of issue 12's review.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from controller.charging.control import SlotControl
from controller.charging.setpoints import Rack
from controller.config.model import StationConfig
from controller.plant.slots import RackInfo, SlotBook
from controller.safety.actuators import Actuators
from controller.safety.motionlog import MotionEntry, select_sync
from controller.safety.supervisor import Plant, SafetySupervisor
from controller.store.events import EventLog
from controller.store.journal import Journal
from drivers.modbus.link import LinkParams, ModbusLink, TcpParams
from drivers.modbus.profile import load_profile
from drivers.rack import RackDriver, RackPoller, RackSnapshot
from tests.peers.rack import PeerRack
from tests.support import REPO

CHARGER_MAX_A = 150.0
POLL_S = 1.0
HEARTBEAT_TIMEOUT_S = 3.0
T = TypeVar("T")


class VirtualClock:
    """Seconds that pass only when the test says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def station_config(
    grid_kw: float | None = None, *, min_on_s: float = 5.0, min_off_s: float = 5.0
) -> StationConfig:
    """The sections slot control reads, as the tests want them."""
    power: dict[str, Any] = {"min_current_a": 5.0}
    if grid_kw is not None:
        power["grid_limit_kw"] = grid_kw
    return StationConfig.model_validate(
        {
            "station_id": "stepped",
            "charging": {
                "max_current_a": CHARGER_MAX_A,
                "min_on_s": min_on_s,
                "min_off_s": min_off_s,
            },
            "power": power,
            "supervision": {"debounce_s": 2.0},
        }
    )


class SteppedStation:
    """One peer rack of `n` chargers and the slot control that runs it."""

    def __init__(
        self,
        n: int = 3,
        config: StationConfig | None = None,
        *,
        state: Path | None = None,
        timeout_max_s: float = 0.03,
        timeout_min_s: float = 0.01,
        handover: set[int] | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None  # a real file, a fast fsync
        self.own_state = state is None
        self.state = state or Path(tempfile.mkdtemp(prefix="stepped-", dir=base))
        self.clock = VirtualClock()
        self.rack = PeerRack(n, charger_max_a=CHARGER_MAX_A)
        port = self.rack.start()
        self.config = config or station_config()
        self.handover = handover if handover is not None else set()
        profile = load_profile(REPO / "config" / "profiles" / "simrack.toml")
        link = ModbusLink(
            LinkParams(
                "peer",
                tcp=TcpParams("127.0.0.1", port),
                timeout_min_s=min(timeout_min_s, timeout_max_s),
                timeout_max_s=timeout_max_s,
                retries=0,
            )
        )
        slots = list(range(1, n + 1))
        self.driver = RackDriver("p", profile, link, slots, unit_id=1, clock=self.clock)
        self.book = SlotBook([RackInfo("p", tuple(slots), 2 * POLL_S + 0.5, HEARTBEAT_TIMEOUT_S)])
        self.journal: Journal = self.run(Journal.open(self.state))
        self.events = EventLog(self.journal, "stepped")
        self.control: SlotControl | None = None
        self.safety = SafetySupervisor(
            Plant(
                self.book,
                CHARGER_MAX_A,
                self.config.charging.min_off_s,
                allocation=lambda slot: self.control.allocation_of(slot) if self.control else 0.0,
                handover=lambda slot: slot in self.handover,
            ),
            clock=self.clock,
        )
        self.actuators = Actuators(self.safety, {"p": self.driver}, self.book.rack_of)
        # As the daemon wires them: a poll result wakes the slot control for that rack's slots.
        self.poller = RackPoller(
            self.driver,
            poll_period_s=POLL_S,
            offline_after=3,
            on_snapshot=self._on_snapshot,
        )
        self.control = SlotControl(
            self.config,
            self.book,
            {"p": Rack(self.driver, self.poller)},
            self.journal,
            self.events,
            actuators=self.actuators,
            clock=self.clock,
        )
        self.run(self.control.load())

    def _on_snapshot(self, snapshot: RackSnapshot) -> None:
        self.slot_control.on_snapshot(snapshot)

    @property
    def slot_control(self) -> SlotControl:
        assert self.control is not None
        return self.control

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def step(self, dt: float = POLL_S) -> None:
        """Time passes, the rack's physics ticks, one poll, one control step."""
        self.clock.t += dt
        self.rack.tick(dt)
        self.run(self.poller.poll_once())
        self.run(self.slot_control.step_pending(self.clock.t))

    def on(self, i: int) -> bool:
        """The charger at position i is switched on (its register, on the rack)."""
        return self.rack.charger_on(i)

    def motion_log(self) -> list[MotionEntry]:
        return self.run(self.journal.call(select_sync))

    def close(self) -> None:
        try:
            self.run(self.driver.link.close())
            self.run(self.journal.close())
        finally:
            self.rack.stop()
            self.loop.close()
            if self.own_state:
                shutil.rmtree(self.state, ignore_errors=True)
