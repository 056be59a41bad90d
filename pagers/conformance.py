"""A pager conformance suite: drive a pager as the kernel does and name what it breaks.

Like trio's ``check_two_way_stream``, one function checks any pager::

    async def test_my_pager(tmp_path):
        await check_pager(lambda: MyPager(tmp_path / "store"), persistent=True)

:func:`check_pager` talks to the pager only through its ``serve(inbox, outbox)``
contract, as ``mofs/kernel.py`` does: ``init``, then requests, then ``terminate`` and a
closed inbox. It plays a faithful kernel: it never asks again for a page whose request is
unanswered (O7), hands back every page supplied *precious* before asking for it again or
terminating (O6), and answers a pager's ``lock_request``. Each guarantee in
:data:`GUARANTEES` is one check with its own pager and its own memory objects; the first
broken one raises :class:`PagerCheckFailed`, whose message names it in plain words::

    pager broke "returned pages read back": page 3 of object 1099511627787 came back ...

Every wait has a deadline (``timeout``), so a pager that hangs fails the check that was
waiting, never the test run. Object ids are random numbers above 2**40 and, unless the
pager is known not to persist, the suite truncates its objects to zero bytes at the end
of a successful run; still, run it on a scratch store.

For the command line, :func:`check_pager_url` opens pagers by URL (as ``--pager`` does)
and returns the guarantees that passed.
"""

from __future__ import annotations

import errno
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import trio

from mofs.channel import Channel
from mofs.messages import (
    MEMORY_OBJECT_COPY_CALL,
    MEMORY_OBJECT_COPY_DELAY,
    MEMORY_OBJECT_COPY_NONE,
    MEMORY_OBJECT_COPY_TEMPORARY,
    MEMORY_OBJECT_RETURN_ALL,
    MEMORY_OBJECT_RETURN_ANYTHING,
    MEMORY_OBJECT_RETURN_DIRTY,
    VM_PROT_READ,
    VM_PROT_WRITE,
    VM_SYNC_ASYNCHRONOUS,
    VM_SYNC_SYNCHRONOUS,
    ChangeAttributes,
    ChangeCompleted,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    Destroy,
    Init,
    LockCompleted,
    LockRequest,
    Message,
    ObjectId,
    Ready,
    SetSize,
    Synchronize,
    SynchronizeCompleted,
    Terminate,
)

from . import open_pager
from .example import DictPager
from .kit import Pager
from .memory import MemoryPager
from .remote import RemotePager
from .sqlite import SQLitePager

__all__ = [
    "CHECKS", "GUARANTEES", "PagerCheckFailed", "Servable", "check_pager", "check_pager_url",
]

# --- the guarantees, in plain words (the order is the order of the checks) -------------------

INIT = "init is answered with ready"
SERVE = "serve runs until its inbox is closed, then returns"
EVERY_PAGE_ONCE = "every page of a data_request is answered exactly once"
ZEROS = "unwritten pages read as zeros"
READ_BACK = "returned pages read back"
SYNC = "synchronize_completed echoes its range and comes after the returns it covers are stored"
PRECIOUS = "precious pages survive a reopen"
SET_SIZE = "set_size drops pages past the size and zeroes the tail of the last page"
ERRORS = "read errors become data_error with the right errno"
CONCURRENT = "requests on different objects are served concurrently, in order per object"
ANSWERED_ONCE = "no request is answered twice"

_INJECTED = "injected by the pager conformance suite"


class PagerCheckFailed(AssertionError):
    """A pager broke a guarantee; ``guarantee`` names it, ``detail`` says what happened."""

    def __init__(self, guarantee: str, detail: str) -> None:
        super().__init__(f'pager broke "{guarantee}": {detail}')
        self.guarantee = guarantee
        self.detail = detail


class Servable(Protocol):
    """Anything the kernel can talk to: a :class:`~pagers.kit.Pager` or a full-protocol
    pager with the same contract (answer ``inbox`` on ``outbox`` until ``inbox`` closes)."""

    async def serve(self, inbox: Channel, outbox: Channel) -> None: ...


class _Skipped(Exception):
    """The check does not apply to this pager (e.g. durability of a non-persistent one)."""


def _errno_name(number: int) -> str:
    return errno.errorcode.get(number, str(number))


def _difference(wanted: bytes, got: bytes) -> str:
    """How a page differs, in a few words."""
    if len(got) != len(wanted):
        return f"{len(got)} bytes instead of {len(wanted)}"
    if not any(got):
        return "it read as zeros"
    at = next(i for i, (a, b) in enumerate(zip(wanted, got, strict=True)) if a != b)
    return f"first difference at byte {at}: expected {wanted[at]:#04x}, got {got[at]:#04x}"


# --- the kernel's side of one pager ------------------------------------------------------------


@dataclass
class _Answer:
    """One page's answer: the bytes the kernel would map (zeros for data_unavailable)."""

    kind: type[Message]
    data: bytes
    precious: bool
    reason: int
    arrival: int

    def describe(self) -> str:
        if self.kind is DataError:
            return f"data_error({_errno_name(self.reason)})"
        if self.kind is DataSupply:
            return "a precious data_supply" if self.precious else "a data_supply"
        return "data_unavailable"


