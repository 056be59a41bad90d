"""The kernel side of one memory object, as a pure engine with no I/O.

Calls come in from the file system (:meth:`fault`, :meth:`write`, :meth:`begin_sync`,
:meth:`set_size`, :meth:`map`, :meth:`unmap`, :meth:`terminate`), from the edge when the
pager fails (:meth:`fail`, then :meth:`adopt` on the restarted pager's object) and from
the pager (:meth:`receive`). Each call changes state synchronously and appends what must
happen next to the shared :class:`Outbox`: messages to send, waiters to wake (with an
errno, 0 for success) and Linux page-cache ranges to invalidate. It never awaits, logs or
touches a file; the trio edge (``mofs.kernel``) drains the outbox after every call.
Because nothing here awaits, every method is atomic with respect to every other.

A caller that gets a wait key back parks until that key is woken, then calls again:
the page may have been evicted or locked in between, and the second call sorts that
out. Keys are plain tuples, so the edge can keep them in a dict.
"""

from __future__ import annotations

import enum
import errno
import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from .cache import Cache
from .errors import LocalProtocolError, PagerFailed, RemoteProtocolError
from .messages import (
    MEMORY_OBJECT_COPY_CALL,
    MEMORY_OBJECT_COPY_DELAY,
    MEMORY_OBJECT_COPY_NONE,
    MEMORY_OBJECT_COPY_TEMPORARY,
    MEMORY_OBJECT_RETURN_ALL,
    MEMORY_OBJECT_RETURN_ANYTHING,
    MEMORY_OBJECT_RETURN_DIRTY,
    VM_PROT_NO_CHANGE,
    VM_PROT_READ,
    VM_PROT_WRITE,
    VM_SYNC_ASYNCHRONOUS,
    VM_SYNC_INVALIDATE,
    VM_SYNC_SYNCHRONOUS,
    ChangeAttributes,
    ChangeCompleted,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    DataUnlock,
    Destroy,
    Init,
    LockCompleted,
    LockRequest,
    Message,
    ObjectId,
    Ready,
    SetSize,
    SupplyCompleted,
    Synchronize,
    SynchronizeCompleted,
    Terminate,
)
from .pages import Page, PageEvent, PageState

KERN_SUCCESS = 0
KERN_MEMORY_PRESENT = 23
DEFAULT_CLUSTER_BYTES = 1 << 20  # a data_request covers at most this when the pager says 0
RETURN_RUN_PAGES = 32  # pages per data_return at most, as GNU Mach batches them
# Copy strategies mofs accepts (decision 9); COPY_CALL and the kernel-only ones are refused.
COPY_STRATEGIES = (MEMORY_OBJECT_COPY_NONE, MEMORY_OBJECT_COPY_DELAY, MEMORY_OBJECT_COPY_TEMPORARY)

Key = Hashable


@dataclass(slots=True)
class Outbox:
    """What the pure core asks the edge to do, in order."""

    messages: list[Message] = field(default_factory=list)
    wakeups: list[tuple[Key, int]] = field(default_factory=list)
    invalidations: list[tuple[ObjectId, int, int]] = field(default_factory=list)

    def send(self, msg: Message) -> None:
        self.messages.append(msg)

    def wake(self, key: Key, error: int = 0) -> None:
        self.wakeups.append((key, error))


class ObjectState(enum.Enum):
    UNINIT = "uninit"
    INIT_SENT = "init_sent"  # faults wait for ready
    READY = "ready"
    TERMINATED = "terminated"
    DESTROYED = "destroyed"
    DEAD = "dead"  # the pager failed


@dataclass(slots=True)
class _Sync:
    key: Key
    offset: int
    length: int
    pages: list[tuple[int, Page]]


def _errno(reason: int) -> int:
    """The errno a reader sees for ``data_error(reason)``; Mach kernel codes become EIO."""
    return reason if 0 < reason < 4096 and reason not in (9, 10) else errno.EIO


