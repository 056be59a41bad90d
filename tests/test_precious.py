"""Precious pages through a real mount: the anonymous-memory pager keeps no copy."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import needs_fuse

pytestmark = needs_fuse
MiB = 1 << 20
PS = 65536


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_a_file_bigger_than_the_cache_works_on_anonymous_memory(mount, tmp_path):
    data = random_file(tmp_path / "src", 24 * MiB)
    m = mount("--pager", "memory:", "--cache-size", "4M")
    m.run(["cp", str(tmp_path / "src"), str(m.path / "big")])
    m.run(["cmp", str(tmp_path / "src"), str(m.path / "big")])
    assert (m.path / "big").read_bytes() == data
    stats = m.stat()
    assert int(stats["resident_bytes"]) <= 4 * MiB
    supplies = [t for t in m.trace_lines() if t["msg"] == "data_supply"]
    assert supplies and all(t["precious"] for t in supplies)
    returns = [t for t in m.trace_lines() if t["msg"] == "data_return"]
    assert any(not t["dirty"] for t in returns), "clean precious pages are returned too"


def test_persistent_swap_survives_umount_and_mount(mount, tmp_path):
    data = random_file(tmp_path / "src", 8 * MiB)
    m = mount("--pager", f"memory:{tmp_path / 'swap.db'}", "--cache-size", "2M")
    m.run(["cp", str(tmp_path / "src"), str(m.path / "f")])
    m.umount()
    m.start()
    assert (m.path / "f").read_bytes() == data


def test_returned_precious_pages_survive_kill_9(mount, tmp_path):
    """The pager's swap disk is slow, so at the kill many returned pages are still on their
    way to it: only the journal written before each return can bring them back."""
    data = random_file(tmp_path / "src", 24 * MiB)
    swap = tmp_path / "swap.db"
    m = mount("--pager", f"python:tests.scripted_pager:SlowSwapPager:{swap}",
              "--cache-size", "4M")
    random_file(tmp_path / "other", 8 * MiB)
    m.run(["cp", str(tmp_path / "other"), str(m.path / "other")])
    m.run(["cp", str(tmp_path / "src"), str(m.path / "big")])
    ino = os.stat(m.path / "big").st_ino
    # Reads evict big's dirty pages without waiting for the pager: kill while they queue.
    reader = subprocess.Popen(["cat", str(m.path / "other")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while (queued := int(m.stat()["queued_to_pager_bytes"])) < MiB:
            assert reader.poll() is None and time.monotonic() < deadline, "nothing queued"
        m.kill9()  # nothing was fsync'd; whatever the cache had returned must survive
    finally:
        reader.kill()
        reader.wait(timeout=30)
    returned = set()
    for t in m.trace_lines():
        if t["msg"] == "data_return" and t["object"] == ino:
            returned.update(range(t["offset"], t["offset"] + t["length"], PS))
    assert len(returned) * PS >= 16 * MiB
    assert queued >= MiB, "the kill should find returns still queued for the pager"
    m.args = ("--pager", f"memory:{swap}")  # the same swap, now at full speed
    m.start()
    back = (m.path / "big").read_bytes()
    assert len(back) == len(data)
    lost = [off for off in sorted(returned) if back[off : off + PS] != data[off : off + PS]]
    assert not lost, f"{len(lost)} returned pages lost, first at {lost[0]}"
