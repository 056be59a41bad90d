"""What a user sees from the command line: one-line errors, exit codes, files untouched."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import needs_fuse
from mounting import force_unmount, is_mounted, mofs

pytestmark = needs_fuse


def one_line_error(done, *words: str) -> None:
    assert done.returncode != 0
    err = done.stderr.strip()
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mofs: ")
    for w in words:
        assert w in err, err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def detached(tmp_path):
    """Mount with plain ``mofs mount`` (daemon detached) and always clean up."""
    mounted: list[Path] = []

    def do(*args: str):
        done = mofs("mount", *args, check=False, timeout=60)
        if done.returncode == 0:
            mounted.append(Path(args[1]))
        return done

    yield do
    for mnt in mounted:
        pid = None
        if is_mounted(mnt):
            try:
                pid = json.loads(os.getxattr(mnt, "user.mofs.stat"))["pid"]
            except OSError:
                pass
        force_unmount(mnt)
        deadline = time.monotonic() + 30
        while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)


def test_mount_returns_once_up_and_umount_writes_back(detached, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    store = tmp_path / "s.mofs"
    done = detached(str(store), str(mnt))
    assert done.returncode == 0, done.stderr
    assert "created a new store" in done.stdout
    assert is_mounted(mnt)
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"z" * 1000)  # dirty until close starts the write-back
        # (no subprocess here: its exec would close an inherited copy of fd: a FUSE flush)
        dirty = json.loads(os.getxattr(mnt, "user.mofs.stat"))["dirty_bytes"]
    finally:
        os.close(fd)
    assert dirty > 0
    stats = json.loads(mofs("stat", "--json", str(mnt)).stdout)
    for key in ("resident_bytes", "dirty_bytes", "precious_bytes", "budget_bytes", "messages"):
        assert key in stats
    assert stats["messages"]["init"] >= 1 and stats["messages"]["synchronize"] >= 1
    assert "messages" in mofs("stat", str(mnt)).stdout
    mofs("umount", str(mnt))
    assert not is_mounted(mnt)
    done = detached(str(store), str(mnt))
    assert "existing store" in done.stdout
    assert (mnt / "f").read_bytes() == b"z" * 1000


def test_missing_mountpoint(detached, tmp_path):
    one_line_error(detached(str(tmp_path / "s"), str(tmp_path / "nope")), "does not exist")
    assert not (tmp_path / "s").exists()


def test_mountpoint_not_empty(detached, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").touch()
    one_line_error(detached(str(tmp_path / "s"), str(tmp_path / "m")), "not empty")


def test_mountpoint_already_mounted(detached, tmp_path):
    (tmp_path / "m").mkdir()
    assert detached(str(tmp_path / "s"), str(tmp_path / "m")).returncode == 0
    one_line_error(detached(str(tmp_path / "s2"), str(tmp_path / "m")), "already a mount")


def test_store_is_a_directory(detached, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "dir").mkdir()
    one_line_error(detached(str(tmp_path / "dir"), str(tmp_path / "m")), "directory")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "newer", "empty"])
def test_bad_store_is_refused_and_left_untouched(detached, tmp_path, kind):
    (tmp_path / "m").mkdir()
    store = tmp_path / "bad.mofs"
    if kind == "garbage":
        store.write_bytes(os.urandom(50000))
    elif kind == "empty":
        store.write_bytes(b"")
    elif kind == "foreign":
        db = sqlite3.connect(store)
        db.execute("CREATE TABLE customers (name TEXT)")
        db.commit()
        db.close()
    else:
        good = tmp_path / "good.mofs"
        (tmp_path / "g").mkdir()
        assert detached(str(good), str(tmp_path / "g")).returncode == 0
        mofs("umount", str(tmp_path / "g"))
        if kind == "truncated":
            store.write_bytes(good.read_bytes()[:100])
        else:
            db = sqlite3.connect(good)
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
            db.commit()
            db.close()
            store = good
    before = digest(store)
    words = {"newer": ("newer",), "foreign": ("not a mofs store",)}.get(kind, ("not a mofs",))
    one_line_error(detached(str(store), str(tmp_path / "m")), str(store.name), *words)
    assert digest(store) == before
    assert not is_mounted(tmp_path / "m")


def test_umount_and_stat_of_something_not_mounted(tmp_path):
    one_line_error(mofs("umount", str(tmp_path), check=False), "not a mounted mofs")
    one_line_error(mofs("stat", str(tmp_path), check=False), "not a mounted mofs")


def test_bad_option_is_a_usage_error(tmp_path):
    done = mofs("mount", "s", str(tmp_path), "--cache-size", "lots", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_unknown_pager(detached, tmp_path):
    (tmp_path / "m").mkdir()
    one_line_error(detached(str(tmp_path / "s"), str(tmp_path / "m"), "--pager", "nosuch:x"),
                   "nosuch")


@pytest.mark.parametrize("option, words", [
    (("--page-size", "1000"), ("power of two",)),
    (("--cache-size", "64K"), ("at least 16 pages",)),
])
def test_sizes_that_cannot_work_are_refused(detached, tmp_path, option, words):
    (tmp_path / "m").mkdir()
    done = detached(str(tmp_path / "s"), str(tmp_path / "m"), *option)
    one_line_error(done, *words)
    assert done.returncode == 2 and not (tmp_path / "s").exists()


def test_pagers_lists_builtins_and_installed_plugins():
    out = mofs("pagers").stdout
    for scheme in ("sqlite:", "memory:", "dir:", "fsspec+PROTO://", "python:", "example:"):
        assert scheme in out


def test_pager_check_passes_a_good_pager_and_names_what_a_broken_one_breaks(tmp_path):
    good = mofs("pager-check", f"memory:{tmp_path / 'swap.db'}", timeout=120)
    assert "returned pages read back" in good.stdout and "keeps" in good.stdout
    bad = mofs("pager-check", "python:tests.scripted_pager:ForgetfulPager", check=False,
               timeout=120)
    one_line_error(bad, 'broke "returned pages read back"')
    assert bad.returncode == 1
