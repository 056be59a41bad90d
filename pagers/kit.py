"""The pager kit: write four page-sized methods, and the kit speaks the protocol.

In the spirit of GNU Hurd's libpager, a simple pager never sees ``data_supply`` or
``lock_request``. It subclasses :class:`Pager` and says how to read, write and unlock
one page and how to change an object's size; :meth:`Pager.serve` turns the kernel's
messages into those calls and their results (or exceptions) into replies. A pager that
needs the whole protocol overrides :meth:`Pager.serve` and keeps the same contract.

Messages about one object are handled one at a time in inbox order, which is how the
protocol's per-object ordering (PROTOCOL.md O1, O5, O11) is kept without any locking;
different objects are served concurrently.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
from collections.abc import Awaitable
from dataclasses import dataclass, field

import trio

from mofs.channel import Channel
from mofs.messages import (
    MEMORY_OBJECT_COPY_DELAY,
    MEMORY_OBJECT_RETURN_NONE,
    VM_PROT_NONE,
    VM_PROT_WRITE,
    VM_SYNC_SYNCHRONOUS,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    DataUnlock,
    Init,
    LockRequest,
    Message,
    ObjectId,
    Ready,
    SetSize,
    Synchronize,
    SynchronizeCompleted,
    Terminate,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = mmap.PAGESIZE
"""Page size assumed for an object the kernel never sent ``init`` for."""

Page = bytes | int | None
"""One page's answer to a data_request: its bytes, an errno, or None for no data."""


@dataclass
class _Objects:
    """What the adapter remembers per object between messages."""

    page_size: dict[ObjectId, int] = field(default_factory=dict)
    write_error: dict[ObjectId, int] = field(default_factory=dict)  # latched errnos
    refused: dict[ObjectId, dict[int, int]] = field(default_factory=dict)  # offset -> errno


