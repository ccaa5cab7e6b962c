"""Read planning: fewest reads, never more than 125 registers, never a split value."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.plan import Item, Read, bridge_limit_rtu, min_reads, plan_reads
from drivers.modbus.profile import RegisterSpec, load_profile
from tests.support import REPO


def _item(address: int, words: int, unit: int = 1, table: str = "input") -> Item:
    kind = {1: "u16", 2: "u32"}.get(words, "string")
    spec = RegisterSpec(
        name=f"r{address}",
        table=table,
        offset=0,
        type=kind,
        length=words if kind == "string" else None,
    )
    return Item(unit, table, address, spec, (0, f"r{address}"))  # type: ignore[arg-type]


@st.composite
def item_sets(draw: st.DrawFn) -> list[Item]:
    n = draw(st.integers(1, 60))
    items: list[Item] = []
    address = draw(st.integers(0, 100))
    for _ in range(n):
        words = draw(st.sampled_from([1, 1, 1, 2, 2, 4, 8]))
        items.append(
            _item(
                address,
                words,
                unit=draw(st.sampled_from([1, 2])),
                table=draw(st.sampled_from(["input", "holding"])),
            )
        )
        address += words + draw(st.integers(0, 40))
    return items


def _check(items: list[Item], reads: list[Read], max_read: int) -> None:
    covered = [i for r in reads for i in r.items]
    assert sorted(map(id, covered)) == sorted(map(id, items))  # every item exactly once
    for r in reads:
        assert 1 <= r.count <= max_read
        for i in r.items:  # inside its read, whole
            assert r.unit == i.unit and r.table == i.table
            assert r.address <= i.address and i.end <= r.address + r.count


@settings(max_examples=300, deadline=None)
@given(item_sets(), st.integers(10, 125))
def test_greedy_is_minimal_when_gaps_are_readable(items: list[Item], max_read: int) -> None:
    reads = plan_reads(items, max_read=max_read, readable_gaps=True, bridge_limit=max_read)
    _check(items, reads, max_read)
    assert len(reads) == min_reads(items, max_read=max_read, readable_gaps=True)


@settings(max_examples=300, deadline=None)
@given(item_sets())
def test_gaps_are_not_bridged_when_not_readable(items: list[Item]) -> None:
    reads = plan_reads(items, readable_gaps=False)
    _check(items, reads, 125)
    for r in reads:  # contiguous
        ordered = sorted(r.items, key=lambda i: i.address)
        for a, b in itertools.pairwise(ordered):
            assert b.address <= a.end
    assert len(reads) == min_reads(items, readable_gaps=False)


def test_rtu_bridges_only_cheap_gaps() -> None:
    limit = bridge_limit_rtu(19200)
    assert 5 < limit < 40
    items = [_item(0, 1), _item(1 + limit, 1), _item(2 + 3 * limit, 1)]
    reads = plan_reads(items, readable_gaps=True, bridge_limit=limit)
    assert [(r.address, r.count) for r in reads] == [(0, limit + 2), (2 + 3 * limit, 1)]


def test_simrack_plan_for_40_slots() -> None:
    profile = load_profile(REPO / "config" / "profiles" / "simrack.toml")
    items = [
        Item(1, reg.table, profile.slot_address(reg, i), reg, (i, reg.name))
        for i in range(40)
        for reg in profile.slot
    ]
    reads = plan_reads(items, readable_gaps=True)
    # 40 slots x 29 input registers at a stride of 32: 4 slots per read; holding: 4 per read.
    assert len(reads) == 20 == min_reads(items, readable_gaps=True)
    assert all(r.count <= 125 for r in reads)
