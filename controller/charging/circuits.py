"""The circuit tree: which feeders and transformers each slot's power passes through.

The grid connection is the root (the station's budget); below it `power.circuits` form a tree
whose leaves are the racks (`racks[].circuit`). The allocator keeps the total under every node
within that node's limit, counting what it does not control (a stale slot at its worst case)
against every node above that slot too. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controller.config.model import StationConfig


@dataclass(frozen=True, slots=True)
class Tree:
    """Node limits (W) and, per slot, the nodes above it (its own circuit first)."""

    limits_w: Mapping[str, float] = field(default_factory=dict)
    paths: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    # Derived once: each node's slots, and the nodes deepest first (a node with no slot too).
    under: Mapping[str, tuple[int, ...]] = field(init=False, default_factory=dict)
    deepest_first: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        under: dict[str, list[int]] = {n: [] for n in self.limits_w}
        depth: dict[str, int] = dict.fromkeys(self.limits_w, 0)
        for slot, path in self.paths.items():
            for level, node in enumerate(path):
                under.setdefault(node, []).append(slot)
                depth[node] = max(depth.get(node, 0), len(path) - level)
        object.__setattr__(self, "under", {n: tuple(s) for n, s in under.items()})
        object.__setattr__(self, "deepest_first", tuple(sorted(depth, key=lambda n: -depth[n])))

    def __bool__(self) -> bool:
        return bool(self.limits_w)

    def room(self, left: Mapping[str, float], slot: int) -> float:
        """What is left (W) at the tightest node above `slot` (inf: no node)."""
        return min((left[n] for n in self.paths.get(slot, ())), default=float("inf"))

    def take(self, left: dict[str, float], slot: int, watts: float) -> None:
        """Count `watts` drawn by `slot` against every node above it."""
        for n in self.paths.get(slot, ()):
            left[n] -= watts

    def left_after(self, committed: Iterable[tuple[int, float]]) -> dict[str, float]:
        """Each node's limit less what `committed` (slot, W) already draws under it."""
        left = dict(self.limits_w)
        for slot, watts in committed:
            self.take(left, slot, watts)
        return left


NO_TREE = Tree()


def tree_of(config: StationConfig) -> Tree:
    """The tree of a (checked) config; empty without `power.circuits`."""
    circuits = {c.name: c for c in config.power.circuits}
    if not circuits:
        return NO_TREE
    paths: dict[int, tuple[str, ...]] = {}
    for rack in config.racks:
        chain: list[str] = []
        node = rack.circuit
        while node is not None and node in circuits and node not in chain:
            chain.append(node)
            node = circuits[node].parent
        for slot in rack.slots:
            paths[slot] = tuple(chain)
    return Tree({n: c.limit_kw * 1000.0 for n, c in circuits.items()}, paths)
