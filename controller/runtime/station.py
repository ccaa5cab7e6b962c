"""The station's parts, composed once: racks, slot control, publishing, the event outbox."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from controller.charging.control import SlotControl
from controller.charging.requests import ClearPowerLimit
from controller.charging.setpoints import Rack
from controller.config.model import StationConfig
from controller.mqtt.commands import CommandServer
from controller.mqtt.infopub import InfoPublisher
from controller.mqtt.link import MqttLink
from controller.mqtt.outbox import Outbox
from controller.mqtt.robotpub import RobotPublisher
from controller.mqtt.slotpub import SlotPublisher
from controller.mqtt.statepub import StatePublisher
from controller.ocpp.client import OcppClient
from controller.plant.slots import RackInfo, SlotBook
from controller.runtime.devices import Links, build_pollers, build_robot, build_station_io
from controller.safety.actuators import Actuators
from controller.safety.supervisor import Plant, SafetySupervisor
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal
from controller.swap.dispense import ready_counts
from controller.swap.sequencer import Sequencer
from drivers import clock
from drivers.errors import DriverError
from drivers.robot.protocol import RobotState, Target
from drivers.stationio import IoSnapshot

_log = logging.getLogger(__name__)


class Station:
    """Everything the daemon runs besides its own lifecycle."""

    def __init__(
        self,
        config: StationConfig,
        journal: Journal,
        link: MqttLink,
        *,
        restart: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.link = link
        self.events = EventLog(journal, config.station_id)
        self.outbox = Outbox(self.events, link)
        self.links = Links()
        self.book = SlotBook(
            RackInfo(r.name, tuple(r.slots), r.stale_after, r.heartbeat_timeout_s)
            for r in config.racks
        )
        self._last_io: IoSnapshot | None = None
        self.pollers = build_pollers(config, self.links, self._on_snapshot)
        self.robot = build_robot(config, on_status=self._on_robot_status)
        self.io = build_station_io(config, self.links, self._on_io)
        io_cfg = config.station_io
        self.safety = SafetySupervisor(
            Plant(
                book=self.book,
                charger_max_a=config.charging.max_current_a,
                min_off_s=config.charging.min_off_s,
                io_stale_after_s=io_cfg.stale_after if io_cfg is not None else 0.0,
                io_heartbeat_timeout_s=io_cfg.heartbeat_timeout_s if io_cfg is not None else 0.0,
                io=self._io_snapshot,
                robot_clear=self._robot_clear,
                pack_locked=self._pack_locked,
                allocation=lambda slot: self.control.allocation_of(slot),  # noqa: PLW0108 - bound late: the control is built below
                handover=lambda slot: slot in self.control.swap_held,
            )
        )
        self.actuators = Actuators(
            self.safety,
            {name: p.driver for name, p in self.pollers.items()},
            self.book.rack_of,
            io=self.io.driver if self.io is not None else None,
            robot=self.robot,
        )
        self.control = SlotControl(
            config,
            self.book,
            {name: Rack(p.driver, p) for name, p in self.pollers.items()},
            journal,
            self.events,
            actuators=self.actuators,
        )
        self.control.ready_counts = lambda: ready_counts(config, self.control)
        self.slot_publisher = SlotPublisher(self.control, link, config.publish)
        self.robot_publisher = None if self.robot is None else RobotPublisher(self.robot, link)
        self.info = InfoPublisher(config, link, journal.boot_count)
        # The swap sequence needs the robot and the station I/O; without them (a charging-only
        # commissioning config) the station runs its racks alone.
        self.sequencer: Sequencer | None = None
        self.state_publisher: StatePublisher | None = None
        self.commands: CommandServer | None = None
        if self.robot is not None and self.io is not None:
            self.sequencer = Sequencer(
                config,
                journal,
                self.events,
                self.control,
                self.robot,
                self.io.driver,
                self.actuators,
                poll_slot=self._poll_slot,
            )
            seq = self.sequencer
            self.actuators.context = lambda: (
                (seq.ctx.swap_id, seq.ctx.state) if seq.ctx.active else (None, None)
            )
            self.control.ready_counts = self.sequencer.packs_ready
            self.state_publisher = StatePublisher(self.sequencer, self.control, journal, link)
            self.commands = CommandServer(
                link,
                self.sequencer,
                journal,
                config.commands,
                republish=link.republish,
                grid=self.control.grid,
            )
        # The second northbound door: OCPP 2.1 towards an operator's CSMS (docs/ocpp.md).
        self.ocpp: OcppClient | None = None
        if config.ocpp is not None:
            self.ocpp = OcppClient(
                config,
                journal,
                self.events,
                self.control,
                sequencer=self.sequencer,
                grid=self.control.grid,
                restart=restart or (lambda reason: _log.error("%s: no restart here", reason)),
            )
            if self.commands is not None and config.ocpp.authorize_local_swaps:
                self.commands.authorize = self.ocpp.authorize

    def _io_snapshot(self) -> IoSnapshot | None:
        return self._last_io

    def _robot_clear(self) -> bool | None:
        """The robot is parked clear of the bay, idle (None: not known)."""
        robot = self.robot
        status = robot.status if robot is not None else None
        if robot is None or status is None or not robot.ready.is_set():
            return None
        return (
            status.state == RobotState.IDLE
            and not robot.busy
            and status.position in {Target.HOME, Target.SLOT}
        )

    def _pack_locked(self) -> bool | None:
        return self.sequencer.ctx.pack_locked if self.sequencer is not None else None

    def _on_robot_status(self, status: Any) -> None:
        if self.robot_publisher is not None:
            self.robot_publisher.changed.set()
        if self.sequencer is not None:
            self.sequencer.on_robot_status(status)

    def _on_io(self, snapshot: IoSnapshot) -> None:
        self._last_io = snapshot
        if self.sequencer is not None:
            self.sequencer.on_io(snapshot)

    def _poll_slot(self, slot: int) -> None:
        rack = self.book.rack_of.get(slot)
        if rack is not None and rack in self.pollers:
            self.pollers[rack].poll_soon()

    def _on_snapshot(self, snapshot: Any) -> None:
        self.control.on_snapshot(snapshot)

    async def start(self) -> None:
        """Restore what the journal remembers."""
        await self.control.load()
        await self.control.grid.load()
        if self.ocpp is None and "ocpp" in self.control.limits.runtime:
            # Left by an OCPP CSMS before [ocpp] was removed: nobody may renew or lift it now.
            _log.warning("the OCPP CSMS's power limit is lifted: [ocpp] is no longer configured")
            await self.control.grid.clear_limit(
                ClearPowerLimit(source="ocpp", by="start: no [ocpp]")
            )
        if self.sequencer is not None:
            await self.sequencer.load()
        if self.ocpp is not None:
            await self.ocpp.load()

    def jobs(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The station's long-running tasks, by name."""
        jobs: dict[str, Coroutine[Any, Any, None]] = {
            "outbox": self.outbox.run(),
            "slot-control": self.control.run(),
            "slot-publish": self.slot_publisher.run(),
            "forecast": self.control.run_forecast(),
        }
        for name, poller in self.pollers.items():
            jobs[f"rack:{name}"] = poller.run()
        if self.robot is not None and self.robot_publisher is not None:
            jobs["robot"] = self.robot.run()
            jobs["robot-publish"] = self.robot_publisher.run()
        if self.io is not None:
            jobs["station-io"] = self.io.run()
        if self.sequencer is not None and self.state_publisher is not None:
            jobs["swap"] = self.sequencer.run()
            jobs["state-publish"] = self.state_publisher.run()
        if self.commands is not None:
            jobs["commands"] = self.commands.run()
        if self.ocpp is not None:
            jobs.update(self.ocpp.jobs())
        return jobs

    async def safe_state(self) -> None:
        """Stop the robot, the lift and every charger we can reach: nobody watches them after us.

        What the stops were is entered in the motion log afterwards (stops go out first).
        """
        robot_stopped, _, _ = await asyncio.gather(
            self._stop_robot(), self.control.stop_all(), self._outputs_off()
        )
        if self.sequencer is not None:
            try:
                await self.sequencer.note_orderly_stop(robot_stopped=robot_stopped)
            except Exception:  # noqa: BLE001 - the machinery is safe; the restart holds instead
                _log.exception("the swap's orderly stop was not journalled")
        batch = JournalBatch()
        self.actuators.take_journal(batch)
        if batch:
            try:
                await self.events.commit(batch)
            except Exception:  # noqa: BLE001 - the machinery is safe; the log is best effort
                _log.exception("motion log: the stops of the safe state were not journalled")

    async def _outputs_off(self) -> None:
        if self.io is None:
            return
        try:
            await self.actuators.outputs(dict.fromkeys(self.io.driver.profile.coils, False))
        except DriverError as exc:
            _log.warning("station I/O: could not switch the outputs off: %s", exc)

    async def _stop_robot(self) -> bool:
        """STOP a robot that may be moving; whether a STOP was sent."""
        robot = self.robot
        if robot is None or robot.closed:
            return False
        # A robot known to be idle is left alone (a STOP would latch it until a reset); one
        # that may be moving, or whose state is unknown, is stopped (waiting briefly for its
        # port if the link is reopening).
        idle = robot.status is not None and robot.status.state == RobotState.IDLE
        if idle and not robot.busy:
            return False
        try:
            await self.actuators.robot_stop()  # shielded: a STOP runs to completion
        except DriverError as exc:
            _log.warning("robot: STOP on shutdown failed: %s", exc)
        return True

    def liveness(self) -> float:
        """How far back the slot control and the swap sequencer are known to have been alive.

        The slot control is event-driven: waiting for work is alive; a step that does not end
        is not. The sequencer steps at least every `swap.evaluate_every_s` (50 ms).
        """
        control = self.control.liveness(clock.monotonic())
        if self.sequencer is None:
            return control
        return min(control, self.sequencer.last_step)

    async def close(self) -> None:
        """Close the device links."""
        if self.ocpp is not None:
            self.ocpp.close()
        await self.links.close()
        if self.robot is not None:
            await self.robot.close()

    def status(self) -> str:
        """One-line summary for systemd's STATUS=."""
        racks = len(self.pollers)
        online = sum(p.online for p in self.pollers.values())
        alarms = len(self.control.alarms.active())
        robot = "" if self.robot is None else f", robot {self.robot.state.value}"
        ocpp = "" if self.ocpp is None else f", ocpp {self.ocpp.state}"
        return f"racks {online}/{racks} online{robot}{ocpp}, {alarms} alarm(s)"
