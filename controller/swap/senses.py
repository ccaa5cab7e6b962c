"""What the station looks like to the swap: station I/O, the robot, and the facts interlocks use.

Unknown is never safe: stale or missing station I/O makes every input unknown (None), and an
interlock that reads None fails. When the data is old because this process itself did not run
(frozen, swapped out), that is the cause named, not the station I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controller.config.model import StationConfig
from controller.swap import interlocks
from controller.swap.current import CurrentSwap
from controller.swap.phase import Phase
from drivers import clock
from drivers.robot.link import RobotLink
from drivers.robot.protocol import FaultCode, RobotState, Target
from drivers.stationio import IoReading, IoSnapshot

STALLED = "the controller itself was stalled"
IO_INPUTS = (
    "vehicle_present", "vehicle_in_position", "vehicle_hv_off", "doors_closed",
    "brake_gear_ok", "lift_up", "lift_down", "estop_ok", "light_curtain_clear", "gate_open",
    "plc_ok",
)  # fmt: skip
Facts = Mapping[str, bool | None]


class Senses:
    """The station I/O as last polled, the robot link's view, and the swap's own facts."""

    def __init__(
        self,
        config: StationConfig,
        robot: RobotLink,
        swap: CurrentSwap,
        *,
        command_out: Callable[[], bool],
    ) -> None:
        assert config.station_io is not None
        self.robot = robot
        self.swap = swap
        self.command_out = command_out  # a robot command of the swap's is out
        self.io_stale_after_s = config.station_io.stale_after
        self.io_heartbeat_timeout_s = config.station_io.heartbeat_timeout_s
        self.snapshot: IoSnapshot | None = None
        self.stall = (0.0, 0.0)  # the last stall of the sequencer: (seconds, when it ended)

    def io_reading(  # noqa: PLR0911 - one return per reason, in order
        self, now: float
    ) -> tuple[IoReading | None, str]:
        """The station I/O reading if it can be trusted now, else None and why not."""
        snap = self.snapshot
        if snap is None or snap.reading is None:
            return None, "station I/O not read yet"
        if not snap.online:
            return None, "station I/O not answering"
        reading = snap.reading
        # A failed poll alone does not make the inputs unknown: their age does, and
        # `stale_after` leaves room for one failing poll (docs/architecture.md).
        if now - reading.at > self.io_stale_after_s:
            stall, resumed = self.stall
            if stall > self.io_stale_after_s and reading.at <= resumed:
                # Old because this process did not run, not because the I/O failed.
                return None, f"{STALLED} for {stall:.1f} s"
            if snap.consecutive_failures:
                return None, "station I/O not answering"
            return None, "station I/O data too old"
        if reading.at - reading.heartbeat_since > self.io_heartbeat_timeout_s:
            return None, "station PLC heartbeat stopped"
        return reading, ""

    def facts(self, now: float | None = None) -> dict[str, bool | None]:
        """Everything the interlocks look at; None where unknown (which is never safe)."""
        now = clock.monotonic() if now is None else now
        reading, _ = self.io_reading(now)
        facts: dict[str, bool | None] = dict.fromkeys(IO_INPUTS)
        if reading is not None:
            facts.update(reading.inputs)
        gate = facts.get("gate_open")
        facts["gate_closed"] = None if gate is None else not gate
        facts["robot_clear"] = self.robot_clear()
        facts["pack_locked"] = self.swap.ctx.pack_locked
        return facts

    def robot_connected(self) -> bool:
        """The robot link is up and the robot has reported."""
        return self.robot.status is not None and self.robot.ready.is_set()

    def robot_clear(self) -> bool | None:
        """The robot is parked clear of the bay and not working (None: not connected)."""
        status = self.robot.status
        if status is None or not self.robot.ready.is_set():
            return None
        return (
            status.state == RobotState.IDLE
            and not self.robot.busy
            and not self.command_out()
            and status.position in {Target.HOME, Target.SLOT}
        )

    def robot_fault(self) -> str | None:
        """The robot reports a fault of its own (none while our command is out: its outcome will).

        Also a STOP latched by someone else (the robot's own panel).
        """
        status = self.robot.status
        if status is None or self.command_out():
            return None
        if status.state in {RobotState.FAULT, RobotState.STOPPED}:
            try:
                code = FaultCode(status.fault).name.lower()
            except ValueError:
                code = str(status.fault)
            return f"robot {RobotState(status.state).name.lower()} ({code})"
        return None

    def why(self, cond: interlocks.Condition, facts: Facts) -> str:
        """What to say when `cond` does not hold: its message, or why it is unknown."""
        if facts.get(cond.name) is not None:
            return cond.message
        if cond.name == "robot_clear":
            return f"{cond.message} (robot not connected)"
        _, why = self.io_reading(clock.monotonic())
        if why.startswith(STALLED):
            return f"{why}: nothing was supervised meanwhile"  # the cause, not a sensor
        return f"{cond.name.replace('_', ' ')} unknown ({why or 'no data'})"

    def failing(self, phase: Phase, facts: Facts) -> list[str]:
        """The interlocks of `phase` that do not hold, each said as a blocking cause."""
        return [self.why(c, facts) for c in interlocks.failing(phase, facts)]

    def station_causes(self, facts: Facts) -> list[str]:
        """What stops a swap from starting now (empty: a swap may start)."""
        causes: list[str] = []
        mode = self.swap.mode
        if mode != "auto":
            causes.append(f"station in {mode.replace('_', ' ')} mode")
        reading, why = self.io_reading(clock.monotonic())
        if reading is None:
            causes.append(why)
        else:
            if facts.get("estop_ok") is False:
                causes.append(interlocks.ESTOP.message)
            if facts.get("plc_ok") is False:
                causes.append(interlocks.IO_OK.message)
        status = self.robot.status
        if status is None or not self.robot.ready.is_set():
            causes.append(f"robot link {self.robot.state.value}")
        elif status.state in {RobotState.FAULT, RobotState.STOPPED}:
            causes.append(f"robot {RobotState(status.state).name.lower()}: needs a reset")
        return causes
