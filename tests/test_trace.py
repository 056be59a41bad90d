"""``mofs trace``: the live message stream of a mount, filtered, never slowing the daemon."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time

import pytest
import trio
import trio.testing
from conftest import needs_fuse
from mounting import MOFS, ROOT, mofs

from mofs.control import Broadcast, socket_paths
from mofs.messages import DataRequest, ObjectId

MiB = 1 << 20


class Follower:
    """A running ``mofs trace``; :meth:`start` returns once it is connected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*MOFS, "trace", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.err = b""

    def wait_connected(self, timeout: float = 30) -> Follower:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while b"mofs: tracing" not in self.err:
            left = deadline - time.monotonic()
            assert left > 0, f"mofs trace did not connect: {self.err!r}"
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                assert chunk, f"mofs trace exited {self.proc.wait()}: {self.err!r}"
                self.err += chunk
        return self

    def finish(self, timeout: float = 60) -> tuple[int, list[dict], str]:
        """Exit code, printed JSON lines and stderr once the command exits by itself."""
        out, err = self.proc.communicate(timeout=timeout)
        lines = [json.loads(line) for line in out.decode().splitlines()]
        return self.proc.returncode, lines, (self.err + err).decode()


@pytest.fixture
def follow():
    """``follow(*args)`` starts ``mofs trace *args``; every one is gone when the test ends."""
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        f = Follower(*args)
        started.append(f)
        return f.wait_connected()

    yield start
    for f in started:
        if f.proc.poll() is None:
            f.proc.kill()
        f.proc.communicate(timeout=30)


def uncached(m, **files: int) -> None:
    """Write files of the given sizes, then remount so nothing of them is cached."""
    for name, size in files.items():
        (m.path / name).write_bytes(os.urandom(size))
    m.umount()
    m.start()


def read(m, name: str) -> None:
    m.run(["cat", str(m.path / name)], stdout=subprocess.DEVNULL)


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("mofs: ")
    for w in words:
        assert w in done.stderr, done.stderr


# --- through real mounts -------------------------------------------------------------------


@needs_fuse
def test_count_data_requests_of_a_read_then_exit(mount, follow):
    m = mount()
    uncached(m, f=8 * MiB)
    tracer = follow(str(m.path), "--msg", "data_request", "--count", "3")
    read(m, "f")
    code, lines, err = tracer.finish()
    assert code == 0, err
    assert len(lines) == 3
    assert all(t["msg"] == "data_request" and t["dir"] == "to_pager" for t in lines)
    assert {t["object"] for t in lines} == {os.stat(m.path / "f").st_ino}
    assert all(t in m.trace_lines() for t in lines), "the same lines as the --trace file"
    assert "Traceback" not in err


@needs_fuse
def test_path_keeps_only_that_files_object(mount, follow):
    m = mount()
    uncached(m, a=2 * MiB, b=2 * MiB)
    ino_a, ino_b = os.stat(m.path / "a").st_ino, os.stat(m.path / "b").st_ino
    tracer = follow(str(m.path), "--path", str(m.path / "a"), "--msg", "data_request",
                    "--count", "2")
    read(m, "b")  # first: had it not been filtered out, it would fill the count
    read(m, "a")
    code, lines, err = tracer.finish()
    assert code == 0, err
    assert len(lines) == 2 and {t["object"] for t in lines} == {ino_a}
    assert [t for t in m.trace_lines() if t["msg"] == "data_request" and t["object"] == ino_b]


@needs_fuse
def test_fuse_events_are_traced_too(mount, follow):
    m = mount()
    tracer = follow(str(m.path), "--msg", "fsync", "--msg", "memory_object_synchronize",
                    "--count", "3")
    m.python("import os, sys\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
             "os.write(fd, b'x' * 1000)\nos.fsync(fd)\nos.close(fd)", str(m.path / "f"))
    code, lines, err = tracer.finish()
    assert code == 0, err
    assert [(t["dir"], t["msg"], t.get("phase")) for t in lines] == [
        ("fuse", "fsync", "call"), ("to_pager", "synchronize", None),
        ("fuse", "fsync", "return")]


@needs_fuse
def test_timeout_ctrl_c_and_unmount_end_a_trace(mount, follow):
    m = mount()
    started = time.monotonic()
    code, lines, err = follow(str(m.path), "--timeout", "3").finish()
    assert code == 0 and lines == [], err
    assert time.monotonic() - started < 30
    tracer = follow(str(m.path))
    tracer.proc.send_signal(signal.SIGINT)
    code, lines, err = tracer.finish()
    assert code == 0 and lines == [] and err.startswith("mofs: tracing"), err
    assert len(err.splitlines()) == 1, "quietly"
    tracer = follow(str(m.path), "--msg", "terminate")
    (m.path / "f").write_bytes(b"x")
    m.umount()
    code, lines, err = tracer.finish()
    assert [t["msg"] for t in lines] == ["terminate"], "the write-back is traced too"
    assert code == 1 and err.splitlines()[-1].startswith("mofs: the daemon of"), err
    assert "Traceback" not in err


