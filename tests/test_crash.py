"""Crash tests: SIGKILL the daemon at random points while a workload writes, and check that
nothing an fsync or msync(MS_SYNC) confirmed is lost, and that the store stays sound.

Each cycle starts a workload program against the mount. Its threads append to files,
write files and rename them into place (after ftruncate down and up), replace a file by
rename, keep unlinked files open, write through a shared mmap, and remove the files of
older cycles. After each confirmed fsync (or msync) a thread appends what it confirmed
to a log outside the mount and fsyncs the log. At a random moment the test kills the
daemon with SIGKILL, then the workload, clears the dead mount, runs ``mofs fsck`` on the
store, mounts again and checks:

- every confirmed byte range is there, with its content (the workload never rewrites a
  confirmed range, so no later write may legitimately replace it);
- every page of an append file is old or new: the bytes written so far up to some point,
  then zeros (mmap files: per 4 KiB Linux page, since Linux writes those back one by one);
- a file renamed into place after its fsync is complete, whether or not the rename was
  confirmed; a replaced file is one complete version, no older than the last confirmed;
- ``mofs fsck`` on the killed store finds only what a crash legitimately leaves
  (:data:`CRASH_LEFTOVERS`), and after a clean ``mofs umount`` only :data:`UNMOUNT_LEFTOVERS`.

Every file's contents are a function of its name and offset (:data:`SHARED`), so the
checker can recompute what any file should hold. Cycles: ``MOFS_SOAK`` (default 20);
``MOFS_SOAK=500`` is the soak run. ``MOFS_CRASH_SEED`` picks the random sequence (the
failure message names it).

Here the pager runs inside the daemon and dies with it. A pager in a process of its own
(``mofs serve-pager``) is killed by ``tests/test_remote_pager.py``, which reuses this
workload and its checks.
"""

from __future__ import annotations

import json
import os
import random
import select
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_fuse
from mounting import ROOT, Mount

from mofs.fsck import fsck

pytestmark = needs_fuse

CYCLES = int(os.environ.get("MOFS_SOAK", "20"))
SEED = int(os.environ.get("MOFS_CRASH_SEED", "20240605"))
UMOUNT_EVERY = 5  # a clean umount + fsck every this many cycles, and after the last
KEEP_CYCLES = 2  # the workload of cycle N removes the files of cycles <= N - KEEP_CYCLES

# What a kill -9 may leave in the store, all of which the next mount puts right or
# tolerates: inodes unlinked while open, created but not yet named, or deleted while
# their pager was dropping the pages (freed at mount), and pages the pager committed
# past a size that shrank (dropped when the file is opened: set_size). Never pages
# without an inode: Operations._maybe_delete keeps the inode until the pager committed.
CRASH_LEFTOVERS = {"orphan", "pages past EOF", "bytes past EOF"}
# After restart + mofs umount: nothing at all.
UNMOUNT_LEFTOVERS: set[str] = set()

SHARED = r'''
import hashlib, random
PS = 65536

def stream(name, start, length):
    """The bytes of file ``name`` at [start, start + length): fixed by name and offset."""
    block, skip = divmod(start, 4096)
    out = bytearray()
    while len(out) < skip + length:
        out += random.Random(f"{name}/{block}").randbytes(4096)
        block += 1
    return bytes(out[skip:skip + length])

def once_plan(name):
    """Sizes for a file written, cut back to ``final``, grown by ``grow`` zeros, renamed."""
    r = random.Random("plan/" + name)
    final = r.randint(1, 5 * PS)
    first = final + r.choice([0, r.randint(1, PS)])
    grow = r.choice([0, 0, r.randint(1, 2 * PS)])
    return first, final, grow, stream(name, 0, final) + bytes(grow)

def cur_content(gen):
    """Version ``gen`` of the file replaced by rename: a header, then its own bytes."""
    size = random.Random(f"cur/{gen}").randint(0, 3 * PS)
    return b"gen=%08d\n" % gen + stream(f"cur{gen}", 0, size)

def map_size(name):
    return random.Random("map/" + name).randint(3 * PS, 8 * PS) + 13
'''

