"""Inclusion and consistency proofs (RFC 9162 §2.1.3, §2.1.4) from the stored tree.

Every hash a proof needs is the root of a range of leaves that splits into complete subtrees
(:func:`app.audit.merkle.subtrees`). Those of ``STORED_LEVEL`` and more are read from ``audit_tree_nodes``;
the smaller ones lie in at most a few blocks of 64 leaves and are hashed from the events' leaf hashes. A
proof is thus one statement of two indexed reads, whatever the size of the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import merkle
from app.audit.merkle import STORED_LEVEL, Subtree

_NODES = text(
    "SELECT n.level, n.idx, n.hash FROM audit_tree_nodes AS n"
    " JOIN unnest(CAST(:levels AS smallint[]), CAST(:idxs AS bigint[])) AS k(level, idx)"
    " ON n.level = k.level AND n.idx = k.idx"
)
# Both reads of a proof in one round trip: the stored subtrees it needs, and the leaves of the small ones
# (as level -1, idx = leaf index, so they cannot be taken for a stored node).
_NODES_AND_LEAVES = text(
    "SELECT n.level, n.idx, n.hash FROM audit_tree_nodes AS n"
    " JOIN unnest(CAST(:levels AS smallint[]), CAST(:idxs AS bigint[])) AS k(level, idx)"
    " ON n.level = k.level AND n.idx = k.idx"
    " UNION ALL SELECT -1, seq - 1, leaf_hash FROM audit_events WHERE seq = ANY(CAST(:seqs AS bigint[]))"
)


class TreeInconsistent(Exception):
    """A stored node or leaf hash a proof needs is missing: the stored tree was tampered with."""


@dataclasses.dataclass(frozen=True, slots=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    audit_path: list[bytes]


@dataclasses.dataclass(frozen=True, slots=True)
class ConsistencyProof:
    first: int
    second: int
    proof: list[bytes]


async def stored_nodes(session: AsyncSession, keys: Sequence[Subtree]) -> dict[Subtree, bytes]:
    """The stored hashes of the given subtrees (``level >= STORED_LEVEL``) that exist."""
    if not keys:
        return {}
    rows = await session.execute(_NODES, {"levels": [k[0] for k in keys], "idxs": [k[1] for k in keys]})
    return {(level, idx): digest for level, idx, digest in rows}


async def subtree_hashes(session: AsyncSession, pieces: Iterable[Subtree]) -> dict[Subtree, bytes]:
    """The hashes of complete subtrees: stored ones read, small ones hashed from their leaves."""
    wanted = set(pieces)
    large = [piece for piece in wanted if piece[0] >= STORED_LEVEL]
    small = [piece for piece in wanted if piece[0] < STORED_LEVEL]
    indices = {i for level, idx in small for i in range(idx << level, (idx + 1) << level)}
    rows = await session.execute(
        _NODES_AND_LEAVES,
        {"levels": [k[0] for k in large], "idxs": [k[1] for k in large], "seqs": sorted(i + 1 for i in indices)},
    )
    known: dict[Subtree, bytes] = {}
    leaves: dict[int, bytes] = {}
    for level, idx, digest in rows:
        if level < 0:
            leaves[idx] = digest
        else:
            known[(level, idx)] = digest
    try:
        for level, idx in small:
            known[(level, idx)] = merkle.perfect_root([leaves[i] for i in range(idx << level, (idx + 1) << level)])
    except KeyError as exc:
        raise TreeInconsistent(f"leaf {exc.args[0]} is missing") from None
    if missing := wanted.difference(known):
        raise TreeInconsistent(f"stored subtree(s) {sorted(missing)[:3]} missing")
    return known


async def inclusion_proof(session: AsyncSession, seq: int, tree_size: int) -> InclusionProof:
    """The audit path of event ``seq`` in the tree of the first ``tree_size`` events (``seq <= tree_size``,
    ``tree_size`` at most the log's size)."""
    index = seq - 1
    ranges = merkle.inclusion_ranges(index, tree_size)
    known = await subtree_hashes(session, [(0, index), *(p for lo, hi in ranges for p in merkle.subtrees(lo, hi))])
    return InclusionProof(
        leaf_index=index,
        tree_size=tree_size,
        leaf_hash=known[(0, index)],
        audit_path=[merkle.range_root(lo, hi, known) for lo, hi in ranges],
    )


async def consistency_proof(session: AsyncSession, first: int, second: int) -> ConsistencyProof:
    """The proof that the tree of ``first`` events is a prefix of the tree of ``second`` (``0 < first <=
    second``, ``second`` at most the log's size)."""
    ranges = merkle.consistency_ranges(first, second)
    known = await subtree_hashes(session, [p for lo, hi in ranges for p in merkle.subtrees(lo, hi)])
    return ConsistencyProof(first=first, second=second, proof=[merkle.range_root(lo, hi, known) for lo, hi in ranges])


async def inclusion_proofs(session: AsyncSession, seqs: Sequence[int], tree_size: int) -> list[list[bytes]]:
    """The audit paths of many events in one tree, reading each needed subtree once."""
    ranges = [merkle.inclusion_ranges(seq - 1, tree_size) for seq in seqs]
    known = await subtree_hashes(session, {p for path in ranges for lo, hi in path for p in merkle.subtrees(lo, hi)})
    roots: dict[tuple[int, int], bytes] = {}
    paths: list[list[bytes]] = []
    for path in ranges:
        hashes = []
        for span in path:
            digest = roots.get(span)
            if digest is None:
                digest = roots[span] = merkle.range_root(span[0], span[1], known)
            hashes.append(digest)
        paths.append(hashes)
    return paths
