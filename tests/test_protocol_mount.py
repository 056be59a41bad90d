"""The pager-driven half of the protocol, through a real mount and a steerable pager."""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_fuse

pytestmark = needs_fuse
PS = 65536


class Control:
    """The test's end of the scripted pager's control socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def __call__(self, **cmd: object) -> None:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            deadline = time.monotonic() + 10
            while True:  # the pager binds its socket only once it is serving
                try:
                    sock.connect(self.path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        sock.close()
                        raise
                    time.sleep(0.01)
            self.sock = sock
        self.sock.sendall(json.dumps(cmd).encode() + b"\n")
        assert self.sock.recv(16) == b"ok\n"


@pytest.fixture
def scripted(mount) -> Iterator:
    """``scripted(*args)`` mounts with the scripted pager; returns (mount, control)."""
    folder = tempfile.mkdtemp(prefix="mofs-ctl-")  # unix socket paths must be short
    sock = os.path.join(folder, "ctl")

    controls: list[Control] = []

    def start(*args: str):
        m = mount("--pager", f"python:tests.scripted_pager:ScriptedPager:{sock}", *args)
        controls.append(Control(sock))
        return m, controls[-1]

    yield start
    for control in controls:
        if control.sock is not None:
            control.sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def wait_for(predicate, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return result


def test_edge_14_lock_request_flush_reaches_cat_and_an_existing_mmap_view(scripted):
    m, control = scripted()
    f = m.path / "f"
    f.write_bytes(b"old!" * (PS // 4) * 2)
    fd = os.open(f, os.O_RDWR)
    try:
        os.fsync(fd)  # the pager now holds the pages (it keeps what is returned)
        view = mmap.mmap(fd, 2 * PS, mmap.MAP_SHARED, mmap.PROT_READ)
        assert view[:4] == b"old!"
        os.pwrite(fd, b"mine", PS)  # a dirty page the pager must get back before the flush
        ino = os.fstat(fd).st_ino
        control(op="set", object=ino, offset=0, data="new!", length=2 * PS,
                should_return=2)  # MEMORY_OBJECT_RETURN_ALL: dirty and precious pages
        wait_for(lambda: any(t["msg"] == "lock_completed" for t in m.trace_lines()),
                 "lock_completed")
        assert m.run(["cat", str(f)]).stdout.startswith("new!")
        assert view[:4] == b"new!" and view[PS : PS + 4] == b"mine"
        view.close()
    finally:
        os.close(fd)
    trace = [t for t in m.trace_lines() if t.get("object") == ino]
    names = [t["msg"] for t in trace]
    lock, done = names.index("lock_request"), names.index("lock_completed")
    assert trace[lock]["should_flush"] is True
    returned = [t for t in trace[lock:done] if t["msg"] == "data_return"]
    assert [(t["offset"], t["dirty"], t["kernel_copy"]) for t in returned] == [(PS, True, False)]
    refetch = [t for t in trace[done:] if t["msg"] == "data_request"]
    assert refetch and refetch[0]["offset"] == 0


def test_edge_24_a_pager_that_never_answers_fails_the_read_with_eio_and_others_go_on(scripted):
    m, control = scripted("--pager-timeout", "2")
    m.expected_log += [r"did not answer", r"could not write back"]
    for name in ("slow", "fine"):
        m.run(["truncate", "-s", "1M", str(m.path / name)])
    control(op="hang", object=os.stat(m.path / "slow").st_ino)
    started = time.monotonic()
    done = m.run(["cat", str(m.path / "slow")], check=False, timeout=60)
    assert done.returncode != 0 and "Input/output error" in done.stderr
    assert time.monotonic() - started < 30
    assert m.run(["cat", str(m.path / "fine")]).stdout == "\0" * (1 << 20)
    (m.path / "new").write_text("still usable")
    assert (m.path / "new").read_text() == "still usable"


def test_edge_07_write_to_a_write_locked_page_asks_data_unlock_once_and_waits_for_grant(scripted):
    m, control = scripted()
    f = m.path / "f"
    f.write_bytes(b"a" * PS)
    ino = os.stat(f).st_ino
    m.python("import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)", str(f))
    control(op="write_lock", on=True)
    control(op="set", object=ino, offset=0, data="b")  # flush: the refetch comes locked
    wait_for(lambda: any(t["msg"] == "lock_completed" for t in m.trace_lines()), "flush")
    assert f.read_bytes()[:2] == b"b\0"
    with open(f, "r+b") as fh:
        fh.write(b"c")
    assert f.read_bytes()[:2] == b"c\0"
    names = [t["msg"] for t in m.trace_lines() if t.get("object") == ino]
    assert names.count("data_unlock") == 1
    unlock = names.index("data_unlock")
    assert "lock_request" in names[unlock:]


def test_edge_08_a_refused_unlock_fails_the_write_with_the_pagers_errno(scripted):
    m, control = scripted()
    f = m.path / "f"
    f.write_bytes(b"a" * PS)
    ino = os.stat(f).st_ino
    m.python("import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)", str(f))
    control(op="write_lock", on=True)
    control(op="refuse_unlock", errno=errno.ENOSPC)
    control(op="set", object=ino, offset=0, data="b")
    wait_for(lambda: any(t["msg"] == "lock_completed" for t in m.trace_lines()), "flush")
    done = m.python("import os,sys\nfd=os.open(sys.argv[1], os.O_RDWR)\n"
                    "try:\n    os.pwrite(fd, b'c', 0)\nexcept OSError as e:\n"
                    "    print(e.errno)\n", str(f))
    assert done.stdout.strip() == str(errno.ENOSPC)
    assert f.read_bytes()[:2] == b"b\0"  # readers are unaffected


def test_edge_03_unsolicited_supply_is_prefetched_into_both_caches(scripted):
    m, control = scripted()
    f = m.path / "f"
    data = os.urandom(4 * PS)
    f.write_bytes(data)
    ino = os.stat(f).st_ino
    m.python("import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)", str(f))
    control(op="flush", object=ino, offset=0, length=4 * PS)
    wait_for(lambda: any(t["msg"] == "lock_completed" for t in m.trace_lines()), "flush")
    assert cached_pages(m, f) == 0
    mark = len(m.trace_lines())
    control(op="offer", object=ino, offset=0, length=2 * PS)
    wait_for(lambda: cached_pages(m, f) >= 2 * PS // 4096, "notify_store")
    assert f.read_bytes() == data
    later = [t for t in m.trace_lines()[mark:] if t["msg"] == "data_request"]
    assert later and all(t["offset"] >= 2 * PS for t in later), later


def cached_pages(m, path) -> int:
    """Pages of ``path`` in the Linux page cache, as fincore (mincore) sees them."""
    out = m.run(["fincore", "--bytes", "--noheadings", "--output", "PAGES", str(path)])
    return int(out.stdout.split()[0])


def test_edge_23_a_pager_that_breaks_the_protocol_is_marked_failed_and_readers_get_eio(scripted):
    m, control = scripted()
    m.expected_log += [r"pager .* failed: broke the protocol with data_supply", r"EIO|did not"]
    m.run(["truncate", "-s", "1M", str(m.path / "f")])
    control(op="garbage", object=os.stat(m.path / "f").st_ino)
    wait_for(lambda: "broke the protocol" in m.log.read_text(), "the log line")
    done = m.run(["cat", str(m.path / "f")], check=False)
    assert done.returncode != 0 and "Input/output error" in done.stderr
    failures = [line for line in m.log.read_text().splitlines() if "broke the protocol" in line]
    assert len(failures) == 1 and "data_supply" in failures[0]
    assert m.stat()["pager_failure"]


WRITE_UNTIL_EIO = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
chunk = os.urandom(1 << 20)
try:
    for _ in range(64):
        os.write(fd, chunk)
        print("wrote", flush=True)
except OSError as e:
    print("errno", e.errno, time.monotonic(), flush=True)
"""


