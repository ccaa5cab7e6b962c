"""The swap state machine: the phases of a swap and the only ways between them.

The machine holds no I/O: it validates transitions (python-statemachine checks the graph when
the class is built and refuses any event not allowed in the current state). The sequencer
(`controller/swap/sequencer.py`) journals each transition before it acts on it.
docs/swap-machine.md shows the graph (generated from this class; a test fails when it drifts).
"""

from __future__ import annotations

from statemachine import State, StateMachine

# Phases in which machinery moves or a pack is out of its vehicle.
MOTION = ("lifting", "removing", "storing", "fetching", "installing", "locking", "lowering")
# Phases of an active swap (everything but idle).
ACTIVE = (
    "authorised",
    "waiting_for_vehicle",
    "positioned",
    *MOTION,
    "releasing",
    "complete",
    "aborting",
    "fault",
    "estop",
    "recovery_required",
)
# Where a swap can resume after a restart, when the physical state proves it safe.
RESUMABLE = (
    "waiting_for_vehicle",
    "positioned",
    "lifting",
    "removing",
    "storing",
    "fetching",
    "installing",
    "locking",
    "lowering",
    "releasing",
    "aborting",
)


class SwapMachine(StateMachine):
    """Phases and transitions of one swap at a time."""

    idle = State(initial=True)
    authorised = State()
    waiting_for_vehicle = State()
    positioned = State()
    lifting = State()
    removing = State()
    storing = State()
    fetching = State()
    installing = State()
    locking = State()
    lowering = State()
    releasing = State()
    complete = State()
    aborting = State()
    fault = State()
    estop = State()
    recovery_required = State()

    # The sequence.
    authorise = idle.to(authorised)
    open_bay = authorised.to(waiting_for_vehicle)
    vehicle_ready = waiting_for_vehicle.to(positioned)
    lift = positioned.to(lifting)
    lifted = lifting.to(removing)
    removed = removing.to(storing)
    stored = storing.to(fetching)
    fetched = fetching.to(installing)
    installed = installing.to(locking)
    locked = locking.to(lowering)
    lowered = lowering.to(releasing)
    released = releasing.to(complete)
    finish = complete.to(idle)

    # Before anything moved: nothing to undo; a vehicle in the bay leaves with its own pack.
    cancel = authorised.to(complete) | waiting_for_vehicle.to(releasing) | positioned.to(releasing)
    # Once the vehicle is lifted: undo until it holds a locked pack again, then lower.
    abort = (
        lifting.to(aborting)
        | removing.to(aborting)
        | storing.to(aborting)
        | fetching.to(aborting)
        | installing.to(aborting)
        | locking.to(aborting)
    )
    made_safe = aborting.to(lowering)

    # Faults stop everything; an operator's reset leads to making the vehicle safe.
    fail = (
        authorised.to(fault)
        | waiting_for_vehicle.to(fault)
        | positioned.to(fault)
        | lifting.to(fault)
        | removing.to(fault)
        | storing.to(fault)
        | fetching.to(fault)
        | installing.to(fault)
        | locking.to(fault)
        | lowering.to(fault)
        | releasing.to(fault)
        | aborting.to(fault)
    )
    emergency_stop = (
        authorised.to(estop)
        | waiting_for_vehicle.to(estop)
        | positioned.to(estop)
        | lifting.to(estop)
        | removing.to(estop)
        | storing.to(estop)
        | fetching.to(estop)
        | installing.to(estop)
        | locking.to(estop)
        | lowering.to(estop)
        | releasing.to(estop)
        | aborting.to(estop)
        | fault.to(estop)
    )
    reset = fault.to(aborting) | estop.to(aborting)

    # After a restart that cannot prove it safe to go on: an operator decides.
    hold = (
        authorised.to(recovery_required)
        | waiting_for_vehicle.to(recovery_required)
        | positioned.to(recovery_required)
        | lifting.to(recovery_required)
        | removing.to(recovery_required)
        | storing.to(recovery_required)
        | fetching.to(recovery_required)
        | installing.to(recovery_required)
        | locking.to(recovery_required)
        | lowering.to(recovery_required)
        | releasing.to(recovery_required)
        | complete.to(recovery_required)
        | aborting.to(recovery_required)
        | fault.to(recovery_required)
        | estop.to(recovery_required)
    )
    recover_abort = recovery_required.to(aborting)
    recover_clear = recovery_required.to(idle)
    # Resuming after a restart, to the phase the physical state proves (one event each).
    resume_waiting_for_vehicle = recovery_required.to(waiting_for_vehicle)
    resume_positioned = recovery_required.to(positioned)
    resume_lifting = recovery_required.to(lifting)
    resume_removing = recovery_required.to(removing)
    resume_storing = recovery_required.to(storing)
    resume_fetching = recovery_required.to(fetching)
    resume_installing = recovery_required.to(installing)
    resume_locking = recovery_required.to(locking)
    resume_lowering = recovery_required.to(lowering)
    resume_releasing = recovery_required.to(releasing)
    resume_aborting = recovery_required.to(aborting)


def event_to(machine: SwapMachine, event: str) -> str | None:
    """The state `event` would lead to from the current state, or None if not allowed."""
    for state in machine.configuration:
        for transition in state.transitions:
            if event in {e.id for e in transition.events} and transition.target is not None:
                return str(transition.target.id)
    return None
