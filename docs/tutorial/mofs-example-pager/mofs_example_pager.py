"""The tutorial's pager: every page of every file is one entry of a dbm database.

Mount with ``mofs mount STORE MNT --pager example:/path/to/pages.dbm`` once this package
is installed; the ``mofs.pagers`` entry point in its pyproject.toml names the class.
"""

from __future__ import annotations

import dbm

from pagers import Pager


class DbmPager(Pager):
    """Pages keyed by "object:offset" in a dbm file; absent keys read as zeros."""

    silent_overwrite = True  # a write that covers a whole page need not fetch it first

    def __init__(self, path: str) -> None:
        if not path:
            raise ValueError("example: needs a path, e.g. example:/tmp/pages.dbm")
        self.db = dbm.open(path, "c")

    async def read_page(self, obj, offset, length):
        return self.db.get(f"{obj}:{offset}")  # None: the kernel zero-fills

    async def write_page(self, obj, offset, data):
        self.db[f"{obj}:{offset}"] = data

    async def set_size(self, obj, size):
        for key in [k for k in self.db.keys() if k.startswith(f"{obj}:".encode())]:
            offset = int(key.split(b":")[1])
            if offset >= size:
                del self.db[key]
            elif offset + self.page_size(obj) > size:
                self.db[key] = self.db[key][: size - offset]

    async def sync(self, obj, durable):
        if hasattr(self.db, "sync"):
            self.db.sync()  # on disk before synchronize_completed is sent

    async def close(self):
        self.db.close()
