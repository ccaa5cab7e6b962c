"""Read planning: every wanted register of a rack into the fewest Modbus reads.

Reads are per (unit, table). A read holds at most `max_read` registers, never splits a value,
and bridges a gap between two wanted values only when the device allows reading it (any
address, with `readable_gaps`; or registers of its map that are not wanted now, `mapped`) and
the gap costs less than another request would. Greedy left-to-right packing is optimal for
the number of reads under these constraints (an exchange argument: closing a read later never
forces more reads after it); `min_reads` checks that by dynamic programming.

Values read at different rates are planned as separate `ReadGroup`s, each minimal on its own.
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


Address = tuple[int, Table, int]  # (unit, table, address) of one register


@dataclass(frozen=True, slots=True)
class Bridging:
    """What a read may span besides the values it is for: a device's and a line's limits."""

    max_read: int = MAX_READ
    readable_gaps: bool = False  # any address between two registers answers a read
    limit: int = MAX_READ  # the widest gap worth reading rather than sending another request
    mapped: frozenset[Address] = frozenset()  # registers of the map: readable, wanted or not

    def allows(self, unit: int, table: Table, start: int, end: int) -> bool:
        """A read may take the addresses `start` .. `end - 1` it does not want."""
        gap = end - start
        if gap <= 0:
            return True
        if gap > self.limit:
            return False
        return self.readable_gaps or all((unit, table, a) in self.mapped for a in range(start, end))


def mapped_addresses(items: Iterable[Item]) -> frozenset[Address]:
    """Every register address the items occupy (to let reads bridge over them)."""
    return frozenset((i.unit, i.table, a) for i in items for a in range(i.address, i.end))


def plan_reads(
    items: Iterable[Item],
    *,
    max_read: int = MAX_READ,
    readable_gaps: bool = False,
    bridge_limit: int = MAX_READ,
    mapped: frozenset[Address] = frozenset(),
) -> list[Read]:
    """Pack `items` into reads, per unit and table, in address order."""
    rules = Bridging(max_read, readable_gaps, bridge_limit, mapped)
    reads: list[Read] = []
    ordered = sorted(items, key=lambda i: (i.unit, i.table, i.address))
    for (unit, table), group in groupby(ordered, key=lambda i: (i.unit, i.table)):
        current: list[Item] = []
        for item in group:
            if current and _fits(current, item, rules):
                current.append(item)
                continue
            if current:
                reads.append(_read(unit, table, current))
            current = [item]
        if current:
            reads.append(_read(unit, table, current))
    return reads


def _fits(current: list[Item], item: Item, rules: Bridging) -> bool:
    last_end = max(i.end for i in current)
    if item.address < last_end:  # overlapping or repeated: always share the read
        return max(last_end, item.end) - current[0].address <= rules.max_read
    if not rules.allows(item.unit, item.table, last_end, item.address):
        return False
    return item.end - current[0].address <= rules.max_read


def _read(unit: int, table: Table, items: list[Item]) -> Read:
    start = items[0].address
    end = max(i.end for i in items)
    return Read(unit, table, start, end - start, tuple(items))


def min_reads(
    items: Sequence[Item],
    *,
    max_read: int = MAX_READ,
    readable_gaps: bool = False,
    bridge_limit: int = MAX_READ,
    mapped: frozenset[Address] = frozenset(),
) -> int:
    """The fewest reads that cover `items` (dynamic programming; for checks and benchmarks)."""
    rules = Bridging(max_read, readable_gaps, bridge_limit, mapped)
    total = 0
    ordered = sorted(items, key=lambda i: (i.unit, i.table, i.address))
    for (unit, table), grp in groupby(ordered, key=lambda i: (i.unit, i.table)):
        group = list(grp)
        n = len(group)
        best = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            best[i] = n + 1
            end = group[i].end
            for j in range(i, n):
                if j > i and not rules.allows(unit, table, end, group[j].address):
                    break
                end = max(end, group[j].end)
                if end - group[i].address > max_read:
                    break
                best[i] = min(best[i], 1 + best[j + 1])
        total += best[0]
    return total


def attach(reads: Sequence[Read], riders: Iterable[Item]) -> tuple[list[Read], list[Item]]:
    """Add to `reads` the riders that lie wholly inside one of them; return the rest too.

    A rider costs nothing where it rides: its registers come in a reply that is asked for
    anyway.
    """
    extra: dict[int, list[Item]] = {}
    rest: list[Item] = []
    for item in riders:
        host = next(
            (
                n
                for n, r in enumerate(reads)
                if (r.unit, r.table) == (item.unit, item.table)
                and r.address <= item.address
                and item.end <= r.address + r.count
            ),
            None,
        )
        if host is None:
            rest.append(item)
        else:
            extra.setdefault(host, []).append(item)
    out = [
        Read(r.unit, r.table, r.address, r.count, (*r.items, *extra.get(n, ())))
        for n, r in enumerate(reads)
    ]
    return out, rest


@dataclass(frozen=True, slots=True)
class ReadGroup:
    """Values read together, at one rate, and the reads planned for them."""

    name: str
    items: tuple[Item, ...]  # every value the group's reads bring (riders included)
    reads: tuple[Read, ...]
    bridging: Bridging

    @classmethod
    def plan(
        cls, name: str, items: Iterable[Item], bridging: Bridging, riders: Iterable[Item] = ()
    ) -> tuple[ReadGroup, list[Item]]:
        """The fewest reads for `items`, riders added where they fit; and the riders left."""
        wanted = list(items)
        reads = plan_reads(
            wanted,
            max_read=bridging.max_read,
            readable_gaps=bridging.readable_gaps,
            bridge_limit=bridging.limit,
            mapped=bridging.mapped,
        )
        reads, rest = attach(reads, riders)
        taken = [i for r in reads for i in r.items]
        return cls(name, tuple(taken), tuple(reads), bridging), rest

    @property
    def planned(self) -> int:
        """Requests one read of the group takes."""
        return len(self.reads)

    def minimum(self) -> int:
        """The fewest requests that could read the group (to compare `planned` with)."""
        b = self.bridging
        return min_reads(
            self.items,
            max_read=b.max_read,
            readable_gaps=b.readable_gaps,
            bridge_limit=b.limit,
            mapped=b.mapped,
        )
