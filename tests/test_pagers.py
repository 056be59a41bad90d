"""The pager kit and the built-in pagers, driven through channels as the kernel drives them."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest
import trio

from mofs.channel import Channel
from mofs.errors import UserError
from mofs.messages import (
    MEMORY_OBJECT_COPY_DELAY,
    MEMORY_OBJECT_RETURN_NONE,
    VM_PROT_NONE,
    VM_PROT_READ,
    VM_PROT_WRITE,
    VM_SYNC_ASYNCHRONOUS,
    VM_SYNC_SYNCHRONOUS,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    DataUnlock,
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
from pagers import DictPager, MemoryPager, Pager, SQLitePager, open_pager

PS = 4096
OBJ = ObjectId(7)
RW = VM_PROT_READ | VM_PROT_WRITE


class Kernel:
    """The kernel's side of one pager connection."""

    def __init__(self, trace: Callable[[int, Message], None] | None = None) -> None:
        self.inbox = Channel()
        self.outbox = Channel(trace)

    async def ask(self, *msgs: Message, replies: int = 1) -> list[Message]:
        """Send ``msgs`` in one batch and collect ``replies`` answers."""
        for msg in msgs:
            self.inbox.send(msg)
        return [(await self.outbox.receive())[1] for _ in range(replies)]

    async def replies(self, count: int) -> list[Message]:
        return [(await self.outbox.receive())[1] for _ in range(count)]

    async def init(self, obj: ObjectId = OBJ, page_size: int = PS) -> Message:
        return (await self.ask(Init(obj, page_size)))[0]


@asynccontextmanager
async def running(pager: Pager, trace: Callable[[int, Message], None] | None = None,
                  ) -> AsyncIterator[Kernel]:
    """Serve ``pager`` for the block; then close the inbox and require a clean return."""
    kernel = Kernel(trace)
    returned = trio.Event()

    async def serve() -> None:
        await pager.serve(kernel.inbox, kernel.outbox)
        returned.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield kernel
            kernel.inbox.close()
        assert returned.is_set()
        assert kernel.outbox.pending() == 0, "unread replies"


@pytest.fixture(params=["memory", "sqlite"])
def make_pager(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Pager]:
    if request.param == "memory":
        pager = DictPager()  # one instance: memory does not survive a new pager
        return lambda: pager
    return lambda: SQLitePager(str(tmp_path / "store.db"))


def page(byte: int) -> bytes:
    return bytes([byte]) * PS


