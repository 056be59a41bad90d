"""The pager conformance suite: the built-in pagers pass it, broken pagers fail it by name."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import trio

from mofs.channel import Channel
from mofs.messages import (
    MEMORY_OBJECT_COPY_CALL,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    Message,
    ObjectId,
    Synchronize,
    SynchronizeCompleted,
)
from pagers import DictPager, MemoryPager, SQLitePager, conformance
from pagers.conformance import GUARANTEES, PagerCheckFailed, check_pager, check_pager_url

PS = 4096


def rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM pages").fetchone()[0]


# --- the built-in pagers pass -------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [PS, 512])
async def test_sqlite_pager_conforms(tmp_path: Path, page_size: int) -> None:
    store = tmp_path / "store.db"
    await check_pager(lambda: SQLitePager(str(store)), persistent=True, page_size=page_size)
    assert rows(store) == 0, "the suite cleans up after itself"


async def test_anonymous_memory_pager_conforms() -> None:
    await check_pager(MemoryPager, persistent=False)


async def test_memory_pager_with_swap_conforms(tmp_path: Path) -> None:
    swap = tmp_path / "swap.db"
    await check_pager(lambda: MemoryPager(str(swap)), persistent=True)
    assert rows(swap) == 0


@pytest.mark.parametrize("persistent", [False, None])
async def test_dict_pager_conforms(persistent: bool | None) -> None:
    await check_pager(DictPager, persistent=persistent)


def test_check_pager_url_infers_persistence(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    everything = list(GUARANTEES)
    not_durable = [g for g in GUARANTEES if g != conformance.PRECIOUS]
    assert check_pager_url("sqlite:", store) == everything
    assert check_pager_url(f"memory:{tmp_path / 'swap.db'}", store) == everything
    assert check_pager_url("memory:", store) == not_durable
    assert check_pager_url("python:pagers.example:DictPager", store) == not_durable
    assert len(GUARANTEES) == 11


def test_check_pager_url_persistence_can_be_overridden(tmp_path: Path) -> None:
    with pytest.raises(PagerCheckFailed) as failed:
        check_pager_url("memory:", str(tmp_path / "store.db"), persistent=True, timeout=2)
    assert failed.value.guarantee == conformance.SYNC


# --- broken pagers fail, naming the guarantee ---------------------------------------------------


class Forgetful(DictPager):
    """Drops every returned page: everything reads as zeros."""

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        pass


class WrongSyncLength(DictPager):
    """Acknowledges a synchronize with a range one page too long."""

    async def handle(self, msg: Message, outbox: Channel) -> None:
        if isinstance(msg, Synchronize):
            outbox.send(SynchronizeCompleted(msg.object, msg.offset, msg.length + PS))
        else:
            await super().handle(msg, outbox)


class AnswersTwice(DictPager):
    """Handles every data_request twice, so every page is answered twice."""

    async def handle(self, msg: Message, outbox: Channel) -> None:
        await super().handle(msg, outbox)
        if isinstance(msg, DataRequest):
            await super().handle(msg, outbox)


class NeverAnswers(DictPager):
    """Its reads never finish."""

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class CopyCall(DictPager):
    copy_strategy = MEMORY_OBJECT_COPY_CALL


class ShortSupply(DictPager):
    """Answers a data_request with one byte too few."""

    async def handle(self, msg: Message, outbox: Channel) -> None:
        if isinstance(msg, DataRequest):
            outbox.send(DataSupply(msg.object, msg.offset, bytes(msg.length - 1)))
        else:
            await super().handle(msg, outbox)


class ZeroReason(DictPager):
    """Fails every read with data_error(0)."""

    async def handle(self, msg: Message, outbox: Channel) -> None:
        if isinstance(msg, DataRequest):
            outbox.send(DataError(msg.object, msg.offset, msg.length, 0))
        else:
            await super().handle(msg, outbox)


class _EIOOnly:
    """An outbox that turns every data_error's reason into EIO."""

    def __init__(self, outbox: Channel) -> None:
        self.outbox = outbox

    def send(self, msg: Message) -> int:
        if isinstance(msg, DataError):
            msg = DataError(msg.object, msg.offset, msg.length, errno.EIO)
        return self.outbox.send(msg)


class EIOOnly(DictPager):
    """Loses the errno of read errors, as libpager does."""

    async def handle(self, msg: Message, outbox: Channel) -> None:
        await super().handle(msg, _EIOOnly(outbox))  # type: ignore[arg-type]


class IgnoresSetSize(DictPager):
    async def set_size(self, obj: ObjectId, size: int) -> None:
        pass


