"""``mofs fsck``: check that a store's metadata and pages agree, and repair what is safe.

The check works on an unmounted store, over its own SQLite connection: read-only unless
``--repair``, and then every repair happens in one transaction, so an interrupted repair
changes nothing. The metadata (inodes, names, xattrs) is loaded into memory once, every
check works on that model, and each repair updates the model as well as the database.
So a check without ``--repair`` reports exactly what a repair would find, in the same
order, and later checks never report the consequences of an earlier problem twice.

The checks, in order (the first word of each report line is its kind):

=========================  ==============================================================
``integrity``              ``PRAGMA integrity_check`` is not ok; nothing is repaired then
``root``                   the root directory (inode 1) is missing or not a directory
``dangling entry``         a name of an inode that does not exist; repair: remove the name
``misplaced entry``        a name inside a missing inode or a non-directory; repair: move
                           it to ``/lost+found`` (or drop it if the inode has other names)
``directory names``        a directory with more than one name; repair: keep the oldest
``orphan``                 an inode with no name and link count 0 (unlinked while open, a
                           crash between creating and naming it, or before the pager had
                           dropped a deleted file's pages); repair: delete it, its xattrs
                           and pages. A mount frees these too.
``nameless inode``         no name but a link count above 0; repair: name it in
                           ``/lost+found``
``unreachable directory``  a directory cycle cut off from the root; repair: move it to
                           ``/lost+found``
``link count``             nlink differs from the names (directories: 2 + subdirectories);
                           repair: set it
``stray xattrs``           xattrs of an inode that does not exist; repair: delete
``stray pages``            pages of an object that is not a regular file; repair: delete
``pages past EOF``         pages at or past the file's size rounded up to a page; repair:
                           delete
``misaligned page``        an offset that is not a multiple of the page size; repair:
                           delete
``page size``              a page whose length is not the page size; repair: pad or trim
``bytes past EOF``         non-zero bytes after the end of the file in its last page;
                           repair: zero them
=========================  ==============================================================

Returned pages still in the journal are a note, not a problem: the next mount replays
them. :func:`quick_check` is the cheap subset ``mofs mount`` runs before mounting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from pagers.slots import SLOT
from pagers.sqlite import data_path, missing_data_file

from .errors import StoreError, UserError
from .namespace import ROOT_INODE, _check_existing, _uri

EXIT_CLEAN = 0
EXIT_PROBLEMS = 1
EXIT_MOUNTED = 4
PROGRESS_EVERY = 10_000  # rows between two progress updates
LOST_FOUND = b"lost+found"
_TICK = 0.25  # seconds between two updates of a progress line during a long statement


@dataclass(frozen=True)
class Problem:
    kind: str
    text: str
    repair: str | None = None  # what --repair did (or would do); None: cannot be repaired

    def line(self, repaired: bool) -> str:
        if self.repair is None:
            return f"{self.kind}: {self.text}" + ("; not repaired" if repaired else "")
        return f"{self.kind}: {self.text}" + (f"; repaired: {self.repair}" if repaired else "")


@dataclass
class Result:
    """What one run found: problems in the order found, and what is left after a repair."""

    store: str
    repair: bool
    problems: list[Problem] = field(default_factory=list)
    left: list[Problem] = field(default_factory=list)  # still there after --repair
    inodes: int = 0
    pages: int = 0
    journal_pages: int = 0

    @property
    def repaired(self) -> int:
        if not self.repair:
            return 0
        return max(0, sum(p.repair is not None for p in self.problems) - len(self.left))

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    @property
    def exit_code(self) -> int:
        """0: clean, or every problem repaired; 1: problems left."""
        if not self.problems or (self.repair and not self.left):
            return EXIT_CLEAN
        return EXIT_PROBLEMS

    def summary(self) -> str:
        if not self.problems:
            counts = f"{_n(self.inodes, 'inode')}, {_n(self.pages, 'page')}"
            return f"mofs: {self.store}: clean ({counts})"
        n = len(self.problems)
        text = f"mofs: {self.store}: {_n(n, 'problem')}, {self.repaired} repaired"
        if self.left:
            text += f", {len(self.left)} left"
        elif not self.repair and any(p.repair for p in self.problems):
            text += f" (run 'mofs fsck --repair {self.store}' to repair)"
        return text


# --- progress ------------------------------------------------------------------------------


class Progress:
    """A ``\\r``-updated line on a terminal's stderr; silent when not a terminal."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream if stream is not None and _isatty(stream) else None
        self.shown = False
        self._last = 0.0
        self._what = ""
        self._start = 0.0

    def show(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self.shown = True

    def count(self, what: str, n: int, total: int) -> None:
        if n % PROGRESS_EVERY == 0 and n:
            self.show(f"mofs: fsck: {what} {n:,}/{total:,}")

    def begin(self, what: str) -> None:
        """A long statement starts; :meth:`tick` shows it is still running."""
        self._what, self._start, self._last = what, time.monotonic(), time.monotonic()

    def tick(self) -> int:
        now = time.monotonic()
        if now - self._last >= _TICK and self._what:
            self._last = now
            self.show(f"mofs: fsck: {self._what} ({now - self._start:.0f} s)")
        return 0  # go on

    def clear(self) -> None:
        if self.shown and self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- opening the store ----------------------------------------------------------------------


def _unescape(field: str) -> str:
    """A /proc/mounts field with its octal escapes (spaces, tabs, backslashes) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_on(store: str) -> str | None:
    """The mountpoint of a running mofs mount of ``store`` (its fsname), if any."""
    real = os.path.realpath(store)
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "fuse.mofs":
            source = _unescape(fields[0])
            if source == os.path.abspath(store) or os.path.realpath(source) == real:
                return _unescape(fields[1])
    return None


def open_store(path: str, write: bool) -> tuple[sqlite3.Connection, int]:
    """A connection to the existing store at ``path`` and its page size.

    Refuses (exit 4) a store a mount is using, and (exit 3) anything that is not a mofs
    store of a schema this mofs reads; never creates a file."""
    mnt = mounted_on(path)
    if mnt is not None:
        raise UserError(f"{path} is mounted on {mnt}; unmount it first", EXIT_MOUNTED)
    page_size = _check_existing(path, create=False)
    assert page_size is not None
    if write and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"cannot open store {path} for writing: permission denied")
    try:
        db = sqlite3.connect(_uri(path, "rw" if write else "ro"), uri=True,
                             isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None
    try:
        db.execute("PRAGMA busy_timeout=5000")
        if write:
            db.execute("PRAGMA synchronous=FULL")  # the repair's commit is durable
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(f"cannot open store {path}: {exc}") from None
    return db, page_size


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return bool(db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (name,)).fetchall())


# --- the checker ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Inode:
    mode: int
    nlink: int
    size: int

    @property
    def isdir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def kind(self) -> str:
        if stat.S_ISREG(self.mode):
            return "regular file"
        if stat.S_ISDIR(self.mode):
            return "directory"
        if stat.S_ISLNK(self.mode):
            return "symbolic link"
        return "special file"


@dataclass(slots=True)
class _Entry:
    parent: int
    name: bytes
    ino: int


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def _blob(value: object) -> bytes:
    """A stored name or page as bytes, whatever type a damaged row holds."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return b"" if value is None else str(value).encode()


def _damage(rows: list[str]) -> list[str]:
    """The lines of an integrity_check answer (one row may hold several), headers dropped."""
    lines = [line.strip() for row in rows for line in str(row).splitlines()]
    return [line for line in lines if line and not line.startswith("***")] or ["(no details)"]


def _show(name: bytes) -> str:
    """A name for a one-line report: undecodable bytes and control characters escaped."""
    text = name.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Checker:
    """One pass over a store: check, and with ``repair`` fix, in one transaction."""

    def __init__(self, db: sqlite3.Connection, page_size: int, *, repair: bool,
                 emit: Callable[[Problem], None], progress: Progress,
                 store: str | None = None) -> None:
        self.db = db
        self.store = store
        self.data_file = data_path(store) if store else None  # slots of long pages
        self.has_slots = False
        self.page_size = page_size
        self.repair = repair
        self.emit = emit
        self.progress = progress
        self.problems: list[Problem] = []
        self.inodes: dict[int, _Inode] = {}
        self.entries: dict[int, _Entry] = {}
        self.names: dict[int, list[int]] = {}  # ino -> ids of the entries naming it
        self.children: dict[int, list[int]] = {}  # parent ino -> ids of its entries
        self.deleted: set[int] = set()  # inodes this pass deleted (with their pages)
        self.pages = 0
        self.lost_found: int | None = None
        self.has_pages = False  # the store's own pager has written pages
        self.has_allocation = False  # the written pages of files (st_blocks) are kept
        self._virtual = -1  # ids of things a check-only pass pretends to create

    # --- reporting and the model ---------------------------------------------------------

    def problem(self, kind: str, text: str, repair: str | None = None) -> None:
        p = Problem(kind, text, repair)
        self.problems.append(p)
        self.emit(p)

    def sql(self, statement: str, params: Iterable[object] = ()) -> list[tuple]:
        return self.db.execute(statement, tuple(params)).fetchall()

    def write(self, statement: str, params: Iterable[object] = ()) -> int:
        """Run a change when repairing; the new row id (a made-up one when only checking)."""
        if self.repair:
            cursor = self.db.execute(statement, tuple(params))
            return cursor.lastrowid or 0
        self._virtual -= 1
        return self._virtual

    def _index(self, eid: int) -> None:
        e = self.entries[eid]
        self.names.setdefault(e.ino, []).append(eid)
        self.children.setdefault(e.parent, []).append(eid)

    def _unindex(self, eid: int) -> None:
        e = self.entries[eid]
        self.names[e.ino].remove(eid)
        self.children[e.parent].remove(eid)

    def drop_entry(self, eid: int) -> None:
        self.write("DELETE FROM dentries WHERE id = ?", (eid,))
        self._unindex(eid)
        del self.entries[eid]

    def bump(self, ino: int, delta: int) -> None:
        """Change a link count along with a change of names, so that the change itself
        never shows up as a wrong link count."""
        self.write("UPDATE inodes SET nlink = nlink + ? WHERE ino = ?", (delta, ino))
        self.inodes[ino].nlink += delta

    def move_entry(self, eid: int, parent: int, name: bytes) -> None:
        self.write("UPDATE dentries SET parent = ?, name = ? WHERE id = ?", (parent, name, eid))
        e = self.entries[eid]
        old = self.inodes.get(e.parent)
        if self.inodes[e.ino].isdir:  # its '..' moves along
            if old is not None and old.isdir:
                self.bump(e.parent, -1)
            self.bump(parent, 1)
        self._unindex(eid)
        e.parent, e.name = parent, name
        self._index(eid)

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        eid = self.write("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)",
                         (parent, name, ino))
        self.entries[eid] = _Entry(parent, name, ino)
        self._index(eid)
        if self.inodes[ino].isdir:
            self.bump(parent, 1)

    def delete_inode(self, ino: int) -> None:
        for table, column in (("xattrs", "ino"), ("inodes", "ino")):
            self.write(f"DELETE FROM {table} WHERE {column} = ?", (ino,))
        if self.has_pages:
            self.write("DELETE FROM pages WHERE object = ?", (ino,))
        if self.has_allocation:
            self.write("DELETE FROM allocation WHERE ino = ?", (ino,))
        del self.inodes[ino]
        self.deleted.add(ino)

    def path(self, ino: int) -> str:
        """``/a/b`` for an inode, as far as its first names lead (``?`` where they stop)."""
        parts: list[str] = []
        seen: set[int] = set()
        while ino != ROOT_INODE:
            if ino in seen or len(parts) >= 64:
                parts.append("...")
                break
            seen.add(ino)
            names = self.names.get(ino)
            if not names:
                parts.append(f"<inode {ino}>")
                break
            e = self.entries[names[0]]
            parts.append(_show(e.name))
            ino = e.parent
        return "/" + "/".join(reversed(parts))

    def entry_path(self, eid: int) -> str:
        e = self.entries[eid]
        parent = self.path(e.parent) if e.parent in self.inodes else f"<inode {e.parent}>"
        return parent.rstrip("/") + "/" + _show(e.name)

    def expected_nlink(self, ino: int) -> int:
        inode = self.inodes[ino]
        names = len(self.names.get(ino, ()))
        if not inode.isdir:
            return names
        subdirs = sum(1 for eid in self.children.get(ino, ())
                      if (c := self.inodes.get(self.entries[eid].ino)) is not None and c.isdir)
        return (1 if ino == ROOT_INODE else names) + 1 + subdirs

    def free_name(self, parent: int, base: bytes) -> bytes:
        taken = {self.entries[eid].name for eid in self.children.get(parent, ())}
        name, n = base, 0
        while name in taken:
            n += 1
            name = base + b".%d" % n
        return name

    def lost_and_found(self) -> int:
        """The inode of /lost+found, made (with 0700, the root's owner) when first needed."""
        if self.lost_found is not None:
            return self.lost_found
        for eid in self.children.get(ROOT_INODE, ()):
            e = self.entries[eid]
            if e.name == LOST_FOUND and self.inodes[e.ino].isdir:
                self.lost_found = e.ino
                return e.ino
        owner = self.sql("SELECT uid, gid FROM inodes WHERE ino = ?", (ROOT_INODE,))
        uid, gid = owner[0] if owner else (0, 0)
        now = time.time_ns()
        mode = stat.S_IFDIR | 0o700
        ino = self.write(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, "
            "ctime_ns) VALUES (?, 2, ?, ?, 0, 0, ?, ?, ?)", (mode, uid, gid, now, now, now))
        self.inodes[ino] = _Inode(mode, 2, 0)
        self.add_entry(ROOT_INODE, self.free_name(ROOT_INODE, LOST_FOUND), ino)
        self.lost_found = ino
        return ino

    def to_lost_found(self, ino: int, eid: int | None) -> str:
        """Give ``ino`` a name in /lost+found (moving entry ``eid`` if given)."""
        lf = self.lost_and_found()
        name = self.free_name(lf, b"#%d" % ino)
        if eid is None:
            self.add_entry(lf, name, ino)
        else:
            self.move_entry(eid, lf, name)
        return f"{self.path(lf)}/{_show(name)}"

    # --- the pass --------------------------------------------------------------------------

    def run(self) -> None:
        self.has_pages = _has_table(self.db, "pages")
        self.has_slots = self.has_pages and "slot" in {
            row[1] for row in self.db.execute("PRAGMA table_info(pages)")}
        self.has_allocation = _has_table(self.db, "allocation")
        if not self.integrity():
            return
        if self.repair:
            self.db.execute("BEGIN IMMEDIATE")
        try:
            self.load()
            self.check_root()
            self.check_entries()
            self.check_directory_names()
            self.check_nameless()
            self.check_reachable()
            self.check_link_counts()
            self.check_xattrs()
            self.check_pages()
            if self.repair:
                self.db.execute("COMMIT")
        finally:
            if self.db.in_transaction:
                self.db.rollback()

    def integrity(self) -> bool:
        self.progress.begin("checking the SQLite database")
        self.db.set_progress_handler(self.progress.tick, 100_000)
        try:
            rows = [r[0] for r in self.sql("PRAGMA integrity_check(20)")]
        finally:
            self.db.set_progress_handler(None, 0)
            self.progress.begin("")
        if rows == ["ok"]:
            return True
        rows = _damage(rows)
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        self.problem("integrity", f"the SQLite database is damaged: {rows[0]}{more}; "
                     "nothing else was checked or repaired (restore a backup, or try "
                     "sqlite3's .recover)")
        return False

    def load(self) -> None:
        self.progress.begin("reading the metadata")
        self.db.set_progress_handler(self.progress.tick, 100_000)
        try:
            for ino, mode, nlink, size in self.sql("SELECT ino, mode, nlink, size FROM inodes"):
                self.inodes[ino] = _Inode(mode, nlink, size)
            for eid, parent, name, ino in self.sql(
                    "SELECT id, parent, name, ino FROM dentries ORDER BY id"):
                self.entries[eid] = _Entry(parent, _blob(name), ino)
                self._index(eid)
        finally:
            self.db.set_progress_handler(None, 0)
            self.progress.begin("")

    def check_root(self) -> None:
        root = self.inodes.get(ROOT_INODE)
        if root is not None and root.isdir:
            return
        now = time.time_ns()
        mode = stat.S_IFDIR | 0o755
        if root is None:
            self.problem("root", "the root directory (inode 1) is missing",
                         "made a new, empty root directory")
            self.write("INSERT INTO inodes (ino, mode, nlink, uid, gid, rdev, size, atime_ns, "
                       "mtime_ns, ctime_ns) VALUES (?, ?, 2, 0, 0, 0, 0, ?, ?, ?)",
                       (ROOT_INODE, mode, now, now, now))
        else:
            self.problem("root", f"the root inode is a {root.kind()}, not a directory",
                         "made it a directory")
            self.write("UPDATE inodes SET mode = ?, size = 0, target = NULL WHERE ino = ?",
                       (mode, ROOT_INODE))
        self.inodes[ROOT_INODE] = _Inode(mode, 2 if root is None else root.nlink, 0)

    def check_entries(self) -> None:
        """Names of missing inodes go; names inside missing or non-directories move."""
        for eid in list(self.entries):
            e = self.entries[eid]
            if e.ino not in self.inodes:
                where = self.entry_path(eid)
                self.drop_entry(eid)
                self.problem("dangling entry", f"{where} names inode {e.ino}, which does not "
                             "exist", "removed the name")
        for eid in list(self.entries):
            e = self.entries[eid]
            parent = self.inodes.get(e.parent)
            if parent is not None and parent.isdir:
                continue
            where = self.entry_path(eid)
            why = ("a missing inode" if parent is None
                   else f"inode {e.parent}, a {parent.kind()}")
            others = [x for x in self.names[e.ino] if x != eid
                      and (p := self.inodes.get(self.entries[x].parent)) is not None and p.isdir]
            if others or e.ino == ROOT_INODE:
                self.drop_entry(eid)
                fix = ("removed the name" if e.ino == ROOT_INODE
                       else "removed the name (the inode has others)")
            else:
                fix = f"moved to {self.to_lost_found(e.ino, eid)}"
            self.problem("misplaced entry", f"{where} (inode {e.ino}) is inside {why}", fix)

    def check_directory_names(self) -> None:
        for ino in sorted(self.inodes):
            names = list(self.names.get(ino, ()))
            keep = 0 if ino == ROOT_INODE else 1
            if not self.inodes[ino].isdir or len(names) <= keep:
                continue
            paths = ", ".join(self.entry_path(eid) for eid in names)
            extra = names[keep:]
            for eid in list(extra):
                self.drop_entry(eid)
            what = "the root directory" if ino == ROOT_INODE else f"directory inode {ino}"
            self.problem("directory names", f"{what} has {_n(len(names), 'name')} ({paths})",
                         f"removed {len(extra)} of them")

    def check_nameless(self) -> None:
        """Inodes without a name: deleted if their link count says so, else adopted."""
        for ino in sorted(self.inodes):
            inode = self.inodes.get(ino)
            if ino == ROOT_INODE or inode is None or self.names.get(ino):
                continue
            if inode.nlink == 0 and not self.children.get(ino):
                pages = self.page_count(ino)
                self.delete_inode(ino)
                self.problem("orphan", f"inode {ino} ({inode.kind()}, {inode.size} bytes, "
                             f"{_n(pages, 'page')}) has no name and link count 0 (unlinked while "
                             "open, or left by a crash; a mount frees it too)",
                             "deleted it, its xattrs and pages")
            else:
                where = self.to_lost_found(ino, None)
                self.problem("nameless inode", f"inode {ino} ({inode.kind()}) has no name "
                             f"but link count {inode.nlink}", f"named it {where}")

    def page_count(self, ino: int) -> int:
        if not self.has_pages:
            return 0
        return self.sql("SELECT count(*) FROM pages WHERE object = ?", (ino,))[0][0]

    def reach(self, start: int, reached: set[int]) -> None:
        todo = [start]
        reached.add(start)
        while todo:
            for eid in self.children.get(todo.pop(), ()):
                child = self.entries[eid].ino
                if child not in reached and self.inodes[child].isdir:
                    reached.add(child)
                    todo.append(child)

    def check_reachable(self) -> None:
        reached: set[int] = set()
        self.reach(ROOT_INODE, reached)
        for ino in sorted(self.inodes):
            if ino in reached or not self.inodes[ino].isdir:
                continue
            up, chain = ino, {ino}  # walk up to where the cycle closes
            while True:
                parent = self.entries[self.names[up][0]].parent
                if parent in reached or parent in chain:
                    break
                up = parent
                chain.add(parent)
            if parent in reached:  # an earlier move already brought it back
                self.reach(ino, reached)
                continue
            top = parent  # where the walk up came back into itself
            where = self.path(top)
            eid = self.names[top][0]
            fix = f"moved to {self.to_lost_found(top, eid)}"
            self.problem("unreachable directory", f"directory inode {top} ({where}) and "
                         "what it holds cannot be reached from the root", fix)
            self.reach(top, reached)

    def check_link_counts(self) -> None:
        for ino in sorted(self.inodes):
            inode = self.inodes[ino]
            want = self.expected_nlink(ino)
            if inode.nlink != want:
                self.write("UPDATE inodes SET nlink = ? WHERE ino = ?", (want, ino))
                self.problem("link count", f"{self.path(ino)} (inode {ino}, "
                             f"{inode.kind()}) has link count {inode.nlink}, expected {want}",
                             f"set it to {want}")
                inode.nlink = want

    def check_xattrs(self) -> None:
        for ino, count in self.sql("SELECT ino, count(*) FROM xattrs GROUP BY ino"):
            if ino not in self.inodes and ino not in self.deleted:
                self.write("DELETE FROM xattrs WHERE ino = ?", (ino,))
                self.problem("stray xattrs", f"{_n(count, 'xattr')} of inode {ino}, which does not "
                             "exist", "deleted them")

    def check_pages(self) -> None:
        if not self.has_pages:
            return
        ps = self.page_size
        total = self.sql("SELECT count(*) FROM pages")[0][0]
        stray: dict[int, int] = {}
        past: dict[int, list[int]] = {}
        misaligned: dict[int, list[int]] = {}
        wrong: list[tuple[int, int, int]] = []
        tails: list[int] = []  # files with a partial last page that has a row
        bad_slots: list[tuple[int, int, str]] = []
        named: dict[int, tuple[int, int]] = {}  # slot -> the first page naming it
        data_size = self._data_size()
        missing = missing_data_file(self.db, self.store) if self.has_slots and self.store \
            else None
        if missing:  # not a page's fault: nothing to delete, the file must come back
            self.problem("data file", missing)
        n = 0
        columns = "coalesce(length, length(data)), slot" if self.has_slots \
            else "length(data), NULL"
        for obj, offset, length, slot in self.db.execute(
                f"SELECT object, offset, {columns} FROM pages ORDER BY object, offset"):
            n += 1
            self.progress.count("pages", n, total)
            inode = self.inodes.get(obj)
            if obj in self.deleted:
                continue
            if slot is not None and not missing:
                why = self._bad_slot(slot, length, data_size, named.get(slot))
                if why:
                    bad_slots.append((obj, offset, why))
                    continue
                named[slot] = (obj, offset)
            if inode is None or not stat.S_ISREG(inode.mode):
                stray[obj] = stray.get(obj, 0) + 1
            elif not isinstance(offset, int) or offset < 0 or offset % ps:
                misaligned.setdefault(obj, []).append(offset)
            elif offset >= -(-inode.size // ps) * ps:
                past.setdefault(obj, []).append(offset)
            else:
                if length > ps:  # shorter is fine: trailing zeros are not stored
                    wrong.append((obj, offset, length))
                if inode.size % ps and offset == inode.size // ps * ps:
                    tails.append(obj)
        self.pages = n
        self.progress.clear()
        for obj, offset, why in bad_slots:
            self.write("DELETE FROM pages WHERE object = ? AND offset = ?", (obj, offset))
            self.problem("page slot", f"{self.path(obj)} (inode {obj}): the page at offset "
                         f"{offset!r} {why}", "deleted it (it reads as zeros)")
        for obj, count in stray.items():
            inode = self.inodes.get(obj)
            what = ("does not exist" if inode is None
                    else f"is a {inode.kind()} ({self.path(obj)})")
            self.write("DELETE FROM pages WHERE object = ?", (obj,))
            self.problem("stray pages", f"{_n(count, 'page')} of object {obj}, whose inode {what}",
                         "deleted them")
        for obj, offsets in misaligned.items():
            for offset in offsets:
                self.write("DELETE FROM pages WHERE object = ? AND offset = ?", (obj, offset))
            self.problem("misaligned page", f"{self.path(obj)} (inode {obj}): "
                         f"{_n(len(offsets), 'page')} at offsets that are not multiples of {ps} "
                         f"(first {offsets[0]!r})", "deleted them")
        for obj, offsets in past.items():
            size = self.inodes[obj].size
            self.write("DELETE FROM pages WHERE object = ? AND offset >= ?",
                       (obj, -(-size // ps) * ps))
            self.problem("pages past EOF", f"{self.path(obj)} (inode {obj}, {size} bytes) "
                         f"has {_n(len(offsets), 'page')} at offsets {offsets[0]}..{offsets[-1]}",
                         "deleted them")
        for obj, offset, length in wrong:
            data = self.page_bytes(obj, offset) or b""
            self.store_page(obj, offset, data[:ps])
            self.problem("page size", f"{self.path(obj)} (inode {obj}): the page at offset "
                         f"{offset} holds {length} bytes, more than {ps}", "trimmed it")
        self.check_tails(tails, wrong)

    def _data_size(self) -> int:
        if self.data_file is None:
            return 0
        try:
            return os.stat(self.data_file).st_size
        except FileNotFoundError:
            return 0

    @staticmethod
    def _bad_slot(slot: object, length: object, data_size: int,
                  first: tuple[int, int] | None) -> str:
        """Why a page's slot cannot be right ('' if it can)."""
        if not isinstance(slot, int) or slot < 0:
            return f"names slot {slot!r}, which is not a slot number"
        if not isinstance(length, int) or not 0 < length <= SLOT:
            return f"says it is {length!r} bytes long, not 1..{SLOT}"
        if first is not None:
            return f"names slot {slot}, which the page at offset {first[1]} of object " \
                   f"{first[0]} holds"
        if slot * SLOT + length > data_size:  # (the last slot may end short)
            return f"names slot {slot}, past the end of the data file ({data_size} bytes)"
        return ""

    def page_bytes(self, obj: int, offset: int) -> bytes | None:
        """A page's stored bytes, from its row or its slot in the data file."""
        columns = "data, slot, length" if self.has_slots else "data, NULL, NULL"
        rows = self.sql(f"SELECT {columns} FROM pages WHERE object = ? AND offset = ?",
                        (obj, offset))
        if not rows:
            return None
        data, slot, length = rows[0]
        if slot is None:
            return _blob(data)
        if self.data_file is None or not os.path.exists(self.data_file):
            return None  # reported once as a missing data file
        with open(self.data_file, "rb") as f:
            f.seek(slot * SLOT)
            return f.read(length).ljust(length, b"\0")

    def store_page(self, obj: int, offset: int, data: bytes) -> None:
        """Write a repaired page; a page of zeros is no row, as the pager keeps it. A
        repaired page goes into its row (its old slot is freed at the next mount)."""
        if data.count(0) == len(data):
            self.write("DELETE FROM pages WHERE object = ? AND offset = ?", (obj, offset))
        elif self.has_slots:
            self.write("UPDATE pages SET data = ?, slot = NULL, length = NULL "
                       "WHERE object = ? AND offset = ?", (data.rstrip(b"\0"), obj, offset))
        else:
            self.write("UPDATE pages SET data = ? WHERE object = ? AND offset = ?",
                       (data.rstrip(b"\0"), obj, offset))

    def check_tails(self, tails: list[int], wrong: list[tuple[int, int, int]]) -> None:
        """The last page of a file must hold zeros past the end of the file."""
        ps = self.page_size
        fixed = {(obj, off) for obj, off, _ in wrong}
        for ino in tails:
            inode = self.inodes[ino]
            last = inode.size // ps * ps
            data = self.page_bytes(ino, last)
            if data is None:
                continue
            if self.repair is False and (ino, last) in fixed:
                data = data[:ps].ljust(ps, b"\0")
            keep = inode.size - last
            tail = data[keep:]
            if tail.count(0) == len(tail):
                continue
            nonzero = len(tail) - tail.count(0)
            self.store_page(ino, last, data[:keep].ljust(ps, b"\0"))
            self.problem("bytes past EOF", f"{self.path(ino)} (inode {ino}, {inode.size} "
                         f"bytes): {nonzero} non-zero bytes after the end in its last page",
                         "zeroed them")


def journal_pages(db: sqlite3.Connection) -> int:
    if not _has_table(db, "return_journal"):
        return 0
    return db.execute("SELECT count(*) FROM return_journal").fetchone()[0]


def fsck(store: str, *, repair: bool = False, out: TextIO | None = None,
         progress: TextIO | None = None) -> Result:
    """Check (and with ``repair`` fix) the store; problem lines go to ``out`` as found.

    Raises UserError (StoreError, exit 3) for what is not a usable store, and exit 4 for
    a store that is mounted."""
    db, page_size = open_store(store, write=repair)
    shown = Progress(progress)
    result = Result(store, repair)

    def emit(p: Problem) -> None:
        if out is not None:
            shown.clear()
            print(p.line(repair), file=out, flush=True)

    try:
        checker = Checker(db, page_size, repair=repair, emit=emit, progress=shown,
                          store=store)
        checker.run()
        result.problems = checker.problems
        result.pages = checker.pages
        if repair and checker.problems and checker.problems[0].kind != "integrity":
            again = Checker(db, page_size, repair=False, emit=lambda p: None,
                            progress=Progress(None), store=store)
            again.run()
            result.left = again.problems
            result.pages = again.pages
            for p in result.left:
                if out is not None:
                    print(f"after repair, still: {p.line(False)}", file=out, flush=True)
        elif repair and checker.problems:
            result.left = list(checker.problems)
        result.inodes = db.execute("SELECT count(*) FROM inodes").fetchone()[0]
        result.journal_pages = journal_pages(db)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise UserError(f"{store} is in use by another program ({exc}); is it mounted?",
                            EXIT_MOUNTED) from None
        raise UserError(f"{store}: cannot {'repair' if repair else 'check'} the store: "
                        f"{exc}", EXIT_PROBLEMS) from None
    except sqlite3.Error as exc:
        raise UserError(f"{store}: the store is damaged ({exc}); restore a backup, or try "
                        "sqlite3's .recover", EXIT_PROBLEMS) from None
    finally:
        shown.clear()
        db.close()
    if result.journal_pages and out is not None:
        print(f"note: {_n(result.journal_pages, 'returned page')} not yet replayed; mount the "
              "store to replay them", file=out, flush=True)
    return result


def main(store: str, repair: bool, quiet: bool) -> int:
    """``mofs fsck``: problem lines and the summary on stdout, progress on stderr."""
    try:
        result = fsck(store, repair=repair, out=sys.stdout,
                      progress=None if quiet else sys.stderr)
    except (UserError, KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # a bug, or a store damaged in a way nobody foresaw
        raise UserError(f"{store}: internal error while checking: {type(exc).__name__}: "
                        f"{exc}") from None
    print(result.summary(), flush=True)
    return result.exit_code


# --- the quick check before a mount ----------------------------------------------------------


_QUICK_TABLES = ("meta", "inodes", "dentries", "xattrs", "return_journal")


def quick_check(store: str) -> list[tuple[int, str]]:
    """(log level, line) per kind of problem, cheap enough to run before every mount.

    Its cost grows with the metadata, not with the data: ``PRAGMA quick_check`` of the
    metadata tables and the journal only (milliseconds cold on a store of 1 GiB of pages,
    where a whole-file quick_check reads every byte: 8 s), plus two indexed counts.
    Orphans (inodes with link count 0) are news, not trouble: the mount frees them. A
    name of a missing inode and a failed ``PRAGMA quick_check`` deserve a warning."""
    found: list[tuple[int, str]] = []
    try:
        db = sqlite3.connect(_uri(store, "ro"), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return [(logging.WARNING, f"could not check {store} before mounting: {exc}")]
    try:
        db.execute("PRAGMA busy_timeout=5000")
        rows = ["ok"]
        for table in _QUICK_TABLES:  # the pages are most of a store: mofs fsck reads them
            if rows == ["ok"] and _has_table(db, table):
                rows = [r[0] for r in db.execute(f"PRAGMA quick_check('{table}')")]
        if rows != ["ok"]:
            rows = _damage(rows)
            found.append((logging.WARNING, f"{store}: the SQLite database is damaged "
                          f"({rows[0]}); unmount and run 'mofs fsck {store}'"))
            return found
        orphans = db.execute("SELECT count(*) FROM inodes WHERE nlink = 0").fetchone()[0]
        if orphans:
            found.append((logging.INFO, f"{store}: {_n(orphans, 'inode')} without a name (unlinked "
                          "while open, or deleted but not yet freed, when mofs stopped); "
                          "freeing them"))
        dangling = db.execute("SELECT count(*) FROM dentries d WHERE NOT EXISTS "
                              "(SELECT 1 FROM inodes i WHERE i.ino = d.ino)").fetchone()[0]
        if dangling:
            found.append((logging.WARNING, f"{store}: {_n(dangling, 'name')} of inodes that do not "
                          f"exist (dangling entries); unmount and run 'mofs fsck --repair "
                          f"{store}'"))
    except sqlite3.Error as exc:
        found.append((logging.WARNING, f"could not check {store} before mounting: {exc}; "
                      f"unmount and run 'mofs fsck {store}'"))
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    return found
