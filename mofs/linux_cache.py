"""Notifications of the Linux page cache above FUSE, run in order in a worker thread.

pyfuse3's ``invalidate_inode`` and ``notify_store`` write to /dev/fuse, and the kernel
may make them wait for a page lock held by a FUSE request that only the trio thread can
answer: so they never run inside a request. A worker thread runs them one at a time, in
the order they were queued, and whatever had to wait for one (a ``lock_completed``) is
done on the trio side once it has run.

Stores are speculative: bytes of pages nobody read yet, copied when they were queued.
A write reaching those pages between the copy and the store would be undone by it (the
Linux page cache is written through: the kernel copies a write into its pages before
we see the request), and so would a page dirtied through a shared mapping. So a file is
stored into only while no handle of it is open for writing (a writable mapping keeps its
handle open until it is unmapped), and opening one for writing, or truncating, first
waits for the file's queued stores to finish (:meth:`LinuxNotices.settle`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import trio

from .messages import ObjectId

log = logging.getLogger(__name__)


class LinuxPageCache(Protocol):
    """The page cache above FUSE, as the kernel reaches it (pyfuse3 notifications)."""

    def invalidate(self, obj_id: ObjectId) -> None: ...

    def store(self, obj_id: ObjectId, offset: int, data: bytes) -> None: ...


_Notice = tuple[Callable[[], None], Callable[[], None] | None, ObjectId | None]


class LinuxNotices:
    """The ordered queue of page-cache notifications of one mount."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[_Notice](math.inf)
        self.pending = 0  # queued and running notifications
        self.stores = 0  # speculative stores queued so far
        self._stores: Counter[ObjectId] = Counter()  # queued and running, per file
        self._writers: Counter[ObjectId] = Counter()  # handles open for writing
        self._settled: dict[ObjectId, trio.Event] = {}

    def queue(self, notify: Callable[[], None], then: Callable[[], None] | None = None) -> None:
        """Run ``notify`` in the worker thread after everything queued before it, then
        ``then`` on the trio side."""
        self.pending += 1
        self._send.send_nowait((notify, then, None))

    def store(self, obj_id: ObjectId, offset: int, data: bytes,
              cache: LinuxPageCache) -> None:
        """Queue a speculative store of ``data`` at ``offset``, unless a handle of the
        file is open for writing."""
        if self._writers[obj_id] or not data:
            return
        self.pending += 1
        self.stores += 1
        self._stores[obj_id] += 1
        self._send.send_nowait((lambda: cache.store(obj_id, offset, data), None, obj_id))

    def writer_opened(self, obj_id: ObjectId) -> None:
        """A handle open for writing: no store is queued for the file until it closes.
        Await :meth:`settle` before the handle is used."""
        self._writers[obj_id] += 1

    def writer_closed(self, obj_id: ObjectId) -> None:
        self._writers[obj_id] -= 1
        if self._writers[obj_id] <= 0:
            del self._writers[obj_id]

    async def settle(self, obj_id: ObjectId) -> None:
        """Return once no store of the file is queued or running."""
        while self._stores[obj_id]:
            event = self._settled.get(obj_id)
            if event is None:
                event = self._settled[obj_id] = trio.Event()
            await event.wait()

    async def run(self) -> None:
        """Run the notifications, in order, in a thread: all those queued by the time
        the thread is free go in one hand-off (a hop to a thread costs more than a
        store)."""
        async for first in self._receive:
            batch = [first]
            while True:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await trio.to_thread.run_sync(_run_all, batch)
            for _, then, stored in batch:
                self.pending -= 1
                if stored is not None:
                    self._stores[stored] -= 1
                    if self._stores[stored] <= 0:
                        del self._stores[stored]
                        event = self._settled.pop(stored, None)
                        if event is not None:
                            event.set()
                if then is not None:
                    then()


def _run_all(batch: list[_Notice]) -> None:
    for notify, _, _ in batch:
        try:
            notify()
        except OSError as exc:  # the kernel may not know the inode (never looked up)
            log.debug("page-cache notification failed: %s", exc)
