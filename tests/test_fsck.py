"""``mofs fsck``: a clean store is clean; each corruption, made with sqlite3 on an unmounted
store, is found and named, ``--repair`` fixes it, and a mount then sees sane files."""

from __future__ import annotations

import hashlib
import logging
import os
import pty
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import needs_fuse
from mounting import ROOT, Mount, mofs

from mofs.fsck import quick_check

pytestmark = needs_fuse

PS = 65536
B_DATA = bytes(range(256)) * 273 + b"tail"  # 69892 bytes: a full page and a partial one
C_DATA = b"c" * (2 * PS)


def fsck(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return mofs("fsck", str(store), *args, check=False, timeout=120)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    no_traceback(done)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mofs: "), err
    assert not done.stdout
    for w in words:
        assert w in err, err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store made by a real mount: files, a sparse file, a tree, links, an xattr."""
    d = tmp_path_factory.mktemp("base")
    (d / "mnt").mkdir()
    m = Mount(store=d / "base.mofs", path=d / "mnt", log=d / "log", trace=d / "trace", args=())
    try:
        m.start()
        p = m.path
        (p / "a").write_bytes(b"A" * 100)
        (p / "b").write_bytes(B_DATA)
        (p / "c").write_bytes(C_DATA)
        os.makedirs(p / "d/e")
        (p / "d/e/f").write_bytes(b"deep")
        os.link(p / "a", p / "d/hard")
        os.symlink("a", p / "link")
        os.setxattr(p / "c", "user.colour", b"blue")
        with open(p / "sparse", "wb") as f:
            f.truncate(5 * PS + 7)
            f.seek(3 * PS)
            f.write(b"middle")
        m.umount()
    finally:
        m.close()
    yield m.store


def copy_store(base: Path, to: Path) -> Path:
    shutil.copy(base, to)
    for suffix in ("-wal", "-shm", "-data"):
        if Path(str(base) + suffix).exists():
            shutil.copy(str(base) + suffix, str(to) + suffix)
    return to


_INOS: dict[str, int] = {}  # path -> inode, looked up before any corruption


def ino(db: sqlite3.Connection, path: str) -> int:
    if path not in _INOS:
        node = 1
        for name in path.strip("/").split("/"):
            node = db.execute("SELECT ino FROM dentries WHERE parent = ? AND name = ?",
                              (node, name.encode())).fetchone()[0]
        _INOS[path] = node
    return _INOS[path]


def _orphan(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, "
               "ctime_ns) VALUES (?, 0, 0, 0, 0, 5000, 0, 0, 0)", (stat.S_IFREG | 0o644,))
    new = db.execute("SELECT last_insert_rowid()").fetchone()[0]
    db.execute("INSERT INTO pages (object, offset, data) VALUES (?, 0, ?)",
               (new, b"o" * 5000 + bytes(PS - 5000)))
    db.execute("INSERT INTO xattrs VALUES (?, ?, ?)", (new, b"user.x", b"y"))


def _cycle(db: sqlite3.Connection) -> None:  # d moves into its own child e
    db.execute("UPDATE dentries SET parent = ? WHERE ino = ?", (ino(db, "d/e"), ino(db, "d")))


def _past_eof(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO pages (object, offset, data) VALUES (?, ?, ?)",
               (ino(db, "a"), 3 * PS, b"x" * PS))


def _misaligned(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO pages (object, offset, data) VALUES (?, 100, ?)",
               (ino(db, "c"), b"m" * PS))


def _page_size(db: sqlite3.Connection) -> None:
    db.execute("UPDATE pages SET data = CAST(? || randomblob(1000) AS BLOB), slot = NULL, "
               "length = NULL WHERE object = ? AND offset = 0", (C_DATA[:PS], ino(db, "c")))


def _tail(db: sqlite3.Connection) -> None:
    db.execute("UPDATE pages SET data = ?, slot = NULL, length = NULL "
               "WHERE object = ? AND offset = 0",
               (b"A" * 100 + b"junk" * 1000 + bytes(PS - 4100), ino(db, "a")))


def _slot_shared(db: sqlite3.Connection) -> None:
    """b's first page moves to slot 0 of the data file, and c's second page names it too."""
    store = db.execute("PRAGMA database_list").fetchone()[2]
    with open(store + "-data", "r+b" if os.path.exists(store + "-data") else "wb") as f:
        f.write(B_DATA[:PS])  # slot 0
    db.execute("UPDATE pages SET data = x'', slot = 0, length = ? WHERE object = ? AND "
               "offset = 0", (PS, ino(db, "b")))
    db.execute("UPDATE pages SET slot = 0, length = ? WHERE object = ? AND offset = ?",
               (PS, ino(db, "c"), PS))


CORRUPTIONS: dict[str, tuple[str, Callable[[sqlite3.Connection], None]]] = {
    "dangling": ("dangling entry", lambda db: db.execute(
        "INSERT INTO dentries (parent, name, ino) VALUES (1, ?, 99999)", (b"ghost",))),
    "orphan": ("orphan", _orphan),
    "nlink-file": ("link count", lambda db: db.execute(
        "UPDATE inodes SET nlink = 5 WHERE ino = ?", (ino(db, "a"),))),
    "nlink-dir": ("link count", lambda db: db.execute(
        "UPDATE inodes SET nlink = 2 WHERE ino = ?", (ino(db, "d"),))),
    "unreachable": ("unreachable directory", _cycle),
    "misplaced": ("misplaced entry", lambda db: db.execute(
        "UPDATE dentries SET parent = ? WHERE ino = ?", (ino(db, "a"), ino(db, "sparse")))),
    "nameless": ("nameless inode", lambda db: db.execute(
        "DELETE FROM dentries WHERE ino = ?", (ino(db, "b"),))),
    "directory-names": ("directory names", lambda db: db.execute(
        "INSERT INTO dentries (parent, name, ino) VALUES (1, ?, ?)", (b"d2", ino(db, "d/e")))),
    "stray-pages": ("stray pages", lambda db: db.execute(
        "INSERT INTO pages (object, offset, data) VALUES (4242, 0, ?)", (b"s" * PS,))),
    "pages-of-a-directory": ("stray pages", lambda db: db.execute(
        "INSERT INTO pages (object, offset, data) VALUES (?, 0, ?)", (ino(db, "d"), b"s" * PS))),
    "past-eof": ("pages past EOF", _past_eof),
    "misaligned": ("misaligned page", _misaligned),
    "page-size": ("page size", _page_size),
    "bytes-past-eof": ("bytes past EOF", _tail),
    "slot-shared": ("page slot", _slot_shared),
    "slot-past-end": ("page slot", lambda db: db.execute(
        "UPDATE pages SET slot = 1000000 WHERE object = ? AND offset = ?", (ino(db, "c"), PS))),
    "stray-xattrs": ("stray xattrs", lambda db: db.execute(
        "INSERT INTO xattrs VALUES (31337, ?, ?)", (b"user.z", b"1"))),
    "no-root": ("root", lambda db: db.execute("DELETE FROM inodes WHERE ino = 1")),
}


def corrupt(store: Path, *names: str) -> None:
    db = sqlite3.connect(store)
    for path in ("a", "b", "c", "d", "d/e", "sparse"):
        ino(db, path)
    with db:
        for name in names:
            CORRUPTIONS[name][1](db)
    db.close()


def test_a_store_made_by_a_mount_is_clean(base, tmp_path):
    store = copy_store(base, tmp_path / "s.mofs")
    before = digest(store)
    done = fsck(store)
    no_traceback(done)
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines() == [f"mofs: {store}: clean (9 inodes, 7 pages)"]
    assert not done.stderr  # no progress when stderr is not a terminal
    assert digest(store) == before  # read-only without --repair
    done = fsck(store, "--repair")
    assert done.returncode == 0 and "clean" in done.stdout


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_is_found_and_repaired(base, tmp_path, name):
    kind = CORRUPTIONS[name][0]
    store = copy_store(base, tmp_path / "s.mofs")
    corrupt(store, name)
    before = digest(store)
    found = fsck(store)
    no_traceback(found)
    assert found.returncode == 1, found.stdout
    lines = found.stdout.splitlines()
    assert any(line.startswith(f"{kind}: ") for line in lines), found.stdout
    assert lines[-1].startswith(f"mofs: {store}: ") and "0 repaired" in lines[-1]
    assert "--repair" in lines[-1]
    assert digest(store) == before
    repaired = fsck(store, "--repair")
    no_traceback(repaired)
    assert repaired.returncode == 0, repaired.stdout
    fixed = repaired.stdout.splitlines()
    # the repair run reports the same problems, each with what it did
    assert [line.split("; repaired: ")[0] for line in fixed[:-1]] == lines[:-1]
    assert all("; repaired: " in line for line in fixed[:-1])
    n = len(lines) - 1
    assert fixed[-1] == f"mofs: {store}: {n} problem{'s' * (n != 1)}, {n} repaired"
    again = fsck(store)
    assert again.returncode == 0 and "clean" in again.stdout, again.stdout


def test_repaired_store_mounts_with_sane_files(base, tmp_path, mount):
    store = copy_store(base, tmp_path / "store.mofs")
    every = [n for n in CORRUPTIONS if n != "no-root"]
    corrupt(store, *every)
    found = fsck(store)
    assert found.returncode == 1
    kinds = {line.split(": ")[0] for line in found.stdout.splitlines()[:-1]}
    assert kinds == {CORRUPTIONS[n][0] for n in every}, found.stdout
    assert fsck(store, "--repair").returncode == 0
    assert fsck(store).returncode == 0
    m = mount(store=store)
    p = m.path
    lost = p / "lost+found"
    assert sorted(os.listdir(lost)) == sorted(f"#{_INOS[n]}" for n in ("b", "d", "sparse"))
    assert (lost / f"#{_INOS['b']}").read_bytes() == B_DATA  # it had lost its name
    d = lost / f"#{_INOS['d']}"  # the cycle d <-> e is cut at d
    assert (d / "e/f").read_bytes() == b"deep" and not (d / "e/d2").exists()
    assert (p / "a").read_bytes() == b"A" * 100  # no page past EOF, no bytes past EOF
    assert (d / "hard").read_bytes() == b"A" * 100 and os.stat(p / "a").st_nlink == 2
    # the oversized page was trimmed; the page naming a wrong slot is gone (zeros)
    assert (p / "c").read_bytes() == C_DATA[:PS] + bytes(PS)
    assert os.getxattr(p / "c", "user.colour") == b"blue"
    assert os.readlink(p / "link") == "a"
    sparse = lost / f"#{_INOS['sparse']}"  # it was named inside the file a
    assert sparse.read_bytes() == bytes(3 * PS) + b"middle" + bytes(2 * PS + 1)
    assert sorted(os.listdir(p)) == ["a", "c", "link", "lost+found"]  # no ghost, no d2
    for top, dirs, files in os.walk(p):  # every directory's link count is 2 + subdirs
        assert os.stat(top).st_nlink == 2 + len(dirs), top
        for f in files:
            path = Path(top) / f
            if not path.is_symlink():
                assert len(path.read_bytes()) == path.stat().st_size
    (p / "new").write_bytes(b"works")
    m.umount()
    done = fsck(store)
    assert done.returncode == 0 and "clean" in done.stdout, done.stdout


def test_damaged_sqlite_file_is_reported_and_not_touched(base, tmp_path):
    store = copy_store(base, tmp_path / "s.mofs")
    db = sqlite3.connect(store)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inodes'").fetchone()[0]
    db.close()
    data = bytearray(store.read_bytes())
    data[(root - 1) * page + 3:(root - 1) * page + 5] = b"\x00\x50"  # a wrong cell count
    store.write_bytes(bytes(data))
    before = digest(store)
    for args in ((), ("--repair",)):
        done = fsck(store, *args)
        no_traceback(done)
        assert done.returncode == 1
        lines = done.stdout.splitlines()
        assert len(lines) == 2 and lines[0].startswith("integrity: "), done.stdout
        assert "--repair" not in lines[1]
    assert digest(store) == before
    found = quick_check(str(store))  # what a mount would log before mounting
    assert [level for level, _ in found] == [logging.WARNING], found
    assert "damaged" in found[0][1] and f"mofs fsck {store}" in found[0][1]
    assert quick_check(str(base)) == []


def test_returned_pages_in_the_journal_are_a_note_not_a_problem(base, tmp_path):
    store = copy_store(base, tmp_path / "s.mofs")
    db = sqlite3.connect(store)
    with db:
        db.execute("INSERT INTO return_journal (object, offset, data) VALUES (?, 0, ?)",
                   (ino(db, "a"), b"A" * PS))
    db.close()
    for args in ((), ("--repair",)):
        done = fsck(store, *args)
        assert done.returncode == 0, done.stdout
        assert ("note: 1 returned page not yet replayed; mount the store to replay them"
                in done.stdout.splitlines())


@pytest.mark.parametrize("kind", ["missing", "garbage", "foreign", "newer", "directory"])
def test_not_a_store_is_one_line_and_exit_3(base, tmp_path, kind):
    store = tmp_path / "bad.mofs"
    if kind == "garbage":
        store.write_bytes(os.urandom(50000))
    elif kind == "foreign":
        db = sqlite3.connect(store)
        db.execute("CREATE TABLE customers (name TEXT)")
        db.commit()
        db.close()
    elif kind == "newer":
        copy_store(base, store)
        db = sqlite3.connect(store)
        with db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        db.close()
    elif kind == "directory":
        store.mkdir()
    before = digest(store) if store.is_file() else None
    words = {"missing": "does not exist", "newer": "newer", "directory": "directory"}
    for args in ((), ("--repair",)):
        one_line_error(fsck(store, *args), 3, str(store), words.get(kind, "not a mofs store"))
    assert kind != "missing" or not store.exists()
    assert before is None or digest(store) == before


def test_a_mounted_store_is_refused_with_exit_4(mount):
    m = mount()
    for args in ((), ("--repair",)):
        one_line_error(fsck(m.store, *args), 4, f"is mounted on {m.path}", "unmount it first")
    m.umount()
    assert fsck(m.store).returncode == 0


def test_usage_errors_exit_2():
    done = mofs("fsck", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = mofs("fsck", "x", "--fix", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def _many_pages(tmp_path: Path, count: int) -> Path:
    """A store with a 4 KiB page size and one file of ``count`` pages, made directly."""
    from mofs.namespace import Namespace
    from pagers.sqlite import _SCHEMA

    store = tmp_path / "big.mofs"
    Namespace.open(str(store), page_size=4096).close()
    db = sqlite3.connect(store)
    with db:
        db.execute(_SCHEMA)
        db.execute("INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, "
                   "ctime_ns) VALUES (?, 1, 0, 0, 0, ?, 0, 0, 0)",
                   (stat.S_IFREG | 0o644, count * 4096))
        db.execute("INSERT INTO dentries (parent, name, ino) VALUES (1, ?, 2)", (b"big",))
        db.executemany("INSERT INTO pages (object, offset, data) VALUES (2, ?, ?)",
                       ((i * 4096, b"p" * 4096) for i in range(count)))
    db.close()
    return store


def test_progress_on_a_terminal_and_quiet(tmp_path):
    store = _many_pages(tmp_path, 20000)
    for args, shown in (((), True), (("--quiet",), False)):
        master, slave = pty.openpty()
        try:
            proc = subprocess.run([sys.executable, "-m", "mofs", "fsck", str(store), *args],
                                  stdout=subprocess.PIPE, stderr=slave, text=True, cwd=ROOT,
                                  timeout=120)
            os.close(slave)
            err = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                err += chunk
        finally:
            os.close(master)
        assert proc.returncode == 0, proc.stdout
        assert proc.stdout == f"mofs: {store}: clean (2 inodes, 20000 pages)\n"
        text = err.decode()
        if shown:
            assert "\rmofs: fsck: pages 10,000/20,000" in text, text
            assert "\rmofs: fsck: pages 20,000/20,000" in text, text
            assert text.endswith("\r\x1b[K")  # the progress line is wiped at the end
        else:
            assert text == "", text


def test_quick_check_on_mount_warns_about_dangling_names_and_mounts(base, tmp_path, mount):
    store = copy_store(base, tmp_path / "store.mofs")
    corrupt(store, "dangling", "orphan")
    m = mount(store=store, start=False)
    m.expected_log.append(r"WARNING mofs\.mount: .*1 name of inodes that do not exist.*"
                          r"mofs fsck --repair")
    m.start()
    assert (m.path / "a").read_bytes() == b"A" * 100
    m.umount()
    log = m.log.read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, log
    assert "INFO mofs.mount: " in log and "1 inode without a name" in log
    done = fsck(store)  # the mount freed the orphan; the dangling name is still there
    assert done.returncode == 1
    assert [line.split(":")[0] for line in done.stdout.splitlines()[:-1]] == ["dangling entry"]


def test_a_store_without_its_data_file_is_refused_and_not_repaired_away(tmp_path, mount):
    """A store copied without STORE-data: the mount says so in one line, fsck names the
    missing file and deletes no page, and with the file back all is as it was."""
    m = mount(store=tmp_path / "s.mofs")
    data = os.urandom(2 << 20)  # written back in bulk: its pages go to slots
    (m.path / "big").write_bytes(data)
    m.umount()
    data_file = tmp_path / "s.mofs-data"
    aside = tmp_path / "aside"
    data_file.rename(aside)
    refused = mofs("mount", str(tmp_path / "s.mofs"), str(m.path), check=False, timeout=60)
    one_line_error(refused, 3, "s.mofs-data is missing", "put it back")
    found = fsck(tmp_path / "s.mofs")
    no_traceback(found)
    assert found.returncode == 1
    assert found.stdout.startswith("data file: ") and "s.mofs-data is missing" in found.stdout
    repaired = fsck(tmp_path / "s.mofs", "--repair")
    no_traceback(repaired)
    assert repaired.returncode != 0 and "not repaired" in repaired.stdout
    aside.rename(data_file)
    assert fsck(tmp_path / "s.mofs").returncode == 0
    m = mount(store=tmp_path / "s.mofs")
    assert (m.path / "big").read_bytes() == data