def test_a_writer_held_back_by_a_stuck_pager_gets_eio_as_soon_as_the_pager_fails(scripted):
    m, control = scripted("--cache-size", "1M", "--pager-timeout", "8")
    m.expected_log += [r"pager .* failed: broke the protocol", r"EIO|did not|unreported"]
    (m.path / "f").write_bytes(b"")
    ino = os.stat(m.path / "f").st_ino
    control(op="hang_writes")  # returned pages stay queued: writers meet back-pressure
    writer = subprocess.Popen([sys.executable, "-c", WRITE_UNTIL_EIO, str(m.path / "f")],
                              stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: m.stat()["queued_to_pager_bytes"] > 0, "queued returns")
        time.sleep(1)  # the writer is now waiting for the pager to catch up
        assert writer.poll() is None
        failed_at = time.monotonic()
        control(op="garbage", object=ino)  # the pager breaks the protocol: it is dead
        out, _ = writer.communicate(timeout=30)
    finally:
        writer.kill()
    last = out.splitlines()[-1].split()
    assert last[:2] == ["errno", str(errno.EIO)], out
    assert float(last[2]) - failed_at < 4  # at once, not after the 8 s pager timeout


def test_edge_05_data_error_reason_is_the_readers_errno_and_a_retry_works(scripted):
    m, control = scripted()
    m.run(["truncate", "-s", "256K", str(m.path / "f")])
    ino = os.stat(m.path / "f").st_ino
    control(op="fail_reads", object=ino, errno=errno.ENOSPC)
    done = m.python("import os,sys\nfd=os.open(sys.argv[1], os.O_RDONLY)\n"
                    "try:\n    os.pread(fd, 10, 0)\nexcept OSError as e:\n    print(e.errno)",
                    str(m.path / "f"))
    assert done.stdout.strip() == str(errno.ENOSPC)
    control(op="fail_reads", object=ino, errno=0)  # a transient error: the next read asks again
    assert (m.path / "f").read_bytes() == bytes(256 * 1024)


