"""Real mounts driven by real programs: cp, cat, cmp, dd, python with os.fsync and mmap."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from conftest import needs_fuse
from mounting import force_unmount

pytestmark = needs_fuse
MiB = 1 << 20


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return path


def answered(trace: list[dict], obj: int | None = None) -> tuple[list[dict], set[tuple]]:
    """The data_requests of the trace and the (object, offset) pages the pager answered."""
    requests = [t for t in trace if t["msg"] == "data_request"
                and (obj is None or t["object"] == obj)]
    pages: set[tuple] = set()
    for t in trace:
        if t["dir"] == "to_kernel" and t["msg"] in ("data_supply", "data_unavailable"):
            pages.update((t["object"], o) for o in range(t["offset"], t["offset"] + t["length"],
                                                          64 * 1024))
    return requests, pages


def test_cp_64mib_in_and_cat_out_is_identical_and_reads_go_through_the_pager(mount, tmp_path):
    src = random_file(tmp_path / "src", 64 * MiB)
    m = mount()
    m.run(["cp", str(src), str(m.path / "big")])
    m.umount()  # the second mount starts with an empty cache: every read is a miss
    m.start()
    out = tmp_path / "out"
    with open(out, "wb") as f:
        m.run(["cat", str(m.path / "big")], stdout=f)
    m.run(["cmp", str(src), str(out)])
    requests, pages = answered(m.trace_lines())
    assert requests, "reading the file sent no data_request"
    for r in requests:
        for off in range(r["offset"], r["offset"] + r["length"], 64 * 1024):
            assert (r["object"], off) in pages, f"request {r} was not answered"
    assert sum(r["length"] for r in requests) >= 64 * MiB


def test_small_cache_keeps_its_budget_and_evicts_with_data_return(mount, tmp_path):
    src = random_file(tmp_path / "src", 128 * MiB)
    m = mount("--cache-size", "16M")
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            stats = m.stat()
            samples.append(int(stats["resident_bytes"]))
            assert stats["budget_bytes"] == 16 * MiB

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        m.run(["cp", str(src), str(m.path / "big")])
        m.run(["cp", str(m.path / "big"), str(tmp_path / "back")])
    finally:
        done.set()
        watcher.join(timeout=60)
    m.run(["cmp", str(src), str(tmp_path / "back")])
    samples.append(int(m.stat()["resident_bytes"]))
    assert len(samples) > 3
    assert max(samples) <= 16 * MiB, max(samples)
    trace = m.trace_lines()
    returns = [t for t in trace if t["msg"] == "data_return"]
    evicted = [t for t in returns if not t["kernel_copy"]]  # eviction keeps no copy
    assert sum(t["length"] for t in evicted) >= 100 * MiB
    assert m.stat()["messages"]["data_return"] == len(returns)


FSYNC = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.pwrite(fd, b"a" * 300000, 0)
os.pwrite(fd, b"b" * 10, 1000000)
os.fsync(fd)
print(time.time())
os.close(fd)
"""


