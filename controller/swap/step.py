"""What one evaluation of a phase comes to: blocking causes, or a stop.

A collaborator of the sequencer (the bay, the robot steps) returns either the causes that keep
its phase from going on (published; empty when it went on), or a `Stop`: the motion must stop
and the swap wait for a person, because of `reason`. The sequencer carries the stop out, so a
collaborator never needs the others to stop them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controller.store.events import JournalBatch


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop all motion: `fail` (a fault: reset_fault) or `hold` (recovery_required)."""

    event: Literal["fail", "hold"]
    reason: str
    batch: JournalBatch | None = None

    @classmethod
    def fault(cls, reason: str) -> Stop:
        """A fault: motion stops; an operator's reset_fault makes the vehicle safe."""
        return cls("fail", reason)

    @classmethod
    def hold(cls, reason: str, batch: JournalBatch | None = None) -> Stop:
        """Nothing can be proved: motion stops; an operator decides (recover)."""
        return cls("hold", reason, batch)


Step = list[str] | Stop
