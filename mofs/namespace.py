"""The metadata of a mofs store (inodes, names, links, xattrs) as SQLite tables.

Each method is one short transaction: the pager writes the same file through its own
connection and must never wait for a lock we hold across an ``await``. Opening validates
read-only first, so pointing mofs at the wrong file leaves it untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

from .errors import StoreError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x6D6F6673  # 'mofs'
ROOT_INODE = 1  # pyfuse3.ROOT_INODE
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2

_MAGIC = b"SQLite format 3\0"
SQLITE_PAGE_SIZE = 16384
WAL_CHECKPOINT_BYTES = 4 << 20
_COLUMNS = "ino, mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns"
_ALLOCATED = "(SELECT bytes FROM allocation a WHERE a.ino = inodes.ino)"  # st_blocks
_SETTABLE = frozenset({"mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns", "rdev"})
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT, mode INTEGER NOT NULL, nlink INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, rdev INTEGER NOT NULL, size INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    target BLOB);
CREATE TABLE dentries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER NOT NULL, name BLOB NOT NULL,
    ino INTEGER NOT NULL, UNIQUE (parent, name));
CREATE INDEX dentries_by_parent ON dentries (parent);
CREATE INDEX dentries_by_ino ON dentries (ino);
CREATE TABLE xattrs (
    ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ino, name)) WITHOUT ROWID;
"""
# Which pages of each regular file were written (mofs.extents), and the bytes they
# cover; a file without a row (made before this table existed) counts as fully allocated.
# Created when absent, like the pager's and the journal's tables.
_ALLOCATION = """CREATE TABLE IF NOT EXISTS allocation (
    ino INTEGER PRIMARY KEY, bytes INTEGER NOT NULL, extents BLOB NOT NULL)"""


@dataclass(slots=True)
class Inode:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    allocated: int | None = field(default=None, compare=False)  # st_blocks; None: unknown


def _uri(path: str, mode: str) -> str:
    return f"file:{quote(os.path.abspath(path))}?mode={mode}"