FSYNC_ERRNO = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.pwrite(fd, b"keep me" * 1000, 0)
try:
    os.fsync(fd)
    print(0)
except OSError as e:
    print(e.errno)
"""


def test_edge_17_write_back_failure_fails_fsync_with_the_errno_and_keeps_the_data(scripted):
    m, control = scripted()
    f = str(m.path / "f")
    control(op="fail_writes", errno=errno.ENOSPC)
    assert m.python(FSYNC_ERRNO, f).stdout.strip() == str(errno.ENOSPC)
    control(op="fail_writes", errno=0)
    # close(2) started a write-back that failed too and nobody waited for it: like Linux,
    # the next fsync reports that error once; the one after finds everything stored.
    again = "import os,sys\nfd=os.open(sys.argv[1], os.O_RDWR)\nfor _ in range(2):\n" \
            "    try:\n        os.fsync(fd); print(0)\n    except OSError as e:\n" \
            "        print(e.errno)"
    assert m.python(again, f).stdout.split() == [str(errno.ENOSPC), "0"]
    ino = os.stat(f).st_ino
    # The data stayed dirty and went out again: flush the cache, read it from the pager.
    control(op="flush", object=ino, offset=0, length=PS)
    wait_for(lambda: any(t["msg"] == "lock_completed" for t in m.trace_lines()), "flush")
    assert Path(f).read_bytes() == b"keep me" * 1000
    completions = [t for t in m.trace_lines() if t["msg"] == "synchronize_completed"]
    assert [t["error"] for t in completions][:1] == [errno.ENOSPC]


def test_a_pager_that_raises_fails_the_read_with_eio_and_one_log_line(scripted):
    m, control = scripted()
    m.expected_log.append(r"bug in read_page")
    m.run(["truncate", "-s", "64K", str(m.path / "f")])
    control(op="bug", object=os.stat(m.path / "f").st_ino)
    done = m.run(["cat", str(m.path / "f")], check=False)
    assert done.returncode != 0 and "Input/output error" in done.stderr
    assert (m.path / "g").write_text("fine") and (m.path / "g").read_text() == "fine"


def test_edge_01_a_pager_that_answers_twice_cannot_overwrite_the_page(scripted):
    m, control = scripted()
    m.run(["truncate", "-s", "128K", str(m.path / "f")])
    control(op="twice", object=os.stat(m.path / "f").st_ino)
    assert (m.path / "f").read_bytes() == bytes(128 * 1024)  # the first answer stands
    wait_for(lambda: sum(t["msg"] == "data_supply" for t in m.trace_lines()) >= 2, "junk")
    assert (m.path / "f").read_bytes() == bytes(128 * 1024)
    assert not m.stat()["pager_failure"]
