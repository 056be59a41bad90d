"""POSIX behaviour through a real mount, compared with a local disk (issue 5, point 4).

Most tests are *differential*: the same small program runs twice, once in a directory on
the local file system (``tmp_path``: ext4 or tmpfs) and once in a directory of a fresh
mofs mount, and both must report the same results and errnos. The program starts as
root, and ``as_user()`` switches its effective ids to another user and back, so one
program checks what root sets up and what an ordinary user may then do (the kernel's
``default_permissions`` checks run against those ids). Each test also asserts the
expected values themselves, so a test never passes only because both sides agree on
something wrong.

What mofs cannot do like a local disk is asserted as it is, with the reason:
``fallocate(2)`` (pyfuse3 has no handler, so the kernel answers EOPNOTSUPP),
SEEK_DATA/SEEK_HOLE (no ``lseek`` handler: the kernel's generic answer, the whole
file is data), O_TMPFILE (no ``tmpfile`` handler), ``st_blocks`` (the pages written
through mofs, at the page size of the store, not the blocks of a local disk: see
``mofs/extents.py``), and the atime: reads served from the Linux page cache never reach
mofs, so it applies the relatime rule when a file is opened for reading, even if nothing
is then read.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import needs_fuse
from mounting import Mount, mofs

pytestmark = needs_fuse

NOBODY = 65534

PRELUDE = '''
import contextlib, ctypes, errno, json, mmap, os, signal, stat, subprocess, sys, time
os.setgroups([])  # root's supplementary groups would follow it into as_user()
os.umask(0o022)
os.chdir(sys.argv[1])
OUT = []
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2

def call(fn, *args, **kw):
    """fn(*args, **kw), or "!ERRNO" if it failed."""
    try:
        return fn(*args, **kw)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:  # == ENOTSUP on Linux
            return "!EOPNOTSUPP"
        return "!" + errno.errorcode.get(exc.errno, str(exc.errno))

def t(label, fn, *args, **kw):
    value = call(fn, *args, **kw)
    OUT.append([label, value])
    return value

def out(label, value):
    OUT.append([label, value])

def check(result):
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

def renameat2(old, new, flags):
    return check(libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags))

def put(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def get(path):
    with open(path, "rb") as f:
        return f.read()

def times(path, follow=True):
    s = os.stat(path, follow_symlinks=follow)
    return s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns

def changed(path, action, *args, follow=True, **kw):
    """Which of a(time), m(time), c(time) of path the action changed ("-": none)."""
    before = times(path, follow)
    time.sleep(0.02)  # coarse file-system clocks tick every few milliseconds
    result = call(action, *args, **kw)
    time.sleep(0.02)
    after = times(path, follow)
    moved = "".join(n for n, x, y in zip("amc", before, after) if x != y) or "-"
    return moved if result is None else [moved, result]

@contextlib.contextmanager
def as_user(uid=65534, gid=65534):
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
'''

EPILOGUE = "\nprint(json.dumps(OUT, default=repr))\n"


def program(code: str, where: Path, timeout: float = 60) -> list[list]:
    """Run PRELUDE + code with ``where`` as its working directory; its results."""
    source = PRELUDE + textwrap.dedent(code) + EPILOGUE
    done = subprocess.run([sys.executable, "-c", source, str(where)], capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"the program failed in {where}:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:150] + f"... ({len(text)} characters)"


@functools.cache
def allow_other() -> tuple[str, ...]:
    """Other users reach a mount only with allow_other: ask for it if mofs has the option
    (otherwise mofs mounts with it by default when run as root)."""
    return ("--allow-other",) if "--allow-other" in mofs("mount", "--help").stdout else ()


@dataclass
class Pair:
    """A fresh directory on the local disk and one on a fresh mofs mount."""

    m: Mount
    local: Path
    work: Path

    def diff(self, code: str, timeout: float = 60, local_dir: Path | None = None) \
            -> dict[str, object]:
        """Run ``code`` on both (or on ``local_dir`` instead of the local disk's directory);
        every result must agree. The results, by label."""
        local = program(code, local_dir or self.local, timeout)
        mounted = program(code, self.work, timeout)
        assert [label for label, _ in local] == [label for label, _ in mounted]
        wrong = [f"{a[0]}: local disk {short(a[1])}, mofs {short(b[1])}"
                 for a, b in zip(local, mounted, strict=True) if a != b]
        assert not wrong, "mofs differs from the local disk:\n" + "\n".join(wrong)
        return dict(mounted)


@pytest.fixture
def fs(mount, tmp_path: Path) -> Pair:
    m = mount(*allow_other())
    local = tmp_path / "local" / "w"
    local.mkdir(parents=True)
    work = m.path / "w"
    work.mkdir()
    return Pair(m, local, work)


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A directory on tmpfs, for what ext4 does differently (64 KiB xattr values)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or "tmpfs" not in subprocess.run(
            ["stat", "-f", "-c", "%T", str(shm)], capture_output=True, text=True).stdout:
        pytest.skip("no tmpfs at /dev/shm")
    path = Path(tempfile.mkdtemp(dir=shm, prefix="mofs-posix-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sync(m: Mount) -> None:
    """Write everything back and commit (what ``mofs umount`` does before unmounting)."""
    os.setxattr(m.path, "user.mofs.sync", b"1")


def store_rows(m: Mount, sql: str, *params: object) -> list[tuple]:
    """Query the store read-only while it is mounted (WAL lets a reader in)."""
    with closing(sqlite3.connect(f"file:{m.store}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout=5000")
        return db.execute(sql, params).fetchall()


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- hard links and symbolic links -------------------------------------------------------------


def test_hard_links_count_across_directories(fs: Pair) -> None:
    r = fs.diff('''
        put("f", "one")
        os.mkdir("d"); os.mkdir("e")
        t("link", os.link, "f", "d/g")
        t("nlink after link", lambda: (os.stat("f").st_nlink, os.stat("d/g").st_nlink))
        t("same inode", lambda: os.stat("f").st_ino == os.stat("d/g").st_ino)
        put("d/g", "two", "ab")
        t("data shared", get, "f")
        t("link again", os.link, "d/g", "e/h")
        t("nlink 3", lambda: os.stat("e/h").st_nlink)
        t("unlink first name", os.unlink, "f")
        t("nlink after unlink", lambda: os.lstat("d/g").st_nlink)
        t("data kept", get, "e/h")
        t("link a directory", os.link, "d", "d2")
        t("link onto existing", os.link, "d/g", "e/h")
        t("link missing source", os.link, "nope", "x")
        t("link into missing dir", os.link, "d/g", "nope/x")
        t("link through a file", os.link, "d/g", "e/h/x")
        t("dir nlink", lambda: [os.stat(p).st_nlink for p in (".", "d", "e")])
        os.mkdir("d/sub"); os.mkdir("d/sub2")
        t("dir nlink with subdirs", lambda: os.stat("d").st_nlink)
        os.rename("d/sub", "e/sub")
        t("dir nlink after move", lambda: (os.stat("d").st_nlink, os.stat("e").st_nlink))
        os.rmdir("d/sub2")
        t("dir nlink after rmdir", lambda: os.stat("d").st_nlink)
        fd = os.open("e/h", os.O_RDWR)
        os.unlink("d/g"); os.unlink("e/h")
        t("fstat nlink when unlinked", lambda: os.fstat(fd).st_nlink)
        t("link an unlinked open file", os.link, f"/proc/self/fd/{fd}", "back",
          follow_symlinks=True)
        os.close(fd)
        t("names left", lambda: sorted(os.listdir(".")))
    ''')
    assert r["nlink after link"] == [2, 2] and r["nlink 3"] == 3 and r["nlink after unlink"] == 2
    assert r["data shared"] == repr(b"onetwo") and r["data kept"] == repr(b"onetwo")
    assert r["link a directory"] == "!EPERM" and r["link onto existing"] == "!EEXIST"
    assert r["link missing source"] == r["link into missing dir"] == "!ENOENT"
    assert r["link through a file"] == "!ENOTDIR"
    assert r["dir nlink"] == [4, 2, 2] and r["dir nlink with subdirs"] == 4
    assert r["dir nlink after move"] == [3, 3] and r["dir nlink after rmdir"] == 2
    assert r["fstat nlink when unlinked"] == 0
    assert r["names left"] == ["d", "e"]


def test_symlinks_readlink_dangling_and_loops(fs: Pair) -> None:
    r = fs.diff('''
        os.mkdir("d"); put("d/t", "target")
        t("symlink", os.symlink, "d/t", "s")
        t("readlink", os.readlink, "s")
        t("lstat", lambda: (oct(os.lstat("s").st_mode), os.lstat("s").st_size,
                            os.lstat("s").st_nlink))
        t("stat follows", lambda: stat.S_ISREG(os.stat("s").st_mode))
        t("read through", get, "s")
        t("dangling", os.symlink, "missing", "dangling")
        t("stat dangling", os.stat, "dangling")
        t("lstat dangling", lambda: stat.S_ISLNK(os.lstat("dangling").st_mode))
        t("create through dangling", put, "dangling", "made")
        t("target made", get, "missing")
        os.symlink("loop2", "loop1"); os.symlink("loop1", "loop2"); os.symlink("self", "self")
        t("loop stat", os.stat, "loop1")
        t("self open", os.open, "self", os.O_RDONLY)
        t("loop in a path", os.stat, "loop1/x")
        t("O_NOFOLLOW", os.open, "s", os.O_RDONLY | os.O_NOFOLLOW)
        prev = "d/t"
        for i in range(41):
            os.symlink(prev, f"c{i}"); prev = f"c{i}"
        t("40 links are followed", lambda: get("c39"))
        t("41 are too many", os.stat, "c40")
        t("readlink a file", os.readlink, "d/t")
        t("readlink a dir", os.readlink, "d")
        t("symlink onto existing", os.symlink, "x", "s")
        t("target of 4095 bytes", os.symlink, "a" * 4095, "long")
        t("long readlink", lambda: os.readlink("long") == "a" * 4095)
        t("long lstat size", lambda: os.lstat("long").st_size)
        t("target of 4096 bytes", os.symlink, "a" * 4096, "long2")
        t("relative to its dir", os.symlink, "t", "d/rel")
        t("relative resolves", get, "d/rel")
        os.symlink("d", "dl")
        t("list through a dir link", lambda: sorted(os.listdir("dl")))
        t("trailing slash follows", lambda: stat.S_ISDIR(os.stat("dl/").st_mode))
        t("rmdir a dir link", os.rmdir, "dl")
        t("lchown", os.chown, "dl", 12, 34, follow_symlinks=False)
        t("lchown owner", lambda: (os.lstat("dl").st_uid, os.lstat("dl").st_gid,
                                   os.stat("dl").st_uid))
        t("unlink the link", os.unlink, "s")
        t("target intact", get, "d/t")
        t("binary target", os.symlink, b"\\xff\\x01name", b"bin")
        t("binary readlink", os.readlink, b"bin")
    ''')
    assert r["readlink"] == "d/t" and r["lstat"] == [oct(stat.S_IFLNK | 0o777), 3, 1]
    assert r["stat dangling"] == "!ENOENT" and r["target made"] == repr(b"made")
    assert r["loop stat"] == r["self open"] == r["loop in a path"] == "!ELOOP"
    assert r["O_NOFOLLOW"] == "!ELOOP" and r["41 are too many"] == "!ELOOP"
    assert r["40 links are followed"] == repr(b"target")
    assert r["readlink a file"] == r["readlink a dir"] == "!EINVAL"
    assert r["symlink onto existing"] == "!EEXIST" and r["long lstat size"] == 4095
    assert r["target of 4096 bytes"] == "!ENAMETOOLONG"
    assert r["relative resolves"] == repr(b"target")
    assert r["rmdir a dir link"] == "!ENOTDIR" and r["lchown owner"] == [12, 34, 0]
    assert r["binary readlink"] == repr(b"\xff\x01name")


# --- extended attributes -----------------------------------------------------------------------


def test_user_xattrs_flags_errors_and_64k_values(fs: Pair, tmpfs: Path) -> None:
    """Compared with tmpfs: ext4 keeps a value in one block (ENOSPC past about 4 KiB)."""
    r = fs.diff('''
        put("f", ""); os.mkdir("d"); os.symlink("f", "s")
        t("set", os.setxattr, "f", "user.a", b"1")
        t("get", os.getxattr, "f", "user.a")
        t("set empty", os.setxattr, "f", "user.empty", b"")
        t("get empty", os.getxattr, "f", "user.empty")
        t("binary", os.setxattr, "f", "user.bin", bytes(range(256)))
        t("get binary", lambda: os.getxattr("f", "user.bin") == bytes(range(256)))
        t("list", lambda: sorted(os.listxattr("f")))
        t("XATTR_CREATE existing", os.setxattr, "f", "user.a", b"2", os.XATTR_CREATE)
        t("kept after failed create", os.getxattr, "f", "user.a")
        t("XATTR_CREATE new", os.setxattr, "f", "user.b", b"b", os.XATTR_CREATE)
        t("XATTR_REPLACE missing", os.setxattr, "f", "user.c", b"c", os.XATTR_REPLACE)
        t("not created by failed replace", lambda: sorted(os.listxattr("f")))
        t("XATTR_REPLACE existing", os.setxattr, "f", "user.a", b"3", os.XATTR_REPLACE)
        t("replaced", os.getxattr, "f", "user.a")
        t("both flags", os.setxattr, "f", "user.a", b"4", os.XATTR_CREATE | os.XATTR_REPLACE)
        t("get missing", os.getxattr, "f", "user.missing")
        t("remove", os.removexattr, "f", "user.a")
        t("remove missing", os.removexattr, "f", "user.a")
        t("get removed", os.getxattr, "f", "user.a")
        big = bytes(range(256)) * 256
        t("set 64 KiB", os.setxattr, "f", "user.big", big)
        t("get 64 KiB", lambda: os.getxattr("f", "user.big") == big)
        t("set 64 KiB + 1", os.setxattr, "f", "user.big2", big + b"x")
        t("name of 255 bytes", os.setxattr, "f", "user." + "n" * 250, b"v")
        t("name of 256 bytes", os.setxattr, "f", "user." + "n" * 251, b"v")
        t("no namespace", os.setxattr, "f", "plain", b"v")
        t("get without a namespace", os.getxattr, "f", "plain")
        t("remove without a namespace", os.removexattr, "f", "plain")
        t("unknown namespace", os.setxattr, "f", "other.x", b"v")
        t("system.* is not stored", os.setxattr, "f", "system.x", b"v")
        t("on a directory", os.setxattr, "d", "user.d", b"dir")
        t("get on a directory", os.getxattr, "d", "user.d")
        t("user.* on a symlink", os.setxattr, "s", "user.l", b"l", follow_symlinks=False)
        t("through a symlink", os.setxattr, "s", "user.via", b"v")
        t("seen on the target", os.getxattr, "f", "user.via")
        t("trusted.* as root", os.setxattr, "f", "trusted.t", b"t")
        t("get trusted", os.getxattr, "f", "trusted.t")
        t("on a missing file", os.getxattr, "nope", "user.a")
        os.link("f", "hard")
        t("shared by hard links", os.getxattr, "hard", "user.b")
        for i in range(100):
            os.setxattr("d", f"user.many{i:03}", str(i).encode())
        t("100 names", lambda: len([n for n in os.listxattr("d") if n.startswith("user.many")]))
        put("g", ""); os.setxattr("g", "user.gone", b"x"); os.unlink("g"); put("g", "")
        t("a new file starts without", lambda: os.listxattr("g"))
        t("ENODATA is ENOATTR", lambda: errno.ENODATA)
    ''', local_dir=tmpfs)
    assert r["get"] == repr(b"1") and r["get empty"] == repr(b"") and r["get binary"] is True
    assert r["list"] == ["user.a", "user.bin", "user.empty"]
    assert r["XATTR_CREATE existing"] == "!EEXIST" and r["kept after failed create"] == repr(b"1")
    assert r["XATTR_REPLACE missing"] == "!ENODATA" and r["replaced"] == repr(b"3")
    assert r["get missing"] == r["remove missing"] == r["get removed"] == "!ENODATA"
    assert r["get 64 KiB"] is True and r["set 64 KiB + 1"] == "!E2BIG"
    assert r["name of 255 bytes"] is None and r["name of 256 bytes"] == "!ERANGE"
    assert r["no namespace"] == r["get without a namespace"] == "!EOPNOTSUPP"
    assert r["remove without a namespace"] == r["unknown namespace"] == "!EOPNOTSUPP"
    assert r["user.* on a symlink"] == "!EPERM"
    assert r["get trusted"] == repr(b"t") and r["on a missing file"] == "!ENOENT"
    assert r["100 names"] == 100 and r["a new file starts without"] == []


# --- rename ------------------------------------------------------------------------------------


def test_rename_replace_noreplace_exchange_and_directories(fs: Pair) -> None:
    r = fs.diff('''
        if not hasattr(libc, "renameat2"):
            out("skip", "libc has no renameat2"); raise SystemExit(print(json.dumps(OUT)))
        put("a", "A"); put("b", "B")
        t("replace", os.rename, "a", "b")
        t("replaced", lambda: (get("b"), os.path.exists("a")))
        put("c", "C")
        fd = os.open("b", os.O_RDONLY)
        os.rename("c", "b")
        t("the replaced file stays readable", os.read, fd, 10)
        t("and has no name", lambda: os.fstat(fd).st_nlink)
        os.close(fd)
        put("x", "X"); put("y", "Y")
        t("NOREPLACE onto existing", renameat2, "x", "y", RENAME_NOREPLACE)
        t("nothing moved", lambda: (get("x"), get("y")))
        t("NOREPLACE to a new name", renameat2, "x", "z", RENAME_NOREPLACE)
        t("EXCHANGE", renameat2, "z", "y", RENAME_EXCHANGE)
        t("exchanged", lambda: (get("z"), get("y")))
        t("EXCHANGE with a missing name", renameat2, "z", "nope", RENAME_EXCHANGE)
        t("both flags", renameat2, "z", "y", RENAME_EXCHANGE | RENAME_NOREPLACE)
        t("unknown flag", renameat2, "z", "y", 8)
        os.makedirs("d1/sub"); os.mkdir("d2"); os.mkdir("empty")
        t("EXCHANGE a file and a directory", renameat2, "z", "d2", RENAME_EXCHANGE)
        t("after exchange", lambda: (stat.S_ISDIR(os.stat("z").st_mode), get("d2")))
        renameat2("z", "d2", RENAME_EXCHANGE)
        os.mkdir("p"); os.mkdir("p/q"); put("p/file", "pf")
        t("EXCHANGE dirs across parents", renameat2, "p/q", "d1", RENAME_EXCHANGE)
        t("parent link counts", lambda: (os.stat(".").st_nlink, os.stat("p").st_nlink,
                                          os.stat("p/q").st_nlink))
        renameat2("p/q", "d1", RENAME_EXCHANGE)
        t("EXCHANGE into own subtree", renameat2, "d1", "d1/sub", RENAME_EXCHANGE)
        t("dir over an empty dir", os.rename, "d1", "empty")
        t("moved", lambda: (os.path.exists("d1"), os.listdir("empty")))
        t("dir over a non-empty dir", os.rename, "d2", "empty")
        t("dir over a file", os.rename, "d2", "y")
        t("file over a dir", os.rename, "y", "d2")
        t("dir into its own subtree", os.rename, "empty", "empty/sub/x")
        t("dir onto itself", os.rename, "d2", "d2")
        os.link("y", "y2")
        t("onto another name of the same file", os.rename, "y", "y2")
        t("both names stay", lambda: (os.path.exists("y"), os.stat("y2").st_nlink))
        t("missing source", os.rename, "nope", "q")
        t("into a missing dir", os.rename, "y", "nope/q")
        t("file with a trailing slash", os.rename, "y", "q/")
        t("dot", os.rename, ".", "dotted")
        t("dotdot", os.rename, "d2/..", "x")
        t("link counts", lambda: [os.stat(p).st_nlink for p in (".", "empty", "d2", "p")])
        t("names", lambda: sorted(os.listdir(".")))
    ''')
    if r.get("skip"):
        pytest.skip(str(r["skip"]))
    assert r["replaced"] == [repr(b"A"), False]
    assert r["the replaced file stays readable"] == repr(b"A") and r["and has no name"] == 0
    assert r["NOREPLACE onto existing"] == "!EEXIST" and r["exchanged"] == [repr(b"Y"), repr(b"X")]
    assert r["EXCHANGE with a missing name"] == "!ENOENT"
    assert r["both flags"] == r["unknown flag"] == "!EINVAL"
    assert r["after exchange"] == [True, repr(b"Y")]
    assert r["parent link counts"] == [6, 3, 3]
    assert r["EXCHANGE into own subtree"] == "!EINVAL" and r["moved"] == [False, ["sub"]]
    assert r["dir over a non-empty dir"] == "!ENOTEMPTY" and r["dir over a file"] == "!ENOTDIR"
    assert r["file over a dir"] == "!EISDIR" and r["dir into its own subtree"] == "!EINVAL"
    assert r["both names stay"] == [True, 2]
    assert r["missing source"] == r["into a missing dir"] == "!ENOENT"
    assert r["link counts"] == [5, 3, 2, 3]


def test_rename_across_mounts_is_exdev(mount, tmp_path: Path) -> None:
    """Within one mount EXDEV cannot happen; between two mounts (or a mount and the local
    disk) the kernel refuses before mofs is asked."""
    a = mount(name="a", store=tmp_path / "a.mofs")
    b = mount(name="b", store=tmp_path / "b.mofs")
    (a.path / "f").write_text("f")
    for target in (b.path / "g", tmp_path / "g"):
        with pytest.raises(OSError) as exc:
            os.rename(a.path / "f", target)
        assert exc.value.errno == errno.EXDEV
        with pytest.raises(OSError) as exc:
            os.link(a.path / "f", target)
        assert exc.value.errno == errno.EXDEV
    assert (a.path / "f").read_text() == "f"


def test_rename_over_a_name_being_opened_never_shows_it_missing(fs: Pair) -> None:
    r = fs.diff('''
        put("target", "0")
        pid = os.fork()
        if pid == 0:
            for i in range(1, 400):
                put("new", str(i)); os.rename("new", "target")
            os._exit(0)
        missing = 0
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            try:
                get("target")
            except FileNotFoundError:
                missing += 1
        out("opens that found no file", missing)
        t("last", get, "target")
    ''')
    assert r["opens that found no file"] == 0 and r["last"] == repr(b"399")


# --- open files, sparse files, append, truncate --------------------------------------------------


def test_open_unlinked_file_reads_and_writes(fs: Pair) -> None:
    r = fs.diff('''
        fd = os.open("f", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"a" * 200000)
        t("unlink", os.unlink, "f")
        t("name gone", lambda: os.path.exists("f"))
        t("fstat nlink", lambda: os.fstat(fd).st_nlink)
        os.pwrite(fd, b"b" * 1000, 300000)
        t("size", lambda: os.fstat(fd).st_size)
        t("read", os.pread, fd, 10, 299995)
        t("hole", lambda: os.pread(fd, 1000, 200000) == bytes(1000))
        t("ftruncate", os.ftruncate, fd, 100)
        t("size after ftruncate", lambda: os.fstat(fd).st_size)
        t("fchmod", os.fchmod, fd, 0o600)
        t("mode", lambda: oct(os.fstat(fd).st_mode))
        put("f", "new")
        t("a new file of that name", get, "f")
        t("the old one is apart", os.pread, fd, 4, 0)
        os.close(fd)
        t("names", lambda: os.listdir("."))
    ''')
    assert r["fstat nlink"] == 0 and r["size"] == 301000 and r["read"] == repr(bytes(5) + b"bbbbb")
    assert r["hole"] is True and r["size after ftruncate"] == 100
    assert r["a new file of that name"] == repr(b"new")
    assert r["the old one is apart"] == repr(b"aaaa")


def test_open_unlinked_file_frees_its_pages_after_close(mount) -> None:
    m = mount()
    f = m.path / "f"
    data = os.urandom(3 * 65536 + 100)
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        ino = os.fstat(fd).st_ino
        pages = "SELECT count(*) FROM pages WHERE object = ?"
        assert store_rows(m, pages, ino) == [(4,)]
        os.unlink(f)
        sync(m)
        assert store_rows(m, pages, ino) == [(4,)], "an open file keeps its pages"
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    os.sync()
    sync(m)
    assert wait_for(lambda: store_rows(m, pages, ino) == [(0,)]), store_rows(m, pages, ino)
    assert wait_for(lambda: not store_rows(m, "SELECT 1 FROM inodes WHERE ino = ?", ino))
    assert os.listdir(m.path) == []


def test_sparse_files_read_zeros_in_holes(fs: Pair) -> None:
    r = fs.diff('''
        fd = os.open("s", os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 1 << 20)
        t("truncated up reads zeros", lambda: os.pread(fd, 1 << 20, 0) == bytes(1 << 20))
        os.pwrite(fd, b"end", 10 << 20)
        t("size", lambda: os.fstat(fd).st_size)
        t("hole", lambda: os.pread(fd, 1 << 20, 5 << 20) == bytes(1 << 20))
        t("data after the hole", os.pread, fd, 10, (10 << 20) - 5)
        t("read past the end", os.pread, fd, 10, 20 << 20)
        os.pwrite(fd, b"far", 1 << 36)
        t("far size", lambda: os.fstat(fd).st_size)
        t("far data", os.pread, fd, 3, 1 << 36)
        t("far hole", lambda: os.pread(fd, 4096, 1 << 35) == bytes(4096))
        s = os.fstat(fd)
        out("st_blocks covers the data", s.st_blocks * 512 >= 6)
        out("st_blocks within the size", s.st_blocks * 512 <= s.st_size + (1 << 20))
        out("blksize", s.st_blksize >= 4096)
        os.close(fd)
    ''')
    assert r["truncated up reads zeros"] is True and r["size"] == (10 << 20) + 3
    assert r["hole"] is True and r["data after the hole"] == repr(b"\0\0\0\0\0end")
    assert r["read past the end"] == repr(b"") and r["far size"] == (1 << 36) + 3
    assert r["far data"] == repr(b"far") and r["far hole"] is True


def test_sparse_file_stores_only_written_pages(mount) -> None:
    m = mount()
    f = m.path / "s"
    with open(f, "wb") as out:
        out.truncate(100 << 20)
        out.seek(50 << 20)
        out.write(b"x")
    sync(m)
    ino = os.stat(f).st_ino
    assert store_rows(m, "SELECT offset FROM pages WHERE object = ?", ino) == [(50 << 20,)]
    assert os.stat(f).st_blocks * 512 == PS  # the one page written (see the next tests)


PS = 65536  # the page size of a store made by default


def du(path: Path) -> int:
    """What du(1) says the file occupies, in bytes (its st_blocks * 512)."""
    done = subprocess.run(["du", "-B1", str(path)], capture_output=True, text=True,
                          timeout=30, check=True)
    return int(done.stdout.split()[0])


def test_st_blocks_counts_the_pages_written_as_du_sees_them(mount) -> None:
    """du of a file only truncated up is 0; one byte written in the middle of a sparse
    file is one page; a fully written file is its whole size (in 512-byte blocks, as
    before); a truncate down gives back the pages it cuts. The same after a remount."""
    m = mount()
    p = m.path
    with open(p / "truncated", "wb") as f:
        f.truncate(1 << 30)
    with open(p / "middle", "wb") as f:
        f.truncate(100 << 20)
        f.seek(50 << 20)
        f.write(b"x")
    full = os.urandom((3 << 20) + 100)
    (p / "full").write_bytes(full)
    (p / "zeros").write_bytes(bytes(2 * PS))  # written zeros are allocated, as on ext4
    with open(p / "cut", "wb") as f:
        f.write(os.urandom(4 << 20))
        f.truncate(PS + 1)
    (p / "empty").write_bytes(b"")
    want = {"truncated": 0, "middle": PS, "full": -(-len(full) // 512) * 512,
            "zeros": 2 * PS, "cut": -(-(PS + 1) // 512) * 512, "empty": 0}

    def seen() -> dict[str, tuple[int, int]]:
        return {name: (os.stat(p / name).st_blocks * 512, du(p / name)) for name in want}

    assert seen() == {name: (n, n) for name, n in want.items()}
    m.umount()
    m.start()
    assert seen() == {name: (n, n) for name, n in want.items()}, "after a remount"


def test_st_blocks_of_a_file_being_written(mount) -> None:
    """While a file is open, st_blocks follows its writes and truncates at once."""
    m = mount()
    fd = os.open(m.path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 64 << 20)
        assert os.fstat(fd).st_blocks == 0
        os.pwrite(fd, b"a" * 10, 10 * PS + 5)
        os.pwrite(fd, b"b" * (2 * PS), 20 * PS)
        assert os.fstat(fd).st_blocks * 512 == 3 * PS
        os.pwrite(fd, b"c" * 10, 10 * PS + 100)  # a page already counted
        assert os.fstat(fd).st_blocks * 512 == 3 * PS
        os.ftruncate(fd, 20 * PS + 512)
        assert os.fstat(fd).st_blocks * 512 == PS + 512
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.stat(m.path / "f").st_blocks * 512 == PS + 512


def test_st_blocks_of_a_file_from_before_mofs_kept_track(mount) -> None:
    """A file without a record of its written pages (a store made before mofs kept them)
    counts as fully written: an upper bound, never less than its data."""
    m = mount()
    with open(m.path / "old", "wb") as f:
        f.truncate(10 << 20)
        f.write(b"x")
    ino = os.stat(m.path / "old").st_ino
    m.umount()
    with closing(sqlite3.connect(m.store)) as db, db:
        db.execute("DELETE FROM allocation WHERE ino = ?", (ino,))
    m.start()
    assert os.stat(m.path / "old").st_blocks == (10 << 20) // 512
    with open(m.path / "old", "r+b") as f:
        f.truncate(3 * PS)  # now known: the pages up to the new size
    assert os.stat(m.path / "old").st_blocks * 512 == 3 * PS


def test_o_append_writes_from_two_processes_land_at_the_end(fs: Pair) -> None:
    r = fs.diff('''
        put("log", "header\\n")
        def writer(tag):
            fd = os.open("log", os.O_WRONLY | os.O_APPEND)
            for i in range(300):
                os.write(fd, f"{tag}{i:05}".ljust(99).encode() + b"\\n")
            os.close(fd)
        pids = []
        for tag in "AB":
            pid = os.fork()
            if pid == 0:
                writer(tag); os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        data = get("log")
        t("size", lambda: len(data))
        records = data[7:].split(b"\\n")[:-1]
        t("records intact", lambda: all(len(x) == 99 and x[:1] in b"AB" for x in records))
        t("each writer in order", lambda: [[int(x[1:6]) for x in records if x[:1] == tag]
                                           == list(range(300)) for tag in (b"A", b"B")])
        fd = os.open("log", os.O_RDWR | os.O_APPEND)
        t("pwrite ignores the offset with O_APPEND", os.pwrite, fd, b"tail", 0)
        t("position after append", lambda: os.lseek(fd, 0, os.SEEK_CUR))
        os.lseek(fd, 0, os.SEEK_SET); os.write(fd, b"!")
        t("seek does not matter", lambda: (os.pread(fd, 7, 0), os.pread(fd, 5, 60007)))
        os.close(fd)
    ''')
    assert r["size"] == 7 + 600 * 100 and r["records intact"] is True
    assert r["each writer in order"] == [True, True]
    assert r["seek does not matter"] == [repr(b"header\n"), repr(b"tail!")]


def test_o_trunc_and_truncate_up_and_down(fs: Pair) -> None:
    r = fs.diff('''
        put("f", b"x" * 100000)
        fd = os.open("f", os.O_WRONLY | os.O_TRUNC)
        t("O_TRUNC empties", lambda: os.fstat(fd).st_size)
        os.close(fd)
        t("empty after close", lambda: len(get("f")))
        put("f", "hello world")
        fd = os.open("f", os.O_RDONLY | os.O_TRUNC)
        t("O_RDONLY|O_TRUNC truncates too", lambda: (os.fstat(fd).st_size, os.read(fd, 5)))
        os.close(fd)
        put("f", "hello world")
        fd = os.open("f", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        t("O_CREAT|O_TRUNC on an existing file", lambda: os.fstat(fd).st_size)
        os.close(fd)
        put("f", b"abcdefgh" * 20000)
        t("truncate down", os.truncate, "f", 10)
        t("content", get, "f")
        t("truncate up", os.truncate, "f", 160000)
        t("old bytes do not come back", lambda: get("f")[10:] == bytes(159990))
        fd = os.open("f", os.O_RDWR)
        os.pwrite(fd, b"z" * 70000, 0)
        t("ftruncate mid-page", os.ftruncate, fd, 65537)
        t("ftruncate up", os.ftruncate, fd, 65600)
        t("tail", lambda: os.pread(fd, 100, 65530))
        os.close(fd)
        os.mkdir("d")
        t("truncate a dir", os.truncate, "d", 0)
        t("open a dir with O_TRUNC", os.open, "d", os.O_RDONLY | os.O_TRUNC)
        t("truncate negative", os.truncate, "f", -1)
        fd = os.open("f", os.O_RDONLY)
        t("ftruncate a read-only fd", os.ftruncate, fd, 0)
        os.close(fd)
        t("truncate to 1 TiB", os.truncate, "f", 1 << 40)
        t("big size", lambda: os.stat("f").st_size)
        t("truncate back", os.truncate, "f", 3)
        t("small again", get, "f")
    ''')
    assert r["O_TRUNC empties"] == 0 and r["empty after close"] == 0
    assert r["O_RDONLY|O_TRUNC truncates too"] == [0, repr(b"")]
    assert r["O_CREAT|O_TRUNC on an existing file"] == 0
    assert r["content"] == repr(b"abcdefghab") and r["old bytes do not come back"] is True
    assert r["tail"] == repr(b"z" * 7 + bytes(63))
    assert r["truncate a dir"] == r["open a dir with O_TRUNC"] == "!EISDIR"
    assert r["truncate negative"] == r["ftruncate a read-only fd"] == "!EINVAL"
    assert r["big size"] == 1 << 40 and r["small again"] == repr(b"zzz")


def test_truncate_while_mmapped(fs: Pair) -> None:
    r = fs.diff('''
        PS = 65536
        fd = os.open("m", os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 3 * PS)
        mm = mmap.mmap(fd, 3 * PS)
        mm[:] = b"x" * (3 * PS)
        mm.flush()
        os.ftruncate(fd, PS + 10)
        t("size", lambda: os.fstat(fd).st_size)
        t("kept in the map", lambda: mm[PS:PS + 10])
        t("rest of the last page is zero", lambda: mm[PS + 10:PS + 4096] == bytes(4086))
        pid = os.fork()
        if pid == 0:
            mm[2 * PS]
            os._exit(0)
        status = os.waitpid(pid, 0)[1]
        t("touching past the end", lambda: os.WIFSIGNALED(status) and os.WTERMSIG(status))
        os.ftruncate(fd, 3 * PS)
        t("grown back with zeros", lambda: mm[PS + 10:] == bytes(2 * PS - 10))
        mm[2 * PS:2 * PS + 4] = b"back"
        mm.flush()
        t("map writes reach read", os.pread, fd, 4, 2 * PS)
        os.pwrite(fd, b"fd", 5)
        t("fd writes reach the map", lambda: mm[:8])
        mm.close()
        os.close(fd)
        t("file", lambda: get("m")[:8] + get("m")[2 * PS:2 * PS + 4])
    ''')
    assert r["size"] == 65546 and r["kept in the map"] == repr(b"x" * 10)
    assert r["rest of the last page is zero"] is True
    assert r["touching past the end"] == 7  # SIGBUS
    assert r["grown back with zeros"] is True and r["map writes reach read"] == repr(b"back")
    assert r["file"] == repr(b"xxxxxfdxback")


# --- fallocate and SEEK_DATA / SEEK_HOLE: the kernel's fallbacks ----------------------------------


FALLOCATE = '''
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 0x01, 0x02, 0x10
put("f", b"y" * 100000)
fd = os.open("f", os.O_RDWR)
for name, mode in [("mode 0", 0), ("KEEP_SIZE", KEEP_SIZE),
                   ("PUNCH_HOLE", PUNCH_HOLE | KEEP_SIZE), ("ZERO_RANGE", ZERO_RANGE)]:
    t(name, lambda: check(libc.fallocate(fd, mode, 4096, 8192)))
t("size", lambda: os.fstat(fd).st_size)
os.close(fd)
'''


def test_fallocate_fails_cleanly_with_eopnotsupp(fs: Pair) -> None:
    """pyfuse3 has no fallocate handler: the kernel gets ENOSYS once and from then on
    answers EOPNOTSUPP itself. Every mode fails cleanly (no EIO, no hang)."""
    results = dict(program(FALLOCATE, fs.work))
    assert results == {"mode 0": "!EOPNOTSUPP", "KEEP_SIZE": "!EOPNOTSUPP",
                       "PUNCH_HOLE": "!EOPNOTSUPP", "ZERO_RANGE": "!EOPNOTSUPP", "size": 100000}
    local = dict(program(FALLOCATE, fs.local))
    if local["mode 0"] is None:  # a local disk does them all
        assert local["size"] == 100000
    # posix_fallocate falls back to writing zeros when fallocate(2) says EOPNOTSUPP,
    # so what a program sees is the same as on a local disk.
    r = fs.diff('''
        put("g", b"z" * 5000)
        fd = os.open("g", os.O_RDWR)
        t("posix_fallocate", os.posix_fallocate, fd, 4000, 200000)
        t("size", lambda: os.fstat(fd).st_size)
        t("data kept", lambda: os.pread(fd, 5000, 0) == b"z" * 5000)
        t("zeros", lambda: os.pread(fd, 199000, 5000) == bytes(199000))
        t("inside the size", os.posix_fallocate, fd, 0, 10)
        t("size unchanged", lambda: os.fstat(fd).st_size)
        os.close(fd)
    ''')
    assert r["size"] == r["size unchanged"] == 204000 and r["zeros"] is True
    assert (fs.work / "g").read_bytes()[:5000] == b"z" * 5000


def test_seek_data_and_seek_hole_are_the_generic_whole_file_answers(fs: Pair) -> None:
    """No lseek handler: the kernel treats the whole file as data (one implicit hole at
    the end), which is correct, only not sparse-aware."""
    r = dict(program('''
        fd = os.open("s", os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"data", 0)
        os.ftruncate(fd, 1 << 20)
        os.pwrite(fd, b"more", (1 << 20) - 4)
        t("SEEK_DATA 0", os.lseek, fd, 0, os.SEEK_DATA)
        t("SEEK_HOLE 0", os.lseek, fd, 0, os.SEEK_HOLE)
        t("SEEK_DATA in the hole", os.lseek, fd, 500000, os.SEEK_DATA)
        t("SEEK_HOLE in the hole", os.lseek, fd, 500000, os.SEEK_HOLE)
        t("SEEK_DATA at the end", os.lseek, fd, 1 << 20, os.SEEK_DATA)
        t("SEEK_HOLE at the end", os.lseek, fd, 1 << 20, os.SEEK_HOLE)
        t("SEEK_DATA negative", os.lseek, fd, -1, os.SEEK_DATA)
        os.close(fd)
    ''', fs.work))
    size = 1 << 20
    assert r == {"SEEK_DATA 0": 0, "SEEK_HOLE 0": size, "SEEK_DATA in the hole": 500000,
                 "SEEK_HOLE in the hole": size, "SEEK_DATA at the end": "!ENXIO",
                 "SEEK_HOLE at the end": "!ENXIO", "SEEK_DATA negative": "!ENXIO"}


def test_o_tmpfile_is_not_supported(fs: Pair) -> None:
    """pyfuse3 has no tmpfile handler either: O_TMPFILE fails with EOPNOTSUPP."""
    r = dict(program('t("O_TMPFILE", os.open, ".", os.O_TMPFILE | os.O_RDWR, 0o600)', fs.work))
    assert r == {"O_TMPFILE": "!EOPNOTSUPP"}


# --- timestamps --------------------------------------------------------------------------------


def test_mtime_and_ctime_rules(fs: Pair) -> None:
    r = fs.diff('''
        put("f", "hello")
        fd = os.open("f", os.O_RDWR)
        t("write", changed, "f", os.pwrite, fd, b"abc", 0)
        t("empty write", changed, "f", os.write, fd, b"")
        t("ftruncate smaller", changed, "f", os.ftruncate, fd, 2)
        t("ftruncate same size", changed, "f", os.ftruncate, fd, 2)
        t("truncate bigger", changed, "f", os.truncate, "f", 10)
        t("truncate same size", changed, "f", os.truncate, "f", 10)
        os.close(fd)
        t("O_TRUNC", changed, "f", lambda: os.close(os.open("f", os.O_WRONLY | os.O_TRUNC)))
        t("O_TRUNC of an empty file", changed, "f",
          lambda: os.close(os.open("f", os.O_WRONLY | os.O_TRUNC)))
        t("open without O_TRUNC", changed, "f", lambda: os.close(os.open("f", os.O_WRONLY)))
        t("chmod", changed, "f", os.chmod, "f", 0o640)
        t("chmod to the same mode", changed, "f", os.chmod, "f", 0o640)
        t("chown", changed, "f", os.chown, "f", 1, 1)
        t("chown to nothing new", changed, "f", os.chown, "f", -1, -1)
        t("utime now", changed, "f", os.utime, "f")
        t("setxattr", changed, "f", os.setxattr, "f", "user.x", b"1")
        t("removexattr", changed, "f", os.removexattr, "f", "user.x")
        t("link", changed, "f", os.link, "f", "g")
        t("unlink the other name", changed, "f", os.unlink, "g")
        t("rename: the directory", changed, ".", os.rename, "f", "h")
        os.rename("h", "f")
        t("rename: the file", changed, "f", lambda: (os.rename("f", "h"), os.rename("h", "f"))
          and None)
        t("rename onto itself", changed, "f", os.rename, "f", "f")
        t("stat", changed, "f", lambda: os.stat("f") and None)
        os.mkdir("d")
        t("dir: create", changed, "d", put, "d/x", "x")
        t("dir: write to a file in it", changed, "d", put, "d/x", "y", "ab")
        t("dir: mkdir", changed, "d", os.mkdir, "d/sub")
        t("dir: symlink", changed, "d", os.symlink, "x", "d/l")
        t("dir: link", changed, "d", os.link, "d/x", "d/x2")
        t("dir: rename within", changed, "d", os.rename, "d/x2", "d/x3")
        t("dir: rename out", changed, "d", os.rename, "d/x3", "x3")
        t("dir: rename in", changed, "d", os.rename, "x3", "d/x4")
        t("dir: unlink", changed, "d", os.unlink, "d/x4")
        t("dir: rmdir", changed, "d", os.rmdir, "d/sub")
        t("dir: chmod a file in it", changed, "d", os.chmod, "d/x", 0o600)
        t("dir: failed create", changed, "d", os.mkdir, "d/x")
        t("dir: listing", changed, "d", lambda: os.listdir("d") and None)
        t("dir: moved dir", changed, "d", lambda: (os.rename("d", "e"), os.rename("e", "d"))
          and None)
    ''')
    mc, c = "mc", "c"
    assert r["write"] == [mc, 3] and r["empty write"] == ["-", 0]
    assert r["ftruncate smaller"] == r["ftruncate same size"] == mc
    assert r["truncate bigger"] == r["truncate same size"] == mc
    assert r["O_TRUNC"] == r["O_TRUNC of an empty file"] == mc
    assert r["open without O_TRUNC"] == "-" and r["stat"] == "-"
    assert r["chmod"] == r["chmod to the same mode"] == r["chown"] == c
    assert r["chown to nothing new"] == c and r["utime now"] == "amc"
    assert r["setxattr"] == r["removexattr"] == r["link"] == r["unlink the other name"] == c
    assert r["rename: the directory"] == mc and r["rename: the file"] == c
    assert r["rename onto itself"] == "-"
    for op in ("create", "mkdir", "symlink", "link", "rename within", "rename out",
               "rename in", "unlink", "rmdir"):
        assert r[f"dir: {op}"] == mc, op
    assert r["dir: write to a file in it"] == r["dir: chmod a file in it"] == "-"
    assert r["dir: failed create"] == ["-", "!EEXIST"] and r["dir: moved dir"] == c


def test_utime_explicit_times_round_trip_to_the_nanosecond(fs: Pair) -> None:
    r = fs.diff('''
        put("f", "x"); os.symlink("f", "l")
        for label, ns in [("ordinary", (1_234_567_890_123_456_789, 1_600_000_000_987_654_321)),
                          ("epoch", (0, 0)), ("before 1970", (-1_000_000_001, -86_400_000_000_001)),
                          ("2116", (2 ** 62 + 1, 2 ** 62 + 7))]:
            os.utime("f", ns=ns)
            t(label, lambda: (os.stat("f").st_atime_ns, os.stat("f").st_mtime_ns))
        before = os.stat("f").st_ctime_ns
        os.utime("f", ns=(5, 6))
        t("ctime moves to now", lambda: os.stat("f").st_ctime_ns > before)
        os.utime("l", ns=(7, 8), follow_symlinks=False)
        t("symlink times", lambda: (os.lstat("l").st_atime_ns, os.lstat("l").st_mtime_ns,
                                    os.stat("l").st_mtime_ns))
        os.mkdir("d"); os.utime("d", ns=(9, 10))
        t("directory times", lambda: (os.stat("d").st_atime_ns, os.stat("d").st_mtime_ns))
        libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
        spec = (ctypes.c_long * 4)(0, UTIME_OMIT, 1_500_000_000, 123)
        check(libc.utimensat(AT_FDCWD, b"f", spec, 0))
        t("UTIME_OMIT keeps atime", lambda: (os.stat("f").st_atime_ns, os.stat("f").st_mtime_ns))
        spec = (ctypes.c_long * 4)(0, UTIME_NOW, 0, UTIME_OMIT)
        check(libc.utimensat(AT_FDCWD, b"f", spec, 0))
        t("UTIME_NOW sets atime only", lambda: (os.stat("f").st_atime_ns > 10 ** 18,
                                                 os.stat("f").st_mtime_ns))
    ''')
    assert r["ordinary"] == [1_234_567_890_123_456_789, 1_600_000_000_987_654_321]
    assert r["epoch"] == [0, 0] and r["before 1970"] == [-1_000_000_001, -86_400_000_000_001]
    assert r["ctime moves to now"] is True and r["symlink times"] == [7, 8, 6]
    assert r["directory times"] == [9, 10] and r["2116"] == [2**62 + 1, 2**62 + 7]
    assert r["UTIME_OMIT keeps atime"] == [6 * 0 + 5, 1_500_000_000_000_000_123]
    assert r["UTIME_NOW sets atime only"] == [True, 1_500_000_000_000_000_123]


def test_times_beyond_2262_are_clamped_not_an_error(fs: Pair) -> None:
    """ext4 reaches the year 2446; mofs keeps nanoseconds in 64 bits (1677 to 2262) and
    clamps beyond, as Linux file systems clamp to their range, instead of failing."""
    f = fs.work / "f"
    f.write_text("x")
    os.utime(f, ns=(16 * 10**18, -16 * 10**18))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (2**63 - 1, -(2**63))


ATIME = '''
def aged(path, atime_before_mtime=False, days=0):
    """Set the atime older than the mtime, or `days` old but newer than mtime and ctime
    (a second ahead of now: utime sets the ctime to now by a coarser clock on ext4)."""
    s = os.stat(path)
    now = time.time_ns()
    if atime_before_mtime:
        os.utime(path, ns=(s.st_mtime_ns - 10 ** 9, s.st_mtime_ns))
    elif days:
        old = now - days * 86400 * 10 ** 9
        os.utime(path, ns=(old, old - 10 ** 9))
    else:
        os.utime(path, ns=(now + 10 ** 9, now - 10 ** 9))

def read_all(path):
    with open(path, "rb") as f:
        f.read()

put("f", b"contents" * 1000)
t("read after a write", changed, "f", read_all, "f")
t("second read", changed, "f", read_all, "f")
aged("f", atime_before_mtime=True)
t("read with atime before mtime", changed, "f", read_all, "f")
aged("f", days=2)
t("read with atime two days old", changed, "f", read_all, "f")
aged("f", days=0)
t("read with a fresh atime", changed, "f", read_all, "f")
t("open for writing", changed, "f", lambda: os.close(os.open("f", os.O_WRONLY)))
aged("f", atime_before_mtime=True)
t("O_NOATIME read", changed, "f", lambda: os.close(os.open("f", os.O_RDONLY | os.O_NOATIME)))
t("write", changed, "f", put, "f", b"more", "ab")
t("read after append", changed, "f", read_all, "f")
def mapped(path):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        mm[:10]
aged("f", atime_before_mtime=True)
t("mmap read", changed, "f", mapped, "f")
os.mkdir("d"); put("d/x", "x")
aged("d", atime_before_mtime=True)
t("list a directory", changed, "d", lambda: os.listdir("d") and None)
t("list it again", changed, "d", lambda: os.listdir("d") and None)
'''


def test_atime_follows_relatime(fs: Pair) -> None:
    """As mounted (relatime): a read moves the atime only if it is not newer than the
    mtime or ctime, or is a day old."""
    r = fs.diff(ATIME)
    assert "relatime" in Path("/proc/mounts").read_text().split(f" {fs.m.path} ")[1].split()[1]
    assert r["read after a write"] == "a" and r["second read"] == "-"
    assert r["read with atime before mtime"] == r["read with atime two days old"] == "a"
    assert r["read with a fresh atime"] == "-" and r["open for writing"] == "-"
    assert r["O_NOATIME read"] == "-"
    assert r["write"] == "mc" and r["read after append"] == "a" and r["mmap read"] == "a"
    assert r["list a directory"] == "a" and r["list it again"] == "-"


def test_atime_moves_when_a_file_is_opened_for_reading(fs: Pair) -> None:
    """The one atime difference: reads served from the Linux page cache never reach mofs,
    so it moves the atime (relatime rules) when a file is opened for reading, which on
    a local disk only the first read would do."""
    code = '''
        put("f", "x")
        os.utime("f", ns=(1, 2))
        t("open for reading, nothing read", changed, "f",
          lambda: os.close(os.open("f", os.O_RDONLY)))
    '''
    assert dict(program(code, fs.local)) == {"open for reading, nothing read": "-"}
    assert dict(program(code, fs.work)) == {"open for reading, nothing read": "a"}


def test_atime_after_remount_with_a_cold_cache(fs: Pair) -> None:
    (fs.work / "f").write_bytes(b"x" * 100000)
    os.utime(fs.work / "f", ns=(1, 2))
    fs.m.umount()
    fs.m.start()
    assert os.stat(fs.work / "f").st_atime_ns == 1
    assert (fs.work / "f").read_bytes() == b"x" * 100000
    assert os.stat(fs.work / "f").st_atime_ns > time.time_ns() - 60 * 10 ** 9


# --- permissions for an ordinary user ------------------------------------------------------------


def test_permission_checks_for_an_ordinary_user(fs: Pair) -> None:
    r = fs.diff('''
        os.mkdir("pub"); os.chmod("pub", 0o777)
        put("pub/secret", "s"); os.chmod("pub/secret", 0o600)
        put("pub/shared", "w"); os.chmod("pub/shared", 0o666)
        put("pub/readable", "r"); os.chmod("pub/readable", 0o644)
        os.mkdir("private"); os.chmod("private", 0o700); put("private/x", "x")
        os.mkdir("noexec"); put("noexec/x", "x"); os.chmod("noexec", 0o666)
        with as_user():
            t("read a 0600 root file", get, "pub/secret")
            t("write a 0600 root file", put, "pub/secret", "!", "ab")
            t("truncate a 0600 root file", os.truncate, "pub/secret", 0)
            t("O_TRUNC a 0644 root file", os.open, "pub/readable", os.O_WRONLY | os.O_TRUNC)
            t("access", lambda: [os.access("pub/secret", m, effective_ids=True)
                                 for m in (os.R_OK, os.W_OK)])
            t("read a 0644 file", get, "pub/readable")
            t("create in a 0777 dir", put, "pub/mine", "m")
            t("owner of a new file", lambda: (os.stat("pub/mine").st_uid,
                                              os.stat("pub/mine").st_gid))
            t("mkdir in a 0777 dir", os.mkdir, "pub/mydir")
            t("mkdir in a 0755 root dir", os.mkdir, "nope")
            t("list a 0700 dir", os.listdir, "private")
            t("path through a 0700 dir", os.stat, "private/x")
            t("path through a dir without x", os.stat, "noexec/x")
            t("chmod someone else's file", os.chmod, "pub/shared", 0o777)
            t("chmod my file", os.chmod, "pub/mine", 0o600)
            t("chown my file to root", os.chown, "pub/mine", 0, 0)
            t("chgrp my file to a group I am not in", os.chown, "pub/mine", -1, 0)
            t("utime now on a writable file", os.utime, "pub/shared")
            t("explicit times on someone else's file", os.utime, "pub/shared", (1, 1))
            t("explicit times on my file", os.utime, "pub/mine", (1, 1))
            t("ftruncate someone else's writable file", lambda: os.ftruncate(
                os.open("pub/shared", os.O_WRONLY), 0))
            t("user xattr on a 0644 file", os.setxattr, "pub/readable", "user.u", b"1")
            t("user xattr on a 0666 file", os.setxattr, "pub/shared", "user.u", b"1")
            t("trusted xattr", os.setxattr, "pub/mine", "trusted.t", b"1")
            t("rename someone else's file in a 0777 dir", os.rename, "pub/readable",
              "pub/moved")
            t("unlink someone else's file in a 0777 dir", os.unlink, "pub/moved")
            t("link to someone else's file", os.link, "pub/secret", "pub/hard")
        t("root reads the 0600 file", get, "pub/secret")
        t("root writes a 0444 file", lambda: (os.chmod("pub/shared", 0o444),
                                               put("pub/shared", "root")))
        t("names", lambda: sorted(os.listdir("pub")))
    ''')
    assert r["read a 0600 root file"] == r["write a 0600 root file"] == "!EACCES"
    assert r["truncate a 0600 root file"] == r["O_TRUNC a 0644 root file"] == "!EACCES"
    assert r["access"] == [False, False] and r["read a 0644 file"] == repr(b"r")
    assert r["owner of a new file"] == [NOBODY, NOBODY] and r["mkdir in a 0777 dir"] is None
    assert r["mkdir in a 0755 root dir"] == r["list a 0700 dir"] == "!EACCES"
    assert r["path through a 0700 dir"] == r["path through a dir without x"] == "!EACCES"
    assert r["chmod someone else's file"] == r["chown my file to root"] == "!EPERM"
    assert r["chgrp my file to a group I am not in"] == "!EPERM"
    assert r["utime now on a writable file"] is None
    assert r["explicit times on someone else's file"] == "!EPERM"
    assert r["ftruncate someone else's writable file"] is None
    assert r["user xattr on a 0644 file"] == "!EACCES" and r["trusted xattr"] == "!EPERM"
    assert r["unlink someone else's file in a 0777 dir"] is None
    assert r["root reads the 0600 file"] == repr(b"s")


def test_sticky_directory(fs: Pair) -> None:
    r = fs.diff('''
        os.mkdir("tmp"); os.chmod("tmp", 0o1777)
        put("tmp/roots", "r"); os.chmod("tmp/roots", 0o666)
        with as_user(1000, 1000):
            put("tmp/others", "o")
        with as_user():
            t("unlink root's file", os.unlink, "tmp/roots")
            t("unlink another user's file", os.unlink, "tmp/others")
            t("rename root's file", os.rename, "tmp/roots", "tmp/mine")
            t("rename over root's file", lambda: (put("tmp/new", "n"),
                                                  os.rename("tmp/new", "tmp/roots")))
            t("write root's 0666 file", put, "tmp/roots", "w", "ab")
            t("create and unlink my own", lambda: (put("tmp/own", "o"), os.unlink("tmp/own")))
            t("mkdir and rmdir my own", lambda: (os.mkdir("tmp/od"), os.rmdir("tmp/od")))
        t("root may unlink anything", os.unlink, "tmp/others")
        t("mode", lambda: oct(os.stat("tmp").st_mode))
        t("names", lambda: sorted(os.listdir("tmp")))
    ''')
    assert r["unlink root's file"] == r["unlink another user's file"] == "!EPERM"
    assert r["rename root's file"] == "!EPERM" and r["rename over root's file"] == "!EPERM"
    assert r["write root's 0666 file"] is None and r["root may unlink anything"] is None
    assert r["mode"] == oct(stat.S_IFDIR | 0o1777) and r["names"] == ["new", "roots"]


def test_setuid_and_setgid_bits_are_cleared_like_a_local_disk(fs: Pair) -> None:
    r = fs.diff('''
        os.mkdir("pub"); os.chmod("pub", 0o777)
        put("pub/f", "x")
        def mode():
            return oct(stat.S_IMODE(os.stat("pub/f").st_mode))
        def again(bits=0o6777):
            os.chmod("pub/f", bits)
        again()
        with as_user():
            put("pub/f", "y", "ab")
        t("after a write by another user", mode)
        again()
        with as_user():
            os.truncate("pub/f", 1)
        t("after truncate by another user", mode)
        again()
        with as_user():
            os.close(os.open("pub/f", os.O_WRONLY | os.O_TRUNC))
        t("after O_TRUNC by another user", mode)
        again()
        put("pub/f", "z", "ab")
        t("a write by root keeps them", mode)
        again(0o2666)
        with as_user():
            put("pub/f", "y", "ab")
        t("setgid without group x, writer not in the group", mode)
        os.chown("pub/f", 0, NOBODY)
        again(0o2666)
        with as_user():
            put("pub/f", "y", "ab")
        t("setgid without group x, writer in the group", mode)
        os.chown("pub/f", 0, 0)
        again(0o6755)
        os.chown("pub/f", 1, 1)
        t("after chown by root", mode)
        again(0o6755)
        os.chown("pub/f", -1, -1)
        t("after a chown that changes nothing", mode)
        os.chown("pub/f", NOBODY, 0)
        with as_user():
            t("owner sets setgid for a group it is not in", os.chmod, "pub/f", 0o2755)
        t("stripped", mode)
        os.mkdir("pub/d"); os.chmod("pub/d", 0o6777)
        with as_user():
            put("pub/d/x", "x")
        t("a directory keeps them on writes below", lambda: oct(stat.S_IMODE(
            os.stat("pub/d").st_mode)))
    '''.replace("NOBODY", str(NOBODY)))
    assert r["after a write by another user"] == oct(0o777)
    assert r["after truncate by another user"] == r["after O_TRUNC by another user"] == oct(0o777)
    assert r["a write by root keeps them"] == oct(0o6777)
    assert r["setgid without group x, writer not in the group"] == oct(0o666)
    assert r["setgid without group x, writer in the group"] == oct(0o2666)
    assert r["after chown by root"] == oct(0o755)
    assert r["stripped"] == oct(0o755)
    assert r["a directory keeps them on writes below"] == oct(0o6777)


def test_setgid_directory_passes_on_its_group(fs: Pair) -> None:
    r = fs.diff('''
        os.mkdir("sg"); os.chown("sg", 0, 1234); os.chmod("sg", 0o2777)
        def owner(p):
            s = os.lstat(p)
            return [s.st_uid, s.st_gid, oct(stat.S_IMODE(s.st_mode))]
        put("sg/root-file", "r")
        t("root's file", owner, "sg/root-file")
        with as_user():
            put("sg/file", "f")
            t("file", owner, "sg/file")
            os.mkdir("sg/dir")
            t("directory inherits the bit", owner, "sg/dir")
            put("sg/dir/deeper", "d")
            t("and passes the group on", owner, "sg/dir/deeper")
            os.symlink("file", "sg/link")
            t("symlink", owner, "sg/link")
            os.mkfifo("sg/fifo", 0o666)
            t("fifo", owner, "sg/fifo")
            os.close(os.open("sg/sgid", os.O_CREAT | os.O_WRONLY, 0o2755))
            t("setgid file by a non-member", owner, "sg/sgid")
            os.mkdir("sg/dir2", 0o755)
            t("mkdir with 0755", owner, "sg/dir2")
        os.close(os.open("sg/rootsgid", os.O_CREAT | os.O_WRONLY, 0o2755))
        t("setgid file by root", owner, "sg/rootsgid")
        os.mkdir("plain"); os.chmod("plain", 0o777)
        with as_user():
            os.mkdir("plain/d")
            t("no setgid parent", owner, "plain/d")
        t("moving in does not change the group", lambda: (os.rename("plain/d", "sg/moved"),
                                                          owner("sg/moved")))
    ''')
    assert r["root's file"] == [0, 1234, oct(0o644)]
    assert r["file"] == [NOBODY, 1234, oct(0o644)]
    assert r["directory inherits the bit"] == [NOBODY, 1234, oct(0o2755)]
    assert r["and passes the group on"] == [NOBODY, 1234, oct(0o644)]
    assert r["symlink"] == [NOBODY, 1234, oct(0o777)] and r["fifo"] == [NOBODY, 1234, oct(0o644)]
    assert r["setgid file by a non-member"] == [NOBODY, 1234, oct(0o755)]
    assert r["mkdir with 0755"] == [NOBODY, 1234, oct(0o2755)]
    assert r["setgid file by root"] == [0, 1234, oct(0o2755)]
    assert r["no setgid parent"] == [NOBODY, NOBODY, oct(0o755)]


# --- names, paths and errnos ---------------------------------------------------------------------


def test_name_and_path_length_limits(fs: Pair) -> None:
    r = fs.diff('''
        n255, n256 = "a" * 255, "b" * 256
        t("create 255", put, n255, "x")
        t("stat 255", lambda: os.stat(n255).st_size)
        t("listed", lambda: os.listdir(".") == [n255])
        t("create 256", put, n256, "x")
        t("O_CREAT 256", os.open, n256, os.O_CREAT | os.O_WRONLY)
        t("lookup 256", os.stat, n256)
        t("mkdir 256", os.mkdir, n256)
        t("rename to 256", os.rename, n255, n256)
        t("symlink named 256", os.symlink, "x", n256)
        t("link named 256", os.link, n255, n256)
        t("mkfifo 256", os.mkfifo, n256)
        t("unlink 256", os.unlink, n256)
        t("rmdir 256", os.rmdir, n256)
        t("256 in the middle of a path", os.stat, n256 + "/x")
        t("multibyte 254 bytes", put, "\\u00e9" * 127, "x")
        t("multibyte 256 bytes", put, "\\u00e9" * 128, "x")
        t("rename 255 to 255", os.rename, n255, "c" * 255)
        t("mkdir 255", os.mkdir, "d" * 255)
        t("symlink 255", os.symlink, "x", "e" * 255)
        t("link 255", os.link, "c" * 255, "f" * 255)
        deep = "/".join(["g" * 200] * 20)
        t("path of 4019 bytes", os.makedirs, deep)
        t("path of 4096 bytes", os.stat, deep + "/" + "h" * 76)
        t("path of 4095 bytes", os.stat, deep + "/" + "h" * 75)
        t("names", lambda: len(os.listdir(".")))
    ''')
    assert r["create 255"] is None and r["stat 255"] == 1 and r["listed"] is True
    for op in ("create 256", "O_CREAT 256", "lookup 256", "mkdir 256", "rename to 256",
               "symlink named 256", "link named 256", "mkfifo 256", "unlink 256", "rmdir 256",
               "256 in the middle of a path", "multibyte 256 bytes", "path of 4096 bytes"):
        assert r[op] == "!ENAMETOOLONG", op
    assert r["multibyte 254 bytes"] is None and r["path of 4095 bytes"] == "!ENOENT"
    assert r["names"] == 6


def test_errnos(fs: Pair) -> None:
    r = fs.diff('''
        os.mkdir("d"); put("f", "f"); os.mkdir("full"); put("full/x", "x")
        t("mkdir existing", os.mkdir, "d")
        t("mkdir over a file", os.mkdir, "f")
        t("O_CREAT|O_EXCL existing", os.open, "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        t("O_CREAT|O_EXCL on a dir", os.open, "d", os.O_CREAT | os.O_EXCL | os.O_RDONLY)
        t("O_CREAT|O_EXCL through a symlink", lambda: (os.symlink("new", "sl"), os.open(
            "sl", os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
        t("symlink over a dir", os.symlink, "x", "d")
        t("mkfifo existing", os.mkfifo, "f")
        t("rmdir non-empty", os.rmdir, "full")
        t("open a dir for writing", os.open, "d", os.O_WRONLY)
        t("open a dir read-write", os.open, "d", os.O_RDWR)
        t("O_CREAT on a dir", os.open, "d", os.O_CREAT | os.O_WRONLY)
        t("unlink a dir", os.unlink, "d")
        t("read a dir", lambda: os.read(os.open("d", os.O_RDONLY), 10))
        t("create with a trailing slash", os.open, "newfile/", os.O_CREAT | os.O_WRONLY)
        t("path through a file", os.stat, "f/x")
        t("create through a file", put, "f/x", "x")
        t("mkdir through a file", os.mkdir, "f/x")
        t("rmdir a file", os.rmdir, "f")
        t("O_DIRECTORY on a file", os.open, "f", os.O_RDONLY | os.O_DIRECTORY)
        t("file with a trailing slash", os.stat, "f/")
        t("listdir a file", os.listdir, "f")
        t("stat missing", os.stat, "nope")
        t("open missing", os.open, "nope", os.O_RDONLY)
        t("unlink missing", os.unlink, "nope")
        t("rmdir missing", os.rmdir, "nope")
        t("chmod missing", os.chmod, "nope", 0o644)
        t("truncate missing", os.truncate, "nope", 0)
        t("create in a missing dir", put, "nope/x", "x")
        t("empty path", os.stat, "")
        t("rmdir dot", os.rmdir, "d/.")
        t("rmdir dotdot", os.rmdir, "d/..")
        t("mkdir dot", os.mkdir, ".")
        t("rename dot", os.rename, "d/.", "d/x")
        t("lseek before the start", lambda: os.lseek(os.open("f", os.O_RDONLY), -1, os.SEEK_SET))
        t("write to a read-only fd", lambda: os.write(os.open("f", os.O_RDONLY), b"x"))
        t("read from a write-only fd", lambda: os.read(os.open("f", os.O_WRONLY), 1))
        t("mknod a directory", os.mknod, "nd", stat.S_IFDIR | 0o755)
        t("mknod a bad type", os.mknod, "nd", 0o170000 | 0o755)
        t("mkdir with a trailing slash", os.mkdir, "e/")
    ''')
    expected = {
        "mkdir existing": "!EEXIST", "mkdir over a file": "!EEXIST",
        "O_CREAT|O_EXCL existing": "!EEXIST", "O_CREAT|O_EXCL on a dir": "!EEXIST",
        "O_CREAT|O_EXCL through a symlink": "!EEXIST", "symlink over a dir": "!EEXIST",
        "mkfifo existing": "!EEXIST", "rmdir non-empty": "!ENOTEMPTY",
        "open a dir for writing": "!EISDIR", "open a dir read-write": "!EISDIR",
        "O_CREAT on a dir": "!EISDIR", "unlink a dir": "!EISDIR", "read a dir": "!EISDIR",
        "create with a trailing slash": "!EISDIR", "path through a file": "!ENOTDIR",
        "create through a file": "!ENOTDIR", "mkdir through a file": "!ENOTDIR",
        "rmdir a file": "!ENOTDIR", "O_DIRECTORY on a file": "!ENOTDIR",
        "file with a trailing slash": "!ENOTDIR", "listdir a file": "!ENOTDIR",
        "stat missing": "!ENOENT", "open missing": "!ENOENT", "unlink missing": "!ENOENT",
        "rmdir missing": "!ENOENT", "chmod missing": "!ENOENT", "truncate missing": "!ENOENT",
        "create in a missing dir": "!ENOENT", "empty path": "!ENOENT",
        "rmdir dot": "!EINVAL", "rmdir dotdot": "!ENOTEMPTY", "mkdir dot": "!EEXIST",
        "lseek before the start": "!EINVAL", "write to a read-only fd": "!EBADF",
        "read from a write-only fd": "!EBADF", "mknod a directory": "!EPERM",
        "mknod a bad type": "!EINVAL", "mkdir with a trailing slash": None,
    }
    assert {k: r[k] for k in expected} == expected


def test_special_files_and_listing_with_dot_entries(fs: Pair) -> None:
    r = fs.diff('''
        os.mkfifo("fifo", 0o640)
        os.mknod("null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod("blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
        os.mknod("sock", stat.S_IFSOCK | 0o600)
        os.mknod("plain", 0o600)
        def kind(p):
            s = os.lstat(p)
            return [stat.filemode(s.st_mode), s.st_size, os.major(s.st_rdev), os.minor(s.st_rdev)]
        for name in ("fifo", "null", "blk", "sock", "plain"):
            t(name, kind, name)
        pid = os.fork()
        if pid == 0:
            with open("fifo", "wb") as w:
                w.write(b"through the pipe")
            os._exit(0)
        t("a fifo works", get, "fifo")
        os.waitpid(pid, 0)
        t("ls -a", lambda: subprocess.run(["ls", "-a1"], capture_output=True,
                                          text=True).stdout.split())
        os.mkdir("sub")
        t("ls -a of an empty dir", lambda: subprocess.run(
            ["ls", "-a1", "sub"], capture_output=True, text=True).stdout.split())
        t("dot and dotdot inodes", lambda: [
            os.stat("sub/.").st_ino == os.stat("sub").st_ino,
            os.stat("sub/..").st_ino == os.stat(".").st_ino])
        t("statvfs namemax", lambda: os.statvfs(".").f_namemax)
    ''')
    assert r["fifo"] == ["prw-r-----", 0, 0, 0] and r["null"] == ["crw-r--r--", 0, 1, 3]
    assert r["blk"] == ["brw-------", 0, 7, 200] and r["sock"] == ["srw-------", 0, 0, 0]
    assert r["plain"] == ["-rw-------", 0, 0, 0] and r["a fifo works"] == repr(b"through the pipe")
    assert r["ls -a"] == [".", "..", "blk", "fifo", "null", "plain", "sock"]
    assert r["ls -a of an empty dir"] == [".", ".."] and r["statvfs namemax"] == 255


def test_a_removed_directory_stays_usable_as_a_working_directory(fs: Pair) -> None:
    """After a remount the kernel learns of ``d`` only from the listing (readdirplus hands
    it a reference without a lookup); mofs must count that reference, or it frees ``d``
    at rmdir while it is still the working directory."""
    for where in (fs.local, fs.work):
        program('os.mkdir("d"); put("d/f", "x")', where)
    fs.m.umount()
    fs.m.start()
    r = fs.diff('''
        os.listdir(".")
        os.chdir("d")
        os.unlink("f")
        t("rmdir the working directory", os.rmdir, "../d")
        t("stat it", lambda: (os.stat(".").st_nlink, stat.S_ISDIR(os.stat(".").st_mode)))
        t("list it", os.listdir, ".")
        t("ls -a lists nothing", lambda: subprocess.run(["ls", "-a1"], capture_output=True,
                                                        text=True).stdout.split())
        t("create in it", put, "new", "x")
        t("mkdir in it", os.mkdir, "new")
        t("back up", lambda: os.chdir(".."))
        t("names", lambda: os.listdir("."))
    ''')
    assert r["stat it"] == [0, True] and r["list it"] == [] and r["ls -a lists nothing"] == []
    assert r["create in it"] == r["mkdir in it"] == "!ENOENT" and r["names"] == []


def test_statvfs_and_the_daemon_stays_healthy(fs: Pair) -> None:
    st = os.statvfs(fs.m.path)
    assert st.f_namemax == 255 and st.f_bsize > 0 and st.f_blocks > 0
    assert fs.m.proc is not None and fs.m.proc.poll() is None


def test_concurrent_creates_in_one_directory(fs: Pair) -> None:
    """Many threads creating, renaming and removing in one directory see each name once."""
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                p = fs.work / f"w{n}-{i}"
                p.write_bytes(b"x" * i)
                os.rename(p, fs.work / f"r{n}-{i}")
                if i % 2:
                    os.unlink(fs.work / f"r{n}-{i}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    names = sorted(os.listdir(fs.work))
    assert names == sorted(f"r{n}-{i}" for n in range(6) for i in range(0, 40, 2))
    assert all(os.stat(fs.work / name).st_size == int(name.split("-")[1]) for name in names)
    assert os.stat(fs.work).st_nlink == 2
    assert stat.S_ISDIR(os.stat(fs.work).st_mode)


def test_modes_umask_and_ownership_calls(fs: Pair) -> None:
    r = fs.diff('''
        def mode(p):
            return oct(os.lstat(p).st_mode)
        os.close(os.open("a", os.O_CREAT | os.O_WRONLY, 0o7777))
        t("create 07777 (umask 022)", mode, "a")
        os.mkdir("b", 0o7777)
        t("mkdir 07777", mode, "b")
        os.mkfifo("c", 0o7777)
        t("mkfifo 07777", mode, "c")
        os.umask(0o077)
        put("d", "d"); os.mkdir("e"); os.symlink("d", "f")
        t("umask 077", lambda: [mode(p) for p in "def"])
        os.umask(0)
        os.close(os.open("g", os.O_CREAT | os.O_WRONLY, 0o666))
        t("umask 0", mode, "g")
        t("create on an existing file keeps its mode", lambda: (
            os.close(os.open("g", os.O_CREAT | os.O_WRONLY, 0o600)), mode("g")))
        t("chmod 07777", lambda: (os.chmod("a", 0o7777), mode("a")))
        t("chmod a directory 03777", lambda: (os.chmod("b", 0o3777), mode("b")))
        fd = os.open("g", os.O_RDWR)
        t("fchmod", lambda: (os.fchmod(fd, 0o640), mode("g")))
        t("fchown", lambda: (os.fchown(fd, 7, 8), os.stat("g").st_uid, os.stat("g").st_gid))
        t("fstat agrees", lambda: (oct(os.fstat(fd).st_mode), os.fstat(fd).st_uid))
        os.close(fd)
        t("chown through a symlink", lambda: (os.chown("f", 9, 10), os.stat("d").st_uid,
                                               os.lstat("f").st_uid))
    ''')
    assert r["create 07777 (umask 022)"] == oct(stat.S_IFREG | 0o7755)
    assert r["mkdir 07777"] == oct(stat.S_IFDIR | 0o1755)
    assert r["mkfifo 07777"] == oct(stat.S_IFIFO | 0o7755)
    assert r["umask 077"] == [oct(stat.S_IFREG | 0o600), oct(stat.S_IFDIR | 0o700),
                              oct(stat.S_IFLNK | 0o777)]
    assert r["umask 0"] == oct(stat.S_IFREG | 0o666)
    assert r["create on an existing file keeps its mode"] == [None, oct(stat.S_IFREG | 0o666)]
    assert r["chmod a directory 03777"] == [None, oct(stat.S_IFDIR | 0o3777)]
    assert r["fchown"] == [None, 7, 8] and r["chown through a symlink"] == [None, 9, 0]


def test_big_directory_listed_whole_while_it_changes(fs: Pair) -> None:
    """Several readdir requests per listing, resumed at the positions mofs gave; names
    removed or added meanwhile never make another name vanish or repeat."""
    r = fs.diff('''
        names = [f"file-{i:04}-" + "x" * 60 for i in range(1500)]
        for n in names:
            os.close(os.open(n, os.O_CREAT | os.O_WRONLY))
        t("listdir", lambda: sorted(os.listdir(".")) == names)
        t("ls -a", lambda: len(subprocess.run(["ls", "-a1"], capture_output=True,
                                              text=True).stdout.split()))
        seen = []
        removed = set()
        created = 0
        with os.scandir(".") as it:
            for i, entry in enumerate(it):
                seen.append(entry.name)
                victim = names[(i * 7919) % len(names)]
                if victim not in removed and victim not in seen:
                    os.unlink(victim); removed.add(victim)
                if i % 10 == 0:
                    os.close(os.open(f"new-{i}", os.O_CREAT | os.O_WRONLY)); created += 1
        out("no name twice", len(seen) == len(set(seen)))
        out("every name kept is seen", set(names) - removed <= set(seen))
        out("count", len(os.listdir(".")) == len(names) - len(removed) + created)
    ''')
    assert r["listdir"] is True and r["ls -a"] == 1502
    assert r["no name twice"] is True and r["every name kept is seen"] is True
    assert r["count"] is True


def test_o_direct_locks_and_fsync_of_a_directory(fs: Pair) -> None:
    r = fs.diff('''
        import fcntl
        buf = mmap.mmap(-1, 8192)
        buf.write(b"d" * 4096 + b"e" * 4096)
        fd = os.open("direct", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
        t("O_DIRECT write", os.write, fd, buf)
        back = mmap.mmap(-1, 8192)
        t("O_DIRECT read", os.preadv, fd, [back], 0)
        out("O_DIRECT data", back[:] == buf[:])
        os.close(fd)
        t("seen by a buffered read", lambda: get("direct")[4090:4100])
        put("locked", "l")
        fd = os.open("locked", os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_EX)
        pid = os.fork()
        if pid == 0:
            other = os.open("locked", os.O_RDWR)
            codes = []
            for lock in (fcntl.lockf, fcntl.flock):
                try:
                    lock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    codes.append(0)
                except OSError as exc:
                    codes.append(exc.errno)
            os._exit(10 * (codes[0] == errno.EAGAIN or codes[0] == errno.EACCES)
                     + (codes[1] == errno.EWOULDBLOCK))
        t("another process is refused both locks", lambda: os.waitstatus_to_exitcode(
            os.waitpid(pid, 0)[1]))
        os.close(fd)
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        t("fsync a directory", os.fsync, dfd)
        t("fdatasync a directory", os.fdatasync, dfd)
        os.close(dfd)
        fd = os.open("locked", os.O_RDONLY)
        t("fsync a read-only fd", os.fsync, fd)
        os.close(fd)
    ''')
    assert r["O_DIRECT write"] == r["O_DIRECT read"] == 8192 and r["O_DIRECT data"] is True
    assert r["seen by a buffered read"] == repr(b"dddddd" + b"eeee")
    assert r["another process is refused both locks"] == 11
    assert r["fsync a directory"] is None and r["fsync a read-only fd"] is None
