"""Merkle tree hashing as in RFC 9162 (Certificate Transparency 2.0), section 2.1.

Leaves and nodes are SHA-256 with domain separation: a leaf hash is
``SHA-256(0x00 || entry)``, an interior node ``SHA-256(0x01 || left || right)``; the tree
of ``n`` leaves splits at ``k``, the largest power of two below ``n``. Here:

* :func:`root` — MTH over leaf hashes (§2.1.1);
* :func:`inclusion_proof` / :func:`verify_inclusion` — PATH (§2.1.3);
* :func:`consistency_proof` / :func:`verify_consistency` — PROOF (§2.1.4);
* :class:`Frontier` — the incremental root: the roots of the perfect subtrees of the tree
  so far (O(log n) per append);
* :class:`Tree` — what the appending log keeps: every perfect, aligned subtree's hash, so
  roots of any earlier size and inclusion and consistency proofs cost O(log n) hashes
  (O(log² n) at worst), and a failed append is undone by :meth:`Tree.truncate`.

Functions work on *leaf hashes* (32 bytes each), so callers hash each entry once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the leaf hashes (iterative: a frontier over all of them)."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


def _subtree_root(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    if end - start == 0:
        return EMPTY_ROOT
    if end - start == 1:
        return leaves[start]
    k = _split(end - start)
    return node_hash(_subtree_root(leaves, start, start + k), _subtree_root(leaves, start + k, end))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf ``index`` in the tree of all ``leaves``."""
    return _inclusion_proof(index, len(leaves), lambda start, end: _subtree_root(leaves, start, end))


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]): proves the tree of ``old_size`` leaves is a prefix of this one."""
    return _consistency_proof(old_size, len(leaves), lambda start, end: _subtree_root(leaves, start, end))


SubtreeRoot = Callable[[int, int], bytes]


def _inclusion_proof(index: int, n: int, subtree: SubtreeRoot) -> list[bytes]:
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of {n} leaves")
    path: list[bytes] = []
    start, end, m = 0, n, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start, m = start + k, m - k
    return path[::-1]


def _consistency_proof(old_size: int, n: int, subtree: SubtreeRoot) -> list[bytes]:
    if not 0 <= old_size <= n:
        raise ValueError(f"no consistency proof from size {old_size} to size {n}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    # SUBPROOF(m, D[start:end], complete), RFC 9162 §2.1.4.1, iteratively: the nodes are
    # collected top-down and emitted bottom-up.
    stack: list[bytes] = []
    m, start, end, complete = old_size, 0, n, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            stack.append(subtree(start + k, end))
            end = start + k
        else:
            stack.append(subtree(start, start + k))
            m, start, complete = m - k, start + k, False
    if not complete:
        proof.append(subtree(start, end))
    proof.extend(reversed(stack))
    return proof


def verify_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], expected_root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` prove leaf hash ``leaf`` at ``index`` under ``expected_root``?"""
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the old tree is a prefix of the new one?"""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class Frontier:
    """The roots of the maximal perfect subtrees of the tree so far, left to right."""

    __slots__ = ("_nodes", "size")

    def __init__(self) -> None:
        self._nodes: list[tuple[int, bytes]] = []  # (height, hash)
        self.size = 0

    def append(self, leaf: bytes) -> None:
        height, node = 0, leaf
        while self._nodes and self._nodes[-1][0] == height:
            _, left = self._nodes.pop()
            node = node_hash(left, node)
            height += 1
        self._nodes.append((height, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        node = self._nodes[-1][1]
        for _, left in reversed(self._nodes[:-1]):
            node = node_hash(left, node)
        return node


class Tree:
    """An append-only tree that keeps the hash of every perfect, aligned subtree.

    ``levels[h][j]`` is the root of leaves ``j * 2**h .. (j + 1) * 2**h - 1``; the leaf
    hashes themselves are ``levels[0]``. About 2n hashes in memory for n leaves.
    """

    __slots__ = ("levels",)

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    @property
    def leaves(self) -> list[bytes]:
        return self.levels[0]

    def append(self, leaf: bytes) -> None:
        self.levels[0].append(leaf)
        height = 0
        while len(self.levels[height]) % 2 == 0:
            level = self.levels[height]
            if height + 1 == len(self.levels):
                self.levels.append([])
            self.levels[height + 1].append(node_hash(level[-2], level[-1]))
            height += 1

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on (undoes appends)."""
        if not 0 <= size <= self.size:
            raise ValueError(f"cannot truncate a tree of {self.size} leaves to {size}")
        for height, level in enumerate(self.levels):
            del level[size >> height :]
        while len(self.levels) > 1 and not self.levels[-1]:
            self.levels.pop()

    def subtree_root(self, start: int, end: int) -> bytes:
        """MTH of leaves ``start .. end - 1`` where ``start`` is a multiple of the largest
        power of two below ``end - start`` (every subtree RFC 9162's definitions visit is)."""
        if end - start == 0:
            return EMPTY_ROOT
        width = end - start
        if width & (width - 1) == 0 and start % width == 0:
            return self.levels[width.bit_length() - 1][start // width]
        k = _split(width)
        return node_hash(self.subtree_root(start, start + k), self.subtree_root(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"no root of size {size} in a tree of {self.size} leaves")
        return self.subtree_root(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if size > self.size:
            raise ValueError(f"no tree of size {size}: the tree has {self.size} leaves")
        return _inclusion_proof(index, size, self.subtree_root)

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if size > self.size:
            raise ValueError(f"no tree of size {size}: the tree has {self.size} leaves")
        return _consistency_proof(old_size, size, self.subtree_root)
