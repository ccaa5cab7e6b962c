"""What a rack's polls read: the fast group every poll, a pack's static values when needed.

A reading needs the slot registers in `READ_SLOT_REGISTERS` and nothing else of the profile;
the rest (identity, names nothing uses) is never polled. Of what is read:

- the **fast group**, everything that changes while a pack sits in its slot, is read every poll;
- a pack's **static values** (`STATIC_SLOT_REGISTERS`: serial, type, SoH) ride in a fast read
  where their registers lie inside one (they cost nothing there) and are then decoded every
  poll; the others form the **static group**, read for a slot in the same poll whose fast read
  shows a pack that the previous poll did not show with all of them known (a pack came, the
  slot was not read, or a value was unknown), before that poll's reading is built, and for
  every slot with a pack every `static_period_s`. Reading per slot is never more requests than
  reading the whole group: a subset of values needs no more reads.

Each group is planned into the fewest reads on its own (`ReadGroup`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drivers.modbus.codec import Decoder, Value, WordOrder, compile_decoder
from drivers.modbus.plan import Bridging, Item, Read, ReadGroup, mapped_addresses, plan_reads
from drivers.modbus.profile import (
    IDENTITY_REGISTERS,
    READ_SLOT_REGISTERS,
    STATIC_SLOT_REGISTERS,
    RackProfile,
)

# Per read: (slot, name, offset in the read, decoder), compiled once.
Extract = list[tuple[int, str, int, Decoder]]
RACK = 0  # the owner of rack-level values in an item's key


def compile_reads(reads: Sequence[Read], order: WordOrder) -> list[tuple[Read, Extract]]:
    """Each read with what to decode from its reply."""
    return [
        (
            read,
            [
                (i.key[0], i.key[1], i.address - read.address, compile_decoder(i.spec, order))
                for i in read.items
            ],
        )
        for read in reads
    ]


@dataclass(frozen=True, slots=True)
class RackPlan:
    """The reads of one rack, by group; a plan, never a value."""

    fast: ReadGroup  # read every poll (static values that ride in it included)
    static: ReadGroup  # the static values that do not ride: every slot's
    identity: ReadGroup  # the identity registers, read on demand (probe)
    slow: Mapping[int, tuple[Item, ...]]  # per slot: its values in the static group

    @classmethod
    def build(
        cls,
        profile: RackProfile,
        slots: Sequence[int],
        units: Sequence[int],
        bridge_limit: int,
    ) -> RackPlan:
        """Plan every group of a rack whose slot `slots[i]` answers on unit `units[i]`."""
        every = [
            Item(units[i], reg.table, profile.slot_address(reg, i), reg, (slot, reg.name))
            for i, slot in enumerate(slots)
            for reg in profile.slot
        ]
        rack = [
            Item(units[0], reg.table, reg.offset, reg, (RACK, reg.name)) for reg in profile.rack
        ]
        # Registers of the map may be read even when nothing wants them now: a read may bridge
        # over them where that is cheaper than another request.
        bridging = Bridging(
            profile.max_read, profile.readable_gaps, bridge_limit, mapped_addresses(every + rack)
        )
        read = [i for i in every if i.key[1] in READ_SLOT_REGISTERS]
        fast, rest = ReadGroup.plan(
            "fast",
            [i for i in read if i.key[1] not in STATIC_SLOT_REGISTERS],
            bridging,
            riders=[i for i in read if i.key[1] in STATIC_SLOT_REGISTERS],
        )
        static, _ = ReadGroup.plan("static", rest, bridging)
        identity, _ = ReadGroup.plan(
            "identity", [i for i in rack if i.key[1] in IDENTITY_REGISTERS], bridging
        )
        slow = {slot: tuple(i for i in rest if i.key[0] == slot) for slot in slots}
        return cls(fast, static, identity, slow)

    def static_reads(self, slots: frozenset[int]) -> list[Read]:
        """The fewest reads of the static group of `slots` alone."""
        if slots >= self.slow.keys():
            return list(self.static.reads)
        b = self.static.bridging
        return plan_reads(
            [i for slot in sorted(slots) for i in self.slow[slot]],
            max_read=b.max_read,
            readable_gaps=b.readable_gaps,
            bridge_limit=b.limit,
            mapped=b.mapped,
        )


@dataclass(frozen=True, slots=True)
class _Known:
    poll: int  # the poll whose reading carried them
    values: dict[str, Value]  # every static-group value of the slot, all known


class StaticValues:
    """The static-group values of the pack in each slot, where known, and when to read again.

    Values are trusted only across consecutive polls that each saw the slot hold a pack: a
    pack taken out is seen as absent by the poll between (a swap takes longer than a poll
    period), and a poll that did not read the slot breaks the chain.
    """

    def __init__(self, plan: RackPlan, period_s: float) -> None:
        self._slow = {slot: tuple(i.key[1] for i in items) for slot, items in plan.slow.items()}
        self.period_s = period_s
        self._polls = 0
        self._due = -math.inf
        self._known: dict[int, _Known] = {}

    def start_poll(self, now: float) -> bool:
        """Count a poll; True if the periodic read is due in it (the next one is then scheduled)."""
        self._polls += 1
        if now < self._due:
            return False
        self._due = now + self.period_s
        return True

    def to_read(self, slot: int, values: Mapping[str, Value | None], *, due: bool) -> bool:
        """Whether this poll must read `slot`'s static group, given its fast values."""
        if not self._slow.get(slot):
            return False
        present = values.get("pack_present")
        if present is not None and not present:
            return False  # no pack: its values are not readings
        known = self._known.get(slot)
        return due or present is None or known is None or known.poll != self._polls - 1

    def fill(self, slot: int, values: dict[str, Value | None]) -> None:
        """Add the slot's known static values to a poll's values where it did not read them."""
        known = self._known.get(slot)
        if known is not None and known.poll == self._polls - 1:
            for name, value in known.values.items():
                values.setdefault(name, value)

    def remember(
        self, slot: int, values: Mapping[str, Value | None], *, present: bool | None
    ) -> None:
        """Keep what this poll's reading of `slot` carried (only a pack's, and all known)."""
        got = {name: values.get(name) for name in self._slow.get(slot, ())}
        if present and got and all(v is not None and v != "" for v in got.values()):
            self._known[slot] = _Known(self._polls, {k: v for k, v in got.items() if v is not None})
        else:
            self._known.pop(slot, None)