WORKLOAD = SHARED + r'''
import glob, json, mmap, os, shutil, sys, threading

mnt, cycle, log_path, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
here = os.path.join(mnt, f"c{cycle}")
os.mkdir(here)
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
lock = threading.Lock()

def confirm(**record):
    """Append what an fsync confirmed to the log, durably, before going on."""
    line = (json.dumps(record) + "\n").encode()
    with lock:
        os.write(log_fd, line)
        os.fsync(log_fd)

def write_all(fd, data, offset=None):
    done = 0
    while done < len(data):
        view = data[done:]
        done += os.write(fd, view) if offset is None else os.pwrite(fd, view, offset + done)

def appender(k, r):
    for n in range(1000):
        name = f"app{k}-{n}"
        fd = os.open(os.path.join(here, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        size = 0
        while size < 2 * PS * 16:
            for _ in range(r.randint(1, 3)):
                length = r.randint(1, 100_000)
                write_all(fd, stream(name, size, length))
                size += length
            os.fsync(fd)
            confirm(k="append", f=name, end=size)
        os.close(fd)

def once_writer(r):
    held = []
    for i in range(100_000):
        name = f"once-{i}"
        first, final, grow, content = once_plan(name)
        tmp = os.path.join(here, f"tmp-{i}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        data = stream(name, 0, first)
        cuts = sorted(r.sample(range(1, first), min(2, first - 1))) if first > 1 else []
        pieces = list(zip([0, *cuts], [*cuts, first]))
        r.shuffle(pieces)
        for a, b in pieces:
            write_all(fd, data[a:b], a)
        os.ftruncate(fd, final)
        if grow:
            os.ftruncate(fd, final + grow)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(here, name))
        confirm(k="whole", f=name, size=len(content),
                sha=hashlib.sha256(content).hexdigest())
        # replace "current" by rename; the new version is fsynced first
        data = cur_content(i)
        fd = os.open(os.path.join(here, "cur.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(os.path.join(here, "cur.tmp"), os.path.join(here, "current"))
        confirm(k="gen", f="current", gen=i)
        if r.random() < 0.3:  # a file unlinked while open: an orphan if we crash now
            path = os.path.join(here, f"scratch-{i}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            write_all(fd, stream(path, 0, r.randint(1, 3 * PS)))
            os.unlink(path)
            write_all(fd, b"more", r.randint(0, 4 * PS))
            os.fsync(fd)
            held.append(fd)
        while len(held) > 2:
            os.close(held.pop(0))

def mapper(r):
    for j in range(100_000):
        name = f"map-{j}"
        size = map_size(name)
        fd = os.open(os.path.join(here, name), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mm:
            at = 0
            while at < size:
                end = min(size, at + r.randint(1, 2 * PS))
                mm[at:end] = stream(name, at, end - at)
                mm.flush()  # msync(MS_SYNC)
                confirm(k="mmap", f=name, offset=at, len=end - at, size=size)
                at = end
        os.close(fd)

def remover():
    for old in glob.glob(os.path.join(mnt, "c*")):
        if int(os.path.basename(old)[1:]) <= cycle - KEEP:
            shutil.rmtree(old, ignore_errors=True)

KEEP = int(sys.argv[5])
def guarded(target, *args):
    def run():
        try:
            target(*args)
        except OSError:  # the daemon was killed under us
            pass
    return threading.Thread(target=run, daemon=True)

r = random.Random(seed)
threads = [guarded(appender, 0, random.Random(r.random())),
           guarded(appender, 1, random.Random(r.random())),
           guarded(once_writer, random.Random(r.random())),
           guarded(mapper, random.Random(r.random())),
           guarded(remover)]
for t in threads:
    t.start()
print("started", flush=True)
for t in threads:
    t.join()
print("finished", flush=True)
'''

shared: dict[str, Any] = {}
exec(SHARED, shared)  # the checker computes contents with the workload's own functions
stream: Callable[[str, int, int], bytes] = shared["stream"]
once_plan: Callable[[str], tuple[int, int, int, bytes]] = shared["once_plan"]
cur_content: Callable[[int], bytes] = shared["cur_content"]
map_size: Callable[[str], int] = shared["map_size"]
PS: int = shared["PS"]


def prefix_then_zeros(got: bytes, want: bytes) -> int | None:
    """k if ``got`` is ``want[:k]`` followed by zeros (the largest such k), else None."""
    lo, hi = 0, len(got)
    while lo < hi:  # the longest common prefix, by bisection
        mid = (lo + hi + 1) // 2
        if got[:mid] == want[:mid]:
            lo = mid
        else:
            hi = mid - 1
    rest = got[lo:]
    return lo if rest.count(0) == len(rest) else None


