"""Pagers in another process: ``mofs serve-pager`` on a socket, ``--pager unix:PATH``.

Real processes, real sockets, real mounts. The pager process is killed with SIGKILL
mid-workload: the mount must not hang (I/O fails with EIO at once, not after the pager
timeout), ``mofs umount`` must answer, and once the pager is back every byte an fsync
confirmed must be there, through the same mount (it reconnects) and after a remount.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import msgpack
import pytest
import trio
from conftest import needs_fuse
from mounting import MOFS, ROOT, Mount, mofs, run
from test_crash import KEEP_CYCLES, fsck_kinds, start_workload, stream, verify

from mofs import wire
from mofs.channel import Channel
from mofs.errors import UserError
from mofs.fsck import fsck
from mofs.messages import Init
from pagers import open_pager
from pagers.remote import RemotePager, RemotePagerLost

PAGER_TIMEOUT = 10.0  # EIO must come long before this: the socket closing says it all
# The daemon's log lines a pager death causes, all expected here.
DEATH_LOG = [r"ERROR mofs\.kernel: pager unix:\S+ failed: raised RemotePagerLost",
             r"WARNING mofs\.kernel: pager unix:\S+: cannot reconnect"]


class PagerProcess:
    """``mofs serve-pager URL --listen unix:SOCK`` as a separate process."""

    def __init__(self, url: str, sock: Path, log: Path) -> None:
        self.url = url
        self.sock = sock
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen = f"unix:{sock}"

    def start(self, timeout: float = 30) -> PagerProcess:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()  # of the killed one
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*MOFS, "serve-pager", self.url, "--listen", self.listen],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("mofs: serving"), f"serve-pager said {line!r}:\n" + \
            self.log.read_text()
        return self

    def kill9(self) -> float:
        """SIGKILL; the time it was sent."""
        assert self.proc is not None
        sent = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return sent

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., PagerProcess]]:
    """``served(url=sqlite:<tmp>/pages.db)``: a running pager process, always stopped."""
    made: list[PagerProcess] = []

    def factory(url: str | None = None, name: str = "pager") -> PagerProcess:
        p = PagerProcess(url or f"sqlite:{tmp_path / 'pages.db'}", tmp_path / f"{name}.sock",
                         tmp_path / f"{name}.log")
        made.append(p)
        return p.start()

    yield factory
    for p in made:
        p.stop()


def umount_once_the_pager_is_back(m: Mount) -> int:
    """``mofs umount``; a first exit 5 is allowed, as it reports pages the dead pager may
    have lost (that is the point); the second must succeed. Returns the exit-5 count."""
    failures = 0
    for _ in range(2):
        done = mofs("umount", str(m.path), check=False, timeout=120)
        if done.returncode == 0:
            assert m.proc is not None
            m.proc.wait(timeout=60)
            assert m.proc.returncode == 0, m.log.read_text()
            return failures
        assert done.returncode == 5, done.stderr
        assert "could not write back" in done.stderr and "Traceback" not in done.stderr
        failures += 1
    raise AssertionError(f"mofs umount failed twice after the pager came back: {done.stderr}")


# --- the socket: handshake and nonsense, against a fake peer in a thread ------------------------


def fake_pager(path: Path, answer: Callable[[socket.socket], None]) -> threading.Thread:
    """Listen on ``path`` and let ``answer`` talk to the first connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with closing(listener):
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)  # the kernel's hello
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def pager_hello() -> bytes:
    return wire.encode_hello(wire.Hello("pager", pager="fake:", persistent=False))


