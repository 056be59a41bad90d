"""The default pager: pages live in the mofs store, an SQLite database.

One row per non-zero page in our own ``pages`` table; the rest of the database (mofs's
metadata) belongs to someone else, so we only create our table if it is absent. A
page of zeros is stored as no row, which keeps sparse files sparse.

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
import sqlite3
from collections.abc import Callable

from mofs.messages import ObjectId
from mofs.namespace import fsync_wal

from .kit import Pager

log = logging.getLogger(__name__)

_SCHEMA = """CREATE TABLE IF NOT EXISTS pages (
    object INTEGER NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (object, offset)) WITHOUT ROWID"""


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
        self._unsynced = False  # committed since the last fsync
        self._zeros: dict[int, bytes] = {}

    def share(self, db: sqlite3.Connection, fsync: Callable[[], None]) -> None:
        """Use the connection of the mofs store that holds our pages (the default): one
        connection keeps its page cache, where two would each discard theirs whenever
        the other commits. Both keep their transactions free of ``await``, so neither
        ever finds the other's transaction open. ``fsync`` makes the connection's
        commits durable (one fsync serves both users)."""
        if self._db is not None:
            raise RuntimeError("share() must come before the first page is stored")
        try:
            db.execute(_SCHEMA)
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
                db.execute(_SCHEMA)
                self._db, self._owned = db, True
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _oserror(exc) from exc

    def _write(self, obj: ObjectId, sql: str, params: tuple) -> None:
        if self._db is None or not self._db.in_transaction:
            self._sql("BEGIN")
        self._writers.add(obj)
        self._sql(sql, params)

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
            for obj in writers:
                self.latch_error(obj, err)
            return err
        self._unsynced = True
        return 0

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        """The stored page, or ``None`` for a page of zeros (no row)."""
        rows = self._sql("SELECT data FROM pages WHERE object = ? AND offset = ?", (obj, offset))
        return rows[0][0] if rows else None

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        """Store the page in the open transaction; a page of zeros deletes its row."""
        zeros = self._zeros.get(len(data))
        if zeros is None:
            zeros = self._zeros[len(data)] = bytes(len(data))
        if data == zeros:
            self._write(obj, "DELETE FROM pages WHERE object = ? AND offset = ?", (obj, offset))
        else:  # trailing zeros are not stored (the kit pads short pages): small files stay small
            self._write(obj, "INSERT OR REPLACE INTO pages VALUES (?, ?, ?)",
                        (obj, offset, bytes(data).rstrip(b"\0")))

    async def set_size(self, obj: ObjectId, size: int) -> None:
        """Delete the rows past ``size`` and zero the tail of a partial last page."""
        page = self.page_size(obj)
        end = -(-size // page) * page
        self._write(obj, "DELETE FROM pages WHERE object = ? AND offset >= ?", (obj, end))
        if size < end:
            last = end - page
            rows = self._sql("SELECT data FROM pages WHERE object = ? AND offset = ?",
                             (obj, last))
            if rows:
                await self.write_page(obj, last, rows[0][0][: size - last].ljust(page, b"\0"))

    async def sync(self, obj: ObjectId, durable: bool) -> None:
        """Commit; if ``durable``, also fsync the WAL (checkpoints sync the database file
        themselves under ``synchronous=NORMAL``)."""
        self._commit()
        if durable and self._unsynced:
            self._fsync()
            self._unsynced = False

    async def idle(self) -> None:
        """Commit the batch, cheaply: safe against a crash of mofs, not of the machine."""
        self._commit()

    async def close(self) -> None:
        """Commit and close; a failed final commit can only be logged."""
        if self._db is None:
            return
        err = self._commit()
        if self._owned:
            self._db.close()
        self._db = None
        if err:
            log.error("%s: final commit failed, errno %d: returned pages lost", self.path, err)
