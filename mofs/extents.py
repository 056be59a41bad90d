"""Which pages of a file have been written: what ``st_blocks`` reports for sparse files.

Asking the pager which pages it stores would cost a query per ``getattr`` (and a
protocol message the Mach interface does not have), so mofs counts what passes through
it instead: a page is allocated once a write has touched it, and stops being allocated
when a truncate cuts it off. That is what a local file system without zero detection
does (writing zeros allocates on ext4 too), and it holds for every pager. The ranges of
a file in use live in memory (:class:`Extents`); the store keeps them, with the bytes
they cover, in its ``allocation`` table (``Namespace.set_allocation``).
"""

from __future__ import annotations

import bisect
import struct


class Extents:
    """Sorted, disjoint, non-touching half-open ranges of page indexes."""

    __slots__ = ("starts", "ends", "pages", "changed")

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.pages = 0
        self.changed = False  # since it was loaded or last saved
        for first, end in ranges or ():
            self.add(first, end)
        self.changed = False

    @classmethod
    def decode(cls, blob: bytes) -> Extents:
        """Ranges from :meth:`encode`'s bytes (little-endian pairs of 64-bit integers)."""
        values = struct.unpack(f"<{len(blob) // 8}Q", blob[: len(blob) // 16 * 16])
        return cls(list(zip(values[0::2], values[1::2], strict=True)))

    def encode(self) -> bytes:
        values = [v for pair in zip(self.starts, self.ends, strict=True) for v in pair]
        return struct.pack(f"<{len(values)}Q", *values)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends, strict=True))

    def __contains__(self, index: int) -> bool:
        i = bisect.bisect_right(self.starts, index) - 1
        return i >= 0 and index < self.ends[i]

    def add(self, first: int, end: int) -> None:
        """Mark pages ``[first, end)`` allocated."""
        if end <= first:
            return
        starts, ends = self.starts, self.ends
        i = bisect.bisect_left(ends, first)  # the first range that ends at or after first
        j = bisect.bisect_right(starts, end)  # past the last range that starts by end
        if i < j and starts[i] <= first and end <= ends[i]:
            return  # already allocated: the common case of rewriting a page
        if i < j:
            first, end = min(first, starts[i]), max(end, ends[j - 1])
            self.pages -= sum(ends[k] - starts[k] for k in range(i, j))
        starts[i:j] = [first]
        ends[i:j] = [end]
        self.pages += end - first
        self.changed = True

    def cut(self, end: int) -> None:
        """Forget every page from ``end`` on (a truncate)."""
        i = bisect.bisect_left(self.ends, end + 1)  # the first range reaching past end
        if i == len(self.ends):
            return
        if self.starts[i] < end:
            self.pages -= self.ends[i] - end
            self.ends[i] = end
            i += 1
        self.pages -= sum(e - s for s, e in zip(self.starts[i:], self.ends[i:], strict=True))
        del self.starts[i:], self.ends[i:]
        self.changed = True

    def allocated_bytes(self, size: int, page_size: int) -> int:
        """Bytes of the file's first ``size`` that lie in allocated pages."""
        whole = -(-size // page_size)
        total = self.pages * page_size
        if self.ends and self.ends[-1] > whole:  # never expected: writes extend the size
            total -= sum(max(0, e - max(s, whole)) for s, e in self.ranges()) * page_size
        if size % page_size and whole - 1 in self:
            total -= page_size - size % page_size  # the last page's bytes past the end
        return total
