"""What may be asked of the swap, typed, and what it answers.

A request is a frozen pydantic model, parsed strictly where it comes in (the MQTT command
server adds its envelope: `id`, `reply_to`, `expires_at`); the sequencer dispatches on its type
and answers with a frozen `Outcome`, built in its own task, or raises `RefusedError` (the
message says why; `BusyError` while a swap is in progress).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["auto", "maintenance", "out_of_service"]
MODES: tuple[Mode, ...] = ("auto", "maintenance", "out_of_service")
Decision = Literal["resume", "abort", "clear"]
_PRINTABLE = r"^[\x20-\x7e]+$"


class SwapRequest(BaseModel):
    """What every request to the swap carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str | None = Field(
        default=None, max_length=64, description="who asks (kept in the swap record)"
    )


class StartSwap(SwapRequest):
    """Authorise a swap: the best charged pack of the type is reserved, and a free slot."""

    vehicle_id: str = Field(min_length=1, max_length=16, pattern=_PRINTABLE)
    pack_type: str = Field(min_length=1, max_length=32, pattern=_PRINTABLE)


class Abort(SwapRequest):
    """Abort the swap: before anything moved it is cancelled; later, made safe first."""

    reason: str | None = Field(default=None, max_length=200)


class ResetFault(SwapRequest):
    """After a fault or a released E-stop: reset the robot, make the vehicle safe."""


class Recover(SwapRequest):
    """After `recovery_required`: the operator's decision."""

    decision: Decision


class SetMode(SwapRequest):
    """`auto` (swaps allowed), `maintenance` or `out_of_service` (new swaps refused)."""

    mode: Mode


class SetSlot(SwapRequest):
    """Take a slot out of service (`enabled: false`) or back; kept across restarts."""

    slot: int = Field(ge=1, le=65535)
    enabled: bool


# The requests by the name they have on every interface (MQTT `cmd/<name>`, swapctl).
REQUESTS: Mapping[str, type[SwapRequest]] = {
    "start_swap": StartSwap,
    "abort": Abort,
    "reset_fault": ResetFault,
    "recover": Recover,
    "set_mode": SetMode,
    "set_slot": SetSlot,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a request did: said for a person, and as data for a program (`result`)."""

    message: str
    result: Mapping[str, Any] | None = field(default=None)
