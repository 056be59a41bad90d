"""The trio edge of the cache: carries messages to pagers and back, and parks callers.

This module is the only place where the pure core (``memory_object``, ``cache``) meets
time and concurrency. A file-system call asks a :class:`~mofs.memory_object.MemoryObject`
for a page; if the core hands back a wait key, the call parks on a ``trio.Event`` for that
key until the pager's answer wakes it, or until the pager timeout fails it with
:class:`~mofs.errors.PagerFailed` (EIO at the FUSE edge; never a hang).

Checkpoints (see docs/internals.md): state changes only inside the core's synchronous
methods, so other tasks interleave only at the ``await``s here: ``_park`` (waiting for a
pager answer), ``_backpressure`` (waiting for a pager to read queued page data), the
notifier thread hand-off in ``linux_cache``, and the pagers' own tasks.
"""

from __future__ import annotations

import errno
import functools
import logging
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .cache import Cache
from .connection import PagerConnection, Tracer
from .errors import PageError, PagerFailed, PagerTimeout, RemoteProtocolError
from .journal import ReturnJournal
from .linux_cache import LinuxNotices, LinuxPageCache
from .memory_object import Key, MemoryObject, ObjectState, Outbox
from .messages import (
    VM_PROT_READ,
    VM_SYNC_SYNCHRONOUS,
    DataReturn,
    DataSupply,
    LockCompleted,
    Message,
    ObjectId,
)
from .pages import PageState

log = logging.getLogger(__name__)

# A failed pager of another process is tried again at its files' next use; only after
# an attempt that took long (a host that does not answer) do further ones wait this long.
RECONNECT_INTERVAL = 5.0



@dataclass(slots=True, eq=False)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    error: int = 0


