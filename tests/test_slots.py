"""The SQLite pager's data file: long pages in slots, never reused while a crash could
still bring back a row naming them (pagers/slots.py, pagers/sqlite.py)."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from test_pagers import OBJ, running

import pagers.sqlite as sqlite_pager
from mofs.messages import (
    VM_PROT_READ,
    VM_SYNC_SYNCHRONOUS,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    Init,
    SetSize,
    Synchronize,
    SynchronizeCompleted,
)
from pagers import SQLitePager
from pagers.slots import SLOT, SlotFile
from pagers.sqlite import INLINE_MAX, data_path

PS = 64 << 10


def slot_bytes(path: Path, slot: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(slot * SLOT)
        return f.read(SLOT).ljust(SLOT, b"\0")


def test_a_released_slot_is_taken_again_only_once_its_release_is_durable(tmp_path):
    slots = SlotFile(str(tmp_path / "data"))
    slots.open([])
    old = slots.write(b"o" * 100)
    slots.committed()
    slots.release([old])
    slots.committed()  # released, but the commit is not durable: a crash could undo it
    assert slots.write(b"n" * 100) != old
    slots.committed()
    slots.sync_data()
    slots.durable()  # now no row can name it again: punched out, bytes gone
    assert slot_bytes(tmp_path / "data", old) == bytes(SLOT)
    assert slots.write(b"m") != old, "the punch is not durable until the next fsync"
    slots.committed()
    slots.sync_data()
    assert slots.write(b"again") == old
    slots.close()


def test_a_rolled_back_transaction_gives_back_its_slots_and_keeps_what_it_released(tmp_path):
    slots = SlotFile(str(tmp_path / "data"))
    slots.open([])
    kept = slots.write(b"k" * 10)
    slots.committed()
    taken = slots.write(b"t" * 10)
    slots.release([kept])
    slots.rolled_back()  # the row naming `kept` is back, the one naming `taken` never was
    slots.sync_data()
    slots.durable()
    assert slot_bytes(tmp_path / "data", kept)[:10] == b"k" * 10
    assert slots.write(b"x") == taken
    slots.close()


def test_slots_no_row_names_at_opening_wait_like_released_ones(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"".join(bytes([65 + i]) * SLOT for i in range(5)))
    slots = SlotFile(str(path))
    slots.open([1, 3])  # 0, 2 and 4 held pages released by commits a crash may undo
    assert [slots.write(b"x") for _ in range(2)] == [5, 6]
    slots.committed()
    assert slot_bytes(path, 0) == b"A" * SLOT
    slots.sync_data()
    slots.durable()
    assert slot_bytes(path, 0) == slot_bytes(path, 2) == slot_bytes(path, 4) == bytes(SLOT)
    assert slot_bytes(path, 1) == b"B" * SLOT and slot_bytes(path, 3) == b"D" * SLOT
    slots.sync_data()
    assert [slots.write(b"y") for _ in range(4)] == [0, 2, 4, 7]
    slots.close()


def rows(db: Path) -> list[tuple[int, int, int, object, object]]:
    with closing(sqlite3.connect(db)) as c:
        return c.execute("SELECT object, offset, length(data), slot, length FROM pages "
                         "ORDER BY 1, 2").fetchall()


async def test_long_pages_go_to_slots_and_short_ones_stay_in_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_pager, "SLOTS_AFTER", 0)  # every long page to a slot
    db = tmp_path / "store.db"
    long_page, short = os.urandom(PS), b"s" * INLINE_MAX + bytes(PS - INLINE_MAX)
    async with running(SQLitePager(str(db))) as kernel:
        await kernel.ask(Init(OBJ, PS))
        kernel.inbox.send(DataReturn(OBJ, 0, long_page + short, dirty=True, kernel_copy=False))
        assert await kernel.ask(Synchronize(OBJ, 0, 2 * PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, 2 * PS)]
        assert rows(db) == [(OBJ, 0, 0, 0, PS), (OBJ, PS, INLINE_MAX, None, None)]
        assert slot_bytes(Path(data_path(str(db))), 0) == long_page
        # rewritten: a new slot; the old one is punched out once that is durable
        new = os.urandom(PS)
        kernel.inbox.send(DataReturn(OBJ, 0, new, dirty=True, kernel_copy=False))
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        assert rows(db)[0] == (OBJ, 0, 0, 1, PS)
        assert slot_bytes(Path(data_path(str(db))), 0) == bytes(SLOT)
        assert await kernel.ask(DataRequest(OBJ, 0, 3 * PS, VM_PROT_READ), replies=2) == [
            DataSupply(OBJ, 0, new + short), DataUnavailable(OBJ, 2 * PS, PS)]


async def test_a_store_from_before_slots_gets_them_and_keeps_its_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_pager, "SLOTS_AFTER", 0)  # every long page to a slot
    db = tmp_path / "store.db"
    with closing(sqlite3.connect(db)) as c:
        c.execute("CREATE TABLE pages (object INTEGER NOT NULL, offset INTEGER NOT NULL, "
                  "data BLOB NOT NULL, PRIMARY KEY (object, offset)) WITHOUT ROWID")
        c.execute("INSERT INTO pages VALUES (?, 0, ?)", (OBJ, b"old" * 20000))
        c.commit()
    page = os.urandom(PS)
    async with running(SQLitePager(str(db))) as kernel:
        await kernel.ask(Init(OBJ, PS))
        kernel.inbox.send(DataReturn(OBJ, PS, page, dirty=True, kernel_copy=False))
        await kernel.ask(Synchronize(OBJ, 0, 2 * PS, VM_SYNC_SYNCHRONOUS))
        old = (b"old" * 20000).ljust(PS, b"\0")
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, old + page)]
    assert rows(db) == [(OBJ, 0, 60000, None, None), (OBJ, PS, 0, 0, PS)]


async def test_slots_freed_by_the_first_change_after_a_restart_wait_like_any_other(
        tmp_path, monkeypatch):
    """The data file is opened before the first change: a slot released by it is not
    counted free at once (and later a second time): that named one slot twice."""
    monkeypatch.setattr(sqlite_pager, "SLOTS_AFTER", 0)  # every long page to a slot
    db, other = tmp_path / "store.db", OBJ + 1
    async with running(SQLitePager(str(db))) as kernel:
        await kernel.ask(Init(OBJ, PS))
        kernel.inbox.send(DataReturn(OBJ, 0, os.urandom(4 * PS), dirty=True, kernel_copy=False))
        await kernel.ask(Synchronize(OBJ, 0, 4 * PS, VM_SYNC_SYNCHRONOUS))
    assert [r[3] for r in rows(db)] == [0, 1, 2, 3]
    async with running(SQLitePager(str(db))) as kernel:  # a new daemon
        await kernel.ask(Init(OBJ, PS), Init(other, PS), replies=2)
        kernel.inbox.send(SetSize(OBJ, 0))  # the first change releases all four
        kernel.inbox.send(DataReturn(other, 0, os.urandom(4 * PS), dirty=True,
                                     kernel_copy=False))
        await kernel.ask(Synchronize(other, 0, 4 * PS, 0))  # committed, not durable
        assert sorted(r[3] for r in rows(db)) == [4, 5, 6, 7]
        for _ in range(2):  # durable, then the punch durable: the four are free
            await kernel.ask(Synchronize(other, 0, 4 * PS, VM_SYNC_SYNCHRONOUS))
        kernel.inbox.send(DataReturn(other, 4 * PS, os.urandom(5 * PS), dirty=True,
                                     kernel_copy=False))
        await kernel.ask(Synchronize(other, 0, 9 * PS, VM_SYNC_SYNCHRONOUS))
    named = [r[3] for r in rows(db)]
    assert sorted(named) == [0, 1, 2, 3, 4, 5, 6, 7, 8], "each slot named once"


async def test_a_commit_of_few_pages_keeps_them_in_rows_and_a_bulk_one_uses_slots(tmp_path):
    """An fsync after a small write costs one fsync (the WAL), not two."""
    db = tmp_path / "store.db"
    async with running(SQLitePager(str(db))) as kernel:
        await kernel.ask(Init(OBJ, PS))
        kernel.inbox.send(DataReturn(OBJ, 0, os.urandom(PS), dirty=True, kernel_copy=False))
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        assert rows(db) == [(OBJ, 0, PS, None, None)]
        bulk = os.urandom(8 * PS)
        kernel.inbox.send(DataReturn(OBJ, PS, bulk, dirty=True, kernel_copy=False))
        await kernel.ask(Synchronize(OBJ, 0, 9 * PS, VM_SYNC_SYNCHRONOUS))
        in_slots = [r for r in rows(db) if r[3] is not None]
        assert len(in_slots) == 8 - sqlite_pager.SLOTS_AFTER
        assert await kernel.ask(DataRequest(OBJ, PS, 8 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, PS, bulk)]
