"""Faults from outside: a full disk, a read-only store, signals, busy and dead mounts."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_fuse
from mounting import MOFS, ROOT, force_unmount, is_mounted, mofs, run

pytestmark = needs_fuse
MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs for the store: a disk that fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(disk)])
    try:
        yield disk
    finally:
        force_unmount(tmp_path / "mnt")
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


WRITE_UNTIL_FULL = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
chunk = os.urandom(1 << 20)
try:
    for _ in range(64):
        os.write(fd, chunk)
    os.fsync(fd)
    print("no error")
except OSError as e:
    print(e.errno)
"""


def test_a_full_disk_gives_enospc_keeps_earlier_data_and_recovers(mount, small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(bytes(4 * MiB))
    m = mount("--cache-size", "4M", store=small_disk / "s.mofs")
    m.expected_log += [r"unreported write error", r"metadata store: database or disk is full",
                       # deleting big's pages needs room in the WAL too, and the room made
                       # goes to the WAL's checkpoint: its inode stays, each mount retries
                       r"could not free the pages of deleted inode \d+ \(the next mount will\): "
                       r"pager reported errno 28"]
    early = os.urandom(2 * MiB)
    (m.path / "early").write_bytes(early)
    m.python("import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)",
             str(m.path / "early"))
    assert m.python(WRITE_UNTIL_FULL, str(m.path / "big")).stdout.strip() == "28"
    assert (m.path / "early").read_bytes() == early
    filler.unlink()  # the user makes room on that disk, drops the file that did not fit,
    (m.path / "big").unlink()  # and the mount goes on working
    m.python("import os,sys\nfd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT, 0o644)\n"
             "os.write(fd, b'after' * 1000)\nos.fsync(fd)", str(m.path / "after"))
    m.umount()
    m.start()
    assert (m.path / "early").read_bytes() == early
    assert (m.path / "after").read_bytes() == b"after" * 1000


def test_a_store_on_a_read_only_file_system_is_refused(mount, small_disk, tmp_path):
    m = mount(store=small_disk / "s.mofs")
    (m.path / "f").write_text("kept")
    m.umount()
    run(["mount", "-o", "remount,ro", str(small_disk)])
    before = hashlib.sha256((small_disk / "s.mofs").read_bytes()).hexdigest()
    done = mofs("mount", str(small_disk / "s.mofs"), str(m.path), check=False,
                timeout=60)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "s.mofs" in done.stderr
    assert hashlib.sha256((small_disk / "s.mofs").read_bytes()).hexdigest() == before
    assert not is_mounted(m.path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_writes_back_then_unmounts_and_exits(mount, signum):
    m = mount()
    data = os.urandom(3 * MiB)
    fd = os.open(m.path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # dirty in the cache: nobody has fsync'd it
    finally:
        os.close(fd)
    assert m.proc is not None
    m.proc.send_signal(signum)
    assert m.proc.wait(timeout=60) == 0
    assert not is_mounted(m.path)
    m.start()
    assert (m.path / "f").read_bytes() == data


HOLD = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"held" * 100000)
print("ready", flush=True)
sys.stdin.readline()
os.write(fd, b"more")
os.close(fd)
"""


def test_umount_waits_for_open_files_writing_back_meanwhile(mount):
    m = mount()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(m.path / "f")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    umount = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        umount = subprocess.Popen([*MOFS, "umount", str(m.path)], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while m.stat()["dirty_bytes"] != 0:  # written back while the file is still open
            assert time.monotonic() < deadline and umount.poll() is None
        assert umount.poll() is None and is_mounted(m.path)
        holder.communicate("\n", timeout=30)  # close the file: the unmount can go on
        out, err = umount.communicate(timeout=60)
        assert umount.returncode == 0, err
        assert "in use; waiting" in err and "unmounted" in out
    finally:
        for proc in (holder, umount):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert m.proc is not None and m.proc.wait(timeout=60) == 0
    m.start()
    assert (m.path / "f").read_bytes() == b"held" * 100000 + b"more"


def test_a_dead_mount_is_reported_and_removed_and_refused_as_a_mountpoint(mount, tmp_path):
    m = mount()
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=30)
    again = mofs("mount", str(tmp_path / "other.mofs"), str(m.path), check=False)
    assert again.returncode == 4 and "Traceback" not in again.stderr
    assert "fusermount3 -u" in again.stderr or "already a mount" in again.stderr
    done = mofs("umount", str(m.path), check=False)
    assert done.returncode == 4 and "not running" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not is_mounted(m.path)


def test_security_defaults(mount):
    m = mount()
    options = mount_options(m.path)
    assert "default_permissions" in options and "allow_other" not in options
    assert (m.store.stat().st_mode & 0o777) == 0o600
    from mofs.control import socket_paths

    sockets = [p for p in socket_paths(str(m.path)) if os.path.exists(p)]
    assert sockets and all((os.stat(p).st_mode & 0o777) == 0o600 for p in sockets)
    sources = [p.read_text() for p in (ROOT / "mofs").glob("*.py")]
    sources += [p.read_text() for p in (ROOT / "pagers").glob("*.py")]
    assert not any("import pickle" in s or "pickle.load" in s for s in sources)


def test_allow_other_is_opt_in(mount):
    m = mount("--allow-other")
    options = mount_options(m.path)
    assert "allow_other" in options


def mount_options(path: Path) -> str:
    with open("/proc/mounts", encoding="utf-8") as f:
        return next(line.split()[3] for line in f if line.split()[1] == str(path))