def test_a_missing_pager_is_one_line_at_mount_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    done = run([*MOFS, "mount", str(tmp_path / "s.mofs"), str(tmp_path / "mnt"), "--pager",
                f"unix:{tmp_path / 'nobody.sock'}"], check=False, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("mofs: cannot reach pager unix:")
    assert "No such file or directory" in done.stderr
    assert not (tmp_path / "s.mofs").exists()


@pytest.mark.parametrize(("answer", "why"), [
    (lambda c: c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n"), "is not a mofs pager"),
    (lambda c: c.sendall(wire.encode_hello(wire.Hello("pager", error="busy serving another"))),
     "refused: busy serving another"),
    (lambda c: None, "is not a mofs pager (it closed the connection before saying hello)"),
])
def test_a_peer_that_is_not_a_willing_pager_is_a_one_line_error(
        tmp_path: Path, answer: Callable[[socket.socket], None], why: str) -> None:
    path = tmp_path / "fake.sock"
    thread = fake_pager(path, answer)
    with pytest.raises(UserError, match=why.replace("(", r"\(").replace(")", r"\)")):
        open_pager(f"unix:{path}", "")
    thread.join(timeout=10)


@pytest.mark.parametrize(("after_hello", "error", "why"), [
    (b"", RemotePagerLost, "the pager closed the connection|the connection broke"),
    (wire.frame(msgpack.packb(["ready", 1, "yes", 2, 0, False])), wire.WireError,
     "ready.may_cache must be a boolean"),
    (wire.frame(msgpack.packb(["init", 1, 4096])), wire.WireError,
     "init is not a message this side accepts"),
    (wire.encode(Init(1, 4096))[:7], wire.WireError, "in the middle of a frame"),
])
async def test_serve_raises_when_the_peer_drops_or_answers_nonsense(
        tmp_path: Path, after_hello: bytes, error: type[Exception], why: str) -> None:
    path = tmp_path / "fake.sock"
    # The peer reads what the kernel sends (its init) before hanging up: closing with
    # that unread would reset the connection, and the kernel would never see the frame.
    thread = fake_pager(path, lambda c: (c.sendall(pager_hello() + after_hello), c.recv(4096)))
    pager = RemotePager(f"unix:{path}")
    assert (pager.precious, pager.persistent) == (False, False)
    inbox, outbox = Channel(), Channel()
    inbox.send(Init(1, 4096))
    with trio.fail_after(10), pytest.raises(error, match=why):
        await pager.serve(inbox, outbox)
    thread.join(timeout=10)


# --- a real pager process ---------------------------------------------------------------------


def test_pager_check_passes_against_a_served_sqlite_pager(served) -> None:
    pager = served()
    done = mofs("pager-check", pager.listen, timeout=120)
    assert "keeps 11 of 11 guarantees" in done.stdout, done.stdout + done.stderr
    assert "persistent" not in done.stderr


@needs_fuse
def test_cp_cat_fsync_with_the_pager_in_another_process(mount, served, tmp_path: Path) -> None:
    pager = served()
    assert stat.S_IMODE(os.stat(pager.sock).st_mode) == 0o600  # the owner's alone
    m = mount("--pager", pager.listen)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20) + b"tail")
    m.run(["cp", str(src), str(m.path / "f")])
    m.run(["cmp", str(src), str(m.path / "f")])
    cat = subprocess.run(["cat", str(m.path / "f")], capture_output=True, timeout=60)
    assert cat.returncode == 0 and cat.stdout == src.read_bytes()
    m.python("import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)",
             str(m.path / "f"))
    with closing(sqlite3.connect(tmp_path / "pages.db")) as db:  # the pager's, not the store's
        (stored,) = db.execute("SELECT count(*) FROM pages").fetchone()
    assert stored == -(-src.stat().st_size // 65536)
    stats = m.stat()
    assert stats["pager"] == pager.listen and not stats["pager_failure"]
    m.umount()
    m.start()
    m.run(["cmp", str(src), str(m.path / "f")])
    m.umount()
    assert fsck(str(m.store)).exit_code == 0


@needs_fuse
def test_a_pager_that_breaks_the_protocol_fails_its_files_and_is_let_go(
        mount, served, tmp_path: Path) -> None:
    pager = served("python:tests.remote_pagers:LiarPager")
    m = mount("--pager", pager.listen)
    m.expected_log.append(r"ERROR mofs\.kernel: pager unix:\S+ failed: broke the protocol "
                          r"with synchronize_completed")
    fd = os.open(m.path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as caught:  # the write may land before the lie
            os.write(fd, b"x" * 100_000)
            os.fsync(fd)
    finally:
        os.close(fd)
    assert caught.value.errno == 5
    # The daemon ended that connection, so the pager process can serve another at once.
    deadline = time.monotonic() + 10
    while "disconnected" not in pager.log.read_text():
        assert time.monotonic() < deadline, pager.log.read_text()
        time.sleep(0.05)
    started = time.monotonic()
    RemotePager(pager.listen).disconnect()
    assert time.monotonic() - started < 1


WRITER = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
from test_crash import stream
path, log_path = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
size = 0
try:
    while True:
        for _ in range(8):
            data = stream("w", size, 50_000)
            os.pwrite(fd, data, size)
            size += len(data)
        os.fsync(fd)
        os.write(log, b"%d\n" % size)
        os.fsync(log)
except OSError as exc:
    print(json.dumps({"errno": exc.errno, "t": time.time(), "written": size}), flush=True)
'''


@needs_fuse
@pytest.mark.timeout(120)
def test_kill_9_of_the_pager_process(mount, served, tmp_path: Path) -> None:
    pager = served()
    m = mount("--pager", pager.listen, "--pager-timeout", str(PAGER_TIMEOUT))
    m.expected_log += DEATH_LOG
    before = os.urandom(200_000)
    (m.path / "before").write_bytes(before)
    m.python("import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)",
             str(m.path / "before"))
    held = os.open(m.path / "before", os.O_RDWR)  # open across the death and the return
    try:
        confirmed_log = tmp_path / "confirmed"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(m.path / "w"), str(confirmed_log),
             str(ROOT / "tests")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while not confirmed_log.exists() or confirmed_log.stat().st_size < 40:
                assert writer.poll() is None and time.monotonic() < deadline, "no progress"
                time.sleep(0.05)
            killed = pager.kill9()
            out, _ = writer.communicate(timeout=PAGER_TIMEOUT + 20)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait(timeout=30)
        failed = json.loads(out)
        eio_after = failed["t"] - killed
        assert failed["errno"] == 5 and eio_after < PAGER_TIMEOUT / 2, failed
        print(f"\nwriter got EIO {eio_after * 1000:.0f} ms after kill -9 of the pager "
              f"(pager timeout {PAGER_TIMEOUT:g} s)")

        # Nothing hangs while the pager is gone: new files and umount answer at once.
        started = time.monotonic()
        with pytest.raises(OSError) as caught:
            (m.path / "new").write_bytes(b"x" * 100)
        assert caught.value.errno == 5
        done = mofs("umount", str(m.path), check=False, timeout=60)
        assert done.returncode == 5 and done.stderr.count("\n") <= 2, done.stderr
        assert "still mounted, dirty data kept" in done.stderr
        assert time.monotonic() - started < 5
        with pytest.raises(OSError):
            os.pwrite(held, b"during", 0)

        # Back: the same open file works again (the daemon reconnects on use).
        pager = pager.start()
        os.pwrite(held, b"after!", 0)
        os.fsync(held)
    finally:
        os.close(held)
    assert (m.path / "before").read_bytes() == b"after!" + before[6:]
    umount_once_the_pager_is_back(m)
    assert fsck(str(m.store)).exit_code == 0

    confirmed = max(int(line) for line in confirmed_log.read_text().split())
    m.start()
    data = (m.path / "w").read_bytes()
    assert len(data) >= confirmed and data[:confirmed] == stream("w", 0, confirmed)
    assert (m.path / "before").read_bytes() == b"after!" + before[6:]
    m.umount()
    kinds, lines = fsck_kinds(m.store)
    assert not kinds, lines
    print(f"{confirmed} confirmed bytes of {failed['written']} written survived")


CYCLES = int(os.environ.get("MOFS_PAGER_CYCLES", "5"))
CACHE = os.environ.get("MOFS_PAGER_CACHE", "1M")  # small: evictions, so returns are in flight


@needs_fuse
@pytest.mark.timeout(max(120, 15 * CYCLES))
def test_kill_9_of_the_pager_at_random_points(mount, served, tmp_path: Path) -> None:
    """tests/test_crash.py's workload, but the pager process dies, not the daemon: the
    mount lives on, reconnects when the pager is back, and loses nothing confirmed."""
    rng = random.Random(int(os.environ.get("MOFS_CRASH_SEED", "20240605")))
    logs = tmp_path / "logs"
    logs.mkdir()
    pager = served()
    m = mount("--pager", pager.listen, "--pager-timeout", str(PAGER_TIMEOUT), "--cache-size", CACHE)
    m.expected_log += DEATH_LOG
    totals: Counter[str] = Counter()
    leftovers: Counter[str] = Counter()
    reported = 0
    started = time.monotonic()
    for cycle in range(CYCLES):
        where = f"cycle {cycle}"
        log = logs / f"c{cycle}.jsonl"
        work = start_workload(m, cycle, log, rng.randrange(1 << 32), tmp_path / "work.err")
        try:
            time.sleep(rng.uniform(0.1, 0.6))  # the fault injection point, not a wait
            pager.kill9()
            time.sleep(0.2)  # the workload meets the dead pager (EIO, SIGBUS for mmap)
        finally:
            work.kill()
            work.wait(timeout=30)
            if work.stdout is not None:
                work.stdout.close()
        pager.start()
        # Through the same mount: it reconnects, and the confirmed data is there.
        for c in range(max(0, cycle - KEEP_CYCLES + 1), cycle + 1):
            counts = verify(m.path, c, logs / f"c{c}.jsonl")
            if c == cycle:
                totals.update(counts)
        if cycle % 2 == 1 or cycle == CYCLES - 1:
            reported += umount_once_the_pager_is_back(m)
            kinds, lines = fsck_kinds(m.store)
            # Files deleted while the pager was dead keep their inode until a pager has
            # dropped their pages: the next mount frees them.
            assert kinds <= {"orphan"}, f"{where}: fsck after umount:\n" + "\n".join(lines)
            leftovers.update(kinds)
            m.start()
            for c in range(max(0, cycle - KEEP_CYCLES + 1), cycle + 1):
                verify(m.path, c, logs / f"c{c}.jsonl")
    m.umount()
    assert fsck(str(m.store)).exit_code == 0
    print(f"\n{CYCLES} kill -9 cycles of the pager in {time.monotonic() - started:.1f} s; "
          f"confirmed: {dict(totals)}; umounts that reported a possible loss: {reported}; "
          f"fsck after umount found: {dict(leftovers)}")
    assert totals["append"] > 0 and totals["whole"] > 0, totals
