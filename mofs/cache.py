"""The memory budget shared by every memory object, and the choice of what to evict.

Pure bookkeeping: resident pages in least-recently-used order and their byte count.
When the count exceeds the budget, :meth:`Cache.reclaim` asks the owning objects to evict
their oldest pages; the objects decide whether that costs a ``data_return`` (dirty or
precious) or nothing (clean).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class Evictable(Protocol):
    def evict(self, index: int) -> None: ...


class Cache:
    """Least-recently-used order of resident pages, across objects."""

    def __init__(self, budget: int) -> None:
        if budget <= 0:
            raise ValueError("the cache budget must be positive")
        self.budget = budget
        self.resident_bytes = 0
        self.churn = 0  # bytes of pages ever removed: memory the allocator got back
        self._lru: OrderedDict[tuple[int, int], tuple[Evictable, int]] = OrderedDict()

    def insert(self, owner: Evictable, key: int, index: int, nbytes: int) -> None:
        """A page of ``nbytes`` became resident; ``key`` identifies its owner."""
        self._lru[(key, index)] = (owner, nbytes)
        self.resident_bytes += nbytes

    def touch(self, key: int, index: int) -> None:
        """The page was used: it becomes the last to be evicted."""
        self._lru.move_to_end((key, index))

    def remove(self, key: int, index: int) -> None:
        """The page is no longer resident (evicted, flushed, truncated)."""
        entry = self._lru.pop((key, index), None)
        if entry is not None:
            self.resident_bytes -= entry[1]
            self.churn += entry[1]

    def reclaim(self, in_flight: int = 0) -> int:
        """Evict least recently used pages until the budget holds; return how many.

        ``in_flight`` is page data that has left the cache but not yet reached its pager
        (queued returns): it is memory all the same, so it counts against the budget.
        Evicting a dirty page only turns resident bytes into queued ones, so the target
        is fixed before evicting; the next reclaim sees the new queue."""
        count = 0
        target = max(self.budget - in_flight, 0)
        while self.resident_bytes > target and self._lru:
            (_, index), (owner, _) = next(iter(self._lru.items()))
            owner.evict(index)  # calls remove()
            count += 1
        return count

    def __len__(self) -> int:
        return len(self._lru)