class OneAtATime(DictPager):
    """Serves one message at a time across all objects."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = trio.Lock()

    async def handle(self, msg: Message, outbox: Channel) -> None:
        async with self.lock:
            await super().handle(msg, outbox)


class QuitsEarly(DictPager):
    """serve returns at once."""

    async def serve(self, inbox: Channel, outbox: Channel) -> None:
        pass


class JunkInHoles(DictPager):
    """Pages never written read as 0xff."""

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        page = await super().read_page(obj, offset, length)
        return b"\xff" * length if page is None else page


class CleanReturnsInRAM(MemoryPager):
    """Keeps no copy of what it supplies (a strict precious pager), but holds pages handed
    back unmodified only in memory: they are lost when the pager closes."""

    def __init__(self, swap: str) -> None:
        super().__init__(swap)
        self.clean: dict[tuple[ObjectId, int], bytes] = {}

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        if (obj, offset) in self.clean:
            return self.clean.pop((obj, offset))
        page = await super().read_page(obj, offset, length)
        await self.write_page(obj, offset, bytes(length))  # a page of zeros deletes the row
        return page

    async def handle(self, msg: Message, outbox: Channel) -> None:
        if isinstance(msg, DataReturn) and not msg.dirty:
            for at in range(0, len(msg.data), PS):
                self.clean[msg.object, msg.offset + at] = msg.data[at:at + PS]
        else:
            await super().handle(msg, outbox)


def _broken(make: Callable[[Path], Callable[[], object]], guarantee: str,
            persistent: bool | None = False, name: str = "") -> object:
    return pytest.param(make, guarantee, persistent, id=name or make(Path()).__name__)


BROKEN = [
    _broken(lambda _: Forgetful, conformance.READ_BACK),
    _broken(lambda _: WrongSyncLength, conformance.SYNC),
    _broken(lambda _: AnswersTwice, conformance.ANSWERED_ONCE),
    _broken(lambda _: NeverAnswers, conformance.EVERY_PAGE_ONCE),
    _broken(lambda _: CopyCall, conformance.INIT),
    _broken(lambda _: ShortSupply, conformance.EVERY_PAGE_ONCE),
    _broken(lambda _: ZeroReason, conformance.ERRORS),
    _broken(lambda _: EIOOnly, conformance.ERRORS),
    _broken(lambda _: IgnoresSetSize, conformance.SET_SIZE),
    _broken(lambda _: OneAtATime, conformance.CONCURRENT),
    _broken(lambda _: QuitsEarly, conformance.SERVE),
    _broken(lambda _: JunkInHoles, conformance.ZEROS),
    _broken(lambda _: DictPager, conformance.SYNC, True, "DictPagerClaimingPersistence"),
    _broken(lambda tmp: lambda: CleanReturnsInRAM(str(tmp / "swap.db")), conformance.PRECIOUS,
            True, "CleanReturnsInRAM"),
]


@pytest.mark.parametrize(("factory", "guarantee", "persistent"), BROKEN)
async def test_broken_pager_fails_naming_the_guarantee(
        tmp_path: Path, factory: Callable[[Path], Callable[[], object]], guarantee: str,
        persistent: bool | None) -> None:
    start = trio.current_time()
    with pytest.raises(PagerCheckFailed) as failed:
        await check_pager(factory(tmp_path), persistent=persistent,  # type: ignore[arg-type]
                          timeout=1)
    assert failed.value.guarantee == guarantee, str(failed.value)
    assert str(failed.value).startswith(f'pager broke "{guarantee}": ')
    assert trio.current_time() - start < 5


async def test_failure_message_names_page_and_object() -> None:
    with pytest.raises(PagerCheckFailed) as failed:
        await check_pager(Forgetful)
    assert failed.value.detail.startswith("page 3 of object ")
    assert "came back different (it read as zeros)" in failed.value.detail


async def test_a_hang_reports_what_timed_out() -> None:
    with pytest.raises(PagerCheckFailed) as failed:
        await check_pager(NeverAnswers, timeout=0.5)
    assert "no answer to pages 0, 1, 2, 3, 4, 5 of data_request(object " in failed.value.detail
    assert failed.value.detail.endswith(", pages 0-5) within 0.5 s")


async def test_a_duplicate_found_by_another_check_says_so() -> None:
    with pytest.raises(PagerCheckFailed) as failed:
        await check_pager(AnswersTwice)
    assert f'(found while checking "{conformance.EVERY_PAGE_ONCE}")' in str(failed.value)


class Wrapped:
    """A pager that is not a kit Pager: only ``serve`` is known to the suite."""

    def __init__(self) -> None:
        self.inner = DictPager()

    async def serve(self, inbox: Channel, outbox: Channel) -> None:
        await self.inner.serve(inbox, outbox)


async def test_anything_with_serve_can_be_checked() -> None:
    await check_pager(Wrapped)


class CrashesOnSync(DictPager):
    async def handle(self, msg: Message, outbox: Channel) -> None:
        if isinstance(msg, Synchronize):
            raise RuntimeError("boom")
        await super().handle(msg, outbox)


async def test_a_crash_in_serve_is_reported_with_its_cause() -> None:
    with pytest.raises(PagerCheckFailed) as failed:
        await check_pager(CrashesOnSync)
    assert failed.value.guarantee == conformance.SERVE
    assert "serve raised" in failed.value.detail
    assert "boom" in repr(failed.value.__cause__)


async def test_injected_faults_leave_no_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        await check_pager(DictPager)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("scheme", ["dir", "fsspec+file", "fsspec+memory", "example"])
def test_every_other_shipped_pager_conforms(tmp_path: Path, scheme: str) -> None:
    url = {
        "dir": f"dir:{tmp_path / 'pages'}",
        "fsspec+file": f"fsspec+file://{tmp_path / 'fs'}",
        "fsspec+memory": f"fsspec+memory://conformance-{os.getpid()}/{tmp_path.name}",
        "example": f"example:{tmp_path / 'pages.dbm'}",  # the tutorial's installed plug-in
    }[scheme]
    persistent = scheme != "fsspec+memory" or None
    passed = check_pager_url(url, str(tmp_path / "store.mofs"), persistent=persistent)
    assert "returned pages read back" in passed
    assert any(g.startswith("synchronize_completed echoes its range") for g in passed)
