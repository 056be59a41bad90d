"""``mofs drop-caches``: after it, every cache above the pager is empty and nothing is lost."""

from __future__ import annotations

import os

from conftest import needs_fuse
from mounting import mofs

pytestmark = needs_fuse

PAGE = 64 << 10


def requests(m) -> int:
    return int(m.stat()["messages"].get("data_request", 0))


def test_reads_after_drop_caches_reach_the_pager_again(mount):
    m = mount()
    data = os.urandom(8 * PAGE)
    (m.path / "f").write_bytes(data)
    (m.path / "d").mkdir()
    (m.path / "d" / "g").write_bytes(b"g" * 100)
    assert (m.path / "f").read_bytes() == data  # warm: served by the caches
    before = requests(m)
    assert (m.path / "f").read_bytes() == data
    assert requests(m) == before, "a warm read should not reach the pager"

    done = mofs("drop-caches", str(m.path), timeout=60)
    assert done.returncode == 0 and not done.stderr
    stats = m.stat()
    assert stats["resident_bytes"] == 0 and stats["dirty_bytes"] == 0
    assert stats["linux_notices_pending"] == 0

    assert (m.path / "f").read_bytes() == data  # cold: from the pager, byte for byte
    assert requests(m) > before, "after drop-caches the pages must come from the pager"
    assert (m.path / "d" / "g").read_bytes() == b"g" * 100


def test_drop_caches_writes_back_dirty_data_first(mount):
    m = mount()
    data = os.urandom(5 * PAGE + 123)
    with open(m.path / "f", "wb") as f:  # open while dropping: pages dirty, file in use
        f.write(data)
        f.flush()
        mofs("drop-caches", str(m.path), timeout=60)
        assert m.stat()["dirty_bytes"] == 0
        returned = [t for t in m.trace_lines() if t.get("msg") == "data_return"]
        assert sum(int(t["length"]) for t in returned) >= len(data)
    m.umount()
    m = mount()  # the same store, a new daemon: what drop-caches wrote back is there
    assert (m.path / "f").read_bytes() == data


def test_drop_caches_of_something_not_mounted(tmp_path):
    done = mofs("drop-caches", str(tmp_path), check=False, timeout=30)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