class MemoryObject:
    """Page table and protocol state of one memory object in the kernel's cache."""

    _syncs_counter = itertools.count(1)

    def __init__(
        self, object_id: ObjectId, page_size: int, cache: Cache, outbox: Outbox, size: int = 0
    ) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError("page size must be a power of two")
        self.id = object_id
        self.page_size = page_size
        self.size = size
        self.cache = cache
        self.out = outbox
        self.state = ObjectState.UNINIT
        self.pages: dict[int, Page] = {}
        self.may_cache = True
        self.copy_strategy = 0
        self.cluster_pages = 1
        self.silent_overwrite = False
        self.syncs: list[_Sync] = []
        self.ready_key: Key = ("ready", object_id)
        self.mapped = 0  # open files (mappings) using the object; 0 = only cached

    # --- keys ----------------------------------------------------------------------------

    def page_key(self, index: int) -> Key:
        return ("page", self.id, index)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Send ``init`` (and the size, a mofs extension); faults wait for ``ready``."""
        if self.state is not ObjectState.UNINIT:
            raise ValueError(f"object {self.id} already started")
        self.state = ObjectState.INIT_SENT
        self.out.send(Init(self.id, self.page_size))
        self.out.send(SetSize(self.id, self.size))

    def _check_usable(self) -> Key | None:
        if self.state is ObjectState.INIT_SENT:
            return self.ready_key
        if self.state is not ObjectState.READY:
            raise PagerFailed(f"memory object {self.id} is {self.state.value}")
        return None

    def map(self) -> None:
        """A user (an open file) starts using the object."""
        self.mapped += 1

    def unmap(self) -> None:
        """A user stops using the object. The last one terminates it unless the pager
        allowed caching (``may_cache``): an uncached object lives only while mapped."""
        if self.mapped <= 0:
            raise LocalProtocolError(f"memory object {self.id} unmapped more often than mapped")
        self.mapped -= 1
        if self.mapped == 0 and not self.may_cache and self.state is ObjectState.READY:
            self.terminate()

    @property
    def requested(self) -> int:
        """Pages asked for with ``data_request`` and not answered yet."""
        return sum(p.state is PageState.REQUESTED for p in self.pages.values())

    def terminate(self) -> None:
        """Return dirty and precious pages (O6), drop everything, send ``terminate``.

        Unlike GNU Mach, which waits for outstanding paging, mofs terminates at once: waiters
        on requested pages, on ``ready`` and on an outstanding synchronize get EIO, and the
        pager's late answers are ignored. A temporary object returns nothing."""
        if self.state in (ObjectState.TERMINATED, ObjectState.DESTROYED):
            return
        temporary = self.copy_strategy == MEMORY_OBJECT_COPY_TEMPORARY
        alive = self.state in (ObjectState.READY, ObjectState.INIT_SENT)
        if self.state is ObjectState.INIT_SENT:
            self.out.wake(self.ready_key, errno.EIO)
        for sync in self.syncs:  # no synchronize_completed can arrive after terminate
            self._finish_sync(sync, errno.EIO)
        self.syncs.clear()
        returns = []
        for index in sorted(self.pages):
            page = self.pages[index]
            if page.state is PageState.RESIDENT:
                if alive and not temporary and page.must_return:
                    returns.append((index, page, page.dirty or page.cleaning > 0))
                self._drop(index, page, PageEvent.EVICT)
            else:
                self._drop(index, page, PageEvent.ABANDON)
                self.out.wake(self.page_key(index), errno.EIO)
        self._send_returns(returns, kernel_copy=False)
        if alive:
            self.out.send(Terminate(self.id))
        self.state = ObjectState.TERMINATED

    def fail(self) -> None:
        """The pager is gone: fail every waiter with EIO and keep only what would be lost.

        Requested pages become absent; clean non-precious pages are dropped (a dead pager
        can no longer invalidate them, and its restarted successor is the authority on
        their content); dirty and precious pages, including those of a failed
        synchronize, are kept for :meth:`adopt` but leave the cache budget, so eviction can
        never drop them or return them to a dead pager. Every later call raises
        PagerFailed; pager messages are ignored."""
        if self.state in (ObjectState.TERMINATED, ObjectState.DESTROYED, ObjectState.DEAD):
            return
        self.state = ObjectState.DEAD
        self.out.wake(self.ready_key, errno.EIO)
        for sync in self.syncs:
            self._finish_sync(sync, errno.EIO)  # the pages become dirty again
        self.syncs.clear()
        for index, page in list(self.pages.items()):
            if page.state is PageState.REQUESTED:
                self._drop(index, page, PageEvent.ABANDON)
            elif not page.must_return:
                self._drop(index, page, PageEvent.EVICT)
            else:
                self.cache.remove(self.id, index)
            self.out.wake(self.page_key(index), errno.EIO)

    def adopt(self, dead: MemoryObject) -> None:
        """Take over the dirty and precious pages a failed incarnation of this object kept.

        Call right after :meth:`start` against the restarted pager. The pages become
        resident here, unlocked and still dirty (or precious), so the next synchronize,
        eviction or terminate returns them to the new pager: nothing written is lost."""
        if dead.state is not ObjectState.DEAD or dead is self:
            raise LocalProtocolError("only a failed memory object can be adopted")
        if (dead.id, dead.page_size) != (self.id, self.page_size):
            raise LocalProtocolError("adopted pages must be of the same object and page size")
        if self.pages or self.state not in (ObjectState.INIT_SENT, ObjectState.READY):
            raise LocalProtocolError("adopt before the new object holds any page")
        for index in sorted(dead.pages):
            page = dead.pages.pop(index)
            if page.state is not PageState.RESIDENT:
                continue
            page.lock = page.unlock_requested = page.cleaning = 0
            self.pages[index] = page
            self.cache.insert(self, self.id, index, self.page_size)

    # --- faults and writes ---------------------------------------------------------------

    def request(self, first: int, count: int, access: int) -> None:
        """Ask for every absent page of a range now, clustered into few ``data_request``s."""
        if self.state is not ObjectState.READY:
            return
        run: list[int] = []
        for index in range(first, first + count):
            if index in self.pages:
                self._send_request(run, access)
                run = []
                continue
            page = Page(desired=access)
            page.apply(PageEvent.FAULT)
            self.pages[index] = page
            run.append(index)
            if len(run) == self.cluster_pages:
                self._send_request(run, access)
                run = []
        self._send_request(run, access)

    def _send_request(self, run: list[int], access: int) -> None:
        if run:
            ps = self.page_size
            self.out.send(DataRequest(self.id, run[0] * ps, len(run) * ps, access))

    def fault(self, index: int, access: int) -> Key | None:
        """Make page ``index`` usable for ``access``; None if it is, else a key to wait on."""
        key = self._check_usable()
        if key is not None:
            return key
        page = self.pages.get(index)
        if page is None:
            self.request(index, 1, access)
            return self.page_key(index)
        if page.state is PageState.REQUESTED:
            page.apply(PageEvent.FAULT)
            page.desired |= access  # no second request (O7); the supply decides
            return self.page_key(index)
        blocked = access & page.lock
        if blocked:
            if blocked & ~page.unlock_requested:  # O8: never repeat the same bits
                page.unlock_requested |= blocked
                ps = self.page_size
                self.out.send(DataUnlock(self.id, index * ps, ps, page.unlock_requested))
            return self.page_key(index)
        self.cache.touch(self.id, index)
        return None

    def page_data(self, index: int) -> bytearray:
        """The bytes of a resident page (call right after :meth:`fault` returned None)."""
        data = self.pages[index].data
        assert data is not None
        return data

    def write(self, index: int, start: int, data: bytes | memoryview) -> Key | None:
        """Copy ``data`` into page ``index`` at ``start``; None when done, else a wait key."""
        key = self._check_usable()
        if key is not None:
            return key
        ps = self.page_size
        page = self.pages.get(index)
        whole = start == 0 and len(data) == ps
        if page is None and ((self.silent_overwrite and whole) or index * ps >= self.size):
            # Nothing to fetch: the write covers the page, or the page lies past the end
            # of the file, where the pager holds nothing (SetSize keeps it so).
            page = Page()
            page.apply(PageEvent.CREATE)
            self._install(index, page, bytearray(ps), 0, False)
        else:
            key = self.fault(index, VM_PROT_READ | VM_PROT_WRITE)
            if key is not None:
                return key
            page = self.pages[index]
        assert page.data is not None
        page.data[start : start + len(data)] = data
        page.dirty = True
        end = index * ps + start + len(data)
        if end > self.size:
            self.size = end
        return None

    def evict(self, index: int) -> None:
        """Drop a resident page; dirty or precious ones travel back in ``data_return``."""
        page = self.pages[index]
        if page.must_return:
            self._send_returns([(index, page, page.dirty or page.cleaning > 0)], False)
        self._drop(index, page, PageEvent.EVICT)

    def set_size(self, size: int) -> None:
        """The file is now ``size`` bytes: drop pages past it, zero the partial tail."""
        ps = self.page_size
        if size < self.size:
            keep = -(-size // ps)
            for index in [i for i in self.pages if i >= keep]:
                page = self.pages[index]
                if page.state is PageState.RESIDENT:
                    self._drop(index, page, PageEvent.EVICT)  # past EOF: nothing to return
            tail = self.pages.get(size // ps)
            if size % ps and tail is not None and tail.data is not None:
                tail.data[size % ps :] = bytes(ps - size % ps)
        self.size = size
        if self.state in (ObjectState.READY, ObjectState.INIT_SENT):
            self.out.send(SetSize(self.id, size))

    # --- synchronize ---------------------------------------------------------------------

    def begin_sync(self, offset: int, length: int, flags: int) -> tuple[Key, bool]:
        """Return the range's dirty and precious pages, then send ``synchronize``.

        Returns ``(key, started)``. When an earlier synchronize overlaps the range, nothing
        is sent and ``started`` is false: wait on the key, then call again (decision 2)."""
        if flags & VM_SYNC_SYNCHRONOUS and flags & VM_SYNC_ASYNCHRONOUS:
            raise ValueError("VM_SYNC_SYNCHRONOUS and VM_SYNC_ASYNCHRONOUS exclude each other")
        key = self._check_usable()
        if key is not None:
            return key, False
        for sync in self.syncs:
            if sync.offset < offset + length and offset < sync.offset + sync.length:
                return sync.key, False
        ps = self.page_size
        first, end = offset // ps, -(-(offset + length) // ps)
        invalidate = bool(flags & VM_SYNC_INVALIDATE)
        # The manual page: SYNCHRONOUS and ASYNCHRONOUS write dirty and precious pages
        # back; INVALIDATE alone flushes the range and returns only precious pages.
        write_back = bool(flags & (VM_SYNC_SYNCHRONOUS | VM_SYNC_ASYNCHRONOUS))
        returns, cleaned = [], []
        for index in sorted(i for i in self.pages if first <= i < end):
            page = self.pages[index]
            if page.state is not PageState.RESIDENT:
                continue
            if page.precious or (page.dirty and write_back):
                returns.append((index, page, page.dirty))
                page.dirty = False
                if not invalidate:
                    page.cleaning += 1
                    cleaned.append((index, page))
            if invalidate:
                self._drop(index, page, PageEvent.EVICT)
        self._send_returns(returns, kernel_copy=not invalidate)
        sync = _Sync(("sync", self.id, next(self._syncs_counter)), offset, length, cleaned)
        self.syncs.append(sync)
        self.out.send(Synchronize(self.id, offset, length, flags))
        return sync.key, True

    def _finish_sync(self, sync: _Sync, error: int) -> None:
        for index, page in sync.pages:
            page.cleaning -= 1
            if error and self.pages.get(index) is page:
                page.dirty = True  # write-back failed: keep the data for a retry
        self.out.wake(sync.key, error)

    # --- messages from the pager ---------------------------------------------------------

    def receive(self, msg: Message) -> None:
        """Apply one pager message; RemoteProtocolError if the pager broke the protocol."""
        if self.state is ObjectState.DEAD:
            return
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise RemoteProtocolError(f"{type(msg).__name__} is not a pager-to-kernel message")
        if self.state in (ObjectState.TERMINATED, ObjectState.DESTROYED, ObjectState.UNINIT):
            return  # late answers for a finished object are harmless
        if self.state is ObjectState.INIT_SENT and type(msg) not in _ANSWERS_TO_INIT:
            # The pager answers init before anything else (FIFO, O2), so this was sent to
            # an earlier incarnation of the object, before the pager saw its terminate.
            return
        handler(self, msg)

    def _range(self, offset: int, length: int, what: str) -> range:
        ps = self.page_size
        if offset % ps or length % ps or offset < 0 or length < 0:
            raise RemoteProtocolError(
                f"{what} range ({offset}, {length}) is not page-aligned (page size {ps})"
            )
        return range(offset // ps, (offset + length) // ps)

    def _on_ready(self, msg: Ready | ChangeAttributes) -> None:
        if msg.copy_strategy not in COPY_STRATEGIES:
            name = {MEMORY_OBJECT_COPY_CALL: "MEMORY_OBJECT_COPY_CALL"}.get(
                msg.copy_strategy, str(msg.copy_strategy)
            )
            raise RemoteProtocolError(
                f"copy strategy {name} is not supported (only NONE, DELAY and TEMPORARY)"
            )
        self.may_cache = msg.may_cache
        self.copy_strategy = msg.copy_strategy
        if isinstance(msg, Ready):  # the kernel's choice for 0: runs of up to 1 MiB
            cluster = msg.cluster_size or DEFAULT_CLUSTER_BYTES
            self.cluster_pages = max(1, cluster // self.page_size)
            self.silent_overwrite = msg.silent_overwrite
        if self.state is ObjectState.INIT_SENT:
            self.state = ObjectState.READY
            self.out.wake(self.ready_key)
        if isinstance(msg, ChangeAttributes):
            if not msg.may_cache and self.mapped == 0:
                self.terminate()  # an unmapped object may no longer be cached
            if msg.reply:  # after the terminate it caused (O9)
                self.out.send(ChangeCompleted(self.id, msg.may_cache, msg.copy_strategy))

    def _on_supply(self, msg: DataSupply) -> None:
        ps = self.page_size
        if msg.offset % ps:
            raise RemoteProtocolError(f"data_supply at offset {msg.offset} is not page-aligned")
        data = memoryview(msg.data)
        whole = len(data) // ps * ps  # a trailing fragment is discarded silently (O12)
        error_offset = None
        for k, index in enumerate(self._range(msg.offset, whole, "data_supply")):
            chunk = data[k * ps : (k + 1) * ps]
            page = self.pages.get(index)
            if page is None or page.state is PageState.REQUESTED:
                page = page or Page()
                page.apply(PageEvent.SUPPLY)
                self._install(index, page, bytearray(chunk), msg.lock_value, msg.precious)
                self.out.wake(self.page_key(index))
            else:  # present: keep the kernel's copy (decision 4)
                page.apply(PageEvent.SUPPLY)
                if error_offset is None:
                    error_offset = index * ps
                if msg.precious:  # the pager kept no copy: hand it back before completing
                    self.out.send(DataReturn(self.id, index * ps, bytes(chunk), False, False))
        if msg.reply:
            result = KERN_SUCCESS if error_offset is None else KERN_MEMORY_PRESENT
            self.out.send(SupplyCompleted(self.id, msg.offset, whole, result, error_offset or 0))

    def _on_unavailable(self, msg: DataUnavailable) -> None:
        for index in self._range(msg.offset, msg.length, "data_unavailable"):
            page = self.pages.get(index)
            if page is not None and page.state is PageState.REQUESTED:
                page.apply(PageEvent.UNAVAILABLE)
                self._install(index, page, bytearray(self.page_size), 0, False)
                self.out.wake(self.page_key(index))

    def _on_error(self, msg: DataError) -> None:
        for index in self._range(msg.offset, msg.length, "data_error"):
            page = self.pages.get(index)
            if page is not None and page.state is PageState.REQUESTED:
                self._drop(index, page, PageEvent.ERROR)
                self.out.wake(self.page_key(index), _errno(msg.reason))

    def _on_lock_request(self, msg: LockRequest) -> None:
        rng = self._range(msg.offset, msg.length, "lock_request")
        returns = []
        for index in sorted(i for i in self.pages if i in rng):
            page = self.pages[index]
            if page.state is not PageState.RESIDENT:
                continue  # only data cached at the time of the call is affected
            if msg.lock_value != VM_PROT_NO_CHANGE:
                page.lock = msg.lock_value
                page.unlock_requested = 0
                self.out.wake(self.page_key(index))
            ret = msg.should_return
            if (
                (ret == MEMORY_OBJECT_RETURN_DIRTY and page.dirty)
                or (ret == MEMORY_OBJECT_RETURN_ALL and (page.dirty or page.precious))
                or ret == MEMORY_OBJECT_RETURN_ANYTHING
            ):
                returns.append((index, page, page.dirty))
                page.dirty = False
            if msg.should_flush:
                self._drop(index, page, PageEvent.FLUSH)
                self.out.wake(self.page_key(index))
        self._send_returns(returns, kernel_copy=not msg.should_flush)
        if msg.should_flush:
            self.out.invalidations.append((self.id, msg.offset, msg.length))
        if msg.reply:
            self.out.send(LockCompleted(self.id, msg.offset, msg.length))

    def _on_synchronize_completed(self, msg: SynchronizeCompleted) -> None:
        for sync in self.syncs:
            if (sync.offset, sync.length) == (msg.offset, msg.length):
                self.syncs.remove(sync)
                self._finish_sync(sync, msg.error)
                return
        raise RemoteProtocolError(
            f"synchronize_completed({msg.offset}, {msg.length}) matches no synchronize"
        )

    def _on_destroy(self, msg: Destroy) -> None:
        for index, page in list(self.pages.items()):
            event = PageEvent.EVICT if page.state is PageState.RESIDENT else PageEvent.ABANDON
            self._drop(index, page, event)
            self.out.wake(self.page_key(index), errno.EIO)
        for sync in self.syncs:
            self._finish_sync(sync, errno.EIO)
        self.syncs.clear()
        self.out.wake(self.ready_key, errno.EIO)
        self.out.send(Terminate(self.id))
        self.state = ObjectState.DESTROYED

    # --- helpers -------------------------------------------------------------------------

    def _install(self, index: int, page: Page, data: bytearray, lock: int, precious: bool) -> None:
        ps = self.page_size
        past_eof = self.size - index * ps
        if past_eof < ps:  # the kernel never shows bytes past the end of the file
            data[max(past_eof, 0) :] = bytes(ps - max(past_eof, 0))
        page.install(data, lock, precious)
        self.pages[index] = page
        self.cache.insert(self, self.id, index, ps)

    def _drop(self, index: int, page: Page, event: PageEvent) -> None:
        was_resident = page.state is PageState.RESIDENT
        page.apply(event)
        del self.pages[index]
        if was_resident:
            self.cache.remove(self.id, index)

    def _send_returns(self, pages: Iterable[tuple[int, Page, bool]], kernel_copy: bool) -> None:
        """``data_return`` runs of contiguous pages with the same dirty flag."""
        ps = self.page_size
        run: list[tuple[int, Page, bool]] = []

        def flush() -> None:
            if run:
                first = run[0][1].data
                data: bytes | bytearray
                if len(run) == 1 and not kernel_copy and first is not None:
                    data = first  # the page leaves the cache: its buffer goes, uncopied
                else:
                    data = b"".join(p.data or b"" for _, p, _ in run)
                self.out.send(DataReturn(self.id, run[0][0] * ps, data, run[0][2], kernel_copy))
                run.clear()

        for item in pages:
            if run and (
                item[0] != run[-1][0] + 1 or item[2] != run[0][2] or len(run) == RETURN_RUN_PAGES
            ):
                flush()
            run.append(item)
        flush()

    # --- observation ---------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """Counts of pages by condition, for ``mofs stat``."""
        resident = [p for p in self.pages.values() if p.state is PageState.RESIDENT]
        return {
            "resident": len(resident),
            "requested": len(self.pages) - len(resident),
            "dirty": sum(p.dirty for p in resident),
            "precious": sum(p.precious for p in resident),
            "locked": sum(bool(p.lock) for p in resident),
        }


_ANSWERS_TO_INIT = (Ready, ChangeAttributes, Destroy)

_HANDLERS = {
    Ready: MemoryObject._on_ready,
    ChangeAttributes: MemoryObject._on_ready,
    DataSupply: MemoryObject._on_supply,
    DataUnavailable: MemoryObject._on_unavailable,
    DataError: MemoryObject._on_error,
    LockRequest: MemoryObject._on_lock_request,
    SynchronizeCompleted: MemoryObject._on_synchronize_completed,
    Destroy: MemoryObject._on_destroy,
}
