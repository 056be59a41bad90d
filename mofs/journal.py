"""The return journal: once a precious page is returned, it is never lost.

A pager that supplies precious pages keeps no copy of them; while such a page travels
back in ``data_return`` the daemon holds its only copy. So before the kernel lets a
``data_return`` of a precious object go, it appends the bytes to this journal in the
store and commits (PROTOCOL.md decision 6). A row is deleted only after the pager has
answered a synchronous ``synchronize`` that covered the whole object, i.e. once the
pager holds the data durably. After a crash, the rows left are replayed to the pager as
``data_return``s before the mount serves anything.

Commits use ``synchronous=NORMAL`` in WAL mode: a row survives the death of the daemon
(kill -9) the moment it is committed; power loss is covered once the pager's own
durable commit has happened, which is exactly when the row may go.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from .messages import DataReturn, ObjectId

_SCHEMA = """CREATE TABLE IF NOT EXISTS return_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    object INTEGER NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL)"""


class ReturnJournal:
    """Append-only log of returned pages, pruned per object once the pager has them."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS return_journal_object ON return_journal (object, seq)")
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM return_journal")
        self.pending_bytes: int = row.fetchone()[0]

    def record(self, returns: Iterable[DataReturn]) -> None:
        """Append and commit; only then may the caller send the returns."""
        rows = [(r.object, r.offset, r.data) for r in returns]
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO return_journal (object, offset, data) VALUES (?, ?, ?)", rows)
        self.pending_bytes += sum(len(r[2]) for r in rows)

    def mark(self) -> int:
        """The newest sequence number; rows up to it are covered by a sync started now.
        0 when the journal is empty (no query: every fsync asks)."""
        if not self.pending_bytes:
            return 0
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM return_journal").fetchone()[0]

    def prune(self, obj: ObjectId, upto: int) -> None:
        """The pager holds everything of ``obj`` journaled up to ``upto`` durably."""
        size = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM return_journal "
            "WHERE object = ? AND seq <= ?", (obj, upto)).fetchone()[0]
        if size:
            self._db.execute("DELETE FROM return_journal WHERE object = ? AND seq <= ?",
                             (obj, upto))
            self.pending_bytes -= size

    def objects(self) -> list[ObjectId]:
        """Objects with rows the pager may not hold yet."""
        rows = self._db.execute("SELECT DISTINCT object FROM return_journal ORDER BY object")
        return [ObjectId(r[0]) for r in rows]

    def rows(self, obj: ObjectId) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` of ``obj`` in the order they were returned."""
        cursor = self._db.execute(
            "SELECT offset, data FROM return_journal WHERE object = ? ORDER BY seq", (obj,))
        yield from cursor.fetchall()

    def close(self) -> None:
        self._db.close()