class Pager:
    """Base class of pagers; a simple pager overrides at most four methods.

    The attributes below are the object attributes sent in ``ready``. Subclasses may
    also override the hooks :meth:`sync`, :meth:`idle`, :meth:`terminate`,
    :meth:`close` and :meth:`handle_other`. An exception escaping :meth:`idle`,
    :meth:`terminate`, :meth:`close` or :meth:`handle_other` ends :meth:`serve`; the
    kernel then treats the pager as dead (PROTOCOL.md decision 8).
    """

    may_cache: bool = True
    """The kernel may keep an unmapped object's pages cached."""
    copy_strategy: int = MEMORY_OBJECT_COPY_DELAY
    """Copy-on-write semantics; DELAY promises the data never changes behind the kernel."""
    silent_overwrite: bool = False
    """The kernel may create a page that a write covers completely without asking."""
    cluster_size: int = 0
    """Bytes the kernel may ask for in one ``data_request`` (0: its own choice)."""
    precious: bool = False
    """Supply pages as precious: the pager keeps no copy, the kernel must return them."""
    lock_value: int = VM_PROT_NONE
    """Access prohibited on supplied pages; VM_PROT_WRITE makes the first write to a page
    ask :meth:`unlock_page` (``data_unlock``), as ext2fs does for holes."""

    # --- the four methods a simple pager overrides -------------------------------------

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        """Return the page at ``offset`` (``length`` is the page size), or ``None``.

        ``None`` means "no data": the kernel zero-fills. Shorter bytes are zero-padded.
        Raise ``OSError`` (EIO, ENOSPC, ...) to fail the read with that errno; any other
        exception is a pager bug and fails the read with EIO.
        """
        return None

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        """Persist one returned page. ``OSError`` is reported on the object's next
        ``synchronize_completed``; any other exception is reported there as EIO."""
        raise OSError(errno.EROFS, "this pager cannot store pages")

    async def unlock_page(self, obj: ObjectId, offset: int, length: int) -> None:
        """Allow writing to ``[offset, offset+length)``; return to grant.

        Raise ``OSError`` to refuse: the kernel flushes the pages and the next write
        fault on them fails with that errno.
        """

    async def set_size(self, obj: ObjectId, size: int) -> None:
        """The object is now ``size`` bytes (mofs extension): drop pages past it and
        zero the tail of a partial last page. Errors are reported like write_page's."""

    # --- optional hooks ----------------------------------------------------------------

    async def sync(self, obj: ObjectId, durable: bool) -> None:
        """Make the pages written so far stable; ``durable`` asks to survive power loss.

        Called before ``synchronize_completed``; errors are reported in it as
        write_page's are."""

    async def idle(self) -> None:
        """The inbox is momentarily empty: a good time for cheap housekeeping."""

    async def terminate(self, obj: ObjectId) -> None:
        """The kernel will send nothing more about ``obj`` until a new ``init``."""

    async def close(self) -> None:
        """The inbox is closed and drained: release resources."""

    async def handle_other(self, msg: Message) -> None:
        """Any message the adapter does not handle (completions); ignored by default."""

    # --- the adapter -------------------------------------------------------------------

    def page_size(self, obj: ObjectId) -> int:
        """The page size the kernel gave in ``init`` for ``obj``."""
        return self._objects.page_size.get(obj, DEFAULT_PAGE_SIZE)

    def latch_error(self, obj: ObjectId, err: int) -> None:
        """Report ``err`` on ``obj``'s next ``synchronize_completed`` (first error wins)."""
        self._objects.write_error.setdefault(obj, err or errno.EIO)

    @property
    def _objects(self) -> _Objects:
        # Created on first use, so that subclasses need not call super().__init__().
        try:
            return self.__dict__["_kit_objects"]
        except KeyError:
            return self.__dict__.setdefault("_kit_objects", _Objects())

    async def serve(self, inbox: Channel, outbox: Channel) -> None:
        """Answer ``inbox`` on ``outbox`` until ``inbox`` is closed and drained.

        Each object gets its own worker task, so a slow answer about one object never
        delays another (libpager's per-object workers), while the messages of one object
        are handled strictly in arrival order. :meth:`idle` runs before any task waits,
        so no await ever happens in the middle of a batch.
        """
        queues: dict[ObjectId, trio.MemorySendChannel[Message]] = {}
        finished: dict[ObjectId, trio.Event] = {}
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        _, msg = inbox.receive_nowait(hold=True)
                    except trio.WouldBlock:
                        await self.idle()
                        try:
                            _, msg = await inbox.receive(hold=True)
                        except trio.EndOfChannel:
                            break
                    except trio.EndOfChannel:
                        break
                    obj = msg.object
                    queue = queues.get(obj)
                    if queue is None:
                        queue, receive = trio.open_memory_channel[Message](math.inf)
                        queues[obj] = queue
                        previous = finished.get(obj)
                        finished[obj] = done = trio.Event()
                        nursery.start_soon(self._work, receive, inbox, outbox, previous, done)
                    queue.send_nowait(msg)
                    if isinstance(msg, Terminate):  # the next init starts a new worker
                        queue.close()
                        del queues[obj]
                for queue in queues.values():
                    queue.close()
        finally:
            with trio.CancelScope(shield=True):
                await self.close()

    async def _work(self, receive: trio.MemoryReceiveChannel[Message], inbox: Channel,
                    outbox: Channel, previous: trio.Event | None, done: trio.Event) -> None:
        """Handle one object's messages in order (after its previous worker, O10)."""
        try:
            if previous is not None:
                await previous.wait()
            while True:
                try:
                    msg = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel) as exc:
                    await self.idle()  # before any wait, and before this worker ends
                    if isinstance(exc, trio.EndOfChannel):
                        return
                    try:
                        msg = await receive.receive()
                    except trio.EndOfChannel:
                        return
                try:
                    await self.handle(msg, outbox)
                finally:
                    inbox.release(msg)  # its page bytes leave the back-pressure count
        finally:
            done.set()

    async def handle(self, msg: Message, outbox: Channel) -> None:
        """Handle one kernel message, sending its replies on ``outbox``."""
        known, obj = self._objects, msg.object
        if isinstance(msg, Init):
            known.page_size[obj] = msg.page_size
            outbox.send(Ready(obj, self.may_cache, self.copy_strategy, self.cluster_size,
                              self.silent_overwrite))
        elif isinstance(msg, DataRequest):
            await self._data_request(msg, outbox)
        elif isinstance(msg, DataReturn):
            size = self.page_size(obj)
            whole = bytes(msg.data)  # one copy at most; a bytes message is not copied
            for at in range(0, len(whole), size):
                page = whole if len(whole) == size else whole[at:at + size]
                await self._guard(obj, "write_page", self.write_page(obj, msg.offset + at, page))
        elif isinstance(msg, Synchronize):
            durable = bool(msg.sync_flags & VM_SYNC_SYNCHRONOUS)
            await self._guard(obj, "sync", self.sync(obj, durable))
            error = known.write_error.pop(obj, 0)
            outbox.send(SynchronizeCompleted(obj, msg.offset, msg.length, error))
        elif isinstance(msg, DataUnlock):
            await self._data_unlock(msg, outbox)
        elif isinstance(msg, SetSize):
            await self._guard(obj, "set_size", self.set_size(obj, msg.size))
        elif isinstance(msg, Terminate):
            await self.terminate(obj)
            known.page_size.pop(obj, None)
            known.refused.pop(obj, None)
            if obj in known.write_error:
                log.warning("object %s terminated with an unreported write error (errno %d)",
                            obj, known.write_error.pop(obj))
        else:
            await self.handle_other(msg)

    async def _guard(self, obj: ObjectId, what: str, call: Awaitable[None]) -> None:
        """Await a storing call; latch its error for the next synchronize_completed."""
        try:
            await call
        except OSError as exc:
            self.latch_error(obj, exc.errno or errno.EIO)
        except Exception as exc:
            log.error("%s bug in %s on object %s: %r", type(self).__name__, what, obj, exc)
            self.latch_error(obj, errno.EIO)

    async def _read(self, obj: ObjectId, offset: int, size: int) -> Page:
        """One page for a data_request: bytes (padded), None (no data) or an errno."""
        try:
            data = await self.read_page(obj, offset, size)
        except OSError as exc:
            return exc.errno or errno.EIO
        except Exception as exc:
            log.error("%s bug in read_page(%s, %d): %r", type(self).__name__, obj, offset, exc)
            return errno.EIO
        if data is None:
            return None
        if len(data) > size:
            log.error("%s bug: read_page(%s, %d) returned %d bytes for a %d-byte page",
                      type(self).__name__, obj, offset, len(data), size)
            return errno.EIO
        return bytes(data).ljust(size, b"\0")

    async def _data_request(self, msg: DataRequest, outbox: Channel) -> None:
        """Answer every page once, coalescing runs of the same kind into one message."""
        obj, size = msg.object, self.page_size(msg.object)
        refused = self._objects.refused.get(obj, {})
        run: list[Page] = []
        start = msg.offset
        for offset in range(msg.offset, msg.offset + msg.length, size):
            if msg.desired_access & VM_PROT_WRITE and offset in refused:
                page: Page = refused.pop(offset)
            else:
                page = await self._read(obj, offset, size)
            if run and _kind(run[-1]) != _kind(page):
                self._send_run(outbox, obj, start, size, run)
                start, run = offset, []
            run.append(page)
        if run:
            self._send_run(outbox, obj, start, size, run)

    def _send_run(self, outbox: Channel, obj: ObjectId, offset: int, size: int,
                  run: list[Page]) -> None:
        first = run[0]
        if isinstance(first, bytes):
            outbox.send(DataSupply(obj, offset, b"".join(run), self.lock_value, self.precious))
        elif first is None:
            outbox.send(DataUnavailable(obj, offset, size * len(run)))
        else:
            outbox.send(DataError(obj, offset, size * len(run), first))

    async def _data_unlock(self, msg: DataUnlock, outbox: Channel) -> None:
        """Grant by lifting the lock; refuse by flushing and failing the next write fault."""
        obj, offset, length = msg.object, msg.offset, msg.length
        try:
            await self.unlock_page(obj, offset, length)
        except Exception as exc:
            if not isinstance(exc, OSError):
                log.error("%s bug in unlock_page(%s, %d): %r",
                          type(self).__name__, obj, offset, exc)
            err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            refused = self._objects.refused.setdefault(obj, {})
            for page in range(offset, offset + length, self.page_size(obj)):
                refused[page] = err
            outbox.send(LockRequest(obj, offset, length, MEMORY_OBJECT_RETURN_NONE,
                                    should_flush=True, lock_value=VM_PROT_WRITE, reply=False))
        else:
            outbox.send(LockRequest(obj, offset, length, MEMORY_OBJECT_RETURN_NONE,
                                    should_flush=False, lock_value=VM_PROT_NONE, reply=False))


def _kind(page: Page) -> object:
    """Pages of one kind coalesce: data with data, absence with absence, same errno."""
    return b"" if isinstance(page, bytes) else page
