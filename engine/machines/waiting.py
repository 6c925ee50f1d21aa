"""A throttle scope's queue of waiting slot requests, immutable and cheap to change.

The supervisor's state is a value: each decision returns a new one. A tuple as the queue
made every request and every grant copy the whole queue, so a study of 100,000 steps
spent minutes of the engine's time in those copies. ``Waiting`` is an immutable view
(``start``, ``end``) of a list that is only ever appended to and shared by the states
that follow one another: appending where a view ends and taking its head cost O(1), and
a state made earlier never sees what was appended after it (it reads below its ``end``;
an append to an older state, which does not end where the list does, copies instead).
The list is compacted once most of it has been taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["Entry", "Waiting"]

Entry = tuple[int, str]
"""A waiting request: its arrival number and its step."""

_COMPACT = 1024  # entries taken before the list may be compacted


class Waiting:
    """A FIFO of ``Entry`` values (see the module docstring); never changed in place."""

    __slots__ = ("_end", "_items", "_start")

    def __init__(self, items: Iterable[Entry] = ()) -> None:
        self._items: list[Entry] = list(items)
        self._start, self._end = 0, len(self._items)

    @classmethod
    def _view(cls, items: list[Entry], start: int, end: int) -> Waiting:
        view = cls.__new__(cls)
        view._items, view._start, view._end = items, start, end
        return view

    def __len__(self) -> int:
        return self._end - self._start

    def __bool__(self) -> bool:
        return self._end > self._start

    def __iter__(self) -> Iterator[Entry]:
        items = self._items
        return (items[i] for i in range(self._start, self._end))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Waiting):
            return list(self) == list(other)
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Waiting({list(self)!r})"

    def head(self) -> Entry:
        """The oldest entry (the queue must not be empty)."""
        return self._items[self._start]

    def push(self, entry: Entry) -> Waiting:
        """This queue with ``entry`` at its end."""
        if self._end == len(self._items):
            self._items.append(entry)  # past every older view's end: none sees it
            return Waiting._view(self._items, self._start, self._end + 1)
        return Waiting((*self, entry))

    def pop(self) -> tuple[Entry, Waiting]:
        """The oldest entry, and this queue without it."""
        entry, start = self._items[self._start], self._start + 1
        if start >= _COMPACT and start * 2 >= self._end:
            return entry, Waiting(self._items[i] for i in range(start, self._end))
        return entry, Waiting._view(self._items, start, self._end)

    def insert(self, index: int, entry: Entry) -> Waiting:
        """This queue with ``entry`` at position ``index`` (a copy: rare)."""
        items = list(self)
        items.insert(index, entry)
        return Waiting(items)

    def without(self, step: str) -> Waiting:
        """This queue without ``step``'s entries (a copy)."""
        return Waiting(e for e in self if e[1] != step)
