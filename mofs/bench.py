"""``mofs bench DIR``: file-system phases that measure any directory and verify every byte.

The same phases run against a native directory, FUSE peers and mofs (``benchmarks/run.py``
drives them all), so the numbers are comparable: one process, the same sizes, the same
seeded data. A fast wrong answer is worth nothing, so each phase checks what it wrote or
read after its timing and a single wrong byte ends the run with a one-line error and a
non-zero exit. Cold phases call a drop hook first (``--drop-caches CMD``, a shell command)
so that the next read has to come from the file system's backing store.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

MIB = 1 << 20
PAGE = 4096
CHUNK = MIB
DEFAULT_DROP = "sync; echo 3 > /proc/sys/vm/drop_caches"
WARM_STAT_SECONDS = 0.25


class BenchError(UserError):
    """A phase failed: a wrong byte, an I/O error or a drop hook that did not work."""


# --- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much each phase moves; ``scaled(0.01)`` makes a smoke run of a few seconds."""

    seq_bytes: int = 256 * MIB
    rand_bytes: int = 64 * MIB
    rand_ops: int = 20_000
    fsync_ops: int = 200
    small_files: int = 2_000
    small_size: int = PAGE
    tree_bytes: int = 20 * MIB
    tree_files: int = 1_000
    big_copy_bytes: int = 0

    @classmethod
    def scaled(cls, scale: float, big_copy_bytes: int = 0) -> Sizes:
        """Full sizes times ``scale``, with floors that keep every phase meaningful."""
        full = cls()
        return cls(
            seq_bytes=max(1, round(full.seq_bytes * scale / MIB)) * MIB,
            rand_bytes=max(MIB // PAGE, round(full.rand_bytes * scale / PAGE)) * PAGE,
            rand_ops=max(100, round(full.rand_ops * scale)),
            fsync_ops=max(20, round(full.fsync_ops * scale)),
            small_files=max(10, round(full.small_files * scale)),
            tree_bytes=max(256 << 10, round(full.tree_bytes * scale)),
            tree_files=max(10, round(full.tree_files * scale)),
            big_copy_bytes=big_copy_bytes,
        )


# --- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """What a number means: its unit and which direction is better."""

    phase: str
    unit: str
    higher_is_better: bool
    label: str


METRICS: dict[str, MetricInfo] = {
    "seq_write": MetricInfo("seq_write", "MB/s", True, "sequential write + fsync"),
    "fsync_p50": MetricInfo("fsync_latency", "ms", False, "fsync of a 4 KiB write, p50"),
    "fsync_p99": MetricInfo("fsync_latency", "ms", False, "fsync of a 4 KiB write, p99"),
    "cold_read": MetricInfo("cold_read", "MB/s", True, "sequential read, caches dropped"),
    "warm_read": MetricInfo("warm_read", "MB/s", True, "sequential read, caches warm"),
    "rand_read": MetricInfo("rand_read", "op/s", True, "random 4 KiB reads"),
    "rand_write": MetricInfo("rand_write", "op/s", True, "random 4 KiB writes"),
    "small_files": MetricInfo("small_files", "files/s", True, "create 4 KiB files"),
    "stat_cold": MetricInfo("stat_cold", "op/s", True, "lstat walk, caches dropped"),
    "stat_warm": MetricInfo("stat_warm", "op/s", True, "lstat walk, caches warm"),
    "cp_r": MetricInfo("cp_r", "s", False, "cp -r of a source tree"),
    "big_copy_rss": MetricInfo("big_copy", "MiB", False, "daemon VmRSS peak during a big copy"),
    "peak_rss": MetricInfo("peak_rss", "MiB", False, "daemon peak RSS (VmHWM)"),
}


# --- verification -----------------------------------------------------------------------------


def verify(what: str, got: bytes | bytearray | memoryview, want: bytes | bytearray | memoryview,
           ) -> None:
    """Raise BenchError naming the first differing offset unless ``got`` equals ``want``."""
    # bytes compare with memcmp; memoryviews compare item by item, 20x slower.
    got = got.tobytes() if isinstance(got, memoryview) else got
    want = want.tobytes() if isinstance(want, memoryview) else want
    if len(got) == len(want) and got == want:
        return
    n = min(len(got), len(want))
    for start in range(0, n, PAGE):
        end = min(start + PAGE, n)
        if got[start:end] != want[start:end]:
            offset = next(i for i in range(start, end) if got[i] != want[i])
            raise BenchError(f"{what}: wrong byte at offset {offset} "
                             f"(read {got[offset]:#04x}, expected {want[offset]:#04x})")
    raise BenchError(f"{what}: {len(got)} bytes instead of {len(want)}")


def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _tree_digests(root: str) -> dict[str, str]:
    """Relative path -> digest for files, ``"dir"`` for directories."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = "dir"
        for name in filenames:
            out[os.path.normpath(os.path.join(rel, name))] = _digest(os.path.join(dirpath, name))
    return out


def _source_parent() -> str | None:
    """Where sources outside DIR go: $TMPDIR, else /var/tmp (a disk more often than /tmp)."""
    if os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"]
    return "/var/tmp" if os.path.isdir("/var/tmp") else None


# --- the bench state --------------------------------------------------------------------------


def _random_bytes(rng: random.Random, n: int) -> bytes:
    """Deterministic incompressible bytes (randbytes overflows on huge sizes)."""
    return b"".join(rng.randbytes(min(CHUNK, n - off)) for off in range(0, n, CHUNK))


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def _read_into(path: str, buf: bytearray, size: int) -> int:
    """Read ``path`` in 1 MiB reads into ``buf``; returns the byte count read."""
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while total < size:
            got = f.readinto(view[total:min(total + CHUNK, size)])
            if not got:
                break
            total += got
        if total == size and f.read(1):
            total += 1  # longer than expected: verify() reports the size
    return total


@dataclass
class Bench:
    """The directory under test, the seeded data, and what earlier phases left behind."""

    root: str
    sizes: Sizes
    drop_cmd: str
    pid: int | None = None
    seed: int = 20240606
    src_parent: str | None = field(default_factory=_source_parent)
    _seq: bytes | None = None
    _buf: bytearray | None = None
    seq_ready: bool = False
    seq_warm: bool = False
    rand_model: bytearray | None = None
    small_ready: bool = False
    tree_src: str | None = None
    tree_digests: dict[str, str] = field(default_factory=dict)
    tree_ready: bool = False

    def path(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{self.seed}:{salt}")

    def buffer(self, size: int) -> bytearray:
        """One reusable read buffer, so reading is not timed against allocation."""
        if self._buf is None or len(self._buf) < size:
            self._buf = bytearray(size)
        return self._buf

    @property
    def seq_data(self) -> bytes:
        if self._seq is None:
            self._seq = _random_bytes(self.rng("seq"), self.sizes.seq_bytes)
        return self._seq

    def drop(self) -> None:
        """Run the drop hook: the next reads must miss every cache it empties."""
        env = dict(os.environ, MOFS_BENCH_DIR=self.root)
        try:
            done = subprocess.run(self.drop_cmd, shell=True, env=env, capture_output=True,
                                  text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise BenchError(f"drop-caches hook {self.drop_cmd!r} took over 900 s") from None
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            why = lines[-1] if lines else "no output"
            raise BenchError(f"drop-caches hook {self.drop_cmd!r} exited {done.returncode}: "
                             f"{why}")
        self.seq_warm = False

    def rss(self, key: str) -> float:
        """``VmRSS`` or ``VmHWM`` of the daemon in MiB."""
        assert self.pid is not None
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        raise BenchError(f"cannot read {key} of pid {self.pid}: is the daemon running?")

    # fixtures that a phase needs even when the phase that makes them was not selected

    def ensure_seq(self) -> None:
        if not self.seq_ready:
            seq_write(self)

    def ensure_rand(self) -> None:
        if self.rand_model is None:
            _make_rand_file(self)

    def ensure_stat_tree(self) -> None:
        if not self.small_ready:
            small_files(self)
        if not self.tree_ready:
            cp_r(self)


# --- phases -----------------------------------------------------------------------------------

Result = dict[str, float]


def seq_write(b: Bench) -> Result:
    """1 MiB writes to a new file, then fsync, timed together; read back after."""
    path, data, n = b.path("seq.dat"), memoryview(b.seq_data), b.sizes.seq_bytes
    if os.path.exists(path):
        os.unlink(path)
    b.seq_ready = b.seq_warm = False
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off in range(0, n, CHUNK):
            _write_all(fd, data[off:off + CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    _verify_seq(b, "seq_write")
    b.seq_ready = True
    return {"seq_write": n / elapsed / 1e6}


def _verify_seq(b: Bench, phase: str) -> None:
    n = b.sizes.seq_bytes
    buf = b.buffer(n + 1)
    got = _read_into(b.path("seq.dat"), buf, n)
    verify(f"{phase}: seq.dat", memoryview(buf)[:got], b.seq_data)


def _timed_seq_read(b: Bench, phase: str) -> Result:
    """1 MiB reads into one reused buffer, spot-checking 16 bytes of each; a full check after.

    Reading into one file-sized buffer would time memory bandwidth (about 2.5 GB/s here)
    instead of the file system; comparing every byte inside the loop would time memcmp."""
    n, want = b.sizes.seq_bytes, b.seq_data
    chunk = bytearray(CHUNK)
    view = memoryview(chunk)
    total, wrong = 0, -1
    start = time.perf_counter()
    with open(b.path("seq.dat"), "rb", buffering=0) as f:
        while got := f.readinto(view):
            k = min(16, got)
            at = ((total >> 20) * 4099) % (got - k + 1)
            if wrong < 0 and chunk[at:at + k] != want[total + at:total + at + k]:
                wrong = total + at
            total += got
    elapsed = time.perf_counter() - start
    _verify_seq(b, phase)
    if total != n:
        raise BenchError(f"{phase}: read {total} bytes of seq.dat, expected {n}")
    if wrong >= 0:
        raise BenchError(f"{phase}: seq.dat read wrong near offset {wrong}, right when re-read")
    b.seq_warm = True
    return {phase: n / elapsed / 1e6}


def cold_read(b: Bench) -> Result:
    """Sequential 1 MiB reads of the seq_write file right after the drop hook."""
    b.ensure_seq()
    b.drop()
    return _timed_seq_read(b, "cold_read")


def warm_read(b: Bench) -> Result:
    """The same read again, with every cache warm (one untimed read first if needed)."""
    b.ensure_seq()
    if not b.seq_warm:
        _read_into(b.path("seq.dat"), b.buffer(b.sizes.seq_bytes + 1), b.sizes.seq_bytes)
    return _timed_seq_read(b, "warm_read")


def fsync_latency(b: Bench) -> Result:
    """pwrite 4 KiB then fsync, repeated on one file: the latency an application waits."""
    n, span = b.sizes.fsync_ops, 256 * PAGE
    pool = memoryview(_random_bytes(b.rng("fsync"), 64 * PAGE))
    model = bytearray(span)
    path = b.path("fsync.dat")
    latencies = []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
        for i in range(n):
            offset = (i * 37 % 256) * PAGE
            data = pool[(i % 64) * PAGE:(i % 64 + 1) * PAGE]
            start = time.perf_counter()
            _pwrite_all(fd, data, offset)
            os.fsync(fd)
            latencies.append(time.perf_counter() - start)
            model[offset:offset + PAGE] = data
    finally:
        os.close(fd)
    size = max(((i * 37 % 256) + 1) * PAGE for i in range(n))
    with open(path, "rb") as f:
        verify("fsync_latency: fsync.dat", f.read(), model[:size])
    os.unlink(path)
    ordered = sorted(latencies)
    return {"fsync_p50": statistics.median(ordered) * 1e3,
            "fsync_p99": ordered[math.ceil(0.99 * len(ordered)) - 1] * 1e3}


def _make_rand_file(b: Bench) -> None:
    """The random-I/O file with known content, written and fsynced, untimed."""
    data = _random_bytes(b.rng("rand"), b.sizes.rand_bytes)
    fd = os.open(b.path("rand.dat"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, memoryview(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    b.rand_model = bytearray(data)


def _offsets(b: Bench, salt: str) -> list[int]:
    rng, pages = b.rng(salt), b.sizes.rand_bytes // PAGE
    return [rng.randrange(pages) * PAGE for _ in range(b.sizes.rand_ops)]


def rand_read(b: Bench) -> Result:
    """Random aligned 4 KiB preads over a fresh file, starting from dropped caches."""
    _make_rand_file(b)
    assert b.rand_model is not None
    offsets = _offsets(b, "rand_read")
    out = bytearray(len(offsets) * PAGE)
    view = memoryview(out)
    b.drop()
    fd = os.open(b.path("rand.dat"), os.O_RDONLY)
    try:
        start = time.perf_counter()
        for i, offset in enumerate(offsets):
            if os.preadv(fd, [view[i * PAGE:(i + 1) * PAGE]], offset) != PAGE:
                raise BenchError(f"rand_read: short read at offset {offset} of rand.dat")
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    model = memoryview(b.rand_model)
    for i, offset in enumerate(offsets):
        verify(f"rand_read: rand.dat page at {offset}", view[i * PAGE:(i + 1) * PAGE],
               model[offset:offset + PAGE])
    return {"rand_read": len(offsets) / elapsed}


def rand_write(b: Bench) -> Result:
    """Random aligned 4 KiB pwrites; afterwards fsync, drop caches, compare to a model."""
    b.ensure_rand()
    assert b.rand_model is not None
    offsets = _offsets(b, "rand_write")
    pool = memoryview(_random_bytes(b.rng("rand_write"), 1024 * PAGE))
    path = b.path("rand.dat")
    fd = os.open(path, os.O_RDWR)
    try:
        start = time.perf_counter()
        for i, offset in enumerate(offsets):
            j = i % 1024
            _pwrite_all(fd, pool[j * PAGE:(j + 1) * PAGE], offset)
        elapsed = time.perf_counter() - start
        os.fsync(fd)
    finally:
        os.close(fd)
    for i, offset in enumerate(offsets):
        j = i % 1024
        b.rand_model[offset:offset + PAGE] = pool[j * PAGE:(j + 1) * PAGE]
    b.drop()
    n = b.sizes.rand_bytes
    buf = b.buffer(n + 1)
    got = _read_into(path, buf, n)
    verify("rand_write: rand.dat", memoryview(buf)[:got], b.rand_model)
    return {"rand_write": len(offsets) / elapsed}


def _small_content(b: Bench) -> bytes:
    return _random_bytes(b.rng("small"), b.sizes.small_files * b.sizes.small_size)


def small_files(b: Bench) -> Result:
    """Create, write and close many 4 KiB files in a fresh directory; read them back after."""
    d, n, size = b.path("small"), b.sizes.small_files, b.sizes.small_size
    if os.path.exists(d):
        shutil.rmtree(d)
    os.mkdir(d)
    b.small_ready = False
    data = memoryview(_small_content(b))
    names = [os.path.join(d, f"f{i:05d}") for i in range(n)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = time.perf_counter()
    for i, name in enumerate(names):
        fd = os.open(name, flags, 0o644)
        try:
            _write_all(fd, data[i * size:(i + 1) * size])
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - start
    for i, name in enumerate(names):
        with open(name, "rb") as f:
            verify(f"small_files: {os.path.basename(name)}", f.read(),
                   data[i * size:(i + 1) * size])
    b.small_ready = True
    return {"small_files": n / elapsed}


def _build_tree(b: Bench) -> None:
    """The cp -r source: nested dirs, mixed sizes, seeded content, outside DIR."""
    rng = b.rng("tree")
    n, total = b.sizes.tree_files, b.sizes.tree_bytes
    raw = [math.exp(rng.uniform(math.log(64), math.log(MIB))) for _ in range(n)]
    factor = total / sum(raw)
    sizes = [max(1, int(s * factor)) for s in raw]
    sizes[-1] = max(1, sizes[-1] + total - sum(sizes))
    src = tempfile.mkdtemp(prefix="mofs-bench-tree-", dir=b.src_parent)
    b.tree_src = src
    dirs = [""] + [os.path.join(f"d{i}", f"e{j}") for i in range(8) for j in range(4)]
    dirs += [f"d{i}" for i in range(8)]
    for i, size in enumerate(sizes):
        d = os.path.join(src, dirs[i % len(dirs)])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i:04d}.bin"), "wb") as f:
            f.write(rng.randbytes(size))
    b.tree_digests = _tree_digests(src)


def cp_r(b: Bench) -> Result:
    """``cp -r`` of a source tree on another disk into DIR; seconds; compared file by file."""
    if b.tree_src is None:
        _build_tree(b)
    assert b.tree_src is not None
    dst = b.path("tree")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    b.tree_ready = False
    start = time.perf_counter()
    done = subprocess.run(["cp", "-r", b.tree_src, dst], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise BenchError(f"cp_r: cp exited {done.returncode}: {lines[-1] if lines else ''}")
    got = _tree_digests(dst)
    if got != b.tree_digests:
        wrong = sorted(set(got.items()) ^ set(b.tree_digests.items()))[0][0]
        raise BenchError(f"cp_r: the copy differs from the source at {wrong}")
    b.tree_ready = True
    return {"cp_r": elapsed}


def _expected_stat(b: Bench) -> dict[str, int]:
    """Relative path -> size (-1 for a directory) of the small files and the copied tree."""
    want = {"small": -1, "tree": -1}
    for i in range(b.sizes.small_files):
        want[os.path.join("small", f"f{i:05d}")] = b.sizes.small_size
    assert b.tree_src is not None
    for rel in b.tree_digests:
        full = os.path.join(b.tree_src, rel)
        want[os.path.join("tree", rel)] = \
            -1 if b.tree_digests[rel] == "dir" else os.path.getsize(full)
    return want


def _walk(b: Bench) -> list[tuple[str, int, int]]:
    """lstat every entry of the small-file dir and the copied tree (the timed part)."""
    seen: list[tuple[str, int, int]] = []
    stack = [b.path("small"), b.path("tree")]
    for top in stack[:]:
        st = os.lstat(top)
        seen.append((top, st.st_mode, st.st_size))
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = os.lstat(entry.path)
                seen.append((entry.path, st.st_mode, st.st_size))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return seen


def _verify_walk(b: Bench, phase: str, seen: list[tuple[str, int, int]]) -> None:
    got = {os.path.relpath(p, b.root): (-1 if stat.S_ISDIR(mode) else size)
           for p, mode, size in seen}
    want = _expected_stat(b)
    if got != want:
        wrong = sorted(set(got.items()) ^ set(want.items()))[0]
        raise BenchError(f"{phase}: {wrong[0]} does not look as created "
                         f"(size or type differs, or it is missing or extra)")


def stat_cold(b: Bench) -> Result:
    """One lstat walk over the trees right after the drop hook."""
    b.ensure_stat_tree()
    b.drop()
    start = time.perf_counter()
    seen = _walk(b)
    elapsed = time.perf_counter() - start
    _verify_walk(b, "stat_cold", seen)
    return {"stat_cold": len(seen) / elapsed}


def stat_warm(b: Bench) -> Result:
    """lstat walks with warm caches, repeated for a quarter second to smooth the timer."""
    b.ensure_stat_tree()
    _verify_walk(b, "stat_warm", _walk(b))
    ops, start = 0, time.perf_counter()
    while True:
        ops += len(_walk(b))
        elapsed = time.perf_counter() - start
        if elapsed >= WARM_STAT_SECONDS:
            break
    return {"stat_warm": ops / elapsed}


def big_copy(b: Bench) -> Result:
    """``cp`` of a big file into DIR while sampling the daemon's VmRSS; the peak, in MiB."""
    if b.pid is None or not b.sizes.big_copy_bytes:
        raise BenchError("big_copy needs --pid PID and --big-copy SIZE")
    n = b.sizes.big_copy_bytes
    rng, h = b.rng("big"), hashlib.blake2b(digest_size=20)
    fd, src = tempfile.mkstemp(prefix="mofs-bench-big-", dir=b.src_parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for off in range(0, n, CHUNK):
                chunk = rng.randbytes(min(CHUNK, n - off))
                h.update(chunk)
                f.write(chunk)
        dst = b.path("big.dat")
        peak = b.rss("VmRSS")
        proc = subprocess.Popen(["cp", src, dst], stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            peak = max(peak, b.rss("VmRSS"))
            time.sleep(0.02)
        peak = max(peak, b.rss("VmRSS"))
        err = proc.stderr.read().strip() if proc.stderr else ""
        if proc.returncode != 0:
            raise BenchError(f"big_copy: cp exited {proc.returncode}: {err}")
    finally:
        os.unlink(src)
    if _digest(dst) != h.hexdigest():
        raise BenchError("big_copy: big.dat differs from its source")
    os.unlink(dst)
    return {"big_copy_rss": peak}


PhaseFn = Callable[[Bench], Result]

# Run order: later phases reuse what earlier ones made (the seq file, the trees).
PHASES: dict[str, PhaseFn] = {
    "seq_write": seq_write,
    "fsync_latency": fsync_latency,
    "cold_read": cold_read,
    "warm_read": warm_read,
    "rand_read": rand_read,
    "rand_write": rand_write,
    "small_files": small_files,
    "cp_r": cp_r,
    "stat_cold": stat_cold,
    "stat_warm": stat_warm,
    "big_copy": big_copy,
}
DEFAULT_PHASES = [p for p in PHASES if p != "big_copy"]


# --- running ----------------------------------------------------------------------------------


def run_bench(directory: str, phases: list[str], sizes: Sizes, *, repeat: int = 1,
              drop_cmd: str = DEFAULT_DROP, pid: int | None = None, keep: bool = False,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``phases`` ``repeat`` times in a scratch dir inside ``directory``; the results.

    Raises BenchError on the first wrong byte or failed operation; the scratch dir and the
    source tree are removed either way (the scratch dir is kept with ``keep``)."""
    if not os.path.isdir(directory):
        raise BenchError(f"{directory} is not a directory", 2)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise BenchError(f"unknown phase {unknown[0]!r}; choose from {', '.join(PHASES)}", 2)
    phases = [p for p in PHASES if p in phases]  # dependency order
    if pid is not None and not os.path.exists(f"/proc/{pid}/status"):
        raise BenchError(f"no process {pid} (--pid)", 2)
    try:
        root = tempfile.mkdtemp(prefix="mofs-bench-", dir=directory)
    except OSError as exc:
        raise BenchError(f"cannot create a scratch directory in {directory}: "
                         f"{exc.strerror}") from None
    b = Bench(root=root, sizes=sizes, drop_cmd=drop_cmd, pid=pid)
    runs: dict[str, list[float]] = {}
    started = time.perf_counter()
    phase = "setup"
    try:
        for r in range(repeat):
            for phase in phases:
                if progress:
                    progress(f"{phase} ({r + 1}/{repeat})")
                for name, value in PHASES[phase](b).items():
                    runs.setdefault(name, []).append(value)
        if pid is not None:
            runs["peak_rss"] = [b.rss("VmHWM")]
    except OSError as exc:
        name = str(exc.filename or "")
        where = f" ({os.path.relpath(name, root) if name.startswith(root) else name})" \
            if name else ""
        raise BenchError(f"{phase}: {exc.strerror or exc}{where}") from None
    finally:
        if b.tree_src:
            shutil.rmtree(b.tree_src, ignore_errors=True)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    metrics = {
        name: {"phase": METRICS[name].phase, "unit": METRICS[name].unit,
               "higher_is_better": METRICS[name].higher_is_better,
               "label": METRICS[name].label, "median": statistics.median(values),
               "runs": values, "verified": True}
        for name, values in runs.items()
    }
    return {"dir": os.path.abspath(directory), "phases": phases, "repeat": repeat,
            "sizes": sizes.__dict__, "drop_caches": drop_cmd, "pid": pid,
            "seconds": time.perf_counter() - started, "metrics": metrics}


def format_table(result: dict[str, Any]) -> str:
    """The medians as an aligned text table, one metric a line."""
    lines = [f"{'metric':<14} {'median':>12}  {'unit':<8} {'runs':<5} what"]
    for name, m in result["metrics"].items():
        arrow = "higher is better" if m["higher_is_better"] else "lower is better"
        lines.append(f"{name:<14} {format_value(m['median']):>12}  {m['unit']:<8} "
                     f"{len(m['runs']):<5} {m['label']} ({arrow})")
    return "\n".join(lines)


def format_value(value: float) -> str:
    """Three significant digits, no exponent: 0.0123, 1.23, 123, 12345."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    return f"{value:.3g}"


# --- command line -----------------------------------------------------------------------------


def _phase_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return list(PHASES)
    bad = [p for p in names if p not in PHASES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown phase {bad[0] if bad else text!r}; choose "
                                         f"from {', '.join(PHASES)} or all")
    return names


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scale like 1 or 0.1")
    return value


def add_parser(sub: Any) -> None:
    """Add ``mofs bench`` to the ``mofs`` subcommand parsers."""
    from .cli import _positive_int, parse_size

    b = sub.add_parser(
        "bench", help="measure a directory's file-system speed, verifying every byte",
        description="Run benchmark phases in a scratch directory inside DIR (any file system) "
        "and print the median of each metric. Every phase verifies its data: a wrong byte "
        "ends the run with a one-line error and exit 1. Cold phases first run the "
        "--drop-caches command. See docs/performance.md.")
    b.add_argument("dir", metavar="DIR", help="the directory to measure")
    b.add_argument("--phases", metavar="LIST", type=_phase_list, default=DEFAULT_PHASES,
                   help=f"comma-separated phases (default: {','.join(DEFAULT_PHASES)}; "
                   "big_copy needs --pid and --big-copy; 'all' for every one)")
    b.add_argument("--repeat", metavar="N", type=_positive_int, default=1,
                   help="run every phase N times and report medians (default 1)")
    b.add_argument("--scale", metavar="F", type=_scale, default=1.0,
                   help="multiply every size and count by F (0.01 is a smoke run)")
    b.add_argument("--drop-caches", metavar="CMD", default=DEFAULT_DROP,
                   help=f"shell command run before cold phases (default: {DEFAULT_DROP!r}; "
                   "for mofs add 'mofs drop-caches MOUNTPOINT; '); MOFS_BENCH_DIR names the "
                   "scratch directory")
    b.add_argument("--pid", metavar="PID", type=_positive_int,
                   help="the file system's daemon: report its peak RSS (VmHWM)")
    b.add_argument("--big-copy", metavar="SIZE", type=parse_size, default=0,
                   help="file size for the big_copy phase (e.g. four times the cache budget)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--keep", action="store_true", help="keep the scratch directory")


def main(args: argparse.Namespace) -> int:
    """``mofs bench``: run, then print the table or the JSON."""
    sizes = Sizes.scaled(args.scale, args.big_copy)
    progress = None
    if sys.stderr.isatty():
        def progress(what: str) -> None:
            print(f"mofs bench: {what}", file=sys.stderr, flush=True)
    result = run_bench(args.dir, args.phases, sizes, repeat=args.repeat,
                       drop_cmd=args.drop_caches, pid=args.pid, keep=args.keep,
                       progress=progress)
    result["scale"] = args.scale
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0
