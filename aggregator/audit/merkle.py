"""Merkle tree hashing as in RFC 9162 (Certificate Transparency 2.0), section 2.1.

Leaves and nodes are SHA-256 with domain separation: a leaf hash is
``SHA-256(0x00 || entry)``, an interior node ``SHA-256(0x01 || left || right)``; the tree
of ``n`` leaves splits at ``k``, the largest power of two below ``n``. Here:

* :func:`root` — MTH over leaf hashes (§2.1.1);
* :func:`inclusion_proof` / :func:`verify_inclusion` — PATH (§2.1.3);
* :func:`consistency_proof` / :func:`verify_consistency` — PROOF (§2.1.4);
* :class:`Frontier` — the incremental form the appending log keeps: the roots of the
  perfect subtrees of the tree so far (O(log n) per append).

Functions work on *leaf hashes* (32 bytes each), so callers hash each entry once.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

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
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)} leaves")
    path: list[bytes] = []
    start, end, m = 0, len(leaves), index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            path.append(_subtree_root(leaves, start + k, end))
            end = start + k
        else:
            path.append(_subtree_root(leaves, start, start + k))
            start, m = start + k, m - k
    return path[::-1]


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]): proves the tree of ``old_size`` leaves is a prefix of this one."""
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise ValueError(f"no consistency proof from size {old_size} to size {n}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []

    def subproof(m: int, start: int, end: int, complete: bool) -> None:
        if m == end - start:
            if not complete:
                proof.append(_subtree_root(leaves, start, end))
            return
        k = _split(end - start)
        if m <= k:
            subproof(m, start, start + k, complete)
            proof.append(_subtree_root(leaves, start + k, end))
        else:
            subproof(m - k, start + k, end, False)
            proof.append(_subtree_root(leaves, start, start + k))

    subproof(old_size, 0, n, True)
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
