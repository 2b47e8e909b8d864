"""Near-duplicate groups from similar pairs: union-find, groups largest first (pure, no Milvus)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Group:
    """Connected near-duplicates; ids[0] is the representative."""

    ids: list[int]
    min_similarity: float
    max_similarity: float
    uris: list[str] = field(default_factory=list)


class UnionFind:
    """Disjoint sets over int ids, path halving and union by size."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            parent[x] = x
            self.size[x] = 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra


def group_pairs(
    pairs: Iterable[tuple[int, int, float]], order_key: dict[int, tuple[int, int]] | None = None
) -> list[Group]:
    """Groups of ids linked by (a, b, similarity) pairs; largest first, then by representative.

    The representative is the member with the smallest order_key (e.g. (created_at_ms, id): the first
    stored), or the smallest id without one.
    """
    uf = UnionFind()
    edges: list[tuple[int, int, float]] = []
    for a, b, sim in pairs:
        if a == b:
            continue
        uf.union(a, b)
        edges.append((a, b, float(sim)))
    members: dict[int, list[int]] = {}
    for x in list(uf.parent):
        members.setdefault(uf.find(x), []).append(x)
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    for a, _b, sim in edges:
        root = uf.find(a)
        lo[root] = min(lo.get(root, sim), sim)
        hi[root] = max(hi.get(root, sim), sim)

    def key(x: int) -> tuple[int, int]:
        return order_key.get(x, (0, x)) if order_key else (0, x)

    groups = [
        Group(ids=sorted(ids, key=key), min_similarity=lo[root], max_similarity=hi[root])
        for root, ids in members.items()
    ]
    groups.sort(key=lambda g: (-len(g.ids), key(g.ids[0])))
    return groups