def check_pages(path: Path, data: bytes, grain: int, confirmed: list[tuple[int, int]]) -> None:
    """Confirmed ranges exact; every ``grain`` bytes old or new (written prefix + zeros)."""
    want = stream(path.name, 0, len(data))
    for offset, length in confirmed:
        assert data[offset:offset + length] == want[offset:offset + length], (
            f"{path}: confirmed bytes {offset}..{offset + length} lost or changed")
    for start in range(0, len(data), grain):
        got = data[start:start + grain]
        assert prefix_then_zeros(got, want[start:start + grain]) is not None, (
            f"{path}: the page at {start} is neither old nor new content")


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify(mnt: Path, cycle: int, log: Path) -> Counter[str]:
    """Check the files of one cycle against what its log says was confirmed."""
    here = mnt / f"c{cycle}"
    records = read_log(log)
    counts = Counter(r["k"] for r in records)
    if not here.exists():
        assert not records, f"{here} is gone, but {len(records)} things were confirmed in it"
        return counts
    appended: dict[str, int] = defaultdict(int)
    whole: dict[str, dict] = {}
    mapped: dict[str, list[tuple[int, int]]] = defaultdict(list)
    last_gen = -1
    for r in records:
        if r["k"] == "append":
            appended[r["f"]] = max(appended[r["f"]], r["end"])
        elif r["k"] == "whole":
            whole[r["f"]] = r
        elif r["k"] == "gen":
            last_gen = max(last_gen, r["gen"])
        elif r["k"] == "mmap":
            mapped[r["f"]].append((r["offset"], r["len"]))
    names = set(os.listdir(here))
    missing = (set(appended) | set(whole) | set(mapped)) - names
    assert not missing, f"confirmed files lost from {here}: {sorted(missing)}"
    assert last_gen < 0 or "current" in names, f"{here}/current lost"
    for name in sorted(names):
        path = here / name
        data = path.read_bytes()
        assert len(data) == path.stat().st_size, f"{path}: short read"
        if name.startswith("app"):
            assert len(data) >= appended.get(name, 0), f"{path}: shorter than confirmed"
            check_pages(path, data, PS, [(0, appended.get(name, 0))])
        elif name.startswith("once-"):  # renamed into place after its fsync: complete
            content = once_plan(name)[3]
            assert data == content, f"{path}: not the complete file (confirmed: {name in whole})"
        elif name == "current":
            gen = int(data[4:12])
            assert gen >= last_gen, f"{path}: version {gen} is older than confirmed {last_gen}"
            assert data == cur_content(gen), f"{path}: version {gen} is incomplete"
        elif name.startswith("map-"):
            assert len(data) in (0, map_size(name)), f"{path}: size {len(data)}"
            check_pages(path, data, 4096, mapped.get(name, []))
        else:
            assert name.startswith(("tmp-", "scratch-", "cur.tmp")), f"unexpected {path}"
    return counts


def fsck_kinds(store: Path, repair: bool = False) -> tuple[set[str], list[str]]:
    result = fsck(str(store), repair=repair)
    return result.kinds, [p.line(repair) for p in result.problems]


