"""The smallest useful pager, and the tutorial example: pages in a dict.

Pages the kernel returns are kept in a dict; a page never written reads as "no data",
which the kernel turns into zeros. Nothing survives the process, which makes it the
pager for scratch files and for tests of the kernel.
"""

from __future__ import annotations

from mofs.messages import ObjectId

from .kit import Pager


class DictPager(Pager):
    """Keeps every returned page in memory, keyed by object and offset."""

    def __init__(self) -> None:
        self.pages: dict[ObjectId, dict[int, bytes]] = {}

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        """The page last returned, or ``None`` (zero fill) if there was none."""
        return self.pages.get(obj, {}).get(offset)

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        """Remember the returned page."""
        self.pages.setdefault(obj, {})[offset] = data

    async def set_size(self, obj: ObjectId, size: int) -> None:
        """Drop pages past ``size`` and cut a partial last page (reads pad it with zeros)."""
        pages = self.pages.get(obj, {})
        for offset in [offset for offset in pages if offset + len(pages[offset]) > size]:
            if offset < size:
                pages[offset] = pages[offset][: size - offset]
            else:
                del pages[offset]
