"""The default pager: pages live in the mofs store, an SQLite database.

One row per non-zero page in our own ``pages`` table; the rest of the database (mofs's
metadata) belongs to someone else, so we only create our table if it is absent. A
page of zeros is stored as no row, which keeps sparse files sparse. A page longer than
``INLINE_MAX`` (trailing zeros are not stored) keeps its bytes in a slot of the store's
data file (``STORE-data``, see :mod:`pagers.slots`) and its row names the slot: SQLite
stores big blobs at a fraction of the speed of a plain file.

Transactions follow the kit's batches. The first write after a commit opens one,
:meth:`SQLitePager.idle` commits it cheaply (``synchronous=NORMAL`` in WAL mode: safe
against a crash of the process, not against power loss), and
:meth:`SQLitePager.sync` commits before ``synchronize_completed`` is sent, so a
returned page is on disk before it is acknowledged (PROTOCOL.md decision 6). A
synchronous sync then also fsyncs the WAL, which is what ``synchronous=FULL`` would
have done at commit; SQLite refuses to change ``synchronous`` inside a transaction,
and whether a commit must be durable is only known at its end.

The adapter does not yield to trio between opening a transaction and the ``idle``
that commits it, so another connection in the same thread (the metadata) never waits
for our write lock, as long as it too keeps its transactions free of ``await``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Callable

from mofs.messages import ObjectId
from mofs.namespace import fsync_wal

from .kit import Pager
from .slots import SLOT, SlotFile

log = logging.getLogger(__name__)

_SCHEMA = """CREATE TABLE IF NOT EXISTS pages (
    object INTEGER NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
    slot INTEGER, length INTEGER,
    PRIMARY KEY (object, offset)) WITHOUT ROWID"""
# ``slot`` and ``length`` (the page's bytes are in the data file; ``data`` is empty)
# came after the first stores were made: such a table gets them on first use.
_SLOT_COLUMNS = ("ALTER TABLE pages ADD COLUMN slot INTEGER",
                 "ALTER TABLE pages ADD COLUMN length INTEGER")

INLINE_MAX = 16 << 10
"""Pages up to this long (without trailing zeros) keep their bytes in their row."""

SLOTS_AFTER = 4
"""The first pages of a transaction keep their bytes in their row whatever their length:
a commit with few pages (an fsync after a small write) then costs one fsync, of the WAL,
where a slot would add an fdatasync of the data file. Bulk writes go to slots."""

# Up to this many released slots wait for a durable commit before the pager makes one
# of its own (a file rewritten over and over without fsync would otherwise only grow).
MAX_WAITING_SLOTS = 4096


def data_path(database: str) -> str:
    """The data file beside a store: its slots hold the pages too long for a row."""
    return database + "-data"


def _oserror(exc: sqlite3.Error) -> OSError:
    """The kit reports OSErrors; a full disk stays ENOSPC, anything else is EIO."""
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return OSError(errno.ENOSPC if full else errno.EIO, f"sqlite: {exc}")


class SQLitePager(Pager):
    """Stores the pages of every memory object in the SQLite database at ``path``."""

    silent_overwrite = True
    may_cache = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None  # opened on first use, or shared
        self._owned = False
        self._fsync: Callable[[], None] = lambda: fsync_wal(self.path)
        self._writers: set[ObjectId] = set()  # objects written in the open transaction
        self._batch = 0  # pages written in the open transaction
        self._unsynced = False  # committed since the last fsync
        self._zeros: dict[int, bytes] = {}
        # a temporary database (memory: with no swap file) gets a temporary data file
        self._slots = SlotFile(data_path(path) if path not in ("", ":memory:") else None)

    def share(self, db: sqlite3.Connection, fsync: Callable[[], None]) -> None:
        """Use the connection of the mofs store that holds our pages (the default): one
        connection keeps its page cache, where two would each discard theirs whenever
        the other commits. Both keep their transactions free of ``await``, so neither
        ever finds the other's transaction open. ``fsync`` makes the connection's
        commits durable (one fsync serves both users)."""
        if self._db is not None:
            raise RuntimeError("share() must come before the first page is stored")
        try:
            _create(db)
        except sqlite3.Error as exc:
            raise _oserror(exc) from exc
        self._db, self._owned, self._fsync = db, False, fsync

    def _sql(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            if self._db is None:
                db = sqlite3.connect(self.path, isolation_level=None)
                db.execute("PRAGMA busy_timeout=5000")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                _create(db)
                self._db, self._owned = db, True
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _oserror(exc) from exc

    def _begin(self, obj: ObjectId) -> None:
        """Open the batch's transaction if none is open; ``obj`` writes in it."""
        if self._db is None or not self._db.in_transaction:
            self._data()  # its slots are counted from the rows as they were committed
            self._slots.rolled_back()  # (if SQLite rolled the last one back by itself)
            self._sql("BEGIN")
            self._batch = 0
        self._writers.add(obj)

    def _write(self, obj: ObjectId, sql: str, params: tuple) -> None:
        self._begin(obj)
        self._sql(sql, params)

    def _data(self) -> SlotFile:
        """The data file, opened on first use with the slots the rows name, outside any
        transaction of ours (a row deleted by an open one still holds its slot)."""
        if not self._slots.is_open:
            used = [r[0] for r in self._sql("SELECT slot FROM pages WHERE slot IS NOT NULL")]
            if used and not self._slots.exists():  # never made anew: its pages would be zeros
                raise OSError(errno.ENOENT, self.missing_data_file())
            self._slots.open(used)
        return self._slots

    def missing_data_file(self) -> str | None:
        """Why the store cannot be used, if pages name slots of a data file that is not
        there (a store copied without it): a one-line message, else ``None``."""
        if self._slots.exists():
            return None
        self._sql("SELECT 1")  # our connection is open (or the shared one)
        assert self._db is not None
        try:
            return missing_data_file(self._db, self.path)
        except sqlite3.Error as exc:
            raise _oserror(exc) from exc

    def _release(self, obj: ObjectId, where: str, params: tuple) -> None:
        """Delete the rows of ``obj`` that match ``where``; their slots are released."""
        self._begin(obj)
        rows = self._sql(f"DELETE FROM pages WHERE object = ? AND {where} RETURNING slot",
                         (obj, *params))
        self._slots.release(r[0] for r in rows if r[0] is not None)

    def _commit(self) -> int:
        """Commit the open transaction; on failure latch the errno for its writers."""
        if self._db is None or not self._db.in_transaction:
            return 0
        writers, self._writers = self._writers, set()
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            err = _oserror(exc).errno or errno.EIO
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._slots.rolled_back()
            for obj in writers:
                self.latch_error(obj, err)
            return err
        self._slots.committed()
        self._unsynced = True
        return 0

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        """The stored page, or ``None`` for a page of zeros (no row)."""
        return self._stored(obj, offset)

    def _stored(self, obj: ObjectId, offset: int) -> bytes | None:
        rows = self._sql("SELECT data, slot, length FROM pages WHERE object = ? AND offset = ?",
                         (obj, offset))
        if not rows:
            return None
        data, slot, length = rows[0]
        if slot is None:
            return data
        try:
            return self._data().read(slot, length)
        except OSError as exc:
            raise OSError(exc.errno or errno.EIO, f"{self._slots.path}: {exc.strerror}") from exc

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        """Store the page in the open transaction; a page of zeros deletes its row."""
        zeros = self._zeros.get(len(data))
        if zeros is None:
            zeros = self._zeros[len(data)] = bytes(len(data))
        if data == zeros:
            self._release(obj, "offset = ?", (offset,))
            return
        # trailing zeros are not stored (the kit pads short pages): small files stay small
        stored = bytes(data).rstrip(b"\0")
        # (a SELECT and a replace: 10-20 % faster per page than DELETE ... RETURNING and
        # an INSERT)
        old = self._sql("SELECT slot FROM pages WHERE object = ? AND offset = ? "
                        "AND slot IS NOT NULL", (obj, offset))
        self._begin(obj)
        self._batch += 1
        if INLINE_MAX < len(stored) <= SLOT and self._batch > SLOTS_AFTER:
            self._write(obj, "INSERT OR REPLACE INTO pages (object, offset, data, slot, length) "
                        "VALUES (?, ?, x'', ?, ?)",
                        (obj, offset, self._slots.write(stored), len(stored)))
        else:
            self._write(obj, "INSERT OR REPLACE INTO pages (object, offset, data, slot, length) "
                        "VALUES (?, ?, ?, NULL, NULL)", (obj, offset, stored))
        if old:
            self._slots.release([old[0][0]])

    async def set_size(self, obj: ObjectId, size: int) -> None:
        """Delete the rows past ``size`` and zero the tail of a partial last page."""
        page = self.page_size(obj)
        end = -(-size // page) * page
        self._release(obj, "offset >= ?", (end,))
        if size < end:
            last = end - page
            data = self._stored(obj, last)
            if data is not None:
                await self.write_page(obj, last, data[: size - last].ljust(page, b"\0"))

    async def sync(self, obj: ObjectId, durable: bool) -> None:
        """Commit; if ``durable``, also fsync the data file and then the WAL (checkpoints
        sync the database file themselves under ``synchronous=NORMAL``)."""
        self._commit()
        if durable:
            self._durable()

    def _durable(self) -> None:
        self._slots.sync_data()  # the bytes before the rows that name them
        if self._unsynced:
            self._fsync()
            self._unsynced = False
        self._slots.durable()

    async def idle(self) -> None:
        """Commit the batch, cheaply: safe against a crash of mofs, not of the machine."""
        if not self._commit() and self._slots.waiting > MAX_WAITING_SLOTS:
            try:
                self._durable()
            except OSError as exc:  # tried again at the next sync; nothing is lost
                log.warning("%s: cannot free released slots yet: %s", self._slots.path, exc)

    async def close(self) -> None:
        """Commit and close; a failed final commit can only be logged."""
        if self._db is None:
            return
        err = self._commit()
        if not err:
            with contextlib.suppress(OSError):
                self._slots.sync_data()
        self._slots.close()
        if self._owned:
            self._db.close()
        self._db = None
        if err:
            log.error("%s: final commit failed, errno %d: returned pages lost", self.path, err)


def missing_data_file(db: sqlite3.Connection, database: str) -> str | None:
    """If pages of the store ``database`` name slots of a data file that is not there (a
    store copied without it), the one-line message that says so; else ``None``."""
    path = data_path(database)
    if os.path.exists(path):
        return None
    count = db.execute("SELECT count(*) FROM pages WHERE slot IS NOT NULL").fetchone()[0]
    if not count:
        return None
    return (f"{path} is missing, but {count} pages of {database} are in it; put it back "
            "beside the store (copy the two together)")


def _create(db: sqlite3.Connection) -> None:
    """Our table, created if absent, with the slot columns added if it lacks them."""
    db.execute(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(pages)")}
    if "slot" not in columns:
        for alter in _SLOT_COLUMNS:
            db.execute(alter)