def _check_existing(path: str, create: bool) -> int | None:
    """The page size of the valid store at ``path``, None if absent; StoreError otherwise.

    Reads only: the header with plain file I/O, then the meta table over a read-only
    connection, so a file that is not ours keeps every byte."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not create:
            raise StoreError(f"store {path} does not exist") from None
        if not os.path.isdir(parent):
            raise StoreError(f"cannot create store {path}: no directory {parent}") from None
        return None
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path} is a directory, not a mofs store")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path} is not a regular file, not a mofs store")
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read store {path}: {exc.strerror}") from None
    if not header:
        raise StoreError(f"{path} is not a mofs store (empty file)")
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise StoreError(f"{path} is not a mofs store (not an SQLite database)")
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or st.st_size < page or st.st_size % page:
        raise StoreError(f"{path} is not a mofs store (truncated or damaged SQLite database)")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite database but not a mofs store")
    try:
        db = sqlite3.connect(_uri(path, "ro"), uri=True)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchall():
                raise StoreError(f"{path} is an SQLite database but not a mofs store")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a mofs store (damaged SQLite database: {exc})") from None
    version, page_size = (_positive(meta.get(key)) for key in ("schema_version", "page_size"))
    if not version:
        raise StoreError(f"{path} is not a mofs store (no valid schema_version in its meta table)")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer mofs (schema {version}, "
                         f"this mofs reads up to {SCHEMA_VERSION})")
    if not page_size:
        raise StoreError(f"{path} is not a mofs store (no valid page_size in its meta table)")
    return page_size


def _positive(value: object) -> int:
    """``value`` as a positive int, or 0 if it is anything else."""
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def _create(path: str, page_size: int) -> bool:
    """Build a new store beside ``path`` and link it into place, so a crash never leaves a
    half-made store; False when someone else created ``path`` meanwhile."""
    directory, base = os.path.split(os.path.abspath(path))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create store {path}: permission denied in {directory}")
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.creating")
    now = time.time_ns()
    try:
        db = sqlite3.connect(_uri(tmp, "rwc"), uri=True, isolation_level=None)
        try:
            # 16 KiB database pages: a 64 KiB file page is 5 of them instead of 17, which
            # makes its write half as costly again; metadata commits cost a little more.
            db.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            db.execute("BEGIN")
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [("schema_version", str(SCHEMA_VERSION)), ("page_size", str(page_size))])
            db.execute(f"INSERT INTO inodes ({_COLUMNS}) VALUES (?, ?, 2, ?, ?, 0, 0, ?, ?, ?)",
                       (ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), now, now, now))
            db.execute("COMMIT")
        finally:
            db.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            if os.path.exists(path):
                return False
            os.rename(tmp, path)
        return True
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc.strerror}") from None
    except sqlite3.Error as exc:
        raise StoreError(f"cannot create store {path}: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _oserror(exc: sqlite3.Error) -> OSError:
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return OSError(errno.ENOSPC if full else errno.EIO, f"metadata store: {exc}")


def fsync_wal(database: str) -> None:
    """fsync the write-ahead log of ``database``: its commits survive power loss then."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(database + "-wal", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Namespace:
    """One store's metadata over one read-write connection."""

    def __init__(self, path: str, db: sqlite3.Connection, page_size: int, created: bool) -> None:
        self.path = path
        self.page_size = page_size
        self.created = created
        self._db = db
        self._file = os.path.abspath(path)
        self._depth = 0  # nesting of transaction()
        # Times of overwritten files, not yet stored: ino -> (mtime_ns, ctime_ns). They
        # are shown at once and stored by the next transaction, commit or flush_times().
        self._times: dict[int, tuple[int, int]] = {}
        self._synced_changes = -1  # total_changes at the last fsync of the WAL
        # Every xattr name the store may hold: the kernel asks for security.capability
        # before each write, and a name no file has needs no query.
        self._xattr_names = {bytes(r[0]) for r in
                             db.execute("SELECT DISTINCT name FROM xattrs").fetchall()}

    @classmethod
    def open(cls, path: str, *, create: bool = True, page_size: int = 65536) -> Namespace:
        """Open the store at ``path``, creating it if absent and ``create``.

        An existing store keeps the page size it was created with. Raises StoreError with
        a one-line message, leaving the file untouched, if ``path`` is not a usable store."""
        if page_size <= 0:
            raise ValueError(f"page size must be positive, not {page_size}")
        stored = _check_existing(path, create)
        created = stored is None and _create(path, page_size)
        stored = page_size if created else stored or _check_existing(path, False)
        assert stored is not None
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"cannot open store {path} for writing: permission denied")
        db = None
        try:
            db = sqlite3.connect(_uri(path, "rw"), uri=True, isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise sqlite3.OperationalError("its file system does not allow WAL mode")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint at 4 MiB of log whatever the page size, and give back what a
            # big transaction grew the log to: on a full disk that space is what lets
            # a delete go through.
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // SQLITE_PAGE_SIZE}")
            db.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}")
            db.execute(_ALLOCATION)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise StoreError(f"cannot open store {path}: {exc}") from None
        return cls(path, db, stored, created)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush_times()
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection, for the store's own pager to share (one connection
        means no cache thrown away each time the other one commits)."""
        return self._db

    def commit(self, durable: bool = False) -> None:
        """Make every change so far stable; ``durable`` also survives power loss.

        Every method already committed its own transaction with ``synchronous=NORMAL``
        (safe against a crash of mofs); a durable commit fsyncs the WAL, which is what
        committing under ``synchronous=FULL`` would have done. The database file needs
        no fsync of ours: under ``synchronous=NORMAL`` every checkpoint syncs it."""
        self.flush_times()
        if durable:
            self.sync_wal()

    def sync_wal(self) -> None:
        """fsync the write-ahead log, unless nothing was committed on this connection
        since the last time (the shared pager's fsync already covered the metadata)."""
        changes = self._db.total_changes
        if changes != self._synced_changes:
            fsync_wal(self._file)
            self._synced_changes = changes

    def _sql(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _oserror(exc) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction around several calls (they nest into it); rolled back
        if the body raises. One commit instead of one per call."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self._db.in_transaction:  # the shared connection's other user left one open
            raise RuntimeError("a metadata transaction would nest in an open one")
        self._sql("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            if self._times:
                self._store_times()
            yield
            self._sql("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def _bump(self, ino: int, nlink: int = 0, mtime: int | None = None,
              ctime: int | None = None) -> None:
        self._sql("UPDATE inodes SET nlink = nlink + ?, mtime_ns = coalesce(?, mtime_ns), "
                  "ctime_ns = coalesce(?, ctime_ns) WHERE ino = ?", (nlink, mtime, ctime, ino))

    def _dir(self, ino: int) -> Inode:
        inode = self.get(ino)
        if not stat.S_ISDIR(inode.mode):
            raise NotADirectoryError(errno.ENOTDIR, f"inode {ino} is not a directory")
        if inode.nlink == 0:
            raise FileNotFoundError(errno.ENOENT, f"directory {ino} was removed")
        return inode

    def _find(self, parent: int, name: bytes) -> tuple[int, int] | None:
        """(dentry id, ino) of ``name`` in ``parent``."""
        rows = self._sql("SELECT id, ino FROM dentries WHERE parent = ? AND name = ?",
                         (parent, name))
        return rows[0] if rows else None

    def _entry(self, parent: int, name: bytes) -> tuple[int, int]:
        if found := self._find(parent, name):
            return found
        raise FileNotFoundError(errno.ENOENT, f"no entry {name!r} in directory {parent}")

    def _drop(self, dentry: int, parent: int, ino: int, isdir: bool, now: int) -> None:
        """Delete a name: a directory's only name takes '.' and its '..' in ``parent`` too."""
        self._sql("DELETE FROM dentries WHERE id = ?", (dentry,))
        self._sql("UPDATE inodes SET nlink = CASE WHEN ? THEN 0 ELSE nlink - 1 END, "
                  "ctime_ns = ? WHERE ino = ?", (isdir, now, ino))
        self._bump(parent, -1 if isdir else 0)

    def _within(self, ino: int, ancestor: int) -> bool:
        """Whether directory ``ino`` is ``ancestor`` or lies below it."""
        while ino != ancestor:
            rows = self._sql("SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,))
            if not rows:
                return False
            ino = rows[0][0]
        return True

    def get(self, ino: int) -> Inode:
        rows = self._sql(f"SELECT {_COLUMNS}, {_ALLOCATED} FROM inodes WHERE ino = ?", (ino,))
        if not rows:
            raise KeyError(ino)
        return self._with_times(Inode(*rows[0]))

    def _with_times(self, inode: Inode) -> Inode:
        times = self._times.get(inode.ino)
        if times is not None:  # (a fresh instance, made from a row just read)
            inode.mtime_ns, inode.ctime_ns = times
        return inode

    def touch(self, ino: int, now: int) -> None:
        """A write changed the file's contents at ``now``: move its mtime and ctime, in
        memory until the next transaction or :meth:`flush_times` (like lazytime: a crash
        may lose the times of writes nobody synchronized, never a size or a name). No
        query: this is the cost of an overwrite."""
        self._times[ino] = (now, now)

    def flush_times(self) -> None:
        """Store the times :meth:`touch` kept in memory."""
        if self._times and not self._depth:
            with self.transaction():
                pass  # transaction() stores them

    def _store_times(self) -> None:
        times, self._times = self._times, {}
        try:
            self._db.executemany("UPDATE inodes SET mtime_ns = ?, ctime_ns = ? WHERE ino = ?",
                                 [(m, c, ino) for ino, (m, c) in times.items()])
        except sqlite3.Error as exc:
            self._times = times | self._times
            raise _oserror(exc) from None

    def make_inode(self, mode: int, uid: int, gid: int, rdev: int = 0,
                   target: bytes | None = None) -> Inode:
        """A new inode with no names yet (nlink 0); :meth:`link` gives it one."""
        now = time.time_ns()
        size = len(target) if target is not None else 0
        with self.transaction():
            self._sql("INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime_ns, "
                      "mtime_ns, ctime_ns, target) VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (mode, uid, gid, rdev, size, now, now, now, target))
            ino = self._sql("SELECT last_insert_rowid()")[0][0]
            if stat.S_ISREG(mode):  # nothing written yet: a sparse file until written
                self._sql("INSERT INTO allocation VALUES (?, 0, x'')", (ino,))
        return self.get(ino)

    def set_attrs(self, ino: int, **fields: int) -> Inode:
        if unknown := set(fields) - _SETTABLE:
            raise TypeError(f"set_attrs got unknown fields {sorted(unknown)}")
        if not fields:
            return self.get(ino)
        times = self._times.pop(ino, None)
        if times is not None:  # stored with this update, unless it sets them itself
            fields = {"mtime_ns": times[0], "ctime_ns": times[1]} | fields
        assignments = ", ".join(f"{key} = ?" for key in fields)
        try:
            rows = self._sql(f"UPDATE inodes SET {assignments} WHERE ino = ? "
                             f"RETURNING {_COLUMNS}, {_ALLOCATED}",
                             (*(int(v) for v in fields.values()), ino))  # one statement
        except OSError:
            if times is not None:
                self._times.setdefault(ino, times)
            raise
        if not rows:
            raise KeyError(ino)
        return Inode(*rows[0])

    def readlink(self, ino: int) -> bytes:
        rows = self._sql("SELECT mode, target FROM inodes WHERE ino = ?", (ino,))
        if not rows:
            raise KeyError(ino)
        if not stat.S_ISLNK(rows[0][0]) or rows[0][1] is None:
            raise OSError(errno.EINVAL, f"inode {ino} is not a symbolic link")
        return bytes(rows[0][1])

    def delete_inode(self, ino: int) -> None:
        """Forget an inode that has no names left, with its xattrs."""
        with self.transaction():
            if self._sql("SELECT 1 FROM dentries WHERE ino = ? OR parent = ? LIMIT 1", (ino, ino)):
                raise OSError(errno.EBUSY, f"inode {ino} still has names or entries")
            self._sql("DELETE FROM xattrs WHERE ino = ?", (ino,))
            self._sql("DELETE FROM allocation WHERE ino = ?", (ino,))
            self._sql("DELETE FROM inodes WHERE ino = ?", (ino,))

    def allocation(self, ino: int) -> bytes | None:
        """The saved ``Extents.encode()`` of a regular file, None if it has none."""
        rows = self._sql("SELECT extents FROM allocation WHERE ino = ?", (ino,))
        return bytes(rows[0][0]) if rows else None

    def set_allocation(self, ino: int, allocated: int, extents: bytes) -> None:
        """Save which pages of a file were written and how many of its bytes they hold."""
        self._sql("INSERT OR REPLACE INTO allocation VALUES (?, ?, ?)",
                  (ino, allocated, extents))

    def orphans(self) -> list[int]:
        return [row[0] for row in self._sql("SELECT ino FROM inodes WHERE nlink = 0 ORDER BY ino")]

    def counts(self) -> tuple[int, int]:
        number, total = self._sql("SELECT count(*), coalesce(sum(size), 0) FROM inodes")[0]
        return number, total

    def parent(self, ino: int) -> int:
        """The directory holding the name of directory ``ino`` (the root's is the root)."""
        rows = self._sql("SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,))
        return rows[0][0] if rows else ino

    def lookup(self, parent: int, name: bytes) -> int | None:
        found = self._find(parent, name)
        return None if found is None else found[1]

    def link(self, parent: int, name: bytes, ino: int) -> None:
        """Add the name; a directory gets its only name plus '.', and '..' in ``parent``."""
        now = time.time_ns()
        with self.transaction():
            self._dir(parent)
            inode = self.get(ino)
            if self.lookup(parent, name) is not None:
                raise FileExistsError(errno.EEXIST, f"{name!r} exists in directory {parent}")
            isdir = stat.S_ISDIR(inode.mode)
            if isdir and inode.nlink > 0:
                raise PermissionError(errno.EPERM, f"directory {ino} already has a name")
            self._sql("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)",
                      (parent, name, ino))
            self._bump(ino, 2 if isdir else 1, ctime=now)
            self._bump(parent, 1 if isdir else 0, mtime=now, ctime=now)

    def unlink(self, parent: int, name: bytes) -> Inode:
        """Remove the name (a directory only when empty) and return the inode as it is now."""
        now = time.time_ns()
        with self.transaction():
            dentry, ino = self._entry(parent, name)
            isdir = stat.S_ISDIR(self.get(ino).mode)
            if isdir and not self.is_empty_dir(ino):
                raise OSError(errno.ENOTEMPTY, f"directory {ino} is not empty")
            self._drop(dentry, parent, ino, isdir, now)
            self._bump(parent, mtime=now, ctime=now)
        return self.get(ino)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> Inode | None:
        """POSIX rename(2), plus renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE.

        Returns the inode the rename took a name from (nlink already lowered), or None."""
        if flags not in (0, RENAME_NOREPLACE, RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, f"bad rename flags {flags}")
        now = time.time_ns()
        with self.transaction():
            self._dir(old_parent)
            self._dir(new_parent)
            src_id, src = self._entry(old_parent, old_name)
            src_dir = stat.S_ISDIR(self.get(src).mode)
            dst_id, dst = self._find(new_parent, new_name) or (0, None)
            if flags & RENAME_NOREPLACE and dst is not None:
                raise FileExistsError(errno.EEXIST, f"{new_name!r} exists in {new_parent}")
            if src_dir and self._within(new_parent, src):
                raise OSError(errno.EINVAL, f"cannot move directory {src} into itself")
            if flags & RENAME_EXCHANGE:
                self._exchange(old_parent, old_name, new_parent, new_name, now)
                return None
            if dst == src:
                return None
            if dst is not None:
                dst_dir = stat.S_ISDIR(self.get(dst).mode)
                if src_dir and not dst_dir:
                    raise NotADirectoryError(errno.ENOTDIR, f"{new_name!r} is not a directory")
                if dst_dir and not src_dir:
                    raise IsADirectoryError(errno.EISDIR, f"{new_name!r} is a directory")
                if dst_dir and not self.is_empty_dir(dst):
                    raise OSError(errno.ENOTEMPTY, f"directory {new_name!r} is not empty")
                self._drop(dst_id, new_parent, dst, dst_dir, now)
            self._sql("UPDATE dentries SET parent = ?, name = ? WHERE id = ?",
                      (new_parent, new_name, src_id))
            if src_dir and old_parent != new_parent:
                self._bump(old_parent, -1)
                self._bump(new_parent, 1)
            self._bump(src, ctime=now)
            for parent in {old_parent, new_parent}:
                self._bump(parent, mtime=now, ctime=now)
        return None if dst is None else self.get(dst)

    def _exchange(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                  now: int) -> None:
        """Swap two existing entries (RENAME_EXCHANGE)."""
        a_id, a = self._entry(old_parent, old_name)
        b_id, b = self._entry(new_parent, new_name)
        if a == b:
            return
        b_dir = stat.S_ISDIR(self.get(b).mode)
        if b_dir and self._within(old_parent, b):
            raise OSError(errno.EINVAL, f"cannot move directory {b} into itself")
        self._sql("UPDATE dentries SET ino = ? WHERE id = ?", (b, a_id))
        self._sql("UPDATE dentries SET ino = ? WHERE id = ?", (a, b_id))
        moved = int(stat.S_ISDIR(self.get(a).mode)) - int(b_dir)  # subdirs old_parent lost
        if moved and old_parent != new_parent:
            self._bump(old_parent, -moved)
            self._bump(new_parent, moved)
        for ino in (a, b):
            self._bump(ino, ctime=now)
        for parent in {old_parent, new_parent}:
            self._bump(parent, mtime=now, ctime=now)

    def entries(self, parent: int, start: int = 0) -> list[tuple[bytes, int, int]]:
        """(name, ino, position) after position ``start``, without '.' and '..'.

        A position is the entry's row id, which never changes and is never reused, so a
        listing resumed after entries come and go neither repeats nor skips old ones."""
        rows = self._sql("SELECT name, ino, id FROM dentries WHERE parent = ? AND id > ? "
                         "ORDER BY id", (parent, start))
        return [(bytes(name), ino, pos) for name, ino, pos in rows]

    def listing(self, parent: int, start: int = 0,
                limit: int = 128) -> list[tuple[bytes, Inode, int]]:
        """(name, inode, position) of up to ``limit`` entries after position ``start``:
        what readdirplus replies, in one query (a reply holds a few dozen entries, so a
        big directory is read in slices instead of whole for every reply)."""
        columns = ", ".join(f"i.{c.strip()}" for c in _COLUMNS.split(","))
        rows = self._sql(f"SELECT d.name, d.id, {columns}, a.bytes FROM dentries d "
                         "JOIN inodes i ON i.ino = d.ino LEFT JOIN allocation a ON a.ino = d.ino "
                         "WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
                         (parent, start, limit))
        return [(bytes(row[0]), self._with_times(Inode(*row[2:])), row[1]) for row in rows]

    def is_empty_dir(self, ino: int) -> bool:
        """True for a directory without entries; KeyError if no such inode."""
        if not stat.S_ISDIR(self.get(ino).mode):
            return False
        return not self._sql("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if name not in self._xattr_names:
            raise KeyError(name)
        rows = self._sql("SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
        if not rows:
            raise KeyError(name)
        return bytes(rows[0][0])

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        with self.transaction():
            self.get(ino)
            present = bool(self._sql("SELECT 1 FROM xattrs WHERE ino = ? AND name = ?",
                                     (ino, name)))
            if flags & XATTR_CREATE and present:
                raise FileExistsError(errno.EEXIST, f"xattr {name!r} exists on inode {ino}")
            if flags & XATTR_REPLACE and not present:
                raise KeyError(name)
            self._sql("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (ino, name, value))
            self._xattr_names.add(name)

    def listxattr(self, ino: int) -> list[bytes]:
        self.get(ino)
        rows = self._sql("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))
        return [bytes(row[0]) for row in rows]

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.transaction():
            self.getxattr(ino, name)
            self._sql("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))

    def get_meta(self, key: str) -> str | None:
        rows = self._sql("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._sql("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
