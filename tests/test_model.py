"""Random programs against a real mount and an in-memory model (issue 5, point 3), and an
fsx-style replay of a long seeded sequence on one file.

``FileMachine`` is a hypothesis state machine: each example is a fresh directory on ONE
mount (started once per test function, ``--cache-size 2M``: 32 pages of 64 KiB; the
``evict`` step reads a 2 MiB ballast file, so the programs' pages are evicted, returned
and fetched again all the time) in which a random program of open / pwrite /
pread / mmap write / truncate / ftruncate / fallocate / posix_fallocate / rename / link /
unlink / fsync / close / close-and-reopen / remount runs on three names, both through the
mount (real syscalls from this process) and on a model. After every step the directory
listing, each name's inode, size and link count, and every file's whole contents (read
after dropping the Linux page cache, so the bytes come from mofs) must equal the model.
A divergence fails with hypothesis's shortest program that shows it.

A divergence that depends on timing cannot be shrunk (hypothesis reports it as flaky):
the assertion message then lists the steps of the program that showed it.

``MOFS_MODEL_EXAMPLES=3000`` runs the long profile (default 300 programs; about 17 minutes,
so add ``-o faulthandler_timeout=0`` to skip the stack dump after 4 minutes);
``MOFS_FSX_OPS`` and ``MOFS_FSX_SEED`` change the fsx-style run (default 5000 ops).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import needs_fuse
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from mounting import Mount

pytestmark = needs_fuse

PAGE = 64 * 1024
MAX_SIZE = 512 * 1024 - 1  # every file stays below 512 KiB
NAMES = ("a", "b", "c")
MAX_HANDLES = 4
REMOUNT_ODDS = 12  # a remount costs ~0.7 s: one draw of the remount rule in 12 remounts
EXAMPLES = int(os.environ.get("MOFS_MODEL_EXAMPLES", "300"))
FSX_OPS = int(os.environ.get("MOFS_FSX_OPS", "5000"))
FSX_SEED = int(os.environ.get("MOFS_FSX_SEED", "20241123"))

BALLAST = "ballast"  # beside the programs' directories: read to evict their pages
BALLAST_SIZE = 2 << 20

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FALLOCATE_MODES = (0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) itself (``os.posix_fallocate`` would fall back to writing zeros)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


# --- the model ----------------------------------------------------------------------------


class Inode:
    """A file of the model: its bytes, and the inode number the mount gave it."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.data = bytearray()

    def write(self, offset: int, buf: bytes) -> None:
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset : offset + len(buf)] = buf

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))


@dataclass
class Handle:
    fd: int
    inode: Inode


def payload(seed: int | str, length: int) -> bytes:
    """Bytes no other write of the program writes: a misplaced or lost write shows."""
    return random.Random(seed).randbytes(length)


@functools.cache
def ballast() -> bytes:
    return payload("ballast", BALLAST_SIZE)


def clip(offset: int, length: int, limit: int = MAX_SIZE) -> tuple[int, int]:
    offset = min(offset, limit - 1)
    return offset, max(1, min(length, limit - offset))


def read_all(fd: int, size: int) -> bytes:
    """The whole file through ``fd``, a byte past the expected end included."""
    parts, offset = [], 0
    while True:
        chunk = os.pread(fd, max(size + 1 - offset, 0) + 4096, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def difference(expected: bytes, got: bytes) -> str:
    """Where two contents part: sizes, the first differing offset and the bytes there."""
    if expected == got:
        return "same"
    first = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
                 min(len(expected), len(got)))
    last = max(i for i in range(first, max(len(expected), len(got)))
               if i >= min(len(expected), len(got)) or expected[i] != got[i])
    return (f"expected {len(expected)} bytes, got {len(got)}; they differ from offset {first} "
            f"(page {first // PAGE}, +{first % PAGE}) to {last} (page {last // PAGE}): "
            f"expected {expected[first:first + 8].hex()}, got {got[first:first + 8].hex()}")


def expect_errno(code: int, call: Callable[..., Any], *args: Any) -> None:
    """``call(*args)`` must fail with ``code``; a descriptor it returns anyway is closed."""
    try:
        result = call(*args)
    except OSError as exc:
        assert exc.errno == code, f"expected {errno.errorcode[code]}, got {exc!r}"
        return
    if isinstance(result, int):
        os.close(result)
    raise AssertionError(f"expected {errno.errorcode[code]}, the call succeeded")