@dataclass(eq=False)
class _Request:
    """A data_request in flight: the pages still unanswered and the answers so far."""

    obj: ObjectId
    offset: int
    length: int
    page_size: int
    remaining: set[int]
    answers: dict[int, _Answer] = field(default_factory=dict)

    def __str__(self) -> str:
        first = self.offset // self.page_size
        last = first + self.length // self.page_size - 1
        pages = f"page {first}" if first == last else f"pages {first}-{last}"
        return f"data_request(object {self.obj}, {pages})"

    def unanswered(self) -> str:
        pages = [str(p // self.page_size) for p in sorted(self.remaining)]
        return ("page " if len(pages) == 1 else "pages ") + ", ".join(pages)


class _Kernel:
    """Drives one pager instance: sends requests, matches every reply to what it answers.

    Replies are read only while a check waits, one task at a time, so bookkeeping needs
    no locks; before anything is sent, replies already queued are taken into account, so
    a late duplicate is never mistaken for the answer to the next request."""

    def __init__(self, run: _Run, pager: Servable) -> None:
        self.run = run
        self.pager = pager
        self.ps = run.page_size
        self.inbox = Channel()
        self.outbox = Channel()
        self.served = trio.Event()
        self.serve_error: Exception | None = None
        self.killed = False
        self._scope = trio.CancelScope()
        self._arrivals = 0
        self._inited: list[ObjectId] = []
        self._init_replies: dict[ObjectId, Message] = {}
        self._pending: dict[tuple[ObjectId, int], _Request] = {}
        self._last: dict[tuple[ObjectId, int], _Request] = {}
        self._held: dict[ObjectId, dict[int, tuple[bytes, bool]]] = {}  # precious: data, dirty
        self._syncs: set[tuple[ObjectId, int, int]] = set()
        self._synced: dict[tuple[ObjectId, int, int], tuple[int, int]] = {}  # arrival, error

    # --- running the pager -------------------------------------------------------------

    async def serve(self) -> None:
        try:
            with self._scope:
                await self.pager.serve(self.inbox, self.outbox)
        except Exception as exc:
            self.serve_error = exc
        finally:
            self.served.set()
            self.outbox.close()

    async def close(self) -> None:
        """Terminate every object (returning precious pages first), close the inbox and
        require serve to return cleanly; then account for any reply still queued."""
        if not self.killed:
            if self.served.is_set():
                self._serve_ended("before its inbox was closed")
            for obj in self._inited:
                self._drain()
                self._return_held(obj, list(self._held.get(obj, {})))
                self.inbox.send(Terminate(obj))
            self.inbox.close()
            try:
                with trio.fail_after(self.run.timeout):
                    await self.served.wait()
            except trio.TooSlowError:
                self.run.fail(SERVE, f"serve did not return within {self.run.timeout:g} s "
                                     "of its inbox being closed")
            if self.serve_error is not None:
                self._serve_ended("after its inbox was closed")
        self._drain()

    async def kill(self) -> None:
        """Stop the pager by cancelling its serve, as if the kernel had gone away."""
        self.killed = True
        self._drain()
        self._scope.cancel()
        try:
            with trio.fail_after(self.run.timeout):
                await self.served.wait()
        except trio.TooSlowError:
            self.run.fail(SERVE, f"serve did not stop within {self.run.timeout:g} s "
                                 "of being cancelled")

    def _serve_ended(self, when: str) -> NoReturn:
        if self.serve_error is not None:
            self.run.fail(SERVE, f"serve raised {self.serve_error!r} {when}",
                          cause=self.serve_error)
        self.run.fail(SERVE, f"serve returned {when}")

    # --- sending ---------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        self._drain()
        self.inbox.send(msg)

    async def init(self, obj: ObjectId) -> None:
        """init the object and require a usable answer."""
        self.send(Init(obj, self.ps))
        await self._wait(lambda: obj in self._init_replies, f"answer to init(object {obj})",
                         INIT)
        self._inited.append(obj)
        reply = self._init_replies[obj]
        if isinstance(reply, Destroy):
            self.run.fail(INIT, f"init(object {obj}) was answered with destroy")
        assert isinstance(reply, (Ready, ChangeAttributes))
        strategy = reply.copy_strategy
        if strategy == MEMORY_OBJECT_COPY_CALL:
            self.run.fail(INIT, f"{reply.name()}(object {obj}) asks for copy strategy "
                                "COPY_CALL, which mofs refuses")
        if strategy not in (MEMORY_OBJECT_COPY_NONE, MEMORY_OBJECT_COPY_DELAY,
                            MEMORY_OBJECT_COPY_TEMPORARY):
            self.run.fail(INIT, f"{reply.name()}(object {obj}) names copy strategy "
                                f"{strategy}, which does not exist")

    def give(self, obj: ObjectId, first: int, pages: list[bytes], dirty: bool = True) -> None:
        """data_return of pages ``first``... (the kernel wrote into any it held)."""
        self._drain()
        held = self._held.get(obj, {})
        for index in range(first, first + len(pages)):
            held.pop(index * self.ps, None)
        self.send(DataReturn(obj, first * self.ps, b"".join(pages), dirty, kernel_copy=False))

    def evict(self, obj: ObjectId) -> None:
        """Hand back every precious page the kernel holds of ``obj``."""
        self._drain()
        self._return_held(obj, list(self._held.get(obj, {})))

    def set_size(self, obj: ObjectId, size: int) -> None:
        """set_size; the kernel first drops its own pages past the size, unreturned, and
        zeroes the tail of a partial last page it holds (which makes that page dirty)."""
        self._drain()
        held = self._held.get(obj, {})
        for offset in [o for o in held if o + self.ps > size]:
            data, _ = held.pop(offset)
            if offset < size:
                held[offset] = (data[: size - offset].ljust(self.ps, b"\0"), True)
        self.send(SetSize(obj, size))

    def send_request(self, obj: ObjectId, first: int, count: int,
                     access: int = VM_PROT_READ) -> _Request:
        """data_request pages ``first``..``first+count-1`` (precious ones held go back first)."""
        self._drain()  # before the pages are pending: a late reply is no answer to this one
        offset, length = first * self.ps, count * self.ps
        pages = range(offset, offset + length, self.ps)
        self._return_held(obj, pages)
        request = _Request(obj, offset, length, self.ps, set(pages))
        for page in pages:
            assert (obj, page) not in self._pending, "conformance suite bug: O7"
            self._pending[obj, page] = self._last[obj, page] = request
        self.inbox.send(DataRequest(obj, offset, length, access))
        return request

    async def collect(self, request: _Request, guarantee: str = EVERY_PAGE_ONCE,
                      while_: str = "") -> list[_Answer]:
        """Wait until every page of ``request`` is answered; the answers in page order."""
        await self._wait(lambda: not request.remaining,
                         lambda: f"answer to {request.unanswered()} of {request}",
                         guarantee, while_)
        return [request.answers[page]
                for page in range(request.offset, request.offset + request.length, self.ps)]

    async def read(self, obj: ObjectId, first: int, count: int,
                   access: int = VM_PROT_READ) -> list[_Answer]:
        return await self.collect(self.send_request(obj, first, count, access))

    def send_sync(self, obj: ObjectId, offset: int, length: int,
                  flags: int = VM_SYNC_SYNCHRONOUS) -> tuple[ObjectId, int, int]:
        key = (obj, offset, length)
        assert key not in self._syncs, "conformance suite bug: overlapping synchronize"
        self.send(Synchronize(obj, offset, length, flags))
        self._syncs.add(key)
        return key

    async def wait_sync(self, key: tuple[ObjectId, int, int],
                        guarantee: str = SYNC) -> tuple[int, int]:
        """Wait for the synchronize_completed of ``key``: (arrival, error)."""
        obj, offset, length = key
        await self._wait(lambda: key in self._synced,
                         f"synchronize_completed(object {obj}, offset {offset}, "
                         f"length {length})", guarantee)
        return self._synced[key]

    async def quiet(self) -> None:
        """Take in whatever arrives during the quiet period."""
        with trio.move_on_after(self.run.quiet):
            while True:
                try:
                    _, msg = await self.outbox.receive()
                except trio.EndOfChannel:
                    self._serve_ended("before its inbox was closed")
                self._dispatch(msg)

    def _return_held(self, obj: ObjectId, offsets: Iterable[int]) -> None:
        """data_return the held precious pages among ``offsets``, in contiguous runs."""
        held = self._held.get(obj, {})
        run: list[tuple[int, bytes, bool]] = []
        for offset in sorted(o for o in offsets if o in held):
            data, dirty = held.pop(offset)
            if run and (run[-1][0] + self.ps != offset or run[-1][2] != dirty):
                self._send_run(obj, run)
                run = []
            run.append((offset, data, dirty))
        if run:
            self._send_run(obj, run)

    def _send_run(self, obj: ObjectId, run: list[tuple[int, bytes, bool]]) -> None:
        data = b"".join(page for _, page, _ in run)
        self.inbox.send(DataReturn(obj, run[0][0], data, dirty=run[0][2], kernel_copy=False))

    # --- receiving -------------------------------------------------------------------

    async def _wait(self, done: Callable[[], bool], what: str | Callable[[], str],
                    guarantee: str, while_: str = "") -> None:
        """Take in replies until ``done()``; past the deadline, ``guarantee`` is broken."""
        try:
            with trio.fail_after(self.run.timeout):
                while not done():
                    try:
                        _, msg = await self.outbox.receive()
                    except trio.EndOfChannel:
                        self._serve_ended(f"while the kernel waited for the "
                                          f"{what if isinstance(what, str) else what()}")
                    self._dispatch(msg)
        except trio.TooSlowError:
            self.run.fail(guarantee, f"no {what if isinstance(what, str) else what()} "
                                     f"within {self.run.timeout:g} s{while_}")

    def _drain(self) -> None:
        while True:
            try:
                _, msg = self.outbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        self._arrivals += 1
        obj = msg.object
        if isinstance(msg, (DataSupply, DataUnavailable, DataError)):
            self._answer(msg)
        elif isinstance(msg, SynchronizeCompleted):
            self._sync_completed(msg)
        elif isinstance(msg, (Ready, ChangeAttributes)):
            self._init_replies.setdefault(obj, msg)
            if isinstance(msg, ChangeAttributes) and msg.reply and not self.inbox.closed:
                self.inbox.send(ChangeCompleted(obj, msg.may_cache, msg.copy_strategy))
        elif isinstance(msg, LockRequest):
            self._lock_request(msg)
        elif isinstance(msg, Destroy):
            if obj not in self._init_replies:
                self._init_replies[obj] = msg
            else:
                self.run.fail(self.run.checking, f"the pager destroyed object {obj}")
        else:
            self.run.fail(self.run.checking, f"the pager sent {msg.name()}, which only the "
                                             "kernel sends")

    def _answer(self, msg: DataSupply | DataUnavailable | DataError) -> None:
        obj, ps = msg.object, self.ps
        length = len(msg.data) if isinstance(msg, DataSupply) else msg.length
        what = f"{msg.name()}(object {obj}, offset {msg.offset}, length {length})"
        if msg.offset < 0 or msg.offset % ps or length <= 0 or length % ps:
            self.run.fail(EVERY_PAGE_ONCE, f"{what} does not cover whole {ps}-byte pages")
        if isinstance(msg, DataError) and msg.reason <= 0:
            self.run.fail(ERRORS, f"{what} carries reason {msg.reason}, not a positive errno")
        pages = range(msg.offset, msg.offset + length, ps)
        requests = [self._pending.get((obj, page)) for page in pages]
        if any(request is None for request in requests):
            page = next(p for p, r in zip(pages, requests, strict=True) if r is None)
            last = self._last.get((obj, page))
            if last is not None and last.remaining:
                self.run.fail(EVERY_PAGE_ONCE, f"{what} answers page {page // ps} of the "
                                               f"{last} a second time")
            if last is not None:
                self.run.fail(ANSWERED_ONCE, f"{what} answers page {page // ps} again, after "
                                             f"its {last} was answered")
            if isinstance(msg, DataSupply) and all(request is None for request in requests):
                self._hold(msg)  # unsolicited supply (prefetch) into absent pages: allowed
                return
            self.run.fail(EVERY_PAGE_ONCE, f"{what} covers page {page // ps}, which was not "
                                           "requested")
        for index, page in enumerate(pages):
            request = self._pending.pop((obj, page))
            request.remaining.discard(page)
            if isinstance(msg, DataSupply):
                answer = _Answer(DataSupply, msg.data[index * ps:(index + 1) * ps],
                                 msg.precious, 0, self._arrivals)
            elif isinstance(msg, DataUnavailable):
                answer = _Answer(DataUnavailable, bytes(ps), False, 0, self._arrivals)
            else:
                answer = _Answer(DataError, b"", False, msg.reason, self._arrivals)
            request.answers[page] = answer
        if isinstance(msg, DataSupply):
            self._hold(msg)

    def _hold(self, msg: DataSupply) -> None:
        """A precious page is the kernel's to return (decision 6)."""
        if msg.precious:
            held = self._held.setdefault(msg.object, {})
            for at in range(0, len(msg.data), self.ps):
                held[msg.offset + at] = (msg.data[at:at + self.ps], False)

    def _sync_completed(self, msg: SynchronizeCompleted) -> None:
        key = (msg.object, msg.offset, msg.length)
        if key in self._syncs:
            self._syncs.discard(key)
            self._synced[key] = (self._arrivals, msg.error)
            return
        what = (f"synchronize_completed(object {msg.object}, offset {msg.offset}, "
                f"length {msg.length})")
        if key in self._synced:
            self.run.fail(ANSWERED_ONCE, f"{what} came twice")
        asked = "; ".join(f"offset {o} length {n}" for obj, o, n in sorted(self._syncs)
                          if obj == msg.object) or "none"
        self.run.fail(SYNC, f"{what} does not echo the range of a synchronize "
                            f"(outstanding: {asked})")

    def _lock_request(self, msg: LockRequest) -> None:
        """Apply a pager's lock_request to the precious pages held; reply if asked."""
        if self.inbox.closed:
            return
        held = self._held.get(msg.object, {})
        for offset in sorted(o for o in held if msg.offset <= o < msg.offset + msg.length):
            data, dirty = held[offset]
            if (msg.should_return in (MEMORY_OBJECT_RETURN_ALL, MEMORY_OBJECT_RETURN_ANYTHING)
                    or (msg.should_return == MEMORY_OBJECT_RETURN_DIRTY and dirty)):
                self.inbox.send(DataReturn(msg.object, offset, data, dirty,
                                           kernel_copy=not msg.should_flush))
                held[offset] = (data, False)
            if msg.should_flush:
                del held[offset]
        if msg.reply:
            self.inbox.send(LockCompleted(msg.object, msg.offset, msg.length))


# --- one run of the suite ----------------------------------------------------------------------


class _Run:
    """The parameters of a run, the check in progress, and the objects used so far."""

    def __init__(self, make_pager: Callable[[], Servable], persistent: bool | None,
                 page_size: int, timeout: float, quiet: float) -> None:
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, not {page_size}")
        self.make_pager = make_pager
        self.persistent = persistent
        self.page_size = page_size
        self.timeout = timeout
        self.quiet = quiet
        self.checking = ""
        self.objects: list[ObjectId] = []
        self._next_object = random.SystemRandom().randrange(1 << 40, 1 << 41)

    def new_object(self) -> ObjectId:
        """A memory object no other check (and, likely, no real file) uses."""
        self._next_object += 1
        self.objects.append(ObjectId(self._next_object))
        return self.objects[-1]

    def fail(self, guarantee: str, detail: str, cause: BaseException | None = None) -> NoReturn:
        if self.checking and guarantee != self.checking:
            detail += f' (found while checking "{self.checking}")'
        raise PagerCheckFailed(guarantee, detail) from cause

    @asynccontextmanager
    async def session(self) -> AsyncIterator[_Kernel]:
        """A fresh pager from ``make_pager``, served for the block and then closed.

        A failure inside the block cancels the pager and is re-raised as it is (not in
        an exception group)."""
        kernel = _Kernel(self, self.make_pager())
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kernel.serve)
            try:
                yield kernel
                await kernel.close()
            except Exception as exc:
                failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def page(self, obj: ObjectId, index: int, tag: str) -> bytes:
        """Page contents unique to (object, page, tag), with no zero byte."""
        seed = f"{tag} of object {obj}, page {index}; ".encode()
        return (seed * (self.page_size // len(seed) + 1))[: self.page_size]

    def zeros(self) -> bytes:
        return bytes(self.page_size)

    def expect(self, guarantee: str, answers: list[_Answer], wanted: list[bytes],
               obj: ObjectId, first: int | list[int], how: str = "") -> None:
        """Each answer must be data (or zero fill) equal to ``wanted``."""
        indexes = first if isinstance(first, list) else range(first, first + len(wanted))
        for index, got, want in zip(indexes, answers, wanted, strict=True):
            if got.kind is DataError:
                self.fail(guarantee, f"page {index} of object {obj} was answered with "
                                     f"data_error({_errno_name(got.reason)}){how}")
            if got.data != want:
                self.fail(guarantee, f"page {index} of object {obj} came back different{how} "
                                     f"({_difference(want, got.data)})")


@contextmanager
def _inject(pager: Pager,
            faults: dict[tuple[ObjectId, int], BaseException | Callable[[], Awaitable[None]]],
            ) -> Iterator[None]:
    """Make ``pager.read_page`` raise, or first await a function, once per listed page."""
    original = pager.read_page
    shadowed = "read_page" in vars(pager)

    async def read_page(obj: ObjectId, offset: int, length: int) -> bytes | None:
        fault = faults.pop((obj, offset), None)
        if isinstance(fault, BaseException):
            raise fault
        if fault is not None:
            await fault()
        return await original(obj, offset, length)

    pager.read_page = read_page  # type: ignore[method-assign]
    try:
        yield
    finally:
        if shadowed:
            pager.read_page = original  # type: ignore[method-assign]
        else:
            del pager.read_page


class _DropInjected(logging.Filter):
    """Keeps the kit's "bug in read_page" line about an injected exception out of the log."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(arg is self.exc for arg in args)


# --- the checks --------------------------------------------------------------------------------

CHECKS: list[tuple[str, Callable[[_Run], Awaitable[None]]]] = []
"""(guarantee, check) in the order they run; a check raises PagerCheckFailed."""


def _checks(guarantee: str) -> Callable[[Callable[[_Run], Awaitable[None]]],
                                        Callable[[_Run], Awaitable[None]]]:
    def register(check: Callable[[_Run], Awaitable[None]]) -> Callable[[_Run], Awaitable[None]]:
        CHECKS.append((guarantee, check))
        return check
    return register


@_checks(INIT)
async def _check_init(run: _Run) -> None:
    """init is answered with ready (or change_attributes, which also asserts readiness),
    with any attributes but a copy strategy mofs supports: never COPY_CALL, never destroy."""
    async with run.session() as kernel:
        await kernel.init(run.new_object())
        await kernel.init(run.new_object())


@_checks(SERVE)
async def _check_serve(run: _Run) -> None:
    """serve keeps running while its inbox is open, and returns without raising once the
    inbox is closed and drained (after the terminates)."""
    async with run.session() as kernel:
        obj = run.new_object()
        await kernel.init(obj)
        kernel.give(obj, 0, [run.page(obj, 0, "serve")])


@_checks(EVERY_PAGE_ONCE)
async def _check_every_page_once(run: _Run) -> None:
    """A multi-page data_request is answered by supply / unavailable / error messages that
    together cover exactly the requested pages: whole pages, each once, nothing outside."""
    async with run.session() as kernel:
        obj = run.new_object()
        await kernel.init(obj)
        kernel.give(obj, 1, [run.page(obj, 1, "once"), run.page(obj, 2, "once")])
        kernel.give(obj, 4, [run.page(obj, 4, "once")])
        await kernel.read(obj, 0, 6)  # a mix of written and unwritten pages
        await kernel.read(obj, 10, 4)  # unwritten only
        await kernel.read(obj, 2, 1)
        first = kernel.send_request(obj, 20, 3)  # two requests in flight on one object
        second = kernel.send_request(obj, 0, 2, VM_PROT_READ | VM_PROT_WRITE)
        await kernel.collect(first)
        await kernel.collect(second)


@_checks(ZEROS)
async def _check_zeros(run: _Run) -> None:
    """Pages nothing was returned for read as zeros: data_unavailable, or a data_supply of
    zero bytes (precious or not), never an error; also beside a written page."""
    async with run.session() as kernel:
        obj = run.new_object()
        await kernel.init(obj)
        zeros = run.zeros()
        run.expect(ZEROS, await kernel.read(obj, 0, 3), [zeros] * 3, obj, 0)
        run.expect(ZEROS, await kernel.read(obj, 7, 2, VM_PROT_READ | VM_PROT_WRITE),
                   [zeros] * 2, obj, 7, " for a write fault")
        kernel.give(obj, 11, [run.page(obj, 11, "zeros")])
        answers = await kernel.read(obj, 10, 3)
        run.expect(ZEROS, [answers[0], answers[2]], [zeros] * 2, obj, [10, 12],
                   " next to a written page")


@_checks(READ_BACK)
async def _check_read_back(run: _Run) -> None:
    """A data_request after a data_return of the same pages gets the returned bytes: single
    pages, a multi-page return, an overwrite, unwritten pages in between."""
    async with run.session() as kernel:
        obj = run.new_object()
        await kernel.init(obj)
        a = [run.page(obj, i, "first") for i in range(8)]
        b = [run.page(obj, i, "second") for i in range(8)]
        zeros = run.zeros()
        kernel.give(obj, 3, [a[3]])
        kernel.give(obj, 5, a[5:8])
        run.expect(READ_BACK, await kernel.read(obj, 3, 5), [a[3], zeros, *a[5:8]], obj, 3)
        kernel.give(obj, 3, [b[3]])
        kernel.give(obj, 6, [b[6]])
        run.expect(READ_BACK, await kernel.read(obj, 0, 8),
                   [zeros, zeros, zeros, b[3], zeros, a[5], b[6], a[7]], obj, 0,
                   " after it was returned again")


@_checks(SYNC)
async def _check_synchronize(run: _Run) -> None:
    """synchronize_completed echoes the (offset, length) of its synchronize, reports no
    error, and follows the data_returns queued before it: they read back. For a pager run
    with ``persistent=True`` they must also be stored: the pager is stopped right after
    synchronize_completed (its serve cancelled, as if the kernel died) and a new pager
    from ``make_pager`` must read them back."""
    obj = run.new_object()
    pages = [run.page(obj, i, "synchronized") for i in range(6)]
    pages[4] = run.zeros()
    async with run.session() as kernel:
        await kernel.init(obj)
        kernel.give(obj, 0, pages[:4])
        kernel.give(obj, 5, pages[5:])
        keys = [kernel.send_sync(obj, 0, 8 * run.page_size, VM_SYNC_SYNCHRONOUS),
                kernel.send_sync(obj, 8 * run.page_size, 2 * run.page_size,
                                 VM_SYNC_ASYNCHRONOUS),
                kernel.send_sync(obj, 20 * run.page_size, run.page_size, VM_SYNC_SYNCHRONOUS)]
        for key in keys:
            _, error = await kernel.wait_sync(key)
            if error:
                run.fail(SYNC, f"synchronize_completed(object {obj}, offset {key[1]}, length "
                               f"{key[2]}) reports errno {_errno_name(error)} for returns "
                               "that should have succeeded")
        if run.persistent:
            await kernel.kill()
        else:
            run.expect(SYNC, await kernel.read(obj, 0, 6), pages, obj, 0,
                       " after synchronize_completed")
    if run.persistent:
        async with run.session() as kernel:
            await kernel.init(obj)
            run.expect(SYNC, await kernel.read(obj, 0, 6), pages, obj, 0,
                       " from a new pager, after synchronize_completed had acknowledged it")


@_checks(PRECIOUS)
async def _check_precious(run: _Run) -> None:
    """For ``persistent=True``: pages supplied precious and handed back by the kernel,
    unmodified (dirty=False) or modified, survive closing the pager and opening a new one
    on the same store, without a synchronize. (For a pager that supplies nothing precious
    this checks the same of plain returns.) Skipped otherwise."""
    if run.persistent is not True:
        raise _Skipped
    obj = run.new_object()
    data = [run.page(obj, i, "precious") for i in range(6)]
    data[1] = run.page(obj, 1, "changed precious")
    data[3] = data[4] = run.zeros()
    data[5] = run.page(obj, 5, "changed zero")
    async with run.session() as kernel:
        await kernel.init(obj)
        kernel.give(obj, 0, [run.page(obj, i, "precious") for i in range(3)])
        run.expect(READ_BACK, await kernel.read(obj, 0, 3),
                   [run.page(obj, i, "precious") for i in range(3)], obj, 0)
        kernel.give(obj, 1, [data[1]])  # the kernel wrote into a page it held
        run.expect(ZEROS, await kernel.read(obj, 5, 1), [run.zeros()], obj, 5)
        kernel.give(obj, 5, [data[5]])
        kernel.evict(obj)  # the unmodified ones go back with dirty=False
    async with run.session() as kernel:
        await kernel.init(obj)
        run.expect(PRECIOUS, await kernel.read(obj, 0, 6), data, obj, 0,
                   " from a new pager, after it was handed back")


@_checks(SET_SIZE)
async def _check_set_size(run: _Run) -> None:
    """set_size (mofs extension) discards the pages past the new size and zeroes the tail
    of a partial last page; growing the object again brings nothing back."""
    async with run.session() as kernel:
        obj = run.new_object()
        await kernel.init(obj)
        ps, zeros = run.page_size, run.zeros()
        data = [run.page(obj, i, "sized") for i in range(4)]
        kernel.give(obj, 0, data)
        tail = max(1, ps // 3)
        cut = data[1][:tail].ljust(ps, b"\0")
        kernel.set_size(obj, ps + tail)
        run.expect(SET_SIZE, await kernel.read(obj, 0, 4), [data[0], cut, zeros, zeros], obj,
                   0, f" after set_size({ps + tail})")
        kernel.set_size(obj, 4 * ps)
        run.expect(SET_SIZE, await kernel.read(obj, 1, 3), [cut, zeros, zeros], obj, 1,
                   f" after set_size({ps + tail}) then set_size({4 * ps})")
        kernel.set_size(obj, 0)
        run.expect(SET_SIZE, await kernel.read(obj, 0, 2), [zeros, zeros], obj, 0,
                   " after set_size(0)")


@_checks(ERRORS)
async def _check_errors(run: _Run) -> None:
    """Every data_error of every check carries a positive errno. For pagers built on the
    kit, faults injected into read_page (on the instance) map as the kit promises:
    OSError(ENOSPC) becomes data_error(ENOSPC) for that page alone, any other exception
    data_error(EIO), and the next read of the page succeeds."""
    async with run.session() as kernel:
        pager = kernel.pager
        if not isinstance(pager, Pager):
            return  # the positive errno is all that can be checked from outside
        obj = run.new_object()
        await kernel.init(obj)
        data = [run.page(obj, i, "faulty") for i in range(3)]
        kernel.give(obj, 0, data)
        ps = run.page_size
        for page, fault, wanted in (
                (1, OSError(errno.ENOSPC, _INJECTED), errno.ENOSPC),
                (2, ValueError(_INJECTED), errno.EIO)):
            kit_log = logging.getLogger("pagers.kit")
            quiet = _DropInjected(fault)
            kit_log.addFilter(quiet)
            try:
                with _inject(pager, {(obj, page * ps): fault}):
                    answers = await kernel.read(obj, 0, 3)
            finally:
                kit_log.removeFilter(quiet)
            got = answers[page]
            if got.kind is not DataError or got.reason != wanted:
                run.fail(ERRORS, f"read_page raising {fault!r} for page {page} of object {obj}"
                                 f" was answered with {got.describe()}, not "
                                 f"data_error({_errno_name(wanted)})")
            others = [i for i in range(3) if i != page]
            run.expect(ERRORS, [answers[i] for i in others], [data[i] for i in others], obj,
                       others, f" beside a page whose read_page raised {fault!r}")
            run.expect(ERRORS, await kernel.read(obj, page, 1), [data[page]], obj, page,
                       f" on the read after read_page raised {fault!r}")


@_checks(CONCURRENT)
async def _check_concurrency(run: _Run) -> None:
    """Interleaved messages about two objects are all answered, each object's in order:
    a data_return is handled before a later data_request of the same page, and a
    synchronize_completed comes after the answers queued ahead of it. For pagers built on
    the kit, a read_page stuck on one object (injected) must not hold up the other."""
    async with run.session() as kernel:
        objs = (run.new_object(), run.new_object())
        for obj in objs:
            await kernel.init(obj)
        data = {obj: [run.page(obj, i, "interleaved") for i in range(3)] for obj in objs}
        requests: dict[ObjectId, list[_Request]] = {obj: [] for obj in objs}
        for index in range(3):
            for obj in objs:
                kernel.give(obj, index, [data[obj][index]])
            for obj in objs:
                requests[obj].append(kernel.send_request(obj, index, 1))
        syncs = {obj: kernel.send_sync(obj, 0, 3 * run.page_size) for obj in objs}
        for obj in objs:
            answers = [(await kernel.collect(request, CONCURRENT))[0]
                       for request in requests[obj]]
            run.expect(CONCURRENT, answers, data[obj], obj, 0,
                       " when its returns and requests were interleaved with another object's")
            arrivals = [answer.arrival for answer in answers]
            arrivals.append((await kernel.wait_sync(syncs[obj], CONCURRENT))[0])
            if arrivals != sorted(arrivals):
                order = [sorted(arrivals).index(arrival) + 1 for arrival in arrivals]
                run.fail(CONCURRENT, f"the answers about object {obj} came out of order: those "
                                     "to pages 0, 1, 2 and the synchronize_completed arrived "
                                     f"as numbers {order}")
        pager = kernel.pager
        if isinstance(pager, Pager):
            stuck, other = objs
            release = trio.Event()
            entered = trio.CancelScope()  # ends the wait below once the read is stuck

            async def stall() -> None:
                entered.cancel()
                await release.wait()

            with _inject(pager, {(stuck, 9 * run.page_size): stall}):
                waiting = kernel.send_request(stuck, 9, 1)
                with entered:
                    await kernel.collect(waiting)  # done only if answered without read_page
                await kernel.collect(kernel.send_request(other, 9, 1), CONCURRENT,
                                     f" while a read_page of object {stuck} was stuck")
                release.set()
                await kernel.collect(waiting)


@_checks(ANSWERED_ONCE)
async def _check_answered_once(run: _Run) -> None:
    """No data_request or synchronize is answered twice: once its answers are in, nothing
    more about those pages arrives during a quiet period (``quiet`` seconds), and nothing
    is left over when the pager closes."""
    async with run.session() as kernel:
        obj = run.new_object()
        await kernel.init(obj)
        kernel.give(obj, 1, [run.page(obj, 1, "once")])
        await kernel.read(obj, 0, 3)
        await kernel.read(obj, 5, 1)
        await kernel.wait_sync(kernel.send_sync(obj, 0, 6 * run.page_size))
        await kernel.quiet()


GUARANTEES: tuple[str, ...] = tuple(guarantee for guarantee, _ in CHECKS)
"""Every guarantee the suite checks, in order."""


async def _cleanup(run: _Run) -> None:
    """Truncate the suite's objects to nothing, so a persistent store keeps no trace."""
    if run.persistent is False or not run.objects:
        return
    run.checking = "cleanup"
    async with run.session() as kernel:
        for obj in run.objects:
            await kernel.init(obj)
            kernel.set_size(obj, 0)
        for obj in run.objects:
            await kernel.wait_sync(kernel.send_sync(obj, 0, run.page_size))


async def _check_all(make_pager: Callable[[], Servable], *, persistent: bool | None = None,
                     page_size: int = 4096, timeout: float = 10.0, quiet: float = 0.2,
                     ) -> list[str]:
    run = _Run(make_pager, persistent, page_size, timeout, quiet)
    passed = []
    for guarantee, check in CHECKS:
        run.checking = guarantee
        try:
            await check(run)
        except _Skipped:
            continue
        passed.append(guarantee)
    await _cleanup(run)
    return passed


async def check_pager(make_pager: Callable[[], Servable], *, persistent: bool | None = None,
                      page_size: int = 4096, timeout: float = 10.0, quiet: float = 0.2,
                      ) -> None:
    """Check that the pagers ``make_pager()`` returns keep the protocol's guarantees.

    ``make_pager`` returns a fresh pager on the same backing store at each call.
    ``persistent``: True if what the pager acknowledged must survive a new pager (then
    durability and precious pages across a reopen are checked), False or None (unknown)
    if not. ``page_size`` goes in every ``init``; ``timeout`` bounds every wait, so a
    pager that never answers fails within it; ``quiet`` is how long to listen for
    duplicate answers. Raises :class:`PagerCheckFailed` naming the first broken
    guarantee."""
    await _check_all(make_pager, persistent=persistent, page_size=page_size,
                     timeout=timeout, quiet=quiet)


def _persistence(url: str, store_path: str) -> bool | None:
    """Whether the pager named by ``url`` keeps its pages across a new pager, if known."""
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        return True
    if scheme == "memory":
        return bool(rest)
    pager = open_pager(url, store_path)
    try:
        return persistence_of(url, pager)
    finally:
        if isinstance(pager, RemotePager):
            pager.disconnect()  # opened only to ask


def persistence_of(url: str, pager: object) -> bool | None:
    """Whether ``pager``, opened from ``url``, keeps its pages across a new pager, if known
    (a pager in another process says so in its hello)."""
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        return True
    if scheme == "memory":
        return bool(rest)
    if isinstance(pager, RemotePager):
        return pager.persistent
    if isinstance(pager, MemoryPager):
        return not pager.anonymous
    if isinstance(pager, SQLitePager):
        return True
    if isinstance(pager, DictPager):
        return False
    return None


def check_pager_url(url: str, store_path: str, **kw: Any) -> list[str]:
    """Run :func:`check_pager` (in ``trio.run``) on the pager named by ``url``, opened as
    ``open_pager(url, store_path)``; the names of the guarantees that passed.

    ``persistent`` is inferred unless given: ``sqlite:`` and ``memory:PATH`` persist,
    ``memory:`` and the dict pager do not, other pagers are not checked for durability.
    Other keywords go to :func:`check_pager`. Raises :class:`PagerCheckFailed`, or
    :class:`~mofs.errors.UserError` for a URL that names no pager."""
    if kw.get("persistent") is None:  # the command line passes None for "infer"
        kw["persistent"] = _persistence(url, store_path)
    return trio.run(functools.partial(_check_all, lambda: open_pager(url, store_path), **kw))
