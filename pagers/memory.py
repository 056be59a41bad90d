"""Anonymous memory: the default pager of Mach, for files that need no backing store.

Pages never written read as zeros. Every page is supplied *precious*: the pager keeps
no copy, so the kernel must hand each page back (``data_return``) before dropping it,
and mofs journals such returns until the pager holds them (decision 6). Returned pages
go to a swap store, an SQLite database: anonymous (a temporary file, removed when the
pager closes) or, named by ``memory:PATH``, persistent across mounts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from mofs.channel import Channel
from mofs.messages import ObjectId

from .sqlite import SQLitePager


class MemoryPager(SQLitePager):
    """Zero-fill precious pages; what the kernel returns is swapped to SQLite."""

    precious = True
    silent_overwrite = False  # every page comes from the pager, so every page is precious

    def __init__(self, swap: str | None = None) -> None:
        self.anonymous = not swap
        super().__init__(swap or "")

    async def serve(self, inbox: Channel, outbox: Channel) -> None:
        if self.anonymous:  # made only now: a pager that never serves leaves nothing behind
            fd, self.path = tempfile.mkstemp(prefix="mofs-swap-", suffix=".sqlite")
            os.close(fd)
        await super().serve(inbox, outbox)

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        """The swapped-out page, or a page of zeros: always data, so always precious."""
        page = await super().read_page(obj, offset, length)
        return bytes(length) if page is None else page

    async def close(self) -> None:
        await super().close()
        if self.anonymous and self.path:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)
