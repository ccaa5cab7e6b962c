"""The end of a swap: its outcome, its record (in the transition's transaction), then idle."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from controller.charging.control import SlotControl
from controller.store.events import JournalBatch
from controller.store.records import NewSwapRecord, OperatorAction, PackRef, StepTiming, insert_sync
from controller.swap.current import CurrentSwap
from controller.swap.handover import Handovers
from controller.swap.plan import Outcome, SwapContext
from drivers import clock

_log = logging.getLogger(__name__)


class Ending:
    """Records a swap and returns the station to idle."""

    def __init__(self, swap: CurrentSwap, control: SlotControl, handovers: Handovers) -> None:
        self.swap = swap
        self.control = control
        self.handovers = handovers

    async def finish(self, event: str = "finish", batch: JournalBatch | None = None) -> None:
        """Record the swap (in the transition's transaction) and go idle."""
        swap = self.swap
        ctx = swap.ctx
        if ctx.outcome is None:
            ctx.outcome = outcome_of(ctx)
        record = record_of(ctx, clock.wall())
        batch = batch or JournalBatch()
        batch.call(lambda conn: insert_sync(conn, record))
        batch.event(
            f"swap_{ctx.outcome}",
            {"swap_id": ctx.swap_id, "vehicle_id": ctx.vehicle_id, "reason": ctx.reason,
             "pack_out": ctx.old_serial, "pack_in": ctx.installed_serial},
        )  # fmt: skip
        for slot in {ctx.free_slot, ctx.reserved_slot} - self.handovers.release_when_empty:
            self.control.release_from_swap(slot)
        swap.blocking = []  # idle is published without the swap's last causes
        await swap.go(event, batch)
        await swap.flush()  # the record is durable before the station shows idle
        _log.info(
            "swap %s %s%s", ctx.swap_id[:8], ctx.outcome, f": {ctx.reason}" if ctx.reason else ""
        )
        swap.begin(SwapContext())
        swap.set_blocking([])


def outcome_of(ctx: SwapContext) -> Outcome:
    """How the swap ended: `completed`, `recovered` or `aborted` (docs/records.md).

    `completed`: the vehicle left with the charged pack; `recovered`: the same, after a restart
    of the controller resumed the swap; else `aborted`.
    """
    completed = ctx.vehicle_pack == "installed" and ctx.installed_serial == ctx.reserved_serial
    if not completed:
        return "aborted"
    restarted = any(note.action == "restart" for note in ctx.operator)
    return "recovered" if restarted else "completed"


def record_of(ctx: SwapContext, now: float) -> NewSwapRecord:
    """The swap's record, as it is journalled and published (docs/records.md)."""

    def dt(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    pack_out = (
        PackRef(serial=ctx.old_serial, pack_type=ctx.old_type or ctx.pack_type, soc=ctx.old_soc)
        if ctx.old_serial
        else None
    )
    pack_in = (
        PackRef(serial=ctx.installed_serial, pack_type=ctx.pack_type, soc=ctx.reserved_soc)
        if ctx.installed_serial
        else None
    )
    return NewSwapRecord(
        swap_id=ctx.swap_id,
        vehicle_id=ctx.vehicle_id,
        pack_type=ctx.pack_type,
        outcome=ctx.outcome or "completed",
        reason=ctx.reason,
        started_at=dt(ctx.started_at),
        ended_at=dt(now),
        pack_out=pack_out,
        pack_in=pack_in,
        slot_out=ctx.free_slot if ctx.stored_verified else None,
        slot_in=ctx.reserved_slot if ctx.installed_serial == ctx.reserved_serial else None,
        steps=[
            StepTiming(
                step=t.phase,
                started_at=dt(t.started_at),
                ended_at=dt(t.ended_at) if t.ended_at else None,
                duration_s=(t.ended_at - t.started_at) if t.ended_at else None,
            )
            for t in ctx.timings
        ],
        operator_actions=[
            OperatorAction(at=dt(n.at), action=n.action, by=n.by, detail=n.detail)
            for n in ctx.operator
        ],
    )
