"""A directory of plain files as backing store, with push invalidation (``dir:PATH``).

Each memory object is one file in the directory, named by the object id in decimal
(``PATH/7``); page ``offset`` is the byte range ``[offset, offset+page)`` of that file.
Other programs may read the files, and may also change them: the pager watches the
directory with inotify and, when a backing file changes behind its back, sends the
kernel ``lock_request(RETURN_NONE, flush)`` over the whole object, so that mofs's cache
and the Linux page cache (mappings included) are emptied and the next access reads the
new bytes (PROTOCOL.md §3.6, decision 7).

Storage:

* A page the kernel returns is ``pwrite``-n in place. Zeros are not written past the end
  of the file (they read back as zeros anyway), so a file extended by a partial last
  page is not padded to a page boundary; a page of zeros inside the file becomes a hole
  (``fallocate(PUNCH_HOLE)``; zeros are written where holes are not supported).
* A page read wholly past the end of the file, or wholly in a hole or of zeros, is
  "no data" (``data_unavailable``); a short read is padded with zeros by the kit.
* ``set_size`` truncates or extends the file to the size; size 0 removes the file (a
  missing file is an empty object), which is how a deleted mofs file leaves no trace.
* ``sync`` with ``durable`` fsyncs the files written since their last sync, and the
  directory after files were created or removed. File descriptors stay open per object
  (at most :attr:`DirectoryPager.max_open`), closed on ``terminate`` and ``close``.

Telling our own writes from other programs' (inotify does not say who wrote): after each
of its own changes the pager stamps the file's mtime with the current time in
nanoseconds and remembers ``(inode, size, mtime)``. An event whose file still matches
that signature was the pager's own; anything else changed the file. The stamp makes the
test independent of coarse kernel timestamps: a write by another program, even within
the same clock tick, sets an mtime that differs from the stamp. Before each
of its own changes the pager also compares the signature, so a change by someone else
that its own write is about to hide from the watcher still flushes the kernel's cache.

Limitations:

* Only page contents are refreshed. The file size lives in mofs's metadata, outside the
  protocol: a backing file that another program lengthens or shortens keeps its mofs
  size (bytes past it are not seen; ``init`` even truncates the backing file to it).
* The flush discards whatever the kernel has cached for the object, dirty pages not yet
  returned included: the other program's change wins over unsynced writes through the
  mount. Concurrent writes to the same bytes through the mount and directly have no
  defined winner.
* Stores through a shared mapping of a backing file produce no inotify event and go
  unnoticed until another event for that file arrives. A change made in the
  microseconds between the pager's own write and its stamp is taken for the pager's;
  on a file system that stores whole seconds only, so is a change that keeps the size
  within the second of the pager's last write.
* A file renamed over a backing file is picked up (the pager reopens it); the
  directory itself must not be renamed or removed while mounted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import time
from typing import NamedTuple

import trio
from inotify_simple import INotify
from inotify_simple import flags as IN

from mofs.channel import Channel
from mofs.messages import (
    MEMORY_OBJECT_RETURN_NONE,
    VM_PROT_NO_CHANGE,
    Init,
    LockRequest,
    Message,
    ObjectId,
)

from .kit import Pager

log = logging.getLogger(__name__)

WATCH_MASK = (IN.MODIFY | IN.CLOSE_WRITE | IN.CREATE | IN.MOVED_TO | IN.MOVED_FROM
              | IN.DELETE)
"""inotify events that may mean a backing file's contents changed."""

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class Signature(NamedTuple):
    """What identifies a backing file's state between two of the pager's own changes."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


_fallocate_fn: object = None


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``[offset, offset+length)`` keeping the size; False if not supported."""
    global _fallocate_fn
    if _fallocate_fn is None:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
        _fallocate_fn = fn or False
    if not _fallocate_fn:
        return False
    if _fallocate_fn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class DirectoryPager(Pager):
    """One plain file per memory object in the directory ``path`` (created if missing)."""

    silent_overwrite = True
    may_cache = True
    max_open = 256
    """File descriptors kept open at most; the least recently used is closed first."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._fds: dict[ObjectId, int] = {}  # in order of use, most recent last
        self._live: dict[ObjectId, int] = {}  # objects between init and terminate: page size
        self._seen: dict[ObjectId, Signature | None] = {}  # after our last own change
        self._unsynced: set[ObjectId] = set()  # written since the last durable sync
        self._dir_unsynced = False  # files created or removed since the last durable sync
        self._outbox: Channel | None = None
        self._zeros: dict[int, bytes] = {}
        self.invalidations = 0
        """Lock requests sent for changes made by other programs."""

    def file(self, obj: ObjectId) -> str:
        """The backing file of ``obj``."""
        return os.path.join(self.path, str(int(obj)))

    # --- serving -----------------------------------------------------------------------

    async def serve(self, inbox: Channel, outbox: Channel) -> None:
        """Watch the directory while the kit serves the kernel's messages."""
        os.makedirs(self.path, exist_ok=True)
        self._outbox = outbox
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch)
            try:
                await super().serve(inbox, outbox)
            finally:
                nursery.cancel_scope.cancel()

    async def handle(self, msg: Message, outbox: Channel) -> None:
        if isinstance(msg, Init):  # from now on the kernel caches it: watch for changes
            self._live[msg.object] = msg.page_size
            self._seen[msg.object] = self._stat(msg.object)
        await super().handle(msg, outbox)

    async def _watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
        """Read inotify events as they come and flush the objects others changed."""
        with INotify(nonblocking=True) as inotify:
            inotify.add_watch(self.path, WATCH_MASK)
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(inotify)
                changed: set[ObjectId] = set()
                for event in inotify.read(timeout=0):
                    if event.mask & IN.Q_OVERFLOW:  # events were lost: look at everything
                        changed.update(self._live)
                    elif event.mask & IN.IGNORED:
                        log.warning("%s: no longer watched (removed or unmounted?); "
                                    "changes by other programs go unnoticed", self.path)
                        return
                    elif event.name.isdigit() and str(int(event.name)) == event.name:
                        changed.add(ObjectId(int(event.name)))
                for obj in sorted(changed):
                    if obj in self._live:
                        self._check(obj)

    def _stat(self, obj: ObjectId) -> Signature | None:
        try:
            return Signature.of(os.stat(self.file(obj)))
        except FileNotFoundError:
            return None

    def _check(self, obj: ObjectId) -> None:
        """Flush ``obj`` from the kernel's cache if someone else changed its file."""
        if obj not in self._live:
            return
        now, before = self._stat(obj), self._seen.get(obj)
        if now == before:
            return
        self._seen[obj] = now
        fd = self._fds.get(obj)
        if fd is not None and (now is None or os.fstat(fd).st_ino != now.ino):
            self._close_fd(obj)  # replaced or removed: reopen the current file on next use
        page = self._live[obj]
        size = max(now.size if now else 0, before.size if before else 0, 1)
        length = -(-size // page) * page
        log.debug("%s changed by another program: flushing object %s [0, %d)",
                  self.file(obj), obj, length)
        if self._outbox is not None and not self._outbox.closed:
            self.invalidations += 1
            self._outbox.send(LockRequest(obj, 0, length, MEMORY_OBJECT_RETURN_NONE,
                                          should_flush=True, lock_value=VM_PROT_NO_CHANGE,
                                          reply=True))

    def _stamp(self, obj: ObjectId, fd: int | None) -> None:
        """Remember the file's state after our own change (see the module docstring)."""
        if fd is None:
            self._seen[obj] = self._stat(obj)
            return
        st = os.fstat(fd)
        with contextlib.suppress(OSError):  # not the owner: the kernel's own mtime must do
            os.utime(fd, ns=(st.st_atime_ns, time.time_ns()))
            st = os.fstat(fd)
        self._seen[obj] = Signature.of(st)

    # --- files -------------------------------------------------------------------------

    def _open(self, obj: ObjectId, create: bool) -> int | None:
        """The object's file descriptor; None if the file is missing and not ``create``."""
        fd = self._fds.pop(obj, None)
        if fd is None:
            path = self.file(obj)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if not create:
                    return None
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                self._dir_unsynced = True
            while len(self._fds) >= self.max_open:
                self._close_fd(next(iter(self._fds)))
        self._fds[obj] = fd  # most recently used last
        return fd

    def _close_fd(self, obj: ObjectId) -> None:
        fd = self._fds.pop(obj, None)
        if fd is not None:
            os.close(fd)

    def _zero(self, length: int) -> bytes:
        zeros = self._zeros.get(length)
        if zeros is None:
            zeros = self._zeros[length] = bytes(length)
        return zeros

    # --- the kit's methods -------------------------------------------------------------

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        """The file's bytes at ``offset``; None past its end and for holes or zeros."""
        fd = self._open(obj, create=False)
        if fd is None:
            return None
        data = os.pread(fd, length, offset)
        if not data or data == self._zero(len(data)):
            return None
        return data

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        """Write the page in place; zeros become a hole, or nothing past the end."""
        self._check(obj)  # a change by someone else must not hide behind ours
        zero = data == self._zero(len(data))
        fd = self._open(obj, create=not zero)
        if fd is None:
            return  # zeros for a missing file: it already reads as zeros
        size = os.fstat(fd).st_size
        if zero:
            if offset >= size:
                return
            if not _punch_hole(fd, offset, len(data)):
                _pwrite_all(fd, data[: size - offset], offset)
        else:
            if offset + len(data) > size:  # zeros past the end need not be written
                data = data[: max(len(data.rstrip(b"\0")), size - offset)]
            _pwrite_all(fd, data, offset)
        self._unsynced.add(obj)
        self._stamp(obj, fd)

    async def set_size(self, obj: ObjectId, size: int) -> None:
        """Truncate or extend the file to ``size``; size 0 removes it."""
        self._check(obj)
        if size == 0:
            self._close_fd(obj)
            self._unsynced.discard(obj)
            try:
                os.unlink(self.file(obj))
            except FileNotFoundError:
                return
            self._dir_unsynced = True
            self._stamp(obj, None)
            return
        fd = self._open(obj, create=True)
        assert fd is not None
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
            self._unsynced.add(obj)
            self._stamp(obj, fd)

    async def sync(self, obj: ObjectId, durable: bool) -> None:
        """Written pages are in the file already; ``durable`` fsyncs it (and the directory)."""
        if not durable:
            return
        if obj in self._unsynced:
            fd = self._open(obj, create=False)
            if fd is not None:
                os.fsync(fd)
            self._unsynced.discard(obj)
        if self._dir_unsynced:
            dirfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
            self._dir_unsynced = False

    async def terminate(self, obj: ObjectId) -> None:
        """The kernel caches nothing of ``obj`` now: stop watching it, close its file."""
        self._live.pop(obj, None)
        self._seen.pop(obj, None)
        self._close_fd(obj)

    async def close(self) -> None:
        self._live.clear()
        for obj in list(self._fds):
            self._close_fd(obj)
