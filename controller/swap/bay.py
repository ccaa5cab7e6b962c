"""The bay: the vehicle arriving and leaving, the lift, and the station's outputs.

The outputs (lift, gate, green light) are a function of the phase: they are written when they
differ from what was last written or from what the PLC reports, so a PLC that rebooted with its
coils off gets them back, and a restart begins with every output off. Writes go through the
actuators (judged by the safety supervisor) and are read back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.errors import DriverError, SafetyRefusedError
from controller.safety.actuators import Actuators
from controller.store.events import JournalBatch
from controller.swap import interlocks
from controller.swap.current import CurrentSwap
from controller.swap.phase import Phase
from controller.swap.senses import Facts, Senses
from controller.swap.step import Step, Stop
from drivers import clock

_log = logging.getLogger(__name__)

OUTPUTS = ("lift_raise", "lift_lower", "gate_open", "signal_go")
OUTPUT_RETRY_S = 0.25  # a failed or not yet effective output write is retried this often
OUTPUT_TIMEOUT_S = 1.0  # longest an output write may take (it is read back)
WAITING_FOR = (
    interlocks.PRESENT, interlocks.IN_POSITION, interlocks.HV_OFF, interlocks.DOORS,
    interlocks.BRAKE,
)  # fmt: skip


@dataclass
class _Outputs:
    """The outputs as last written, and when."""

    written: dict[str, bool] = field(default_factory=dict)
    at: float = 0.0
    error: str | None = None


class Bay:
    """Drives the bay's phases and owns the outputs and whether the lift is being driven."""

    def __init__(self, swap: CurrentSwap, senses: Senses, actuators: Actuators) -> None:
        self.swap = swap
        self.senses = senses
        self.actuators = actuators
        self.lift_moving = False  # the lift is being driven (only ever in lifting, lowering)
        self._outputs = _Outputs()
        swap.on_phase.append(self._entered)

    def _entered(self, _before: Phase, _after: Phase) -> None:
        self.lift_moving = False  # a new phase drives the lift anew, if it does

    # --- the phases ------------------------------------------------------------------------

    async def await_vehicle(self, facts: Facts, _now: float) -> Step:
        """waiting_for_vehicle: the right vehicle in position, powered down."""
        missing = [c for c in WAITING_FOR if facts.get(c.name) is not True]
        if missing:
            whys = ", ".join(self.senses.why(c, facts) for c in missing)
            return [f"waiting for the vehicle: {whys}"]
        reading, _ = self.senses.io_reading(clock.monotonic())
        seen = reading.vehicle_id if reading is not None else None
        if seen is None:
            return ["cannot read the vehicle's id"]
        if seen != self.swap.ctx.vehicle_id:
            return [f"wrong vehicle in the bay: {seen}, the swap is for {self.swap.ctx.vehicle_id}"]
        await self.swap.go("vehicle_ready")
        return []

    async def lift(self, facts: Facts, _now: float) -> Step:
        """lifting, lowering: drive the lift to its end, its interlocks checked throughout."""
        phase = self.swap.phase
        up = phase is Phase.LIFTING
        end = "lift_up" if up else "lift_down"
        if facts.get(end) is True:
            # Only a reading sent after this phase began tells where the lift is now: one
            # from before may show the lift down from before it moved (a fault a moment
            # after the raise, then lowering on the abort path). Until then it goes on as if
            # not there yet: interlocks checked, the lift driven toward its end.
            reading, _ = self.senses.io_reading(clock.monotonic())
            if reading is not None and reading.at >= self.swap.entered_at:
                await self.swap.go("lifted" if up else "lowered")
                return []
        failing = self.senses.failing(phase, facts)
        if failing:
            if self.lift_moving:
                return Stop.fault(f"{failing[0]} while {'raising' if up else 'lowering'} the lift")
            return failing
        if not self.lift_moving:
            self.lift_moving = True
            self.swap.sent("lift", "raise" if up else "lower")
        return []

    async def releasing(self, facts: Facts, _now: float) -> Step:
        """releasing: the vehicle leaves (or another one is seen: this one has left)."""
        ctx = self.swap.ctx
        reading, _ = self.senses.io_reading(clock.monotonic())
        other = reading is not None and reading.vehicle_id not in {None, ctx.vehicle_id}
        if facts.get("vehicle_present") is False or other:
            batch = JournalBatch()
            if ctx.vehicle_pack != "none":
                serial = ctx.installed_serial or ctx.old_serial
                if serial is not None:
                    self.swap.inventory.forget(
                        serial, batch, why=f"left in vehicle {ctx.vehicle_id}"
                    )
            await self.swap.go("released", batch)
            return []
        failing = self.senses.failing(Phase.RELEASING, facts)
        if failing:
            return failing
        return ["waiting for the vehicle to leave"]

    # --- the outputs -----------------------------------------------------------------------

    def desired(self) -> dict[str, bool]:
        """The outputs the current phase wants (everything else off)."""
        phase = self.swap.phase
        out = dict.fromkeys(OUTPUTS, False)
        if phase is Phase.WAITING_FOR_VEHICLE:
            out["gate_open"] = True  # drive in (the green light means: drive out)
        elif phase is Phase.RELEASING:
            if self.senses.failing(Phase.RELEASING, self.senses.facts()) == []:
                out["gate_open"] = out["signal_go"] = True
        elif phase is Phase.LIFTING and self.lift_moving:
            out["lift_raise"] = True
        elif phase is Phase.LOWERING and self.lift_moving:
            out["lift_lower"] = True
        return out

    async def apply(
        self, now: float, desired: Mapping[str, bool], *, stopping: bool = False
    ) -> None:
        """Write the outputs that differ from the wanted ones (from what we wrote or the PLC).

        Not while the station I/O is unreachable (a write would only wait out its timeout),
        except to stop: that is always tried.
        """
        want = {name: desired.get(name, False) for name in OUTPUTS}
        reading, _ = self.senses.io_reading(now)
        out = self._outputs
        changed = {k: v for k, v in want.items() if out.written.get(k) != v}
        if not changed:
            # Written already: check that the PLC holds them (it may have rebooted).
            if reading is None or reading.at <= out.at or now - out.at < OUTPUT_RETRY_S:
                return
            changed = {k: v for k, v in want.items() if reading.coils.get(k) != v}
            if not changed:
                return
        elif not stopping and (
            reading is None or (out.error is not None and now - out.at < OUTPUT_RETRY_S)
        ):
            return
        try:
            # Judged just before it goes out; its motion-log entry is committed with the next
            # journal write (the outputs follow the phase, which is journalled write-ahead).
            async with asyncio.timeout(OUTPUT_TIMEOUT_S):
                await self.actuators.outputs(changed)
        except SafetyRefusedError as exc:
            self._failed(changed, str(exc))
            _log.error("station I/O: %s", exc)
            return
        except (DriverError, TimeoutError) as exc:
            self._failed(changed, str(exc) or "no answer")
            _log.warning("station I/O: cannot set %s: %s", _coils_text(changed), out.error)
            return
        out.written, out.at, out.error = {**out.written, **changed}, clock.monotonic(), None

    def _failed(self, changed: Mapping[str, bool], error: str) -> None:
        out = self._outputs
        out.at, out.error = clock.monotonic(), error
        out.written = {**out.written, **{k: not v for k, v in changed.items()}}


def _coils_text(values: Mapping[str, bool]) -> str:
    return ", ".join(f"{k}={'on' if v else 'off'}" for k, v in values.items())
