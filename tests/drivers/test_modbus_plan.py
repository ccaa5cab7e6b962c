"""Read planning: fewest reads, never more than 125 registers, never a split value; per group."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.plan import (
    Item,
    Read,
    bridge_limit_rtu,
    mapped_addresses,
    min_reads,
    plan_reads,
)
from drivers.modbus.profile import (
    IDENTITY_REGISTERS,
    READ_SLOT_REGISTERS,
    STATIC_SLOT_REGISTERS,
    WORDS,
    RackProfile,
    RegisterSpec,
    load_profile,
)
from drivers.rackplan import RackPlan
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


@st.composite
def bridged_sets(draw: st.DrawFn) -> tuple[list[Item], frozenset[tuple[int, str, int]]]:
    """Wanted items, and the addresses of unwanted registers of the same map among them."""
    everything = draw(item_sets())
    wanted = [i for i in everything if draw(st.booleans())] or everything[:1]
    return wanted, mapped_addresses(everything)


@settings(max_examples=300, deadline=None)
@given(
    bridged_sets(),
    st.integers(10, 125),
    st.booleans(),
    st.sampled_from([125, bridge_limit_rtu(9600), bridge_limit_rtu(115200), 0, 3]),
)
def test_greedy_is_minimal_with_bridge_limits_and_mapped_registers(
    sets: tuple[list[Item], frozenset[tuple[int, str, int]]],
    max_read: int,
    readable_gaps: bool,
    limit: int,
) -> None:
    items, mapped = sets
    rules = {"max_read": max_read, "readable_gaps": readable_gaps, "mapped": mapped}
    reads = plan_reads(items, bridge_limit=limit, **rules)  # type: ignore[arg-type]
    _check(items, reads, max_read)
    for r in reads:  # what a read spans beyond its values is allowed and cheap enough
        ordered = sorted(r.items, key=lambda i: i.address)
        end = ordered[0].end
        for b in ordered[1:]:
            gap = range(end, b.address)
            assert len(gap) <= limit or not gap
            assert readable_gaps or all((r.unit, r.table, a) in mapped for a in gap)
            end = max(end, b.end)
    assert len(reads) == min_reads(items, bridge_limit=limit, **rules)  # type: ignore[arg-type]


# --- a rack's groups --------------------------------------------------------------------------

SIMRACK = load_profile(REPO / "config" / "profiles" / "simrack.toml")


@st.composite
def profiles(draw: st.DrawFn) -> RackProfile:
    """The simrack registers (and some nobody reads) laid out anew: order, gaps, layout."""
    extra = [
        {"name": f"extra_{n}", "table": draw(st.sampled_from(["input", "holding"])),
         "type": draw(st.sampled_from(["u16", "u32", "string"]))}
        for n in range(draw(st.integers(0, 3)))
    ]  # fmt: skip
    regs = [r.model_dump(exclude={"offset"}) for r in SIMRACK.slot] + [
        {**e, "length": 3} if e["type"] == "string" else e for e in extra
    ]
    slot = []
    for table in ("input", "holding"):
        mine = draw(st.permutations([r for r in regs if r["table"] == table]))
        offset = draw(st.integers(0, 5))
        for reg in mine:
            slot.append({**reg, "offset": offset})
            words = reg.get("length") or WORDS[reg["type"]]
            offset += words + draw(st.sampled_from([0, 0, 0, 1, 2, 9, 20]))
    layout = draw(st.sampled_from(["block", "unit"]))
    span = max(r["offset"] + (r.get("length") or WORDS[r["type"]]) for r in slot)
    widest = max(r.get("length") or WORDS[r["type"]] for r in slot)
    return RackProfile.model_validate(
        {
            "name": "random",
            "layout": layout,
            "base": 1000,
            "stride": span + draw(st.integers(0, 40)) if layout == "block" else 0,
            "max_read": draw(st.integers(widest, 125)),
            "readable_gaps": draw(st.booleans()),
            "status_codes": SIMRACK.status_codes,
            "rack": [r.model_dump() for r in SIMRACK.rack],
            "slot": slot,
        }
    )


@settings(max_examples=200, deadline=None)
@given(
    profiles(),
    st.integers(1, 12),
    st.sampled_from([125, bridge_limit_rtu(9600), bridge_limit_rtu(19200), 5]),
    st.data(),
)
def test_every_group_is_minimal_and_reads_only_what_is_used(
    profile: RackProfile, n: int, limit: int, data: st.DataObject
) -> None:
    slots = list(range(1, n + 1))
    units = [1] * n if profile.layout == "block" else [10 + i for i in range(n)]
    plan = RackPlan.build(profile, slots, units, min(limit, profile.max_read))
    for group in (plan.fast, plan.static, plan.identity):
        _check(list(group.items), list(group.reads), profile.max_read)
        assert group.planned == group.minimum(), group.name
    fast = {i.key for i in plan.fast.items}
    static = {i.key for i in plan.static.items}
    # Every value a reading needs, once, in one group; nothing else of a slot.
    assert not fast & static
    assert fast | static == {(s, name) for s in slots for name in READ_SLOT_REGISTERS}
    assert {name for _, name in static} <= STATIC_SLOT_REGISTERS
    assert {i.key[1] for i in plan.identity.items} == IDENTITY_REGISTERS
    # The static values of any set of slots alone: minimal too.
    some = frozenset(data.draw(st.sets(st.sampled_from(slots))))
    reads = plan.static_reads(some)
    items = [i for s in some for i in plan.slow[s]]
    _check(items, reads, profile.max_read)
    b = plan.static.bridging
    assert len(reads) == min_reads(
        items,
        max_read=b.max_read,
        readable_gaps=b.readable_gaps,
        bridge_limit=b.limit,
        mapped=b.mapped,
    )
    assert len(reads) <= plan.static.planned
