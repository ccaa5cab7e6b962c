"""Read planning: every wanted register of a rack into the fewest Modbus reads.

Reads are per (unit, table). A read holds at most `max_read` registers, never splits a value,
and bridges a gap between two wanted values only when the device allows reading it and the
gap costs less than another request would. Greedy left-to-right packing is optimal for the
number of reads under these constraints (an exchange argument: closing a read later never
forces more reads after it); `min_reads` checks that by dynamic programming.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

from drivers.modbus.profile import MAX_READ, RegisterSpec, Table

# Serial character: start + 8 data + parity + stop (8E1 / 8O1); 8N2 is the same length.
BITS_PER_CHAR = 11
REQUEST_CHARS = 8  # unit, function, address, count, CRC
REPLY_OVERHEAD_CHARS = 5  # unit, function, byte count, CRC
DEVICE_TURNAROUND_S = 0.005


@dataclass(frozen=True, slots=True)
class Item:
    """One value to read: where it is and what it is."""

    unit: int
    table: Table
    address: int
    spec: RegisterSpec
    key: tuple[int, str]  # (owner, name): the slot, or 0 for rack-level values

    @property
    def end(self) -> int:
        """First address after this value."""
        return self.address + self.spec.words


@dataclass(frozen=True, slots=True)
class Read:
    """One Modbus read request and the values it carries."""

    unit: int
    table: Table
    address: int
    count: int
    items: tuple[Item, ...]


def bridge_limit_tcp(max_read: int = MAX_READ) -> int:
    """On TCP a round trip costs more than any gap that fits in one read."""
    return max_read


def bridge_limit_rtu(baudrate: int, turnaround_s: float = DEVICE_TURNAROUND_S) -> int:
    """Registers whose transfer time equals one request's overhead at this baud rate."""
    char_s = BITS_PER_CHAR / baudrate
    overhead_s = (REQUEST_CHARS + REPLY_OVERHEAD_CHARS + 7) * char_s + turnaround_s  # 2 x 3.5 gaps
    return int(overhead_s / (2 * char_s))


def plan_reads(
    items: Iterable[Item],
    *,
    max_read: int = MAX_READ,
    readable_gaps: bool = False,
    bridge_limit: int = MAX_READ,
) -> list[Read]:
    """Pack `items` into reads, per unit and table, in address order."""
    reads: list[Read] = []
    ordered = sorted(items, key=lambda i: (i.unit, i.table, i.address))
    for (unit, table), group in groupby(ordered, key=lambda i: (i.unit, i.table)):
        current: list[Item] = []
        for item in group:
            if current and _fits(current, item, max_read, gaps=readable_gaps, limit=bridge_limit):
                current.append(item)
                continue
            if current:
                reads.append(_read(unit, table, current))
            current = [item]
        if current:
            reads.append(_read(unit, table, current))
    return reads


def _fits(current: list[Item], item: Item, max_read: int, *, gaps: bool, limit: int) -> bool:
    last_end = max(i.end for i in current)
    if item.address < last_end:  # overlapping or repeated: always share the read
        return max(last_end, item.end) - current[0].address <= max_read
    gap = item.address - last_end
    if gap and (not gaps or gap > limit):
        return False
    return item.end - current[0].address <= max_read


def _read(unit: int, table: Table, items: list[Item]) -> Read:
    start = items[0].address
    end = max(i.end for i in items)
    return Read(unit, table, start, end - start, tuple(items))


def min_reads(
    items: Sequence[Item], *, max_read: int = MAX_READ, readable_gaps: bool = False
) -> int:
    """The fewest reads that cover `items` (dynamic programming; for checks and benchmarks)."""
    total = 0
    ordered = sorted(items, key=lambda i: (i.unit, i.table, i.address))
    for _, grp in groupby(ordered, key=lambda i: (i.unit, i.table)):
        group = list(grp)
        n = len(group)
        best = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            best[i] = n + 1
            end = group[i].end
            for j in range(i, n):
                if j > i and group[j].address > end and not readable_gaps:
                    break
                end = max(end, group[j].end)
                if end - group[i].address > max_read:
                    break
                best[i] = min(best[i], 1 + best[j + 1])
        total += best[0]
    return total
