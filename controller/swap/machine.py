"""The swap state machine: the phases of a swap and the only ways between them.

The machine holds no I/O: it validates transitions (python-statemachine checks the graph when
the class is built and refuses any event not allowed in the current state). Its states are
built from `Phase` (`States.from_enum`), and a transition from many phases names their group
(`from_()`), so the graph reads as the rules it encodes. The sequencer journals each
transition before it acts on it. docs/swap-machine.md shows the graph (generated from this
class; a test fails when it drifts).
"""

from __future__ import annotations

import functools
import operator

from statemachine import State, StateMachine
from statemachine.states import States

from controller.swap.phase import (
    ABORTABLE,
    RESUMABLE,
    RUNNING,
    Phase,
    ordered,
)

_S = States.from_enum(Phase, initial=Phase.IDLE, use_enum_instance=True)


def _of(phases: frozenset[Phase]) -> list[State]:
    return [getattr(_S, p.name) for p in ordered(phases)]


def _is(phase: Phase, target: State) -> bool:
    """The condition of `resume`: to the phase the operator's decision names (`phase=`)."""
    return bool(target.value is phase)


class SwapMachine(StateMachine):
    """Phases and transitions of one swap at a time."""

    phases = _S

    # The sequence.
    authorise = _S.IDLE.to(_S.AUTHORISED)
    open_bay = _S.AUTHORISED.to(_S.WAITING_FOR_VEHICLE)
    vehicle_ready = _S.WAITING_FOR_VEHICLE.to(_S.POSITIONED)
    lift = _S.POSITIONED.to(_S.LIFTING)
    lifted = _S.LIFTING.to(_S.REMOVING)
    removed = _S.REMOVING.to(_S.STORING)
    stored = _S.STORING.to(_S.FETCHING)
    fetched = _S.FETCHING.to(_S.INSTALLING)
    installed = _S.INSTALLING.to(_S.LOCKING)
    locked = _S.LOCKING.to(_S.LOWERING)
    lowered = _S.LOWERING.to(_S.RELEASING)
    released = _S.RELEASING.to(_S.COMPLETE)
    finish = _S.COMPLETE.to(_S.IDLE)

    # Before anything moved: nothing to undo; a vehicle in the bay leaves with its own pack.
    cancel = _S.AUTHORISED.to(_S.COMPLETE) | _S.RELEASING.from_(
        _S.WAITING_FOR_VEHICLE, _S.POSITIONED
    )
    # Once the vehicle is lifted: undo until it holds a locked pack again, then lower.
    abort = _S.ABORTING.from_(*_of(ABORTABLE))
    made_safe = _S.ABORTING.to(_S.LOWERING)

    # Faults stop everything; an operator's reset leads to making the vehicle safe.
    fail = _S.FAULT.from_(*_of(RUNNING))
    emergency_stop = _S.ESTOP.from_(*_of(RUNNING | {Phase.FAULT}))
    reset = _S.ABORTING.from_(_S.FAULT, _S.ESTOP)

    # After a restart that cannot prove it safe to go on: an operator decides.
    hold = _S.RECOVERY_REQUIRED.from_(*_of(RUNNING | {Phase.COMPLETE, Phase.FAULT, Phase.ESTOP}))
    recover_abort = _S.RECOVERY_REQUIRED.to(_S.ABORTING)
    recover_clear = _S.RECOVERY_REQUIRED.to(_S.IDLE)
    # Resuming after a restart, to the phase it was in (`send("resume", phase=...)`).
    resume = functools.reduce(
        operator.or_, [_S.RECOVERY_REQUIRED.to(s, cond=_is) for s in _of(RESUMABLE)]
    )


def event_to(machine: SwapMachine, event: str, phase: Phase | None = None) -> Phase | None:
    """The phase `event` would lead to from the current one, or None if not allowed.

    `phase`: the target of an event with several (`resume`); the machine is sent it too.
    """
    for state in machine.configuration:
        for transition in state.transitions:
            target = transition.target
            if event not in {e.id for e in transition.events} or target is None:
                continue
            if phase is None or target.value is phase:
                return Phase(target.value)
    return None
