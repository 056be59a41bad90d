"""A page fetched for a small read goes whole into the Linux page cache, and never
where a write could meet it (mofs/linux_cache.py)."""

from __future__ import annotations

import os
import subprocess
import time

from conftest import needs_fuse
from mounting import mofs

pytestmark = needs_fuse

PAGE = 64 << 10
PIECE = 4096


def cold(m, name: str, data: bytes) -> None:
    """``name`` holds ``data`` in the store, and no cache above the pager has it."""
    (m.path / name).write_bytes(data)
    mofs("drop-caches", str(m.path), timeout=60)


def in_page_cache(path) -> int:
    """Bytes of ``path`` in the Linux page cache, as util-linux's fincore counts them."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return int(out.strip())


def settled(m) -> dict:
    deadline = time.monotonic() + 30
    while (stats := m.stat())["linux_notices_pending"]:
        assert time.monotonic() < deadline, "page-cache notifications never finished"
        time.sleep(0.01)
    return stats


def test_a_small_read_brings_its_whole_page_into_the_linux_page_cache(mount):
    m = mount()
    data = os.urandom(3 * PAGE + 5000)  # the last page is short
    cold(m, "f", data)
    assert in_page_cache(m.path / "f") == 0
    fd = os.open(m.path / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, PIECE, PAGE + 2 * PIECE) == data[PAGE + 2 * PIECE:][:PIECE]
        assert os.pread(fd, PIECE, 3 * PAGE) == data[3 * PAGE:][:PIECE]
        stats = settled(m)
        assert stats["linux_stores"] >= 2  # before and after the first read
        assert in_page_cache(m.path / "f") == PAGE + 8192  # page 1, and the tail up to EOF
        fetched = stats["messages"]["data_request"]
        for off in range(PAGE, PAGE * 2, PIECE):  # the stored bytes are the file's
            assert os.pread(fd, PIECE, off) == data[off:off + PIECE]
        assert os.pread(fd, 2 * PIECE, 3 * PAGE) == data[3 * PAGE:]
        assert m.stat()["messages"]["data_request"] == fetched
    finally:
        os.close(fd)
    assert os.stat(m.path / "f").st_size == len(data), "a store must not move the end"
    assert (m.path / "f").read_bytes() == data


def test_nothing_is_stored_while_the_file_is_open_for_writing(mount):
    m = mount()
    data = os.urandom(2 * PAGE)
    cold(m, "f", data)
    writer = os.open(m.path / "f", os.O_RDWR)
    try:
        fd = os.open(m.path / "f", os.O_RDONLY)
        assert os.pread(fd, PIECE, PIECE) == data[PIECE:2 * PIECE]
        os.close(fd)
        assert settled(m)["linux_stores"] == 0
        assert in_page_cache(m.path / "f") == PIECE
    finally:
        os.close(writer)


def test_a_write_after_a_store_is_what_readers_see(mount):
    m = mount()
    data = bytearray(os.urandom(PAGE))
    cold(m, "f", bytes(data))
    for round_ in range(20):  # stores queued, then a writer opens at once
        reader = os.open(m.path / "f", os.O_RDONLY)
        os.pread(reader, PIECE, 0)
        new, at = os.urandom(PIECE), PIECE * (1 + round_ % 15)
        writer = os.open(m.path / "f", os.O_WRONLY)
        os.pwrite(writer, new, at)
        os.close(writer)
        data[at:at + PIECE] = new
        assert os.pread(reader, PAGE, 0) == data, f"round {round_}"
        os.close(reader)
        mofs("drop-caches", str(m.path), timeout=60)
    assert (m.path / "f").read_bytes() == data


def test_a_truncate_after_a_store_keeps_the_new_size(mount):
    m = mount()
    data = os.urandom(PAGE)
    cold(m, "f", data)
    with open(m.path / "f", "rb") as f:
        f.seek(PIECE)
        f.read(PIECE)
        os.truncate(m.path / "f", 3 * PIECE)  # by path: no handle open for writing
        settled(m)
        assert os.stat(m.path / "f").st_size == 3 * PIECE
        f.seek(0)
        assert f.read() == data[:3 * PIECE]
