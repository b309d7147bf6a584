"""The Merkle tree over the audit log, as RFC 9162 §2.1 defines it.

Leaf ``i`` is the event with ``seq`` ``i + 1``; ``leaf_hash = sha256(0x00 || canonical(event))`` and an interior
node is ``sha256(0x01 || left || right)``. A subtree named ``(level, idx)`` is the complete, aligned one of
``2**level`` leaves starting at leaf ``idx * 2**level``; every hash an RFC 9162 proof needs is the root of a
range ``[lo, hi)`` that splits into such subtrees. This module is pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

STORED_LEVEL = 6  # subtrees of 64 leaves and more are stored as they complete; smaller ones are hashed from leaves
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Subtree = tuple[int, int]  # (level, idx)
Range = tuple[int, int]  # [lo, hi) in leaf indices

_sha256 = hashlib.sha256


def leaf_hash(encoded: bytes) -> bytes:
    return _sha256(b"\x00" + encoded).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (``size >= 2``)."""
    return 1 << ((size - 1).bit_length() - 1)


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose roots form the audit path of leaf ``index`` in the tree of ``size`` leaves, leaf first."""
    lo, hi = 0, size
    path: list[Range] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append((lo + k, hi))
            hi = lo + k
        else:
            path.append((lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The ranges whose roots form the consistency proof from ``first`` to ``second`` leaves (``0 < first <=
    second``), in RFC 9162 order."""
    lo, hi, whole = 0, second, True
    proof: list[Range] = []
    while first != hi:
        k = _split(hi - lo)
        if first - lo <= k:
            proof.append((lo + k, hi))
            hi = lo + k
        else:
            proof.append((lo, lo + k))
            lo += k
            whole = False
    if not whole:
        proof.append((lo, hi))
    proof.reverse()
    return proof


def subtrees(lo: int, hi: int) -> list[Subtree]:
    """The complete subtrees ``[lo, hi)`` splits into, left to right (``lo`` aligned as in every RFC range)."""
    pieces: list[Subtree] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        pieces.append((level, lo >> level))
        lo += 1 << level
    return pieces


def range_root(lo: int, hi: int, known: Mapping[Subtree, bytes]) -> bytes:
    """The root of ``[lo, hi)`` from the hashes of its complete subtrees."""
    hashes = [known[piece] for piece in subtrees(lo, hi)]
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


def perfect_root(leaves: Sequence[bytes]) -> bytes:
    """The root of a complete subtree (a power-of-two number of leaf hashes)."""
    level = list(leaves)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def root_from_frontier(frontier: bytes) -> bytes:
    """The tree's root from the roots of its right-edge complete subtrees, largest first."""
    if not frontier:
        return EMPTY_ROOT
    hashes = [frontier[i : i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


class TreeBuilder:
    """The tree grown leaf by leaf, as ``audit_tree_push`` grows it in the database."""

    __slots__ = ("frontier", "size")

    def __init__(self) -> None:
        self.size = 0
        self.frontier: list[bytes] = []

    def push(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf; the stored subtrees it completes, as ``(level, idx, hash)``."""
        index, node, level = self.size, leaf, 0
        completed: list[tuple[int, int, bytes]] = []
        frontier = self.frontier
        while (index >> level) & 1:
            node = _sha256(b"\x01" + frontier.pop() + node).digest()
            level += 1
            if level >= STORED_LEVEL:
                completed.append((level, index >> level, node))
        frontier.append(node)
        self.size = index + 1
        return completed

    def root(self) -> bytes:
        return root_from_frontier(b"".join(self.frontier))


def verify_inclusion(leaf: bytes, index: int, size: int, path: Iterable[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: whether ``path`` proves leaf ``index`` in the tree of ``size`` leaves with ``root``."""
    if index >= size:
        return False
    fn, sn, node = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = _sha256(b"\x01" + sibling + node).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = _sha256(b"\x01" + node + sibling).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root
