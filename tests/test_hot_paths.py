"""The fast paths keep their promises: read-ahead, lazy times, big write-backs without a
second copy, sliced directory listings, one connection for the store."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from conftest import needs_fuse
from mounting import mofs

pytestmark = needs_fuse

MiB = 1 << 20
PAGE = 64 << 10


def messages(m) -> dict[str, int]:
    return m.stat()["messages"]


def test_a_sequential_cold_read_asks_the_pager_in_large_clusters(mount):
    m = mount()
    data = os.urandom(16 * MiB)
    (m.path / "f").write_bytes(data)
    mofs("drop-caches", str(m.path))
    before = messages(m).get("data_request", 0)
    assert (m.path / "f").read_bytes() == data
    requests = messages(m)["data_request"] - before
    pages = len(data) // PAGE
    # page by page would be 256 requests; read-ahead asks for up to 1 MiB at a time
    assert requests <= pages // 8, requests
    sizes = [t["length"] for t in m.trace_lines() if t["msg"] == "data_request"]
    assert max(sizes) == 16 * PAGE


def test_random_reads_do_not_read_ahead(mount):
    m = mount()
    data = os.urandom(8 * MiB)
    (m.path / "f").write_bytes(data)
    mofs("drop-caches", str(m.path))
    m.python("import os,sys\nfd=os.open(sys.argv[1], os.O_RDONLY)\n"
             "for page in (100, 3, 77, 40, 121, 9):\n"
             "    assert len(os.pread(fd, 4096, page * 65536)) == 4096",
             str(m.path / "f"))
    asked = [t for t in m.trace_lines() if t["msg"] == "data_request"][-6:]
    assert all(t["length"] == PAGE for t in asked), asked


def test_overwrite_times_show_at_once_and_survive_a_remount(mount):
    m = mount()
    f = m.path / "f"
    f.write_bytes(b"x" * 100000)
    before = os.stat(f)
    m.python("import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY)\nos.pwrite(fd, b'y', 10)",
             str(f))  # an overwrite: same size, no metadata transaction of its own
    after = os.stat(f)
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns
    m.umount()
    m.start()
    again = os.stat(f)
    assert (again.st_mtime_ns, again.st_ctime_ns) == (after.st_mtime_ns, after.st_ctime_ns)
    assert f.read_bytes()[9:12] == b"xyx"


def test_a_big_write_back_returns_pages_without_keeping_a_copy(mount, tmp_path):
    m = mount("--cache-size", "16M")  # a write-back above 4 MiB sheds its pages
    data = os.urandom(8 * MiB)
    (tmp_path / "src").write_bytes(data)
    m.python("import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT, 0o644)\n"
             "os.write(fd, open(sys.argv[2], 'rb').read())\nos.fsync(fd)",
             str(m.path / "f"), str(tmp_path / "src"))
    returns = [t for t in m.trace_lines() if t["msg"] == "data_return"]
    assert sum(t["length"] for t in returns if not t["kernel_copy"]) >= len(data) - 4 * MiB
    assert m.stat()["dirty_bytes"] == 0
    assert (m.path / "f").read_bytes() == data
    m.umount()
    m.start()
    assert (m.path / "f").read_bytes() == data


def test_a_big_directory_lists_every_name_once(mount, tmp_path):
    m = mount()
    d = m.path / "d"
    d.mkdir()
    names = {f"file-{i:05d}-{'n' * (i % 40)}" for i in range(3000)}
    (tmp_path / "names").write_text("\n".join(sorted(names)))
    m.python("import os,sys\nfor n in open(sys.argv[2]).read().split():\n"
             "    open(os.path.join(sys.argv[1], n), 'w').close()", str(d), str(tmp_path / "names"))
    listed = os.listdir(d)
    assert len(listed) == len(names) and set(listed) == names
    for name in sorted(names)[::7]:  # removing while listing neither repeats nor skips
        os.unlink(d / name)
    assert set(os.listdir(d)) == names - set(sorted(names)[::7])


def test_the_store_holds_pages_short_of_their_trailing_zeros(mount):
    m = mount()
    (m.path / "small").write_bytes(b"s" * 4000)
    m.umount()
    with closing(sqlite3.connect(m.store)) as db:
        lengths = [r[0] for r in db.execute("SELECT length(data) FROM pages")]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    assert lengths == [4000]  # not 65536: a small file takes little room
    assert page_size == 16384
    m.start()
    assert (m.path / "small").read_bytes() == b"s" * 4000