def rows(path: Path) -> list[tuple[int, int, bytes]]:
    """The pages table as another connection sees it."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT object, offset, data FROM pages ORDER BY 1, 2").fetchall()


# --- every pager -------------------------------------------------------------------------


async def test_init_answers_ready(make_pager: Callable[[], Pager]) -> None:
    pager = make_pager()
    async with running(pager) as kernel:
        ready = await kernel.init()
    assert ready == Ready(OBJ, may_cache=True, copy_strategy=MEMORY_OBJECT_COPY_DELAY,
                          cluster_size=0, silent_overwrite=isinstance(pager, SQLitePager))


async def test_unwritten_pages_are_unavailable(make_pager: Callable[[], Pager]) -> None:
    async with running(make_pager()) as kernel:
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, PS, 3 * PS, VM_PROT_READ)) == [
            DataUnavailable(OBJ, PS, 3 * PS)]


async def test_returned_pages_read_back(make_pager: Callable[[], Pager]) -> None:
    async with running(make_pager()) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, PS, page(1) + page(2), dirty=True, kernel_copy=False))
        assert await kernel.ask(DataRequest(OBJ, PS, 2 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, PS, page(1) + page(2), VM_PROT_NONE, precious=False)]
        assert await kernel.ask(DataRequest(OBJ, 0, 4 * PS, RW), replies=3) == [
            DataUnavailable(OBJ, 0, PS),
            DataSupply(OBJ, PS, page(1) + page(2)),
            DataUnavailable(OBJ, 3 * PS, PS)]


async def test_page_size_is_per_object(make_pager: Callable[[], Pager]) -> None:
    small, big = ObjectId(1), ObjectId(2)
    async with running(make_pager()) as kernel:
        await kernel.init(small, 512)
        await kernel.init(big, 2 * PS)
        kernel.inbox.send(DataReturn(small, 0, b"a" * 512 + b"b" * 512, True, False))
        kernel.inbox.send(DataReturn(big, 0, b"c" * 2 * PS, True, False))
        assert await kernel.ask(DataRequest(small, 512, 512, VM_PROT_READ)) == [
            DataSupply(small, 512, b"b" * 512)]
        assert await kernel.ask(DataRequest(big, 0, 4 * PS, VM_PROT_READ), replies=2) == [
            DataSupply(big, 0, b"c" * 2 * PS), DataUnavailable(big, 2 * PS, 2 * PS)]


async def test_synchronize_echoes_its_range(make_pager: Callable[[], Pager]) -> None:
    async with running(make_pager()) as kernel:
        await kernel.init()
        assert await kernel.ask(Synchronize(OBJ, 2 * PS, 5 * PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 2 * PS, 5 * PS, error=0)]
        assert await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, PS, error=0)]


async def test_set_size_drops_pages_and_zeroes_the_tail(
        make_pager: Callable[[], Pager]) -> None:
    async with running(make_pager()) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1) + page(2) + page(3) + page(4), True, False))
        kernel.inbox.send(SetSize(OBJ, PS + 100))
        assert await kernel.ask(DataRequest(OBJ, 0, 4 * PS, VM_PROT_READ), replies=2) == [
            DataSupply(OBJ, 0, page(1) + b"\2" * 100 + bytes(PS - 100)),
            DataUnavailable(OBJ, 2 * PS, 2 * PS)]
        kernel.inbox.send(SetSize(OBJ, PS))
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ), replies=2) == [
            DataSupply(OBJ, 0, page(1)), DataUnavailable(OBJ, PS, PS)]
        kernel.inbox.send(SetSize(OBJ, 0))
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataUnavailable(OBJ, 0, PS)]


async def test_pages_outlive_terminate(make_pager: Callable[[], Pager]) -> None:
    async with running(make_pager()) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(9), True, False))
        kernel.inbox.send(Terminate(OBJ))
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, page(9))]


async def test_pages_outlive_the_pager(make_pager: Callable[[], Pager]) -> None:
    async with running(make_pager()) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(5), True, False))
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        kernel.inbox.send(DataReturn(OBJ, PS, page(6), True, False))  # never synchronized
    async with running(make_pager()) as kernel:
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, page(5) + page(6))]


# --- the SQLite pager ---------------------------------------------------------------------


async def test_sqlite_commits_before_acknowledging(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    seen: list[list[tuple[int, int, bytes]]] = []

    def trace(seqno: int, msg: Message) -> None:
        if isinstance(msg, SynchronizeCompleted):  # runs inside serve, as the reply is sent
            seen.append(rows(path))

    async with running(SQLitePager(str(path)), trace) as kernel:
        await kernel.init()
        await kernel.ask(DataReturn(OBJ, 0, page(1) + page(2), True, False),
                         Synchronize(OBJ, 0, 2 * PS, VM_SYNC_SYNCHRONOUS))
    assert seen == [[(OBJ, 0, page(1)), (OBJ, PS, page(2))]]


async def test_sqlite_durable_sync_fsyncs_the_wal(
        tmp_path: Path, fsynced: list[str]) -> None:
    path = tmp_path / "store.db"
    synced = fsynced
    async with running(SQLitePager(str(path))) as kernel:
        await kernel.init()
        await kernel.ask(DataReturn(OBJ, 0, page(1), True, False),
                         Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS))
        assert synced == []
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        assert f"{path}-wal" in synced
        synced.clear()
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))  # nothing new
        assert synced == []


async def test_sqlite_zero_pages_leave_no_row(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with running(SQLitePager(str(path))) as kernel:
        await kernel.init()
        await kernel.ask(DataReturn(OBJ, 0, page(1) + bytes(PS), True, False),
                         Synchronize(OBJ, 0, 2 * PS, VM_SYNC_SYNCHRONOUS))
        assert rows(path) == [(OBJ, 0, page(1))]
        await kernel.ask(DataReturn(OBJ, 0, bytes(PS), True, False),
                         Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        assert rows(path) == []
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataUnavailable(OBJ, 0, PS)]


async def test_sqlite_set_size_rows(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with running(SQLitePager(str(path))) as kernel:
        await kernel.init()
        await kernel.ask(DataReturn(OBJ, 0, page(1) + page(2) + page(3), True, False),
                         SetSize(OBJ, PS + 10),
                         Synchronize(OBJ, 0, 3 * PS, VM_SYNC_SYNCHRONOUS))
        # the tail page keeps its 10 bytes; the zeros past them are not stored
        assert rows(path) == [(OBJ, 0, page(1)), (OBJ, PS, b"\2" * 10)]
        await kernel.ask(SetSize(OBJ, 0), Synchronize(OBJ, 0, 3 * PS, VM_SYNC_SYNCHRONOUS))
        assert rows(path) == []


async def test_sqlite_keeps_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE inodes (id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO inodes VALUES (1)")
        db.commit()
    async with running(SQLitePager(str(path))) as kernel:
        await kernel.init()
        await kernel.ask(DataReturn(OBJ, 0, page(1), True, False),
                         Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT id FROM inodes").fetchall() == [(1,)]
    assert rows(path) == [(OBJ, 0, page(1))]


async def test_sqlite_errors_become_errnos(tmp_path: Path) -> None:
    async with running(SQLitePager(str(tmp_path / "missing" / "store.db"))) as kernel:
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataError(OBJ, 0, PS, reason=errno.EIO)]
        kernel.inbox.send(DataReturn(OBJ, 0, page(1), True, False))
        assert await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, PS, error=errno.EIO)]


# --- the kit's error handling ----------------------------------------------------------------


class Faulty(DictPager):
    """A memory pager whose pages at ``bad`` fail with ``error``."""

    def __init__(self, error: Exception, bad: int = PS) -> None:
        super().__init__()
        self.error, self.bad = error, bad

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        if offset == self.bad:
            raise self.error
        return await super().read_page(obj, offset, length)

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        if offset == self.bad:
            raise self.error
        await super().write_page(obj, offset, data)

    async def unlock_page(self, obj: ObjectId, offset: int, length: int) -> None:
        if offset == self.bad:
            raise self.error


async def test_read_oserror_becomes_data_error() -> None:
    pager = Faulty(OSError(errno.ENOSPC, "full"))
    async with running(pager) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1), True, False))
        assert await kernel.ask(DataRequest(OBJ, 0, 3 * PS, VM_PROT_READ), replies=3) == [
            DataSupply(OBJ, 0, page(1)),
            DataError(OBJ, PS, PS, reason=errno.ENOSPC),
            DataUnavailable(OBJ, 2 * PS, PS)]


async def test_read_bug_becomes_eio_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async with running(Faulty(ValueError("oops"))) as kernel:
        await kernel.init()
        with caplog.at_level(logging.ERROR, logger="pagers.kit"):
            assert await kernel.ask(DataRequest(OBJ, PS, PS, VM_PROT_READ)) == [
                DataError(OBJ, PS, PS, reason=errno.EIO)]
    [record] = caplog.records
    assert "ValueError('oops')" in record.getMessage()
    assert "\n" not in record.getMessage() and record.exc_info is None


async def test_short_pages_are_padded_and_long_ones_fail(
        caplog: pytest.LogCaptureFixture) -> None:
    class Odd(Pager):
        async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
            return b"x" * (10 if offset == 0 else length + 1)

    async with running(Odd()) as kernel:
        await kernel.init()
        with caplog.at_level(logging.ERROR, logger="pagers.kit"):
            assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ), replies=2) == [
                DataSupply(OBJ, 0, b"x" * 10 + bytes(PS - 10)),
                DataError(OBJ, PS, PS, reason=errno.EIO)]
    assert len(caplog.records) == 1


async def test_write_error_is_reported_once_on_synchronize() -> None:
    async with running(Faulty(OSError(errno.EIO, "bad sector"))) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1) + page(2) + page(3), True, False))
        assert await kernel.ask(Synchronize(OBJ, 0, 3 * PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, 3 * PS, error=errno.EIO)]
        assert await kernel.ask(Synchronize(OBJ, 0, 3 * PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, 3 * PS, error=0)]
        # The pages on either side of the bad one were still written.
        assert await kernel.ask(DataRequest(OBJ, 2 * PS, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 2 * PS, page(3))]


async def test_write_error_is_per_object() -> None:
    other = ObjectId(8)
    async with running(Faulty(OSError(errno.ENOSPC, "full"))) as kernel:
        await kernel.init()
        await kernel.init(other)
        kernel.inbox.send(DataReturn(OBJ, PS, page(1), True, False))
        replies = await kernel.ask(Synchronize(other, 0, PS, VM_SYNC_SYNCHRONOUS),
                                   Synchronize(OBJ, PS, PS, VM_SYNC_SYNCHRONOUS), replies=2)
        # objects are served concurrently: only the order within one object is fixed
        assert sorted(replies, key=lambda m: m.object) == [
            SynchronizeCompleted(OBJ, PS, PS, error=errno.ENOSPC),
            SynchronizeCompleted(other, 0, PS, error=0)]


async def test_unlock_is_granted_by_default() -> None:
    async with running(DictPager()) as kernel:
        await kernel.init()
        assert await kernel.ask(DataUnlock(OBJ, PS, 2 * PS, VM_PROT_WRITE)) == [
            LockRequest(OBJ, PS, 2 * PS, MEMORY_OBJECT_RETURN_NONE, should_flush=False,
                        lock_value=VM_PROT_NONE, reply=False)]


async def test_unlock_refusal_fails_the_next_write_fault() -> None:
    class ReadOnly(DictPager):
        async def unlock_page(self, obj: ObjectId, offset: int, length: int) -> None:
            raise OSError(errno.EROFS, "read-only")

    async with running(ReadOnly()) as kernel:
        await kernel.init()
        assert await kernel.ask(DataUnlock(OBJ, PS, PS, VM_PROT_WRITE)) == [
            LockRequest(OBJ, PS, PS, MEMORY_OBJECT_RETURN_NONE, should_flush=True,
                        lock_value=VM_PROT_WRITE, reply=False)]
        assert await kernel.ask(DataRequest(OBJ, PS, PS, VM_PROT_READ)) == [
            DataUnavailable(OBJ, PS, PS)]
        assert await kernel.ask(DataRequest(OBJ, 0, 3 * PS, RW), replies=3) == [
            DataUnavailable(OBJ, 0, PS), DataError(OBJ, PS, PS, reason=errno.EROFS),
            DataUnavailable(OBJ, 2 * PS, PS)]
        # Only the next write fault fails; the one after asks again.
        assert await kernel.ask(DataRequest(OBJ, PS, PS, RW)) == [DataUnavailable(OBJ, PS, PS)]


async def test_hooks_are_called_in_order() -> None:
    calls: list[tuple] = []

    class Recorder(DictPager):
        async def sync(self, obj: ObjectId, durable: bool) -> None:
            calls.append(("sync", obj, durable))

        async def idle(self) -> None:
            calls.append(("idle",))

        async def terminate(self, obj: ObjectId) -> None:
            calls.append(("terminate", obj))

        async def handle_other(self, msg: Message) -> None:
            calls.append(("other", msg))

        async def close(self) -> None:
            calls.append(("close",))

    async with running(Recorder()) as kernel:
        await kernel.init()
        calls.clear()
        await kernel.ask(LockCompleted(OBJ, 0, PS), Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS),
                         Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS), replies=2)
        kernel.inbox.send(Terminate(OBJ))
    assert ("idle",) in calls
    assert [c for c in calls if c != ("idle",)] == [
        ("other", LockCompleted(OBJ, 0, PS)), ("sync", OBJ, False), ("sync", OBJ, True),
        ("terminate", OBJ), ("close",)]


async def test_a_slow_object_does_not_delay_another_and_order_is_kept_per_object() -> None:
    release = trio.Event()

    class Slow(DictPager):
        async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
            if obj == OBJ:
                await release.wait()
            return None

    other = ObjectId(OBJ + 1)
    async with running(Slow()) as kernel:
        kernel.inbox.send(Init(OBJ, PS))
        kernel.inbox.send(Init(other, PS))
        assert len(await kernel.replies(2)) == 2
        kernel.inbox.send(DataRequest(OBJ, 0, PS, VM_PROT_READ))
        kernel.inbox.send(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        kernel.inbox.send(DataRequest(other, 0, PS, VM_PROT_READ))
        assert await kernel.replies(1) == [DataUnavailable(other, 0, PS)]
        release.set()
        assert await kernel.replies(2) == [DataUnavailable(OBJ, 0, PS),
                                           SynchronizeCompleted(OBJ, 0, PS)]


# --- open_pager ------------------------------------------------------------------------------


def test_open_pager_builtins(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    default = open_pager(None, store)
    assert isinstance(default, SQLitePager) and default.path == store
    assert isinstance(open_pager("sqlite:", store), SQLitePager)
    assert open_pager("sqlite:", store).path == store  # type: ignore[attr-defined]
    assert open_pager("sqlite:/elsewhere.db", store).path == "/elsewhere.db"  # type: ignore
    assert isinstance(open_pager("memory:", store), MemoryPager)
    assert open_pager("memory:/swap.db", store).path == "/swap.db"  # type: ignore[attr-defined]
    assert not (tmp_path / "store.db").exists()  # opening a pager touches nothing


def test_open_pager_unknown_scheme_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        open_pager("nfs://host/x", str(tmp_path / "store.db"))
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in message
    assert message.startswith("unknown pager 'nfs://host/x': ")
    assert "memory:" in message and "sqlite:" in message


def test_open_pager_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    fake = importlib.metadata.EntryPoint("fancy", "pagers.sqlite:SQLitePager", "mofs.pagers")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [fake])
    pager = open_pager("fancy:/some/where.db", str(tmp_path / "store.db"))
    assert isinstance(pager, SQLitePager) and pager.path == "/some/where.db"
    with pytest.raises(UserError, match=r"known schemes are dir:, fancy:, fsspec\+PROTO:, "
                                        r"memory:, python:, sqlite:"):
        open_pager("other:", str(tmp_path / "store.db"))


async def test_memory_pager_supplies_precious_zero_pages_and_swaps_returns(
        tmp_path: Path) -> None:
    swap = tmp_path / "swap.db"
    async with running(MemoryPager(str(swap))) as kernel:
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, bytes(2 * PS), VM_PROT_NONE, True)]
        kernel.inbox.send(DataReturn(OBJ, PS, b"s" * PS, False, False))
        assert await kernel.ask(Synchronize(OBJ, 0, 2 * PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, 2 * PS)]
    async with running(MemoryPager(str(swap))) as kernel:  # persistent: a new pager
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, PS, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, PS, b"s" * PS, VM_PROT_NONE, True)]


async def test_anonymous_memory_pager_leaves_no_swap_file_behind(tmp_path: Path) -> None:
    pager = MemoryPager()
    async with running(pager) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, b"s" * PS, True, False))
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, b"s" * PS, VM_PROT_NONE, True)]
        assert os.path.exists(pager.path)
    assert not os.path.exists(pager.path)
