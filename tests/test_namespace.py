"""The metadata store against a real SQLite file: bookkeeping, errors and bad stores."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mofs.errors import StoreError
from mofs.namespace import (
    APPLICATION_ID,
    ROOT_INODE,
    SCHEMA_VERSION,
    Inode,
    Namespace,
)

DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777
ROOT = ROOT_INODE


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store.mofs")


@pytest.fixture
def ns(store: str) -> Iterator[Namespace]:
    n = Namespace.open(store)
    yield n
    n.close()


def mkdir(ns: Namespace, parent: int, name: bytes) -> int:
    ino = ns.make_inode(DIR, 1000, 1000).ino
    ns.link(parent, name, ino)
    return ino


def mkfile(ns: Namespace, parent: int, name: bytes, size: int = 0) -> int:
    ino = ns.make_inode(REG, 1000, 1000).ino
    ns.link(parent, name, ino)
    if size:
        ns.set_attrs(ino, size=size)
    return ino


def nlink(ns: Namespace, ino: int) -> int:
    return ns.get(ino).nlink


def names(ns: Namespace, parent: int) -> list[bytes]:
    return [name for name, _, _ in ns.entries(parent)]


# --- opening and creating ------------------------------------------------------------------


def test_new_store_has_root_meta_application_id_and_wal(store: str) -> None:
    before = time.time_ns()
    ns = Namespace.open(store, page_size=16384)
    try:
        assert ns.created and ns.path == store and ns.page_size == 16384
        root = ns.get(ROOT)
        assert root.mode == stat.S_IFDIR | 0o755 and root.nlink == 2
        assert (root.uid, root.gid) == (os.getuid(), os.getgid())
        assert before <= root.mtime_ns == root.ctime_ns == root.atime_ns <= time.time_ns()
        assert ns.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert ns.get_meta("page_size") == "16384"
        assert ns.entries(ROOT) == [] and ns.is_empty_dir(ROOT)
    finally:
        ns.close()
    db = sqlite3.connect(store)
    try:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert [p for p in os.listdir(os.path.dirname(store)) if "creating" in p] == []


def test_reopen_keeps_data_and_the_page_size_it_was_created_with(store: str) -> None:
    ns = Namespace.open(store, page_size=4096)
    d = mkdir(ns, ROOT, b"d")
    f = mkfile(ns, d, b"f", size=123)
    ns.setxattr(f, b"user.x", b"1")
    ns.set_meta("label", "mine")
    before = ns.get(f)
    ns.close()  # no commit(): every method is already committed
    ns = Namespace.open(store, page_size=8192)
    try:
        assert not ns.created and ns.page_size == 4096
        assert ns.lookup(ROOT, b"d") == d and ns.lookup(d, b"f") == f
        assert ns.get(f) == before and ns.get(d).nlink == 2 and ns.get(ROOT).nlink == 3
        assert ns.getxattr(f, b"user.x") == b"1" and ns.get_meta("label") == "mine"
    finally:
        ns.close()


def test_durable_commit_persists_and_keeps_the_connection_usable(store: str) -> None:
    ns = Namespace.open(store)
    f = mkfile(ns, ROOT, b"f", size=5)
    ns.commit(durable=True)
    ns.commit()
    g = mkfile(ns, ROOT, b"g")  # still writable after a durable commit
    ns.close()
    ns = Namespace.open(store)
    try:
        assert ns.lookup(ROOT, b"f") == f and ns.get(f).size == 5 and ns.lookup(ROOT, b"g") == g
    finally:
        ns.close()


def test_changes_are_visible_and_no_write_lock_is_held_between_calls(
        ns: Namespace, store: str) -> None:
    """The pager writes the same file through its own connection; it must never wait on us."""
    f = mkfile(ns, ROOT, b"f")
    ns.set_attrs(f, size=7)
    other = sqlite3.connect(store, isolation_level=None, timeout=0)
    try:
        assert other.execute("SELECT size FROM inodes WHERE ino = ?", (f,)).fetchone() == (7,)
        other.execute("BEGIN IMMEDIATE")  # fails with 'database is locked' if we held it
        other.execute("CREATE TABLE IF NOT EXISTS pages (object, offset, data)")
        other.execute("INSERT INTO pages VALUES (?, 0, x'01')", (f,))
        other.execute("COMMIT")
    finally:
        other.close()
    assert ns.get(f).size == 7 and ns.lookup(ROOT, b"f") == f


def test_other_tables_in_the_store_are_left_alone(store: str) -> None:
    Namespace.open(store).close()
    db = sqlite3.connect(store)
    db.execute("CREATE TABLE pages (object INTEGER, offset INTEGER, data BLOB)")
    db.execute("INSERT INTO pages VALUES (2, 0, x'abcd')")
    db.commit()
    db.close()
    ns = Namespace.open(store)
    mkfile(ns, ROOT, b"f")
    ns.close()
    db = sqlite3.connect(store)
    try:
        assert db.execute("SELECT * FROM pages").fetchall() == [(2, 0, b"\xab\xcd")]
    finally:
        db.close()


def assert_one_line_naming(exc: pytest.ExceptionInfo[StoreError], path: str) -> str:
    msg = str(exc.value)
    assert path in msg and "\n" not in msg and exc.value.exit_code == 3
    return msg


def test_page_size_must_be_positive(store: str) -> None:
    with pytest.raises(ValueError):
        Namespace.open(store, page_size=0)
    assert not os.path.exists(store)


def test_missing_store_without_create_is_an_error_and_creates_nothing(store: str) -> None:
    with pytest.raises(StoreError) as exc:
        Namespace.open(store, create=False)
    assert "does not exist" in assert_one_line_naming(exc, store)
    assert os.listdir(os.path.dirname(store)) == []


def test_missing_parent_directory_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere" / "store.mofs")
    with pytest.raises(StoreError) as exc:
        Namespace.open(path)
    assert_one_line_naming(exc, path)
    assert not os.path.exists(tmp_path / "nowhere")


def test_directory_is_not_a_store(tmp_path: Path) -> None:
    path = str(tmp_path)
    with pytest.raises(StoreError) as exc:
        Namespace.open(path)
    assert "is a directory, not a mofs store" in assert_one_line_naming(exc, path)


def real_store_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "real.mofs"
    ns = Namespace.open(str(path))
    mkfile(ns, ROOT, b"f")
    ns.close()
    return path.read_bytes()


def foreign_db(tmp_path: Path) -> bytes:
    path = tmp_path / "foreign.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE foo (x)")
    db.execute("INSERT INTO foo VALUES (1)")
    db.commit()
    db.close()
    return path.read_bytes()


def newer_store(tmp_path: Path) -> bytes:
    path = tmp_path / "newer.mofs"
    Namespace.open(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    return path.read_bytes()


def mofs_id_without_meta(tmp_path: Path) -> bytes:
    path = tmp_path / "nometa.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute("CREATE TABLE foo (x)")
    db.commit()
    db.close()
    return path.read_bytes()


BAD_STORES = {
    "empty file": (lambda tmp: b"", "empty file"),
    "random bytes": (lambda tmp: os.urandom(8192), "not an SQLite database"),
    "truncated store": (lambda tmp: real_store_bytes(tmp)[:100], "truncated"),
    "foreign database": (foreign_db, "is an SQLite database but not a mofs store"),
    "mofs id, no meta table": (mofs_id_without_meta, "is an SQLite database but not a mofs"),
    "newer schema": (newer_store, "newer mofs (schema 99, this mofs reads up to 1)"),
}


@pytest.mark.parametrize("kind", list(BAD_STORES))
def test_bad_store_file_is_refused_and_left_byte_for_byte_untouched(
        tmp_path: Path, kind: str) -> None:
    make, phrase = BAD_STORES[kind]
    made = tmp_path / "made"
    made.mkdir()
    content = make(made)
    path = tmp_path / "bad.mofs"
    path.write_bytes(content)
    for create in (True, False):
        with pytest.raises(StoreError) as exc:
            Namespace.open(str(path), create=create)
        assert phrase in assert_one_line_naming(exc, str(path))
        assert path.read_bytes() == content


def test_foreign_database_gets_no_sidecar_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(foreign_db(tmp_path))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(StoreError):
        Namespace.open(str(path))
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_store_and_unwritable_directory(tmp_path: Path) -> None:
    path = tmp_path / "store.mofs"
    Namespace.open(str(path)).close()
    for mode in (0, 0o400):  # unreadable, then read-only
        path.chmod(mode)
        try:
            with pytest.raises(StoreError) as exc:
                Namespace.open(str(path))
            assert "ermission denied" in assert_one_line_naming(exc, str(path))
        finally:
            path.chmod(0o600)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StoreError) as exc:
        Namespace.open(str(locked / "store.mofs"))
    assert "ermission denied" in assert_one_line_naming(exc, str(locked / "store.mofs"))


# --- inodes -----------------------------------------------------------------------------------


def test_make_inode_starts_unlinked_with_current_times(ns: Namespace) -> None:
    before = time.time_ns()
    inode = ns.make_inode(stat.S_IFCHR | 0o600, 5, 6, rdev=0x0103)
    assert isinstance(inode, Inode) and inode.ino != ROOT
    assert (inode.mode, inode.nlink, inode.uid, inode.gid, inode.rdev, inode.size) == (
        stat.S_IFCHR | 0o600, 0, 5, 6, 0x0103, 0)
    assert before <= inode.atime_ns == inode.mtime_ns == inode.ctime_ns <= time.time_ns()
    assert ns.get(inode.ino) == inode
    assert ns.orphans() == [inode.ino]


def test_inode_numbers_are_not_reused(ns: Namespace) -> None:
    a = ns.make_inode(REG, 0, 0).ino
    ns.delete_inode(a)
    assert ns.make_inode(REG, 0, 0).ino > a


def test_get_missing_inode_raises_keyerror(ns: Namespace) -> None:
    with pytest.raises(KeyError):
        ns.get(999)


def test_symlink_size_and_readlink(ns: Namespace) -> None:
    target = b"../some/where\xff"
    link = ns.make_inode(LNK, 0, 0, target=target)
    assert link.size == len(target)
    assert ns.readlink(link.ino) == target
    f = mkfile(ns, ROOT, b"f")
    with pytest.raises(OSError) as exc:
        ns.readlink(f)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(KeyError):
        ns.readlink(999)


def test_set_attrs_updates_the_named_fields_only(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    old = ns.get(f)
    new = ns.set_attrs(f, mode=REG & ~0o077, uid=7, gid=8, size=4096, atime_ns=1,
                       mtime_ns=2, ctime_ns=3, rdev=4)
    assert new == Inode(f, REG & ~0o077, old.nlink, 7, 8, 4, 4096, 1, 2, 3) == ns.get(f)
    assert ns.set_attrs(f) == new
    with pytest.raises(TypeError):
        ns.set_attrs(f, nlink=5)
    assert ns.get(f) == new
    with pytest.raises(KeyError):
        ns.set_attrs(999, size=1)


def test_delete_inode_removes_it_and_its_xattrs(ns: Namespace, store: str) -> None:
    f = mkfile(ns, ROOT, b"f")
    ns.setxattr(f, b"user.a", b"1")
    with pytest.raises(OSError) as exc:
        ns.delete_inode(f)  # still has a name
    assert exc.value.errno == errno.EBUSY and ns.get(f).nlink == 1
    ns.unlink(ROOT, b"f")
    assert ns.orphans() == [f]
    ns.delete_inode(f)
    with pytest.raises(KeyError):
        ns.get(f)
    assert ns.orphans() == []
    db = sqlite3.connect(store)
    try:
        assert db.execute("SELECT count(*) FROM xattrs").fetchone() == (0,)
    finally:
        db.close()


def test_counts_inodes_and_bytes(ns: Namespace) -> None:
    assert ns.counts() == (1, 0)
    mkfile(ns, ROOT, b"a", size=100)
    d = mkdir(ns, ROOT, b"d")
    mkfile(ns, d, b"b", size=23)
    ns.make_inode(LNK, 0, 0, target=b"abcd")
    assert ns.counts() == (5, 127)


def test_meta_get_and_set(ns: Namespace) -> None:
    assert ns.get_meta("nothing") is None
    ns.set_meta("k", "v1")
    ns.set_meta("k", "v2")
    assert ns.get_meta("k") == "v2"


# --- names and link counts --------------------------------------------------------------------


def test_link_files_hard_links_and_times(ns: Namespace) -> None:
    f = ns.make_inode(REG, 0, 0).ino
    time.sleep(0.001)
    before = time.time_ns()
    ns.link(ROOT, b"a", f)
    root, inode = ns.get(ROOT), ns.get(f)
    assert inode.nlink == 1 and root.nlink == 2
    assert before <= inode.ctime_ns and inode.mtime_ns < before
    assert before <= root.mtime_ns and before <= root.ctime_ns
    d = mkdir(ns, ROOT, b"d")
    ns.link(d, b"b", f)
    assert ns.lookup(ROOT, b"a") == ns.lookup(d, b"b") == f and nlink(ns, f) == 2
    assert ns.lookup(ROOT, b"missing") is None
    assert ns.orphans() == []


def test_link_errors(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    g = ns.make_inode(REG, 0, 0).ino
    with pytest.raises(FileExistsError) as exc:
        ns.link(ROOT, b"f", g)
    assert exc.value.errno == errno.EEXIST and nlink(ns, g) == 0
    with pytest.raises(NotADirectoryError) as exc2:
        ns.link(f, b"x", g)
    assert exc2.value.errno == errno.ENOTDIR
    d = mkdir(ns, ROOT, b"d")
    with pytest.raises(PermissionError):
        ns.link(ROOT, b"d2", d)  # directories cannot be hard linked
    with pytest.raises(KeyError):
        ns.link(ROOT, b"ghost", 999)
    assert names(ns, ROOT) == [b"f", b"d"] and nlink(ns, d) == 2 and nlink(ns, ROOT) == 3


def test_directory_link_counts(ns: Namespace) -> None:
    a = mkdir(ns, ROOT, b"a")
    b = mkdir(ns, a, b"b")
    f = mkfile(ns, a, b"f")
    assert (nlink(ns, ROOT), nlink(ns, a), nlink(ns, b)) == (3, 3, 2)
    with pytest.raises(OSError) as exc:
        ns.unlink(ROOT, b"a")
    assert exc.value.errno == errno.ENOTEMPTY and ns.lookup(ROOT, b"a") == a
    removed = ns.unlink(a, b"b")
    assert removed.ino == b and removed.nlink == 0 and nlink(ns, a) == 2
    ns.unlink(a, b"f")
    assert ns.unlink(ROOT, b"a").nlink == 0 and nlink(ns, ROOT) == 2
    assert sorted(ns.orphans()) == sorted([a, b, f])


def test_unlink_file_and_hard_link(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"a")
    ns.link(ROOT, b"b", f)
    before = time.time_ns()
    left = ns.unlink(ROOT, b"a")
    assert left.ino == f and left.nlink == 1 and left.ctime_ns >= before
    assert ns.get(ROOT).mtime_ns >= before and names(ns, ROOT) == [b"b"]
    assert ns.unlink(ROOT, b"b").nlink == 0 and ns.orphans() == [f]
    assert ns.get(ROOT).nlink == 2
    with pytest.raises(FileNotFoundError) as exc:
        ns.unlink(ROOT, b"b")
    assert exc.value.errno == errno.ENOENT


def test_cannot_create_in_a_removed_directory(ns: Namespace) -> None:
    d = mkdir(ns, ROOT, b"d")
    ns.unlink(ROOT, b"d")
    with pytest.raises(FileNotFoundError):
        ns.link(d, b"x", ns.make_inode(REG, 0, 0).ino)


def test_parent_of_a_directory(ns: Namespace) -> None:
    a = mkdir(ns, ROOT, b"a")
    b = mkdir(ns, a, b"b")
    assert (ns.parent(ROOT), ns.parent(a), ns.parent(b)) == (ROOT, ROOT, a)
    c = mkdir(ns, ROOT, b"c")
    ns.rename(a, b"b", c, b"b")
    assert ns.parent(b) == c


def test_is_empty_dir(ns: Namespace) -> None:
    assert ns.is_empty_dir(ROOT)
    f = mkfile(ns, ROOT, b"f")
    assert not ns.is_empty_dir(ROOT)
    assert not ns.is_empty_dir(f)
    with pytest.raises(KeyError):
        ns.is_empty_dir(999)


# --- rename ------------------------------------------------------------------------------------


def test_rename_file_within_and_across_directories(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"a")
    d = mkdir(ns, ROOT, b"d")
    before = time.time_ns()
    assert ns.rename(ROOT, b"a", ROOT, b"b") is None
    assert ns.lookup(ROOT, b"a") is None and ns.lookup(ROOT, b"b") == f
    assert ns.get(f).ctime_ns >= before and ns.get(ROOT).mtime_ns >= before
    assert ns.rename(ROOT, b"b", d, b"c") is None
    assert ns.lookup(d, b"c") == f and nlink(ns, f) == 1
    assert (nlink(ns, ROOT), nlink(ns, d)) == (3, 2)  # a file move changes no dir counts
    assert ns.get(d).mtime_ns >= before


def test_rename_directory_across_parents_moves_its_dotdot(ns: Namespace) -> None:
    a = mkdir(ns, ROOT, b"a")
    b = mkdir(ns, ROOT, b"b")
    c = mkdir(ns, a, b"c")
    assert (nlink(ns, a), nlink(ns, b)) == (3, 2)
    ns.rename(a, b"c", b, b"c2")
    assert ns.lookup(b, b"c2") == c
    assert (nlink(ns, a), nlink(ns, b), nlink(ns, c), nlink(ns, ROOT)) == (2, 3, 2, 4)


def test_rename_replaces_a_file(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    g = mkfile(ns, ROOT, b"g")
    ns.link(ROOT, b"g2", g)
    replaced = ns.rename(ROOT, b"f", ROOT, b"g")
    assert replaced is not None and replaced.ino == g and replaced.nlink == 1
    assert ns.lookup(ROOT, b"g") == f and ns.lookup(ROOT, b"f") is None
    replaced = ns.rename(ROOT, b"g", ROOT, b"g2")
    assert replaced is not None and replaced.nlink == 0 and ns.orphans() == [g]
    assert names(ns, ROOT) == [b"g2"] and nlink(ns, f) == 1


def test_rename_directory_over_empty_directory(ns: Namespace) -> None:
    a = mkdir(ns, ROOT, b"a")
    b = mkdir(ns, ROOT, b"b")
    target = mkdir(ns, b, b"t")
    mkfile(ns, a, b"inside")
    assert nlink(ns, b) == 3
    replaced = ns.rename(ROOT, b"a", b, b"t")
    assert replaced is not None and replaced.ino == target and replaced.nlink == 0
    assert ns.lookup(b, b"t") == a and ns.lookup(a, b"inside") is not None
    assert (nlink(ns, ROOT), nlink(ns, b), nlink(ns, a)) == (3, 3, 2)


def test_rename_type_and_emptiness_errors_change_nothing(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    d = mkdir(ns, ROOT, b"d")
    full = mkdir(ns, ROOT, b"full")
    mkfile(ns, full, b"x")
    snapshot = (ns.entries(ROOT), [ns.get(i) for i in (ROOT, f, d, full)])
    cases = [
        ((ROOT, b"f", ROOT, b"d"), IsADirectoryError, errno.EISDIR),
        ((ROOT, b"d", ROOT, b"f"), NotADirectoryError, errno.ENOTDIR),
        ((ROOT, b"d", ROOT, b"full"), OSError, errno.ENOTEMPTY),
        ((ROOT, b"nope", ROOT, b"x"), FileNotFoundError, errno.ENOENT),
        ((ROOT, b"f", f, b"x"), NotADirectoryError, errno.ENOTDIR),
    ]
    for args, kind, code in cases:
        with pytest.raises(kind) as exc:
            ns.rename(*args)
        assert exc.value.errno == code, args
        assert (ns.entries(ROOT), [ns.get(i) for i in (ROOT, f, d, full)]) == snapshot


def test_rename_into_own_subtree_is_einval(ns: Namespace) -> None:
    a = mkdir(ns, ROOT, b"a")
    b = mkdir(ns, a, b"b")
    c = mkdir(ns, b, b"c")
    for parent in (a, b, c):
        with pytest.raises(OSError) as exc:
            ns.rename(ROOT, b"a", parent, b"loop")
        assert exc.value.errno == errno.EINVAL
    f = mkfile(ns, c, b"f")
    with pytest.raises(OSError) as exc:  # exchanging a for c/f would put a under itself
        ns.rename(c, b"f", ROOT, b"a", flags=2)
    assert exc.value.errno == errno.EINVAL
    assert ns.lookup(ROOT, b"a") == a and ns.lookup(c, b"f") == f
    ns.rename(a, b"b", ROOT, b"b")  # moving a subtree up is fine
    assert ns.lookup(ROOT, b"b") == b and (nlink(ns, a), nlink(ns, ROOT)) == (2, 4)


def test_rename_onto_itself_or_another_name_of_the_same_inode_is_a_noop(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    ns.link(ROOT, b"g", f)
    d = mkdir(ns, ROOT, b"d")
    assert ns.rename(ROOT, b"f", ROOT, b"f") is None
    assert ns.rename(ROOT, b"f", ROOT, b"g") is None
    assert ns.rename(ROOT, b"d", ROOT, b"d") is None
    assert names(ns, ROOT) == [b"f", b"g", b"d"] and nlink(ns, f) == 2 and nlink(ns, d) == 2


def test_rename_noreplace(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    g = mkfile(ns, ROOT, b"g")
    with pytest.raises(FileExistsError) as exc:
        ns.rename(ROOT, b"f", ROOT, b"g", flags=1)
    assert exc.value.errno == errno.EEXIST
    assert ns.lookup(ROOT, b"f") == f and ns.lookup(ROOT, b"g") == g and nlink(ns, g) == 1
    assert ns.rename(ROOT, b"f", ROOT, b"h", flags=1) is None
    assert ns.lookup(ROOT, b"h") == f


def test_rename_exchange_swaps_entries_and_fixes_link_counts(ns: Namespace) -> None:
    a = mkdir(ns, ROOT, b"a")
    b = mkdir(ns, ROOT, b"b")
    sub = mkdir(ns, a, b"sub")
    f = mkfile(ns, b, b"f")
    assert (nlink(ns, a), nlink(ns, b)) == (3, 2)
    assert ns.rename(a, b"sub", b, b"f", flags=2) is None
    assert ns.lookup(a, b"sub") == f and ns.lookup(b, b"f") == sub
    assert (nlink(ns, a), nlink(ns, b), nlink(ns, sub), nlink(ns, f)) == (2, 3, 2, 1)
    assert ns.rename(ROOT, b"a", ROOT, b"b", flags=2) is None  # same parent
    assert ns.lookup(ROOT, b"a") == b and ns.lookup(ROOT, b"b") == a and nlink(ns, ROOT) == 4
    with pytest.raises(FileNotFoundError):
        ns.rename(ROOT, b"a", ROOT, b"missing", flags=2)


def test_rename_bad_flags(ns: Namespace) -> None:
    mkfile(ns, ROOT, b"f")
    for flags in (3, 4):
        with pytest.raises(OSError) as exc:
            ns.rename(ROOT, b"f", ROOT, b"g", flags=flags)
        assert exc.value.errno == errno.EINVAL
    assert names(ns, ROOT) == [b"f"]


# --- readdir -------------------------------------------------------------------------------------


def test_entries_positions_are_stable_while_entries_come_and_go(ns: Namespace) -> None:
    inos = {name: mkfile(ns, ROOT, name) for name in (b"a", b"b", b"c", b"d", b"e")}
    listing = ns.entries(ROOT)
    assert [(n, i) for n, i, _ in listing] == list(inos.items())
    positions = [p for _, _, p in listing]
    assert positions == sorted(positions) and len(set(positions)) == 5 and positions[0] > 0
    first_two = listing[:2]
    resume = first_two[-1][2]
    ns.unlink(ROOT, b"a")  # already listed
    ns.unlink(ROOT, b"c")  # not listed yet: vanishes
    ns.rename(ROOT, b"d", ROOT, b"d2")  # renamed in place: keeps its position
    mkfile(ns, ROOT, b"new")
    rest = ns.entries(ROOT, resume)
    assert [n for n, _, _ in rest] == [b"d2", b"e", b"new"]
    assert rest[0][2] == positions[3] and rest[1][2] == positions[4]
    assert ns.entries(ROOT, rest[-1][2]) == []
    assert ns.entries(ROOT, positions[1]) == rest


def test_entries_only_lists_the_given_directory(ns: Namespace) -> None:
    d = mkdir(ns, ROOT, b"d")
    mkfile(ns, d, b"inner")
    assert names(ns, ROOT) == [b"d"] and names(ns, d) == [b"inner"]
    assert all(isinstance(n, bytes) for n in names(ns, d))


# --- xattrs ---------------------------------------------------------------------------------------


def test_xattrs(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    assert ns.listxattr(f) == []
    ns.setxattr(f, b"user.b", b"\x00\xff binary")
    ns.setxattr(f, b"user.a", b"")
    assert ns.getxattr(f, b"user.b") == b"\x00\xff binary" and ns.getxattr(f, b"user.a") == b""
    assert ns.listxattr(f) == [b"user.a", b"user.b"]
    ns.setxattr(f, b"user.a", b"2")
    assert ns.getxattr(f, b"user.a") == b"2"
    assert ns.listxattr(ROOT) == []
    ns.removexattr(f, b"user.a")
    assert ns.listxattr(f) == [b"user.b"]
    with pytest.raises(KeyError):
        ns.getxattr(f, b"user.a")
    with pytest.raises(KeyError):
        ns.removexattr(f, b"user.a")


def test_xattr_create_and_replace_flags(ns: Namespace) -> None:
    f = mkfile(ns, ROOT, b"f")
    ns.setxattr(f, b"user.x", b"1", flags=1)
    with pytest.raises(FileExistsError) as exc:
        ns.setxattr(f, b"user.x", b"2", flags=1)
    assert exc.value.errno == errno.EEXIST and ns.getxattr(f, b"user.x") == b"1"
    ns.setxattr(f, b"user.x", b"3", flags=2)
    assert ns.getxattr(f, b"user.x") == b"3"
    with pytest.raises(KeyError):
        ns.setxattr(f, b"user.y", b"4", flags=2)
    assert ns.listxattr(f) == [b"user.x"]
    with pytest.raises(KeyError):
        ns.setxattr(999, b"user.x", b"1")
    with pytest.raises(KeyError):
        ns.listxattr(999)


# --- invariants under random operations --------------------------------------------------------

NAMES = st.sampled_from([b"a", b"b", b"c"])
OPS = st.lists(st.tuples(st.sampled_from(["mkdir", "create", "link", "unlink", "rename"]),
                         st.integers(0, 7), NAMES, st.integers(0, 7), NAMES,
                         st.sampled_from([0, 0, 1, 2])), max_size=30)


def check_invariants(ns: Namespace) -> None:
    """Every named inode's nlink matches its names (and subdirectories for directories)."""
    named: dict[int, int] = {}
    subdirs: dict[int, int] = {}
    stack = [ROOT]
    while stack:
        parent = stack.pop()
        for _, ino, _ in ns.entries(parent):
            named[ino] = named.get(ino, 0) + 1
            if stat.S_ISDIR(ns.get(ino).mode):
                subdirs[parent] = subdirs.get(parent, 0) + 1
                assert named[ino] == 1
                stack.append(ino)
    for ino in [ROOT, *named]:
        inode = ns.get(ino)
        if stat.S_ISDIR(inode.mode):
            assert inode.nlink == 2 + subdirs.get(ino, 0)
        else:
            assert inode.nlink == named[ino]
    assert set(ns.orphans()).isdisjoint(named)


@settings(max_examples=60, deadline=None, database=None)
@given(OPS)
def test_link_counts_stay_consistent_under_random_operations(ops: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ns = Namespace.open(os.path.join(tmp, "s.mofs"))
        try:
            dirs = [ROOT]
            for op, p1, n1, p2, n2, flags in ops:
                d1, d2 = dirs[p1 % len(dirs)], dirs[p2 % len(dirs)]
                try:
                    if op == "mkdir":
                        dirs.append(mkdir(ns, d1, n1))
                    elif op == "create":
                        mkfile(ns, d1, n1)
                    elif op == "link":
                        ino = ns.lookup(d1, n1)
                        if ino is not None:
                            ns.link(d2, n2, ino)
                    elif op == "unlink":
                        ns.unlink(d1, n1)
                    else:
                        ns.rename(d1, n1, d2, n2, flags)
                except (OSError, KeyError):
                    pass
                check_invariants(ns)
        finally:
            ns.close()