# --- the state machine --------------------------------------------------------------------

names = st.sampled_from(NAMES)
slots = st.integers(0, MAX_HANDLES - 1)  # which open handle (modulo how many are open)


def page_offset(page: int, delta: int) -> int:
    return max(0, page * PAGE + delta)


near_page = st.builds(page_offset, st.integers(0, 8), st.integers(-3, 3))
offsets = st.one_of(near_page, st.integers(0, MAX_SIZE))
lengths = st.one_of(st.integers(1, 40), st.integers(1, 2 * PAGE + 100))
OPEN_FLAGS = {"rw": 0, "create": os.O_CREAT, "excl": os.O_CREAT | os.O_EXCL,
              "trunc": os.O_CREAT | os.O_TRUNC}


class FileMachine(RuleBasedStateMachine):
    """Files through a real mount and in the model; after every step they must agree."""

    mount: ClassVar[Mount]
    programs: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    remounts: ClassVar[int] = 0
    rules: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        cls = type(self)
        cls.programs += 1
        self.dir = self.mount.path / f"program{cls.programs}"
        os.mkdir(self.dir)
        self.names: dict[str, Inode] = {}
        self.handles: list[Handle] = []
        self.seeds = 0
        self.log: list[str] = []  # the program so far, for a divergence hypothesis cannot
        # replay (one that depends on timing): its report shows the steps that led to it

    # helpers

    def path(self, name: str) -> Path:
        return self.dir / name

    def handle(self, slot: int) -> Handle:
        return self.handles[slot % len(self.handles)]

    def data(self, length: int) -> bytes:
        self.seeds += 1
        return payload(self.seeds, length)

    def nlink(self, inode: Inode) -> int:
        return sum(1 for i in self.names.values() if i is inode)

    def has_handles(self) -> bool:
        return bool(self.handles)

    def count(self) -> None:
        """Count the step and log it with its arguments (the calling rule's locals, as
        this is the first thing each rule does)."""
        caller = sys._getframe(1)
        type(self).steps += 1
        type(self).rules[caller.f_code.co_name] += 1
        args = ", ".join(f"{k}={v!r}" for k, v in caller.f_locals.items() if k != "self")
        self.log.append(f"{caller.f_code.co_name}({args})  # {len(self.handles)} handles")

    @initialize(files=st.integers(1, len(NAMES)), size=offsets)
    def start_with_open_files(self, files: int, size: int) -> None:
        """Most programs need a file and a handle: begin with a few, each written once."""
        self.count()
        for name in NAMES[:files]:
            fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            inode = self.names[name] = Inode(os.fstat(fd).st_ino)
            self.handles.append(Handle(fd, inode))
            buf = self.data(min(size, MAX_SIZE))
            assert os.write(fd, buf) == len(buf)
            inode.write(0, buf)

    # names

    @precondition(lambda self: len(self.handles) < MAX_HANDLES)
    @rule(name=names, how=st.sampled_from(sorted(OPEN_FLAGS)))
    def open(self, name: str, how: str) -> None:
        self.count()
        flags = os.O_RDWR | OPEN_FLAGS[how]
        inode = self.names.get(name)
        if inode is None and how == "rw":
            return expect_errno(errno.ENOENT, os.open, self.path(name), flags)
        if inode is not None and how == "excl":
            return expect_errno(errno.EEXIST, os.open, self.path(name), flags)
        fd = os.open(self.path(name), flags, 0o644)
        if inode is None:
            inode = self.names[name] = Inode(os.fstat(fd).st_ino)
        if how == "trunc":
            inode.truncate(0)
        self.handles.append(Handle(fd, inode))

    @rule(src=names, dst=names)
    def rename(self, src: str, dst: str) -> None:
        self.count()
        if src not in self.names:
            return expect_errno(errno.ENOENT, os.rename, self.path(src), self.path(dst))
        os.rename(self.path(src), self.path(dst))
        if self.names[src] is not self.names.get(dst):  # two links of one file: no-op
            self.names[dst] = self.names.pop(src)

    @rule(src=names, dst=names)
    def link(self, src: str, dst: str) -> None:
        self.count()
        if src not in self.names:
            return expect_errno(errno.ENOENT, os.link, self.path(src), self.path(dst))
        if dst in self.names:
            return expect_errno(errno.EEXIST, os.link, self.path(src), self.path(dst))
        os.link(self.path(src), self.path(dst))
        self.names[dst] = self.names[src]

    @rule(name=names)
    def unlink(self, name: str) -> None:
        self.count()
        if name not in self.names:
            return expect_errno(errno.ENOENT, os.unlink, self.path(name))
        os.unlink(self.path(name))
        del self.names[name]  # open handles keep the file

    @rule(name=names, size=offsets)
    def truncate(self, name: str, size: int) -> None:
        self.count()
        size = min(size, MAX_SIZE)
        if name not in self.names:
            return expect_errno(errno.ENOENT, os.truncate, self.path(name), size)
        os.truncate(self.path(name), size)
        self.names[name].truncate(size)

    # handles

    @precondition(has_handles)
    @rule(slot=slots, offset=offsets, length=lengths)
    def pwrite(self, slot: int, offset: int, length: int) -> None:
        self.count()
        h = self.handle(slot)
        offset, length = clip(offset, length)
        buf = self.data(length)
        assert os.pwrite(h.fd, buf, offset) == length
        h.inode.write(offset, buf)

    @precondition(has_handles)
    @rule(slot=slots, page=st.integers(1, MAX_SIZE // PAGE), before=st.integers(1, PAGE),
          after=st.integers(1, PAGE))
    def pwrite_across_page(self, slot: int, page: int, before: int, after: int) -> None:
        """A write that straddles a 64 KiB page boundary."""
        self.count()
        h = self.handle(slot)
        offset, length = clip(page * PAGE - before, before + after)
        buf = self.data(length)
        assert os.pwrite(h.fd, buf, offset) == length
        h.inode.write(offset, buf)

    @precondition(has_handles)
    @rule(slot=slots, offset=offsets, length=lengths)
    def pread(self, slot: int, offset: int, length: int) -> None:
        self.count()
        h = self.handle(slot)
        got = os.pread(h.fd, length, offset)
        expected = bytes(h.inode.data[offset : offset + length])
        assert got == expected, difference(expected, got)

    @precondition(has_handles)
    @rule(slot=slots, offset=offsets, length=lengths, msync=st.booleans())
    def mmap_write(self, slot: int, offset: int, length: int, msync: bool) -> None:
        """Write through a shared mapping of the whole file; msync (flush) or just unmap."""
        self.count()
        h = self.handle(slot)
        size = len(h.inode.data)
        if size == 0:
            return  # nothing to map (the invariant checks the size is really 0)
        offset, length = clip(offset % size, length, size)
        buf = self.data(length)
        with mmap.mmap(h.fd, size) as mm:
            mm[offset : offset + length] = buf
            if msync:
                mm.flush()
        h.inode.write(offset, buf)

    @precondition(has_handles)
    @rule(slot=slots, size=offsets)
    def ftruncate(self, slot: int, size: int) -> None:
        self.count()
        h = self.handle(slot)
        size = min(size, MAX_SIZE)
        os.ftruncate(h.fd, size)
        h.inode.truncate(size)

    @precondition(has_handles)
    @rule(slot=slots, mode=st.sampled_from(FALLOCATE_MODES), offset=offsets, length=lengths)
    def fallocate(self, slot: int, mode: int, offset: int, length: int) -> None:
        """pyfuse3 has no fallocate handler: EOPNOTSUPP, and the file is unchanged."""
        self.count()
        h = self.handle(slot)
        offset, length = clip(offset, length)
        expect_errno(errno.EOPNOTSUPP, fallocate, h.fd, mode, offset, length)

    @precondition(has_handles)
    @rule(slot=slots, offset=offsets, length=st.integers(1, PAGE + 100))
    def posix_fallocate(self, slot: int, offset: int, length: int) -> None:
        """glibc emulates it (zero bytes written where the file has none): size grows."""
        self.count()
        h = self.handle(slot)
        offset, length = clip(offset, length)
        os.posix_fallocate(h.fd, offset, length)
        if offset + length > len(h.inode.data):
            h.inode.truncate(offset + length)

    @precondition(has_handles)
    @rule(slot=slots, data_only=st.booleans())
    def fsync(self, slot: int, data_only: bool) -> None:
        self.count()
        (os.fdatasync if data_only else os.fsync)(self.handle(slot).fd)

    @precondition(has_handles)
    @rule(slot=slots)
    def close(self, slot: int) -> None:
        self.count()
        h = self.handles.pop(slot % len(self.handles))
        os.close(h.fd)

    @precondition(has_handles)
    @rule(slot=slots)
    def close_and_reopen(self, slot: int) -> None:
        """Close a handle and open its file again by a name it still has (if any)."""
        self.count()
        i = slot % len(self.handles)
        h = self.handles[i]
        os.close(h.fd)
        name = next((n for n in sorted(self.names) if self.names[n] is h.inode), None)
        if name is None:
            del self.handles[i]
        else:
            self.handles[i] = Handle(os.open(self.path(name), os.O_RDWR), h.inode)

    @rule(pages=st.integers(8, BALLAST_SIZE // PAGE))
    def evict(self, pages: int) -> None:
        """Read ``pages`` pages of the ballast file past the Linux page cache: mofs's cache
        (32 pages) makes room by giving back the least recently used pages, the program's
        first (the dirty ones in data_return)."""
        self.count()
        fd = os.open(self.mount.path / BALLAST, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = b"".join(os.pread(fd, PAGE, i * PAGE) for i in range(pages))
            assert got == ballast()[: pages * PAGE]
        finally:
            os.close(fd)

    @rule(gate=st.integers(0, REMOUNT_ODDS - 1))
    def remount(self, gate: int) -> None:
        """``mofs umount`` (writes everything back) and mount again: all must survive."""
        if gate != REMOUNT_ODDS // 2:  # not 0: hypothesis draws the bounds more often
            return
        self.count()
        type(self).remounts += 1
        for h in self.handles:
            os.close(h.fd)
        self.handles.clear()  # files without a name are gone now
        self.mount.umount()
        self.mount.start()

    # the check after every step

    @invariant()
    def mount_matches_model(self) -> None:
        try:
            self.check()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nin {self.dir.name}, after:\n  "
                                 + "\n  ".join(self.log)) from None

    def check(self) -> None:
        assert sorted(os.listdir(self.dir)) == sorted(self.names)
        for name, inode in sorted(self.names.items()):
            st_ = os.stat(self.path(name))
            assert (st_.st_ino, st_.st_size, st_.st_nlink) == (
                inode.ino, len(inode.data), self.nlink(inode)), name
        seen: set[int] = set()
        for h in self.handles:
            st_ = os.fstat(h.fd)
            assert (st_.st_ino, st_.st_size, st_.st_nlink) == (
                h.inode.ino, len(h.inode.data), self.nlink(h.inode))
            if id(h.inode) not in seen:
                seen.add(id(h.inode))
                self.compare(h.fd, h.inode, "handle")
        for name, inode in sorted(self.names.items()):
            if id(inode) not in seen:
                seen.add(id(inode))
                fd = os.open(self.path(name), os.O_RDONLY)
                try:
                    self.compare(fd, inode, name)
                finally:
                    os.close(fd)

    def compare(self, fd: int, inode: Inode, what: str) -> None:
        """The whole file, from mofs: the Linux page cache is dropped first (dirty pages
        stay, and start going back)."""
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        got, expected = read_all(fd, len(inode.data)), bytes(inode.data)
        assert got == expected, f"{what}: {difference(expected, got)}"

    def teardown(self) -> None:
        for h in self.handles:
            with contextlib.suppress(OSError):
                os.close(h.fd)
        for name in self.names:
            with contextlib.suppress(OSError):
                os.unlink(self.path(name))
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,  # the same programs on every run: CI reproduces what it saw
    database=None,  # nothing written to .hypothesis/
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Even without a database hypothesis caches what it learns of local modules (its
    ``constants/``): in tmp_path, not in a .hypothesis/ of the working directory."""
    set_hypothesis_home_dir(tmp_path / "hypothesis")
    try:
        yield
    finally:
        set_hypothesis_home_dir(None)  # back to HYPOTHESIS_STORAGE_DIRECTORY or the default


@pytest.mark.timeout(max(600, EXAMPLES))
def test_random_programs_through_a_mount_match_the_model(mount, hypothesis_home):
    m = mount("--cache-size", "2M")
    (m.path / BALLAST).write_bytes(ballast())
    FileMachine.mount = m
    FileMachine.programs = FileMachine.steps = FileMachine.remounts = 0
    FileMachine.rules = Counter()
    started = time.monotonic()
    run_state_machine_as_test(FileMachine, settings=MODEL_SETTINGS)
    took = time.monotonic() - started
    traffic = Counter(t["msg"] if t["msg"] != "data_return" or t["kernel_copy"]
                      else "data_return(evicted)" for t in m.trace_lines())
    print(f"\n{FileMachine.programs} programs, {FileMachine.steps} steps, "
          f"{FileMachine.remounts} remounts in {took:.0f} s"
          f"\nsteps per rule: {dict(FileMachine.rules)}"
          f"\npager traffic: {dict(sorted(traffic.items()))}")
    assert FileMachine.programs >= EXAMPLES
    assert traffic["data_supply"] > EXAMPLES and traffic["data_return(evicted)"] > EXAMPLES


# --- fsx-style: one file, a long seeded sequence, the whole file compared again and again ---

FSX_MAX = 24 * PAGE + 1000  # more pages than the 1 MiB cache holds (16)
FSX_CHECK_EVERY = 50
FSX_REMOUNT_EVERY = 1000


class FsxDivergence(AssertionError):
    pass


class Fsx:
    """fsx's loop (write, mapwrite, read, mapread, truncate, close/open, fsync, fallocate)
    over one file and its model, with a log of the last operations for the report."""

    def __init__(self, m: Mount, seed: int) -> None:
        self.m = m
        self.path = m.path / "fsx"
        self.rng = random.Random(seed)
        self.seed = seed
        self.model = Inode(0)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self.log: deque[str] = deque(maxlen=40)
        self.op = 0
        self.counts: Counter[str] = Counter()

    def fail(self, what: str) -> None:
        raise FsxDivergence(f"fsx seed {self.seed}, op {self.op}: {what}\nlast operations:\n"
                            + "\n".join(self.log))

    def note(self, name: str, text: str) -> None:
        self.counts[name] += 1
        self.log.append(f"{self.op:5d} {name:16s} {text}")

    def range(self, extend: bool) -> tuple[int, int]:
        """An offset (near a page boundary a third of the time) and a length; within the
        file unless ``extend``."""
        size = len(self.model.data)
        limit = FSX_MAX if extend else size
        if self.rng.random() < 1 / 3:
            offset = max(0, self.rng.randrange(0, FSX_MAX // PAGE + 1) * PAGE
                         + self.rng.randint(-100, 100))
        else:
            offset = self.rng.randrange(0, FSX_MAX)
        if limit == 0:
            return 0, 0
        offset %= limit
        length = self.rng.choice((self.rng.randint(1, 100), self.rng.randint(1, 2 * PAGE)))
        return offset, min(length, limit - offset)

    def check(self, offset: int = 0, length: int | None = None, got: bytes | None = None) -> None:
        data = bytes(self.model.data)
        what = f"read at {offset:#x}"
        if length is None:  # the whole file, from mofs
            what = "whole file"
            size = os.fstat(self.fd).st_size
            if size != len(data):
                self.fail(f"size {size}, expected {len(data)}")
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = read_all(self.fd, len(data))
            length = len(data) + 1
        expected = data[offset : offset + length]
        if got != expected:
            self.fail(f"{what}: {difference(expected, got)}")

    # the operations

    def write(self) -> None:
        offset, length = self.range(extend=True)
        buf = payload(self.op, length)
        self.note("write", f"{offset:#x} thru {offset + length - 1:#x} ({length:#x} bytes)")
        assert os.pwrite(self.fd, buf, offset) == length
        self.model.write(offset, buf)

    def mapwrite(self) -> None:
        """As fsx does: extend the file first if needed, map the range, write, msync."""
        offset, length = self.range(extend=True)
        msync = self.rng.random() < 0.75
        self.note("mapwrite", f"{offset:#x} thru {offset + length - 1:#x} ({length:#x} bytes)"
                  + (" msync" if msync else ""))
        if offset + length > len(self.model.data):
            os.ftruncate(self.fd, offset + length)
            self.model.truncate(offset + length)
        buf = payload(self.op, length)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fd, offset + length - start, offset=start) as mm:
            mm[offset - start :] = buf
            if msync:
                mm.flush()
        self.model.write(offset, buf)

    def read(self) -> None:
        offset, length = self.range(extend=False)
        self.note("read", f"{offset:#x} thru {offset + length - 1:#x} ({length:#x} bytes)")
        self.check(offset, length, os.pread(self.fd, length, offset))

    def mapread(self) -> None:
        offset, length = self.range(extend=False)
        if length == 0:
            return
        self.note("mapread", f"{offset:#x} thru {offset + length - 1:#x} ({length:#x} bytes)")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fd, offset + length - start, offset=start,
                       access=mmap.ACCESS_READ) as mm:
            got = mm[offset - start :]
        self.check(offset, length, got)

    def truncate(self) -> None:
        size = self.range(extend=True)[0]
        by_path = self.rng.random() < 0.5
        self.note("truncate", f"{len(self.model.data):#x} to {size:#x}"
                  + (" (path)" if by_path else ""))
        if by_path:
            os.truncate(self.path, size)
        else:
            os.ftruncate(self.fd, size)
        self.model.truncate(size)

    def close_open(self) -> None:
        self.note("close/open", "")
        os.close(self.fd)
        self.fd = -1
        self.fd = os.open(self.path, os.O_RDWR)

    def fsync(self) -> None:
        self.note("fsync", "")
        os.fsync(self.fd)

    def fallocate(self) -> None:
        offset, length = self.range(extend=True)
        mode = self.rng.choice(FALLOCATE_MODES)
        self.note("fallocate", f"mode {mode:#x} {offset:#x} thru {offset + length - 1:#x}")
        try:
            fallocate(self.fd, mode, offset, max(length, 1))
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                self.fail(f"fallocate failed with {exc!r}, expected EOPNOTSUPP")
        else:
            self.fail("fallocate succeeded, expected EOPNOTSUPP")

    def posix_fallocate(self) -> None:
        offset, length = self.range(extend=True)
        length = max(length, 1)
        self.note("posix_fallocate", f"{offset:#x} thru {offset + length - 1:#x}")
        os.posix_fallocate(self.fd, offset, length)
        if offset + length > len(self.model.data):
            self.model.truncate(offset + length)

    def remount(self) -> None:
        self.note("remount", "")
        os.close(self.fd)
        self.fd = -1
        self.m.umount()
        self.m.start()
        self.fd = os.open(self.path, os.O_RDWR)

    WEIGHTS: ClassVar[dict[str, int]] = {
        "write": 25, "mapwrite": 12, "read": 12, "mapread": 5, "truncate": 8,
        "close_open": 5, "fsync": 5, "fallocate": 4, "posix_fallocate": 3,
    }

    def run(self, ops: int) -> None:
        names = list(self.WEIGHTS)
        weights = list(self.WEIGHTS.values())
        try:
            for self.op in range(1, ops + 1):
                getattr(self, self.rng.choices(names, weights)[0])()
                if self.op % FSX_REMOUNT_EVERY == 0 and self.op < ops:
                    self.remount()
                if self.op % FSX_CHECK_EVERY == 0:
                    self.note("check", f"whole file, {len(self.model.data):#x} bytes")
                    self.check()
            self.check()
            self.close_open()
            self.check()
        except FsxDivergence:
            raise
        except (OSError, AssertionError) as exc:  # a call failed: report it with the log
            self.fail(repr(exc))
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)


@pytest.mark.timeout(max(600, FSX_OPS // 10))
def test_fsx_style_long_random_sequence_on_one_file(mount):
    m = mount("--cache-size", "1M")  # 16 pages for a file of up to 25
    fsx = Fsx(m, FSX_SEED)
    fsx.run(FSX_OPS)
    m.umount()
    m.start()
    assert (m.path / "fsx").read_bytes() == bytes(fsx.model.data)
    evicted = sum(1 for t in m.trace_lines() if t["msg"] == "data_return" and not t["kernel_copy"])
    print(f"\nfsx: {FSX_OPS} ops (seed {FSX_SEED}): {dict(fsx.counts)}; {evicted} evicting "
          "data_returns")
    assert evicted > 0
