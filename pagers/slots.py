"""A file of fixed-size slots that holds the SQLite pager's large pages.

SQLite writes every byte of a blob twice (the WAL, then the checkpoint) and through
page-sized B-tree overflow chains: 64 KiB pages went in at 130-210 MB/s on our test
machine, where a plain file takes them at 700-1,100 MB/s. So a page longer than the
pager's inline limit goes into a slot of this file and its row in ``pages`` names the
slot; the rows stay the one index and the one transaction that says what a file holds.

A page is never overwritten in place: a new version goes into another slot, and the old
slot is released by the transaction that stops naming it. Until that is durable, a crash
could bring the old row back, so a released slot is first *pending*; after the next
durable commit its blocks are punched out (the file stays sparse) and it is *punched*;
after the fsync that makes the punch durable it is *free* to be taken again. Whatever
a crash leaves, a row names either its own bytes or a hole (zeros): never the bytes of
a page that was released.

Writes and reads of slots are plain ``pwrite``/``pread``; a durable commit of the pager
first ``fdatasync``s this file, so the bytes are on disk before the rows naming them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import heapq
import os
import tempfile
from collections.abc import Iterable

SLOT = 64 << 10
"""Bytes per slot: the longest page that goes into the file."""

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range (it reads as zeros); False if the file system cannot."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


class SlotFile:
    """The slots of one store: where each page's bytes go, and which slots are free."""

    def __init__(self, path: str | None) -> None:
        self.path = path or "(temporary)"
        self._temporary = path is None  # deleted when closed
        self._fd: int | None = None
        self._free: list[int] = []  # a heap: the lowest free slot is taken first
        self._next = 0  # every slot from here on has never been used
        self._pending: list[int] = []  # released, waiting for a durable commit
        self._punched: list[int] = []  # punched, waiting for an fsync of the file
        self._taken: list[int] = []  # taken by the open transaction
        self._released: list[int] = []  # released by the open transaction
        self._unsynced = False

    def open(self, used: Iterable[int]) -> None:
        """Open (or create) the file; ``used`` are the slots the rows name. The others
        may hold pages released before a crash by commits that are not durable yet:
        they wait like any released slot (punched after the next durable commit)."""
        if self._temporary:
            fd, name = tempfile.mkstemp(prefix="mofs-slots-")
            os.unlink(name)
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            named = set(used)
            self._next = max(-(-os.fstat(fd).st_size // SLOT), max(named, default=-1) + 1)
        except BaseException:
            os.close(fd)
            raise
        self._free = []
        self._pending = [s for s in range(self._next) if s not in named]
        self._fd = fd

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def exists(self) -> bool:
        """Whether the file is there (a temporary one always is)."""
        return self._temporary or os.path.exists(self.path)

    def write(self, data: bytes) -> int:
        """Put ``data`` (at most ``SLOT`` bytes) into a slot of its own; return the slot."""
        assert self._fd is not None and len(data) <= SLOT
        slot = heapq.heappop(self._free) if self._free else self._next
        if slot == self._next:
            self._next += 1
        try:
            os.pwrite(self._fd, data, slot * SLOT)
        except OSError:
            self._forget(slot)
            raise
        self._taken.append(slot)
        self._unsynced = True
        return slot

    def read(self, slot: int, length: int) -> bytes:
        """The ``length`` bytes of a slot (a hole, or the end of the file, reads as zeros:
        a page whose bytes a power loss took, where its row survived)."""
        assert self._fd is not None
        data = os.pread(self._fd, length, slot * SLOT)
        return data if len(data) == length else data.ljust(length, b"\0")

    def release(self, slots: Iterable[int]) -> None:
        """The open transaction stops naming these slots."""
        self._released.extend(slots)

    def committed(self) -> None:
        """The open transaction committed: what it released waits for a durable commit."""
        self._pending.extend(self._released)
        self._released, self._taken = [], []

    def rolled_back(self) -> None:
        """The open transaction was rolled back: its new slots are unnamed again, and the
        slots it released are named again."""
        for slot in self._taken:
            self._forget(slot)
        self._released, self._taken = [], []

    def _forget(self, slot: int) -> None:
        if slot == self._next - 1:
            self._next -= 1
        else:
            heapq.heappush(self._free, slot)

    @property
    def waiting(self) -> int:
        """Slots released but not yet free again."""
        return len(self._pending) + len(self._punched)

    def sync_data(self) -> None:
        """fsync the slots' bytes (before the rows that name them become durable); the
        punches made durable by it free their slots."""
        if self._fd is None:
            return
        if self._unsynced or self._punched:
            os.fdatasync(self._fd)
            self._unsynced = False
        for slot in self._punched:
            heapq.heappush(self._free, slot)
        self._punched = []

    def durable(self) -> None:
        """Every commit so far is durable: punch out the slots they released (a run of
        neighbouring slots in one call: deleting a big file releases thousands)."""
        if self._fd is None or not self._pending:
            return
        pending, self._pending = sorted(self._pending), []
        start = 0
        for i in range(1, len(pending) + 1):
            if i == len(pending) or pending[i] != pending[i - 1] + 1:
                offset, length = pending[start] * SLOT, (i - start) * SLOT
                if not punch_hole(self._fd, offset, length):
                    os.pwrite(self._fd, bytes(length), offset)
                    self._unsynced = True
                start = i
        self._punched.extend(pending)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