SCATTERED = """
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
for seed in (1, 2, 3, 4):  # 4 x 10 MiB in 4 KiB pages, in an order that leaves nothing to coalesce
    pages = list(range(2560))
    random.Random(seed).shuffle(pages)
    for i in pages:
        os.pwrite(fd, os.urandom(4096), i * 4096)
os.fsync(fd)
"""


@needs_fuse
def test_a_client_that_never_reads_does_not_stall_the_mount(mount, follow):
    # Small pages and cache: every page written is evicted with its own data_return, far
    # more lines than a client's buffer holds.
    m = mount("--page-size", "4K", "--cache-size", "64K")
    path = next(p for p in socket_paths(str(m.path)) if os.path.exists(p))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.connect(path)
        stuck.sendall(b"{}\n")  # everything, please; then read nothing for now
        started = time.monotonic()
        m.python(SCATTERED, str(m.path / "big"), timeout=120)
        assert time.monotonic() - started < 60
        traced = len(m.trace_lines())
        assert traced > 10000
        tracer = follow(str(m.path), "--msg", "synchronize", "--count", "1")
        m.python("import os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
                 "os.write(fd, b'x')\nos.fsync(fd)", str(m.path / "big"))
        assert tracer.finish()[0] == 0, "a reading client is served meanwhile"
        # Once the stuck client reads, it learns what it lost.
        stuck.settimeout(30)
        lines: list[dict] = []
        rest = b""
        while not lines or lines[-1]["dir"] != "meta" or lines[-1]["msg"] != "dropped":
            chunk = stuck.recv(1 << 16)
            assert chunk, "no dropped line"
            *complete, rest = (rest + chunk).split(b"\n")
            lines += [json.loads(line) for line in complete]
        assert lines[0]["msg"] == "connected"
        sent = [t["seqno"] for t in lines[1:-1] if t["dir"] == "to_pager"]
        assert sent == list(range(1, len(sent) + 1))  # from the start, in order, no gaps
        assert 1000 < len(lines) - 2 < traced < len(lines) - 2 + lines[-1]["count"]
        m.umount()  # with the client still connected


@needs_fuse
def test_stale_socket_is_replaced_and_removed_on_umount(mount, follow):
    m = mount(start=False)
    path = socket_paths(str(m.path))[0]
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:  # as a killed daemon's
        dead.bind(path)
    m.start()
    assert os.path.exists(path)
    follow(str(m.path), "--timeout", "2").finish()
    m.umount()
    assert not os.path.exists(path)


@needs_fuse
def test_errors_are_one_line(mount, tmp_path):
    one_line_error(mofs("trace", str(tmp_path), check=False), 4, "not a mounted mofs")
    m = mount()
    one_line_error(mofs("trace", str(m.path), "--path", str(tmp_path), check=False), 2,
                   "not on the mount")
    one_line_error(mofs("trace", str(m.path), "--path", str(m.path / "nope"), check=False),
                   2, "nope")
    done = mofs("trace", str(m.path), "--count", "0", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr


# --- the broadcast alone -------------------------------------------------------------------


def request(obj: int) -> DataRequest:
    return DataRequest(ObjectId(obj), 0, 65536, 1)


class Unreadable:
    def name(self) -> str:
        return "data_request"

    def describe(self) -> dict[str, object]:
        raise AssertionError("a line was built with nobody listening")


def test_no_client_no_line_built():
    b = Broadcast()
    assert not b.active
    b("to_pager", 1, Unreadable())  # type: ignore[arg-type]
    b.event("fsync", object=2, phase="call")


async def read_lines(stream: trio.abc.Stream, n: int) -> list[dict]:
    data = b""
    while data.count(b"\n") < n:
        data += await stream.receive_some(4096)
    return [json.loads(line) for line in data.splitlines()]


async def test_a_full_client_loses_lines_and_is_told_how_many():
    b = Broadcast(capacity=3)
    daemon_end, client_end = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: b.follow(daemon_end, msgs={"data_request"}, objects={7}))
        await trio.testing.wait_all_tasks_blocked()
        assert b.active
        for seqno in range(1, 11):  # "connected" is being written; 3 fit, 7 are dropped
            b("to_pager", seqno, request(7))
            b("to_pager", 100 + seqno, request(8))  # another object: filtered out
        b.event("fsync", object=7, phase="call")  # another message: filtered out
        lines = await read_lines(client_end, 1 + 3 + 1)
        assert lines[0]["msg"] == "connected"
        assert [t["seqno"] for t in lines[1:4]] == [1, 2, 3]
        assert lines[4] == {"t": lines[4]["t"], "dir": "meta", "msg": "dropped", "count": 7}
        b("to_pager", 11, request(7))
        assert [t["seqno"] for t in await read_lines(client_end, 1)] == [11]
        await client_end.aclose()
    assert not b.active