def start_workload(m: Mount, cycle: int, log: Path, seed: int, out: Path) \
        -> subprocess.Popen[bytes]:
    with open(out, "ab") as err:
        work = subprocess.Popen(
            [sys.executable, "-c", WORKLOAD, str(m.path), str(cycle), str(log), str(seed),
             str(KEEP_CYCLES)],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert work.stdout is not None
    ready, _, _ = select.select([work.stdout], [], [], 60)
    line = work.stdout.readline() if ready else b""
    assert line == b"started\n", f"the workload did not start: {line!r}\n{out.read_text()}"
    return work


@pytest.mark.timeout(max(300, 6 * CYCLES))  # about 1.3 s a cycle; the soak takes longer
def test_fsynced_data_survives_kill_9_at_random_points(mount, tmp_path):
    rng = random.Random(SEED)
    logs = tmp_path / "logs"
    logs.mkdir()
    m = mount()
    totals: Counter[str] = Counter()
    leftovers: Counter[str] = Counter()  # what fsck found after a kill
    unmounted: Counter[str] = Counter()  # ... and after a clean umount
    started = time.monotonic()
    for cycle in range(CYCLES):
        where = f"seed {SEED}, cycle {cycle}"
        log = logs / f"c{cycle}.jsonl"
        work = start_workload(m, cycle, log, rng.randrange(1 << 32), tmp_path / "work.err")
        try:
            time.sleep(rng.uniform(0.05, 0.5))  # the fault injection point, not a wait
            assert work.poll() is None, f"{where}: the workload ended early"
            assert m.proc is not None
            m.proc.kill()  # SIGKILL: the daemon and its in-process pagers die at once
            m.proc.wait(timeout=30)
        finally:
            work.kill()
            work.wait(timeout=30)
            if work.stdout is not None:
                work.stdout.close()
        m.kill9()  # the daemon is gone already: this clears the dead mount
        kinds, lines = fsck_kinds(m.store)
        assert kinds <= CRASH_LEFTOVERS, f"{where}: fsck after kill -9:\n" + "\n".join(lines)
        leftovers.update(kinds)
        m.start()
        for c in range(max(0, cycle - KEEP_CYCLES + 1), cycle + 1):
            counts = verify(m.path, c, logs / f"c{c}.jsonl")
            if c == cycle:
                totals.update(counts)
        if (cycle + 1) % UMOUNT_EVERY == 0 or cycle == CYCLES - 1:
            m.umount()
            kinds, lines = fsck_kinds(m.store)
            assert kinds <= UNMOUNT_LEFTOVERS, f"{where}: fsck after umount:\n" + "\n".join(
                lines)
            unmounted.update(kinds)
            if kinds:
                kinds, lines = fsck_kinds(m.store, repair=True)
                assert fsck(str(m.store)).exit_code == 0, "\n".join(lines)
            m.start()
    elapsed = time.monotonic() - started
    print(f"\n{CYCLES} kill -9 cycles in {elapsed:.1f} s (seed {SEED}); confirmed: "
          f"{dict(totals)}; fsck found after kill: {dict(leftovers)}, after umount: "
          f"{dict(unmounted)}")
    for kind in ("append", "whole", "gen", "mmap"):
        assert totals[kind] > 0, f"the workload never confirmed a {kind!r} write: {totals}"


def write_big(path: Path, size: int) -> int:
    """A file of ``size`` random bytes, fsynced (so its pages are in the store); its inode."""
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
        return os.fstat(f.fileno()).st_ino


def stored_pages(store: Path, ino: int) -> int:
    """Rows of the default pager for object ``ino`` in an unmounted store."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM pages WHERE object = ?", (ino,)).fetchone()[0]
    finally:
        db.close()


@pytest.mark.timeout(300)
def test_kill_9_right_after_unlink_leaves_no_stray_pages(mount):
    """kill -9 the moment unlink(2) of a big fsynced file returns (and a few moments
    later): fsck finds at most an orphan, never stray pages, and after the next mount
    and a clean umount it finds nothing and the pages are gone."""
    m = mount()
    found: Counter[str] = Counter()
    deleted = []
    for delay in (0, 0, 0.001, 0.003, 0.01, 0.03):
        path = m.path / "big"
        deleted.append(write_big(path, 8 << 20))
        assert m.proc is not None
        os.unlink(path)
        if delay:
            time.sleep(delay)
        m.proc.kill()
        m.kill9()  # waits for the dead daemon and clears the dead mount
        kinds, lines = fsck_kinds(m.store)
        assert kinds <= {"orphan"}, f"delay {delay}: fsck after kill -9:\n" + "\n".join(lines)
        found.update(kinds)
        m.start()
        assert not path.exists()
    m.umount()
    kinds, lines = fsck_kinds(m.store)
    assert not kinds, "fsck after umount:\n" + "\n".join(lines)
    assert [stored_pages(m.store, ino) for ino in deleted] == [0] * len(deleted)
    print(f"\nfsck after kill -9 right after unlink found: {dict(found)}")


@pytest.mark.timeout(120)
def test_kill_9_while_the_pager_drops_a_deleted_file(mount, tmp_path):
    """With the pager stalled in dropping a deleted file's pages (SlowDropPager), a
    kill -9 always lands in the window: the inode must still be there (an orphan, with
    its pages), and the next mount, with the plain default pager, frees both."""
    store = tmp_path / "store.mofs"
    m = mount("--pager", f"python:tests.scripted_pager:SlowDropPager:{store}", store=store)
    path = m.path / "big"
    ino = write_big(path, 4 << 20)
    os.unlink(path)
    deadline = time.monotonic() + 30
    while not any(line.get("msg") == "set_size" and line.get("object") == ino
                  and line.get("size") == 0 for line in m.trace_lines()):
        assert time.monotonic() < deadline, "the deleted file's pages were never dropped"
        time.sleep(0.01)
    time.sleep(0.2)  # the pager is asleep in set_size; mofs has done all it does before
    m.kill9()
    kinds, lines = fsck_kinds(m.store)
    assert kinds == {"orphan"}, "fsck after kill -9:\n" + "\n".join(lines)
    assert stored_pages(m.store, ino) == 64
    plain = mount(store=store, name="again")
    plain.umount()
    kinds, lines = fsck_kinds(m.store)
    assert not kinds, "fsck after the next mount:\n" + "\n".join(lines)
    assert stored_pages(m.store, ino) == 0
