"""Order statistics for the waiting room (issue #18 §6). PURE, no I/O.

``waitroom.WaitingRoom`` answers "where is this waiter in the dispatch order" in
O(log n) with two structures:

- ``Treap``: a randomised balanced search tree with subtree sizes over keys
  ``(round, owner)`` compared as ``(round, owner.label)`` (``label``: an integer
  the owner keeps, its place among the owners of one round); insert, delete, rank
  and first in O(log n) expected;
- ``Fenwick``: prefix sums over a growing array of 0/1 flags (who is still
  there), so a waiter's rank within its own client's queue is O(log n).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["Fenwick", "Labelled", "Treap"]


class Labelled(Protocol):
    """What a ``Treap`` key's owner has: ``label``, which breaks ties within a round."""

    label: int


class _Node:
    __slots__ = ("left", "owner", "prio", "right", "round", "size")

    def __init__(self, rnd: int, owner: Any, prio: float) -> None:
        self.round = rnd
        self.owner = owner
        self.prio = prio
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.size = 1


def _size(n: _Node | None) -> int:
    return 0 if n is None else n.size


def _before(rnd: int, label: int, n: _Node) -> bool:
    """Whether the key (rnd, label) sorts before node ``n``'s key."""
    return rnd < n.round or (rnd == n.round and label < n.owner.label)


class Treap:
    """Keys ``(round, owner)`` ordered by ``(round, owner.label)``, each at most once."""

    def __init__(self, seed: int = 18) -> None:
        self.root: _Node | None = None
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return _size(self.root)

    def insert(self, rnd: int, owner: Labelled) -> None:
        left, right = self._split(self.root, rnd, owner.label)
        node = _Node(rnd, owner, self._rng.random())
        self.root = self._merge(self._merge(left, node), right)

    def delete(self, rnd: int, owner: Labelled) -> None:
        self.root = self._delete(self.root, rnd, owner.label)

    def rank(self, rnd: int, owner: Labelled) -> int:
        """How many keys sort before ``(rnd, owner)``."""
        label, n, out = owner.label, self.root, 0
        while n is not None:
            if _before(rnd, label, n) or (rnd == n.round and n.owner is owner):
                n = n.left
            else:
                out += _size(n.left) + 1
                n = n.right
        return out

    def first(self) -> tuple[int, Any] | None:
        n = self.root
        if n is None:
            return None
        while n.left is not None:
            n = n.left
        return n.round, n.owner

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        stack: list[_Node] = []
        n = self.root
        while stack or n is not None:
            while n is not None:
                stack.append(n)
                n = n.left
            n = stack.pop()
            yield n.round, n.owner
            n = n.right

    def _split(self, n: _Node | None, rnd: int, label: int) -> tuple[_Node | None, _Node | None]:
        """(keys before (rnd, label), the others)."""
        if n is None:
            return None, None
        if _before(rnd, label, n) or (rnd == n.round and label == n.owner.label):
            left, right = self._split(n.left, rnd, label)
            n.left = right
            n.size = _size(n.left) + _size(n.right) + 1
            return left, n
        left, right = self._split(n.right, rnd, label)
        n.right = left
        n.size = _size(n.left) + _size(n.right) + 1
        return n, right

    def _merge(self, a: _Node | None, b: _Node | None) -> _Node | None:
        if a is None:
            return b
        if b is None:
            return a
        if a.prio > b.prio:
            a.right = self._merge(a.right, b)
            a.size = _size(a.left) + _size(a.right) + 1
            return a
        b.left = self._merge(a, b.left)
        b.size = _size(b.left) + _size(b.right) + 1
        return b

    def _delete(self, n: _Node | None, rnd: int, label: int) -> _Node | None:
        if n is None:
            raise KeyError((rnd, label))
        if rnd == n.round and label == n.owner.label:
            return self._merge(n.left, n.right)
        if _before(rnd, label, n):
            n.left = self._delete(n.left, rnd, label)
        else:
            n.right = self._delete(n.right, rnd, label)
        n.size -= 1
        return n


class Fenwick:
    """Prefix sums over a growing array (1-based positions)."""

    __slots__ = ("tree",)

    def __init__(self, values: list[int] | None = None) -> None:
        tree = [0, *(values or ())]
        n = len(tree) - 1
        for i in range(1, n + 1):  # the linear build
            j = i + (i & -i)
            if j <= n:
                tree[j] += tree[i]
        self.tree = tree

    def __len__(self) -> int:
        return len(self.tree) - 1

    def append(self, value: int) -> int:
        """Add a position holding ``value``; its index."""
        tree = self.tree
        i = len(tree)
        total, j, stop = value, i - 1, i - (i & -i)
        while j > stop:
            total += tree[j]
            j -= j & -j
        tree.append(total)
        return i

    def add(self, i: int, delta: int) -> None:
        tree, n = self.tree, len(self.tree)
        while i < n:
            tree[i] += delta
            i += i & -i

    def prefix(self, i: int) -> int:
        """The sum of positions 1..i."""
        tree, out = self.tree, 0
        while i > 0:
            out += tree[i]
            i -= i & -i
        return out
