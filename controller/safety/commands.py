"""What the safety supervisor judges: every command to machinery, as data.

A charger's current limit and its enable, the station's outputs, a robot command: each a frozen
value naming its device and what it asks, with the motions it would start (the motion
invariants are stated per motion) and whether it only stops something (never refused).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.robot.protocol import MsgType, Target

Fact = bool | float | str | None
Facts = dict[str, Fact]


@dataclass(frozen=True, slots=True)
class ChargerLimit:
    """Write a slot's charge current limit (A)."""

    slot: int
    amps: float

    def __str__(self) -> str:
        return f"slot {self.slot} current limit {self.amps:g} A"


@dataclass(frozen=True, slots=True)
class ChargerEnable:
    """Switch a slot's charger on or off."""

    slot: int
    on: bool

    def __str__(self) -> str:
        return f"slot {self.slot} charge {'on' if self.on else 'off'}"


@dataclass(frozen=True, slots=True)
class Outputs:
    """Set the station's outputs (lift, gate, green light): names set on and cleared."""

    on: frozenset[str]
    off: frozenset[str] = frozenset()

    def __str__(self) -> str:
        parts = [f"{n}=on" for n in sorted(self.on)] + [f"{n}=off" for n in sorted(self.off)]
        return "outputs " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class RobotMotion:
    """A robot command; `target` and `slot` where it goes or works."""

    kind: MsgType
    target: Target | None = None
    slot: int | None = None

    def __str__(self) -> str:
        where = "" if self.target is None else f" to {self.target.name.lower()}"
        return f"robot {self.kind.name}{where}" + ("" if self.slot is None else f" {self.slot}")


Command = ChargerLimit | ChargerEnable | Outputs | RobotMotion

# Robot commands that move nothing (STOP stops: it is the safe state).
NO_MOTION = frozenset({MsgType.STOP, MsgType.RESET, MsgType.STATUS, MsgType.SYNC})
UNDER_VEHICLE = frozenset({MsgType.UNLOCK, MsgType.REMOVE, MsgType.INSTALL, MsgType.LOCK})


def motions(cmd: Command) -> frozenset[str]:
    """The motions a command starts, as the motion invariants name them."""
    if isinstance(cmd, Outputs):
        return cmd.on
    if isinstance(cmd, RobotMotion) and cmd.kind not in NO_MOTION:
        under = cmd.kind in UNDER_VEHICLE or (cmd.kind is MsgType.MOVE and cmd.target is Target.BAY)
        handover = cmd.kind in {MsgType.STORE, MsgType.FETCH}
        return frozenset(
            {"robot"} | ({"robot_under_vehicle"} if under else set())
            | ({"robot_handover"} if handover else set())
        )  # fmt: skip
    return frozenset()


def stopping(cmd: Command) -> bool:
    """The command only stops something (never refused)."""
    if isinstance(cmd, ChargerEnable):
        return not cmd.on
    if isinstance(cmd, Outputs):
        return not cmd.on
    return isinstance(cmd, RobotMotion) and cmd.kind is MsgType.STOP