def test_fsync_returns_only_after_synchronize_completed(mount):
    m = mount()
    returned_at = float(m.python(FSYNC, str(m.path / "f")).stdout)
    ino = os.stat(m.path / "f").st_ino
    trace = [t for t in m.trace_lines() if t.get("object") == ino]
    sync = next(i for i, t in enumerate(trace) if t["msg"] == "synchronize")
    done = next(i for i, t in enumerate(trace) if t["msg"] == "synchronize_completed")
    fsync_return = next(i for i, t in enumerate(trace)
                        if t["msg"] == "fsync" and t.get("phase") == "return")
    assert sync < done < fsync_return
    assert trace[done]["t"] <= returned_at
    assert (trace[done]["offset"], trace[done]["length"]) == (trace[sync]["offset"],
                                                              trace[sync]["length"])
    returned = set()
    for t in trace[:sync]:
        if t["msg"] == "data_return":
            returned.update(range(t["offset"], t["offset"] + t["length"], 65536))
    dirty = set(range(0, 300000, 65536)) | {1000000 // 65536 * 65536}
    assert dirty <= returned, "every dirty page is returned before synchronize"
    assert not [t for t in trace[sync:done] if t["msg"] == "data_return"]


def test_fsynced_bytes_survive_kill_9(mount):
    m = mount()
    m.python("import os,sys\nfd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT)\n"
             "os.write(fd, b'durable' * 100000)\nos.fsync(fd)", str(m.path / "f"))
    m.run(["mkdir", str(m.path / "d")])
    m.kill9()
    assert not os.path.ismount(m.path)
    m.start()
    assert (m.path / "f").read_bytes() == b"durable" * 100000


MMAP = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.ftruncate(fd, 3 * 65536 + 123)
with mmap.mmap(fd, 3 * 65536 + 123) as mm:
    mm[0:5] = b"first"
    mm[2 * 65536 + 7 : 2 * 65536 + 12] = b"third"
    mm[-3:] = b"end"
    mm.flush()
os.close(fd)
"""


def test_mmap_write_msync_survives_umount_and_mount(mount):
    m = mount()
    m.python(MMAP, str(m.path / "mapped"))
    m.umount()
    m.start()
    data = (m.path / "mapped").read_bytes()
    assert len(data) == 3 * 65536 + 123
    assert data[0:5] == b"first" and data[2 * 65536 + 7 : 2 * 65536 + 12] == b"third"
    assert data[-3:] == b"end" and data[5:100] == bytes(95)


def test_everything_written_is_there_after_umount_and_mount(mount, tmp_path):
    m = mount()
    p = m.path
    m.run(["mkdir", "-p", str(p / "a/b/c")])
    m.run(["dd", "if=/dev/urandom", f"of={tmp_path / 'r'}", "bs=1M", "count=3", "status=none"])
    m.run(["cp", str(tmp_path / "r"), str(p / "a/b/c/random")])
    (p / "a/text").write_text("hello mofs\n")
    os.symlink("a/text", p / "link")
    os.link(p / "a/text", p / "hard")
    os.setxattr(p / "a/text", "user.colour", b"blue")
    (p / "empty").touch()
    m.run(["truncate", "-s", "1000000", str(p / "sparse")])
    m.umount()
    m.start()
    assert (p / "a/b/c/random").read_bytes() == (tmp_path / "r").read_bytes()
    assert (p / "link").read_text() == "hello mofs\n" and os.readlink(p / "link") == "a/text"
    assert os.stat(p / "hard").st_nlink == 2
    assert os.getxattr(p / "a/text", "user.colour") == b"blue"
    assert (p / "empty").stat().st_size == 0
    assert (p / "sparse").read_bytes() == bytes(1000000)
    assert sorted(os.listdir(p)) == ["a", "empty", "hard", "link", "sparse"]


def test_truncate_unlink_open_file_and_rename_replace(mount):
    m = mount()
    p = m.path
    (p / "f").write_bytes(b"x" * 200000)
    os.truncate(p / "f", 70000)
    os.truncate(p / "f", 150000)
    assert (p / "f").read_bytes() == b"x" * 70000 + bytes(80000)
    (p / "old").write_text("old")
    (p / "new").write_text("new")
    os.rename(p / "new", p / "old")
    assert (p / "old").read_text() == "new" and not (p / "new").exists()
    with open(p / "f", "rb") as f:
        os.unlink(p / "f")
        assert not (p / "f").exists()
        assert f.read() == b"x" * 70000 + bytes(80000)
    st = os.statvfs(p)
    assert st.f_namemax == 255 and st.f_blocks > 0


def test_dead_mount_is_cleaned_and_remounted(mount):
    m = mount()
    (m.path / "x").write_text("x")
    m.kill9()
    force_unmount(m.path)
    m.start()
    assert (m.path / "x").exists()