class Kernel:
    """The VM cache of one mount: memory objects, their pager, waits and the budget."""

    def __init__(
        self,
        pager: object,
        *,
        pager_name: str = "pager",
        page_size: int = 65536,
        budget: int = 256 << 20,
        timeout: float = 30.0,
        tracer: Tracer | None = None,
        journal: ReturnJournal | None = None,
        pager_factory: Callable[[str], object] | None = None,
    ) -> None:
        self.page_size = page_size
        self.timeout = timeout
        self.cache = Cache(budget)
        self.out = Outbox()
        self.objects: dict[ObjectId, MemoryObject] = {}
        self.messages: Counter[str] = Counter()
        self._tracer = tracer
        self._waiters: dict[Key, _Waiter] = {}
        self.conn = PagerConnection(pager_name, pager, self._count)  # the default pager
        self.pagers: dict[str, PagerConnection] = {pager_name: self.conn}
        self.route: dict[ObjectId, PagerConnection] = {}  # objects not here use the default
        self.pager_factory = pager_factory
        self.linux: LinuxPageCache | None = None
        self.notices = LinuxNotices()  # run one at a time, in order, in a thread
        # Page data queued for the pager beyond this makes writers wait for it to catch up.
        self.max_queued = max(page_size, min(budget // 4, 32 << 20))
        # A write-back keeps a clean copy of each page it returns; beyond this many dirty
        # bytes it returns them the way eviction does, without a copy (see _shed_dirty).
        self.copy_limit = max(page_size, min(budget // 4, 32 << 20))
        self.max_read_ahead = min(budget // 16, 2 << 20)  # bytes past a sequential read
        self._sequential: weakref.WeakKeyDictionary[MemoryObject, tuple[int, int]] = \
            weakref.WeakKeyDictionary()  # per object: where the next read would start, window
        self._nursery: trio.Nursery | None = None
        self.journal = journal
        self._precious: set[ObjectId] = set()  # objects whose pager supplied precious pages
        self._settling = False
        self._write_errors: dict[ObjectId, int] = {}  # per-object write-back error latch
        # Journaled bytes beyond this make the kernel synchronize objects to prune it.
        self.max_journal = max(budget, 64 << 20)

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the pager connections until :meth:`shutdown` closes them."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._start(self.conn)
            nursery.start_soon(self.notices.run)
            task_status.started()

    def _start(self, conn: PagerConnection) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_pager, conn)
        self._nursery.start_soon(self._receive_loop, conn)

    def connect(self, url: str) -> PagerConnection:
        """The connection to the pager named by ``url``, opened on first use.

        Raises whatever the pager factory raises for a bad URL (a UserError)."""
        conn = self.pagers.get(url)
        if conn is None:
            if self.pager_factory is None or self._nursery is None:
                raise ValueError(f"cannot open pager {url!r} here")
            conn = PagerConnection(url, self.pager_factory(url), self._count)
            self.pagers[url] = conn
            self._start(conn)
        elif conn.failure is not None and conn.reconnectable:
            conn = self._reconnect(conn)
        return conn

    def _reconnect(self, old: PagerConnection) -> PagerConnection:
        """A new connection to a failed pager that lives in another process, or the failed
        one while it cannot be reached (see RECONNECT_INTERVAL)."""
        if self.pager_factory is None or self._nursery is None or not old.may_reconnect():
            return old
        start = trio.current_time()
        if start < old.retry_at:
            return old
        try:
            pager = self.pager_factory(old.name)
        except Exception as exc:
            if trio.current_time() - start > 0.1:  # it blocks the daemon: not at every use
                old.retry_at = trio.current_time() + RECONNECT_INTERVAL
            log.log(logging.DEBUG if old.retried else logging.WARNING,
                    "pager %s: cannot reconnect (%s); its files fail with EIO", old.name, exc)
            old.retried = True
            return old
        conn = PagerConnection(old.name, pager, self._count)
        self.pagers[old.name] = conn
        if old is self.conn:
            self.conn = conn
        self._start(conn)
        log.info("pager %s: reconnected; its files start again", old.name)
        return conn

    def _conn(self, obj_id: ObjectId) -> PagerConnection:
        return self.route.get(obj_id, self.conn)

    async def _serve_pager(self, conn: PagerConnection) -> None:
        try:
            await conn.pager.serve(conn.inbox, conn.outbox)  # type: ignore[attr-defined]
        except Exception as exc:  # a pager bug must not take the mount down
            log.debug("pager %s raised", conn.name, exc_info=True)  # (--debug: where)
            self.pager_failed(conn, f"raised {type(exc).__name__}: {exc}")
        else:
            if conn.failure is None and not conn.inbox.closed:
                self.pager_failed(conn, "stopped serving")
        finally:
            conn.outbox.close()
            conn.done.set()

    async def _receive_loop(self, conn: PagerConnection) -> None:
        while True:
            try:
                _, msg = await conn.outbox.receive()
            except trio.EndOfChannel:
                return
            obj = self.objects.get(msg.object)
            if obj is None or self._conn(msg.object) is not conn:
                log.debug("dropping %s for unknown object %s", msg.name(), msg.object)
                continue
            prefetched = []
            if isinstance(msg, DataSupply):
                if msg.precious:
                    self._precious.add(msg.object)
                prefetched = self._prefetched(obj, msg)
            try:
                obj.receive(msg)
            except RemoteProtocolError as exc:
                self.pager_failed(conn, f"broke the protocol with {msg.name()}: {exc}")
            else:
                self._store_prefetched(obj, prefetched)
            self._flush()

    def pager_failed(self, conn: PagerConnection, why: str) -> None:
        """Mark a pager failed: one log line, its waiters get EIO, dirty data is kept."""
        if conn.failure is not None:
            return
        conn.failure = why
        log.error("pager %s failed: %s", conn.name, why)
        for obj_id, runs in conn.unconfirmed().items():
            if not _holds(self.objects.get(obj_id), runs):  # it may not have stored them
                self._write_errors.setdefault(obj_id, errno.EIO)  # the next fsync says so
        for obj in self.objects.values():
            if self._conn(obj.id) is conn:
                obj.fail()
        conn.inbox.close()  # nothing more reaches it; a pager in another process can
        conn.inbox.abandon()  # writers waiting for it to catch up wake and get EIO
        self._flush()  # then end the connection and serve our next one

    async def shutdown(self) -> None:
        """Return and synchronize every dirty page, terminate every object, stop the pager."""
        owner = {obj_id: self._conn(obj_id) for obj_id in self.objects}
        for obj_id in list(self.objects):
            obj = self.objects[obj_id]
            if obj.state is ObjectState.READY:
                try:
                    await self.sync(obj_id, 0, max(obj.size, 1), VM_SYNC_SYNCHRONOUS)
                except (PagerFailed, PageError) as exc:
                    log.error("could not write back object %s on shutdown: %s", obj_id, exc)
            self.terminate(obj_id)
        for conn in self.pagers.values():
            conn.inbox.close()
        with trio.move_on_after(self.timeout):
            for conn in self.pagers.values():
                await conn.done.wait()
        if self.journal is not None:
            # Every healthy pager has been given, synchronized and closed everything:
            # what its objects left in the journal is now the pager's alone.
            healthy = {c for c in self.pagers.values() if c.failure is None and c.done.is_set()}
            for obj_id in self.journal.objects():
                if owner.get(obj_id, self.conn) in healthy:
                    self.journal.prune(obj_id, self.journal.mark())
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- plumbing --------------------------------------------------------------------------

    def _count(self, direction: str, seqno: int, msg: Message) -> None:
        self.messages[msg.name()] += 1
        if self._tracer is not None:
            self._tracer(direction, seqno, msg)

    def _flush(self) -> None:
        """Carry out what the core asked for: evict over budget, send, wake, invalidate.

        A ``lock_request`` that flushed pages must also empty the Linux page cache above
        FUSE before its ``lock_completed`` goes out (decision 7); that completion is held
        back until the invalidation, run in a thread, has finished."""
        out = self.out
        self.cache.reclaim(sum(c.inbox.queued_bytes for c in self.pagers.values()))
        while out.messages or out.wakeups or out.invalidations:
            flushed = {obj_id for obj_id, _, _ in out.invalidations}
            out.invalidations.clear()
            messages, out.messages = out.messages, []
            held = []
            self._journal(messages)
            for msg in messages:
                if (isinstance(msg, LockCompleted) and msg.object in flushed
                        and self.linux is not None):
                    held.append((self._conn(msg.object), msg))  # its pager, known now
                else:
                    self._conn(msg.object).send(msg)
            if self.linux is not None:
                for obj_id in flushed:
                    done = [(c, m) for c, m in held if m.object == obj_id]
                    self.notify_linux(functools.partial(self.linux.invalidate, obj_id), done)
            wakeups, out.wakeups = out.wakeups, []
            for key, error in wakeups:
                waiter = self._waiters.pop(key, None)
                if waiter is not None:
                    waiter.error = error
                    waiter.event.set()
                elif error and isinstance(key, tuple) and key[0] == "sync":
                    # Decision 3: a failed write-back nobody waited for is reported by
                    # the object's next fsync.
                    self._write_errors.setdefault(key[1], error)

    def _journal(self, messages: list[Message]) -> None:
        """Commit the returns of precious objects to the journal before they are sent."""
        if self.journal is None:
            return
        returns = [m for m in messages if isinstance(m, DataReturn)
                   and (m.object in self._precious or self._conn(m.object).precious)]
        if not returns:
            return
        try:
            self.journal.record(returns)
        except Exception as exc:  # a full disk must not stop the returns themselves
            log.error("could not journal %d returned pages: %s", len(returns), exc)
            return
        if self.journal.pending_bytes > self.max_journal and not self._settling:
            if self._nursery is not None:
                self._settling = True
                self._nursery.start_soon(self._settle_journal)

    async def _settle_journal(self) -> None:
        """Synchronize the journaled objects so that their rows can be pruned."""
        assert self.journal is not None
        try:
            for obj_id in self.journal.objects():
                obj = self.objects.get(obj_id)
                if obj is not None and obj.state is ObjectState.READY:
                    await self.sync(obj_id, 0, max(obj.size, 1), VM_SYNC_SYNCHRONOUS)
        except (PagerFailed, PageError) as exc:
            log.warning("could not settle the return journal: %s", exc)
        finally:
            self._settling = False

    async def replay_journal(
            self, file_of: Callable[[ObjectId], tuple[int, str | None] | None]) -> int:
        """Send the pagers what a crash left in the journal; return how many pages.

        ``file_of`` gives an object's current size and pager URL (None if it no longer
        exists): nothing past the end of a file is replayed."""
        if self.journal is None:
            return 0
        pages = 0
        for obj_id in self.journal.objects():
            found = file_of(obj_id)
            if found is None:
                self.journal.prune(obj_id, self.journal.mark())
                continue
            size, url = found
            obj = self.open(obj_id, size, url)
            while obj.state is ObjectState.INIT_SENT:
                await self._park(obj.ready_key, obj)
            ps = obj.page_size
            end = -(-size // ps) * ps
            for offset, data in self.journal.rows(obj_id):
                data = data[: max(0, end - offset)]
                if data:
                    if offset + len(data) > size:
                        data = data[: size - offset] + bytes(offset + len(data) - size)
                    self._conn(obj_id).send(DataReturn(obj_id, offset, data, True, False))
                    pages += len(data) // ps
            await self.sync(obj_id, 0, max(size, 1), VM_SYNC_SYNCHRONOUS)
        return pages

    def notify_linux(self, notify: Callable[[], None],
                     completions: list[tuple[PagerConnection, Message]] | None = None) -> None:
        """Queue a notification of the Linux caches (run in order, in a thread); the
        ``completions`` are sent to their pagers once it has run."""
        def send() -> None:
            for conn, msg in completions or ():
                conn.send(msg)
        self.notices.queue(notify, send if completions else None)

    def drop_clean(self) -> int:
        """Empty the cache as far as it can be emptied: every resident page goes, the
        dirty and precious ones back to their pager (``mofs drop-caches``). Returns the
        number of pages dropped; pages still being fetched stay."""
        dropped = 0
        for obj in list(self.objects.values()):
            if obj.state is not ObjectState.READY:
                continue
            for index in [i for i, p in obj.pages.items() if p.state is PageState.RESIDENT]:
                obj.evict(index)
                dropped += 1
        self._flush()
        return dropped

    def _prefetched(self, obj: MemoryObject, msg: DataSupply) -> list[tuple[int, int]]:
        """Pages of a supply that nobody asked for: they go to the Linux page cache too."""
        ps = obj.page_size
        first = msg.offset // ps
        return [(index, index * ps) for index in range(first, first + len(msg.data) // ps)
                if index not in obj.pages and index * ps < obj.size]

    def _store_prefetched(self, obj: MemoryObject, pages: list[tuple[int, int]]) -> None:
        for index, offset in pages:
            page = obj.pages.get(index)
            if page is not None and page.data is not None:
                self._store(obj, offset, memoryview(page.data)[: obj.page_size])

    def _store(self, obj: MemoryObject, offset: int, data: bytes | memoryview) -> None:
        """Copy bytes nobody has read yet into the Linux page cache (if no handle of the
        file is open for writing), so that reading them does not come back to us."""
        if self.linux is not None:
            data = data[: max(0, obj.size - offset)]  # never past the end: it sets i_size
            self.notices.store(obj.id, offset, bytes(data), self.linux)

    async def _park(self, key: Key, obj: MemoryObject, *, raise_error: bool = True) -> None:
        """Send what is queued, then wait until ``key`` is woken.

        A pager that does not answer within the timeout fails the object (its waiters get
        EIO, its dirty pages are kept; the next open starts a new incarnation)."""
        waiter = self._waiters.get(key)
        if waiter is None:
            waiter = self._waiters[key] = _Waiter()
        self._flush()
        with trio.move_on_after(self.timeout) as scope:
            await waiter.event.wait()
        if scope.cancelled_caught:
            if obj.state is not ObjectState.DEAD:
                obj.fail()
                self._flush()
            raise PagerTimeout(f"pager {self._conn(obj.id).name} did not answer within "
                               f"{self.timeout:g} s (object {obj.id})")
        if waiter.error and raise_error:
            raise PageError(waiter.error)

    async def _backpressure(self, conn: PagerConnection) -> None:
        if conn.inbox.queued_bytes > self.max_queued:
            with trio.move_on_after(self.timeout) as scope:
                await conn.inbox.wait_drained(self.max_queued)
            if conn.failure is not None:
                raise PagerFailed(f"pager {conn.name} failed: {conn.failure}")
            if scope.cancelled_caught:
                raise PagerTimeout(f"pager {conn.name} read none of its queued messages "
                                   f"within {self.timeout:g} s")

    # --- objects -----------------------------------------------------------------------------

    def open(self, obj_id: ObjectId, size: int, pager: str | None = None) -> MemoryObject:
        """The cache's object for ``obj_id``, sending ``init`` to its pager the first time.

        ``pager`` names the object's pager by URL (None: the mount's default). An object
        whose pager failed is replaced by a new incarnation that adopts the dirty and
        precious pages the old one kept, so they reach the pager again."""
        old = self.objects.get(obj_id)
        if old is not None and old.state in (ObjectState.READY, ObjectState.INIT_SENT):
            return old
        conn = self.connect(self.conn.name if pager is None else pager)
        if old is not None and old.state is ObjectState.DEAD and conn.failure is not None:
            return old  # the pager itself is gone: nothing to start again
        obj = MemoryObject(obj_id, self.page_size, self.cache, self.out, size)
        self.objects[obj_id] = obj
        if conn is self.conn:
            self.route.pop(obj_id, None)
        else:
            self.route[obj_id] = conn
        if conn.failure is not None:
            obj.fail()
        else:
            obj.start()
            if old is not None:
                obj.mapped = old.mapped
                if old.state is ObjectState.DEAD:
                    obj.adopt(old)
        self._flush()
        return obj

    def map(self, obj_id: ObjectId, *, writable: bool = False) -> None:
        """An open file starts using the object. Await ``notices.settle`` before using
        a writable one (see mofs.linux_cache)."""
        self.objects[obj_id].map()
        if writable:
            self.notices.writer_opened(obj_id)

    def unmap(self, obj_id: ObjectId, *, writable: bool = False) -> None:
        """An open file is closed; the last close terminates an object the pager did not
        allow to be cached."""
        if writable:
            self.notices.writer_closed(obj_id)
        obj = self.objects.get(obj_id)
        if obj is None or obj.mapped == 0:
            return
        obj.unmap()
        self._flush()
        if obj.state is ObjectState.TERMINATED:
            del self.objects[obj_id]
            self.route.pop(obj_id, None)

    def _usable(self, obj_id: ObjectId) -> MemoryObject:
        obj = self.objects.get(obj_id)
        if obj is None:
            raise KeyError(f"memory object {obj_id} is not open")
        conn = self._conn(obj_id)
        if conn.failure is not None and obj.state is not ObjectState.DEAD:
            obj.fail()
        if obj.state is ObjectState.DEAD and conn.reconnectable:
            # Its pager lives in another process and may be back: start the object anew
            # (it adopts the pages the failed one kept), even for a file already open.
            fresh = self.connect(conn.name)
            if fresh.failure is None:
                obj = self.open(obj_id, obj.size, None if fresh is self.conn else fresh.name)
        return obj

    def terminate(self, obj_id: ObjectId) -> None:
        """Return what must be returned and end the object's conversation with its pager."""
        obj = self.objects.pop(obj_id, None)
        if obj is not None:
            obj.terminate()
            self._flush()
            self.route.pop(obj_id, None)

    def set_size(self, obj_id: ObjectId, size: int) -> None:
        self._usable(obj_id).set_size(size)
        self._flush()

    async def read(self, obj_id: ObjectId, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, faulting in missing pages (short at EOF).

        A page fetched for a read that does not cover it all goes to the Linux page cache
        whole: a random reader then finds its neighbours there instead of asking us (and
        the pager) again for each 4 KiB of it."""
        obj = self._usable(obj_id)
        end = min(offset + size, obj.size)
        if end <= offset:
            return b""
        ps = obj.page_size
        first, last = offset // ps, (end - 1) // ps
        while obj.state is ObjectState.INIT_SENT:
            await self._park(obj.ready_key, obj)
        obj.request(first, last - first + 1, VM_PROT_READ)  # the whole range at once
        self._read_ahead(obj, offset, end)
        parts = []
        for index in range(first, last + 1):
            fetched = False
            while (key := obj.fault(index, VM_PROT_READ)) is not None:
                fetched = True
                await self._park(key, obj)
            base = index * ps
            lo, hi = max(offset, base) - base, min(end, base + ps) - base
            with memoryview(obj.page_data(index)) as view:  # released before any await
                parts.append(bytes(view[lo:hi]))
                if fetched:
                    self._store(obj, base, view[:lo])
                    self._store(obj, base + hi, view[hi:])
        self._flush()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_ahead(self, obj: MemoryObject, offset: int, end: int) -> None:
        """Ask for what a sequential reader reads next: nothing for a random reader; for
        a sequential one a window that doubles with each read in sequence, up to
        ``max_read_ahead``, asked for in one go whenever less than half of it is still
        ahead of the reader. The pager sees few large requests, and works while the
        reader reads."""
        ps = obj.page_size
        previous = self._sequential.get(obj)
        window = 0
        if previous is not None and previous[0] == offset:
            window = min(max(previous[1] * 2, -(-(end - offset) // ps)),
                         self.max_read_ahead // ps)
        self._sequential[obj] = (end, window)
        after = (end - 1) // ps + 1  # the first page past this read
        last_page = (obj.size - 1) // ps
        start = after
        while start in obj.pages and start < after + window:
            start += 1
        if start - after < window // 2:
            obj.request(start, min(window, last_page - start + 1), VM_PROT_READ)

    async def write(self, obj_id: ObjectId, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset`` into the cache (dirty pages); return the new size."""
        obj = self._usable(obj_id)
        await self._backpressure(self._conn(obj_id))
        view = memoryview(data)
        ps = obj.page_size
        pos = 0
        while pos < len(view):
            index, start = divmod(offset + pos, ps)
            n = min(ps - start, len(view) - pos)
            while (key := obj.write(index, start, view[pos : pos + n])) is not None:
                await self._park(key, obj)
            pos += n
        self._flush()
        return obj.size

    async def sync(self, obj_id: ObjectId, offset: int, length: int, flags: int) -> None:
        """Return the range's dirty and precious pages, send ``synchronize`` and wait for
        ``synchronize_completed`` (raises PageError with the pager's write-back errno)."""
        obj = self._usable(obj_id)
        ps = obj.page_size
        start = offset // ps * ps
        length = -(-(offset + length) // ps) * ps - start
        whole = start == 0 and start + length >= obj.size
        self._shed_dirty(obj)
        while True:
            key, started = obj.begin_sync(start, length, flags)
            mark = 0
            if started:
                self._flush()  # journal and send this sync's returns, then the synchronize
                if self.journal is not None and whole:
                    mark = self.journal.mark()  # every row so far precedes the synchronize
            await self._park(key, obj, raise_error=started)
            if started:
                break
        if mark and flags & VM_SYNC_SYNCHRONOUS and self.journal is not None:
            self.journal.prune(obj_id, mark)  # the pager now holds all of it durably
        error = self._write_errors.pop(obj_id, 0)
        if error:  # an earlier write-back nobody waited for (eviction, close) failed
            raise PageError(error)

    def sync_nowait(self, obj_id: ObjectId, flags: int) -> bool:
        """Start writing back an object's dirty pages without waiting (close, MS_ASYNC).

        Returns False when there was nothing to do or an earlier synchronize of the object
        is still outstanding; the pages stay dirty then, for the next write-back."""
        obj = self._usable(obj_id)
        if obj.state is not ObjectState.READY or not any(
                p.dirty for p in obj.pages.values()):
            return False
        ps = obj.page_size
        self._shed_dirty(obj)
        _, started = obj.begin_sync(0, max(-(-obj.size // ps) * ps, ps), flags)
        self._flush()
        return started

    def _shed_dirty(self, obj: MemoryObject) -> None:
        """Before a write-back of much dirty data, return it the way eviction does:
        ``data_return`` without a kernel copy, the pages leaving the cache. A write-back
        that kept them would hold every page twice until the pager had them all (a cache
        of 256 MiB of dirty pages would need 512 MiB); this way one page at a time."""
        if obj.state is not ObjectState.READY:
            return
        dirty = [i for i, p in obj.pages.items() if p.state is PageState.RESIDENT and p.dirty]
        if len(dirty) * obj.page_size > self.copy_limit:
            for index in sorted(dirty):
                obj.evict(index)

    # --- observation -------------------------------------------------------------------------

    def statistics(self) -> dict[str, object]:
        """What ``mofs stat`` shows: memory use by condition and message counts."""
        totals: Counter[str] = Counter()
        for obj in self.objects.values():
            totals.update(obj.statistics())
        ps = self.page_size
        return {
            "objects": len(self.objects),
            "page_size": ps,
            "budget_bytes": self.cache.budget,
            "resident_bytes": self.cache.resident_bytes,
            "resident_pages": totals["resident"],
            "requested_pages": totals["requested"],
            "dirty_bytes": totals["dirty"] * ps,
            "precious_bytes": totals["precious"] * ps,
            "locked_pages": totals["locked"],
            "linux_notices_pending": self.notices.pending,
            "linux_stores": self.notices.stores,
            "queued_to_pager_bytes": sum(c.inbox.queued_bytes for c in self.pagers.values()),
            "pager": self.conn.name,
            "pager_failure": self.conn.failure,
            "pagers": {url: {"objects": sum(self._conn(o) is c for o in self.objects),
                             "failure": c.failure} for url, c in self.pagers.items()},
            "messages": dict(sorted(self.messages.items())),
        }


def _holds(obj: MemoryObject | None, runs: list[tuple[int, int]]) -> bool:
    """Whether ``obj`` still holds every page of ``runs`` as one it must return (so a
    failed pager loses none of them: the object keeps them for its successor)."""
    if obj is None:
        return False
    ps = obj.page_size
    for offset, length in runs:
        for index in range(offset // ps, -(-(offset + length) // ps)):
            page = obj.pages.get(index)
            if page is None or page.state is not PageState.RESIDENT or not page.must_return:
                return False
    return True


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE caller should see for an exception from this module."""
    if isinstance(exc, PageError):
        return exc.errno
    return errno.EIO
