"""The phases of a swap, and the groups the rest of the controller reasons about.

The only place a phase is spelled: everything else names a member (a test greps for literals).
A `StrEnum`, so the journal, MQTT `state` and records carry the same lower-case words as ever.
"""

from __future__ import annotations

from enum import StrEnum, auto


class Phase(StrEnum):
    """Where one swap is (`idle`: none in progress), in the order a swap goes through them."""

    IDLE = auto()
    AUTHORISED = auto()
    WAITING_FOR_VEHICLE = auto()
    POSITIONED = auto()
    LIFTING = auto()
    REMOVING = auto()
    STORING = auto()
    FETCHING = auto()
    INSTALLING = auto()
    LOCKING = auto()
    LOWERING = auto()
    RELEASING = auto()
    COMPLETE = auto()
    ABORTING = auto()
    FAULT = auto()
    ESTOP = auto()
    RECOVERY_REQUIRED = auto()

    @property
    def text(self) -> str:
        """As said in a message (`waiting for vehicle`)."""
        return self.value.replace("_", " ")


P = Phase

# Nothing has moved yet: a cancel leaves nothing to undo.
BEFORE_MOTION = frozenset({P.AUTHORISED, P.WAITING_FOR_VEHICLE, P.POSITIONED})
# The robot runs the phase's commands (docs/robot-protocol.md).
ROBOT_PHASES = frozenset({P.REMOVING, P.STORING, P.FETCHING, P.INSTALLING, P.LOCKING})
# The lift moves.
LIFT_PHASES = frozenset({P.LIFTING, P.LOWERING})
# Machinery moves, or a pack is out of its vehicle.
MOTION = ROBOT_PHASES | LIFT_PHASES
# An abort undoes these (the vehicle is lifted): the robot puts a locked pack back first.
ABORTABLE = ROBOT_PHASES | {P.LIFTING}
# The swap waits for a person: a reset, or a recovery decision.
STOPPED = frozenset({P.FAULT, P.ESTOP, P.RECOVERY_REQUIRED})
# Running: a fault, an E-stop or a hold may interrupt it.
RUNNING = BEFORE_MOTION | MOTION | {P.RELEASING, P.ABORTING}
# A swap is in progress.
ACTIVE = frozenset(Phase) - {P.IDLE}
# Where a swap can resume after a restart, when the physical state proves it safe.
RESUMABLE = (BEFORE_MOTION - {P.AUTHORISED}) | MOTION | {P.RELEASING, P.ABORTING}
# A step of the robot's phase done: the event that ends it.
PHASE_DONE = {
    P.REMOVING: "removed", P.STORING: "stored", P.FETCHING: "fetched", P.INSTALLING: "installed",
    P.LOCKING: "locked",
}  # fmt: skip


def ordered(phases: frozenset[Phase]) -> tuple[Phase, ...]:
    """A group in the order a swap goes through its phases (for docs and reports)."""
    return tuple(p for p in Phase if p in phases)
