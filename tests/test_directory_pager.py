"""The directory pager (``dir:PATH``): plain files, sparse holes, and push invalidation."""

from __future__ import annotations

import mmap
import os
import subprocess
import time
from pathlib import Path

import trio
from conftest import needs_fuse
from test_pagers import OBJ, PS, RW, Kernel, page, running

from mofs.messages import (
    MEMORY_OBJECT_COPY_DELAY,
    MEMORY_OBJECT_RETURN_NONE,
    VM_PROT_NO_CHANGE,
    VM_PROT_READ,
    VM_SYNC_ASYNCHRONOUS,
    VM_SYNC_SYNCHRONOUS,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    LockCompleted,
    LockRequest,
    ObjectId,
    Ready,
    SetSize,
    Synchronize,
    SynchronizeCompleted,
    Terminate,
)
from pagers import DirectoryPager, open_pager

OTHER = ObjectId(8)  # > OBJ: the watcher looks at changed objects in ascending order


def flush(obj: ObjectId, length: int) -> LockRequest:
    return LockRequest(obj, 0, length, MEMORY_OBJECT_RETURN_NONE, should_flush=True,
                       lock_value=VM_PROT_NO_CHANGE, reply=True)


def poke(path: Path, data: bytes, offset: int) -> None:
    """Another program's write to a backing file (the pager cannot tell it from ours by
    the writer; only by the file's state)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


async def next_lock_request(kernel: Kernel) -> LockRequest:
    """The next message, which must be a lock_request, within a second."""
    with trio.fail_after(1):
        _, msg = await kernel.outbox.receive()
    assert isinstance(msg, LockRequest), msg
    kernel.inbox.send(LockCompleted(msg.object, msg.offset, msg.length))
    return msg


async def write(kernel: Kernel, obj: ObjectId, offset: int, data: bytes) -> None:
    """Return pages and wait until the pager has written them (synchronize_completed)."""
    kernel.inbox.send(DataReturn(obj, offset, data, dirty=True, kernel_copy=True))
    assert await kernel.ask(Synchronize(obj, offset, len(data), VM_SYNC_ASYNCHRONOUS)) == [
        SynchronizeCompleted(obj, offset, len(data))]


# --- storage -------------------------------------------------------------------------------


async def test_ready_attributes_and_directory_created(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    async with running(DirectoryPager(str(folder))) as kernel:
        assert await kernel.init() == Ready(OBJ, may_cache=True,
                                            copy_strategy=MEMORY_OBJECT_COPY_DELAY,
                                            cluster_size=0, silent_overwrite=True)
        assert folder.is_dir()


def test_open_pager_dir_scheme(tmp_path: Path) -> None:
    pager = open_pager(f"dir:{tmp_path / 'x'}", str(tmp_path / "store.db"))
    assert isinstance(pager, DirectoryPager) and pager.path == str(tmp_path / "x")
    assert not (tmp_path / "x").exists()  # opening a pager touches nothing


async def test_pages_are_byte_ranges_of_the_objects_file(tmp_path: Path) -> None:
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        await write(kernel, OBJ, PS, page(1) + page(2))
        assert (tmp_path / "7").read_bytes() == bytes(PS) + page(1) + page(2)
        assert await kernel.ask(DataRequest(OBJ, 0, 4 * PS, RW), replies=3) == [
            DataUnavailable(OBJ, 0, PS),  # a hole
            DataSupply(OBJ, PS, page(1) + page(2)),
            DataUnavailable(OBJ, 3 * PS, PS)]  # past the end of the file
        assert await kernel.ask(DataRequest(ObjectId(99), 0, PS, VM_PROT_READ)) == [
            DataUnavailable(ObjectId(99), 0, PS)]  # no file at all
    assert not (tmp_path / "99").exists()


async def test_holes_stay_sparse_and_zero_pages_punch_holes(tmp_path: Path) -> None:
    backing = tmp_path / "7"
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        await write(kernel, OBJ, 3 * PS, page(3))
        with open(backing, "rb") as f:
            assert os.lseek(f.fileno(), 0, os.SEEK_DATA) == 3 * PS
        await write(kernel, OBJ, 0, page(1) + page(2))
        await write(kernel, OBJ, 0, bytes(PS))  # zeros inside the file: a hole
        with open(backing, "rb") as f:
            assert os.lseek(f.fileno(), 0, os.SEEK_DATA) == PS
        await write(kernel, OBJ, 8 * PS, bytes(PS))  # zeros past the end: nothing
        assert backing.stat().st_size == 4 * PS
        assert backing.read_bytes() == bytes(PS) + page(2) + bytes(PS) + page(3)
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ), replies=2) == [
            DataUnavailable(OBJ, 0, PS), DataSupply(OBJ, PS, page(2))]


async def test_a_partial_last_page_is_not_padded(tmp_path: Path) -> None:
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        await write(kernel, OBJ, 0, b"hello".ljust(PS, b"\0"))
        assert (tmp_path / "7").read_bytes() == b"hello"
        await write(kernel, OBJ, 0, b"hi".ljust(PS, b"\0"))  # inside the file: zeros written
        assert (tmp_path / "7").read_bytes() == b"hi\0\0\0"
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, b"hi".ljust(PS, b"\0"))]


async def test_set_size_truncates_extends_and_removes(tmp_path: Path) -> None:
    backing = tmp_path / "7"
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        await write(kernel, OBJ, 0, page(1) + page(2) + page(3))
        kernel.inbox.send(SetSize(OBJ, PS + 100))
        assert await kernel.ask(DataRequest(OBJ, 0, 3 * PS, VM_PROT_READ), replies=2) == [
            DataSupply(OBJ, 0, page(1) + b"\2" * 100 + bytes(PS - 100)),
            DataUnavailable(OBJ, 2 * PS, PS)]
        assert backing.stat().st_size == PS + 100
        kernel.inbox.send(SetSize(OBJ, 10 * PS))  # sparse, like the mofs file
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS))
        assert backing.stat().st_size == 10 * PS
        assert backing.stat().st_blocks * 512 <= 2 * PS
        kernel.inbox.send(SetSize(OBJ, 0))  # a deleted file leaves nothing behind
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS))
        assert not backing.exists()
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataUnavailable(OBJ, 0, PS)]
        await write(kernel, OBJ, 0, page(4))  # and comes back when written again
        assert backing.read_bytes() == page(4)


async def test_durable_sync_fsyncs_the_written_file_and_the_directory(
        tmp_path: Path, fsynced: list[str]) -> None:
    synced = fsynced
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        await kernel.init(OTHER)
        await write(kernel, OBJ, 0, page(1))  # not durable: nothing fsynced
        assert synced == []
        assert await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, PS)]
        assert synced == [str(tmp_path / "7"), str(tmp_path)]
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        assert synced == [str(tmp_path / "7"), str(tmp_path)]  # nothing new to sync
        # (objects are served concurrently: OTHER's return is sent only now, so that its
        # new file cannot be created while OBJ syncs)
        kernel.inbox.send(DataReturn(OTHER, 0, page(2), True, False))
        await kernel.ask(Synchronize(OTHER, 0, PS, VM_SYNC_SYNCHRONOUS))
        assert synced[2:] == [str(tmp_path / "8"), str(tmp_path)]


async def test_pages_outlive_terminate_and_the_pager(tmp_path: Path) -> None:
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(5), True, False))
        kernel.inbox.send(Terminate(OBJ))
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, page(5))]
        kernel.inbox.send(DataReturn(OBJ, PS, page(6), True, False))  # never synchronized
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, page(5) + page(6))]


async def test_file_descriptors_are_bounded_and_closed(tmp_path: Path) -> None:
    pager = DirectoryPager(str(tmp_path))
    pager.max_open = 2
    async with running(pager) as kernel:
        for obj in range(1, 5):
            await kernel.init(ObjectId(obj))
            await write(kernel, ObjectId(obj), 0, page(obj))
            assert len(pager._fds) <= 2
        for obj in range(1, 5):
            assert await kernel.ask(DataRequest(ObjectId(obj), 0, PS, VM_PROT_READ)) == [
                DataSupply(ObjectId(obj), 0, page(obj))]
    assert pager._fds == {}


# --- push invalidation -----------------------------------------------------------------------


async def test_another_programs_write_flushes_the_object_and_ours_do_not(
        tmp_path: Path) -> None:
    pager = DirectoryPager(str(tmp_path))
    async with running(pager) as kernel:
        await kernel.init()
        await kernel.init(OTHER)
        await write(kernel, OTHER, 0, page(8))
        await write(kernel, OBJ, 0, page(1) + page(2))  # our own writes...
        kernel.inbox.send(SetSize(OBJ, 2 * PS + 10))
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
        poke(tmp_path / "8", b"X", 0)  # ...their events come before this one's
        assert await next_lock_request(kernel) == flush(OTHER, PS)
        poke(tmp_path / "7", b"new!", PS + 4)
        assert await next_lock_request(kernel) == flush(OBJ, 3 * PS)
        assert await kernel.ask(DataRequest(OBJ, PS, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, PS, b"\2" * 4 + b"new!" + b"\2" * (PS - 8))]
    assert pager.invalidations == 2


async def test_the_flush_uses_the_objects_page_size_and_covers_a_shrunk_file(
        tmp_path: Path) -> None:
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init(OBJ, page_size=512)
        await write(kernel, OBJ, 0, b"a" * 2048)
        os.truncate(tmp_path / "7", 100)
        assert await next_lock_request(kernel) == flush(OBJ, 2048)
        poke(tmp_path / "7", b"b" * 1000, 0)
        assert await next_lock_request(kernel) == flush(OBJ, 1024)


async def test_a_file_replaced_by_rename_is_reopened(tmp_path: Path) -> None:
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        await write(kernel, OBJ, 0, page(1))
        (tmp_path / "tmp").write_bytes(page(2) + page(3))
        os.rename(tmp_path / "tmp", tmp_path / "7")
        assert await next_lock_request(kernel) == flush(OBJ, 2 * PS)
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, page(2) + page(3))]
        await write(kernel, OBJ, PS, page(4))  # into the new file, not the unlinked one
        assert (tmp_path / "7").read_bytes() == page(2) + page(4)


async def test_a_removed_file_reads_as_zeros(tmp_path: Path) -> None:
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init()
        await write(kernel, OBJ, 0, page(1))
        os.unlink(tmp_path / "7")
        assert await next_lock_request(kernel) == flush(OBJ, PS)
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataUnavailable(OBJ, 0, PS)]


async def test_objects_the_kernel_does_not_cache_are_not_flushed(tmp_path: Path) -> None:
    async with running(DirectoryPager(str(tmp_path))) as kernel:
        await kernel.init(OTHER)
        await kernel.init()
        await write(kernel, OBJ, 0, page(1))
        kernel.inbox.send(Terminate(OBJ))
        await kernel.ask(Synchronize(OBJ, 0, PS, 0))  # answered once the terminate is done
        (tmp_path / "5").write_bytes(b"never initialised")
        (tmp_path / "notes.txt").write_bytes(b"not an object")
        poke(tmp_path / "7", b"terminated", 0)
        (tmp_path / "8").write_bytes(b"cached")
        assert await next_lock_request(kernel) == flush(OTHER, PS)


class _Deaf(DirectoryPager):
    """A directory pager whose watcher never sees an event."""

    async def _watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
        task_status.started()


async def test_a_change_our_own_write_would_hide_is_flushed_by_that_write(
        tmp_path: Path) -> None:
    async with running(_Deaf(str(tmp_path))) as kernel:
        await kernel.init()
        await write(kernel, OBJ, 0, page(1) + page(2))
        poke(tmp_path / "7", b"theirs", 0)
        kernel.inbox.send(DataReturn(OBJ, PS, page(3), True, False))
        assert await next_lock_request(kernel) == flush(OBJ, 2 * PS)
        assert (tmp_path / "7").read_bytes() == b"theirs" + page(1)[6:] + page(3)


# --- through a real mount ----------------------------------------------------------------------


def wait_until(predicate, what: str, timeout: float):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.005)
    return result


def cat(path: Path) -> bytes:
    """``cat``, a separate program reading through the mount."""
    return subprocess.run(["cat", str(path)], capture_output=True, check=True,
                          timeout=10).stdout


FSYNC = "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)"
POKE = ("import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); "
        "os.pwrite(fd, sys.argv[2].encode(), int(sys.argv[3])); os.close(fd)")


@needs_fuse
def test_mount_dir_pager_sees_another_programs_change_within_a_second(
        mount, tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    source = tmp_path / "source"
    data = os.urandom(150_000)
    source.write_bytes(data)
    m = mount("--pager", f"dir:{backing}")
    f = m.path / "f"
    m.run(["cp", str(source), str(f)])
    m.python(FSYNC, str(f))
    ino = os.stat(f).st_ino
    assert (backing / str(ino)).read_bytes() == data
    assert f.read_bytes() == data
    fd = os.open(f, os.O_RDONLY)
    try:
        view = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ)
        assert view[70_000:70_004] == data[70_000:70_004]
        assert not [t for t in m.trace_lines() if t["msg"] == "lock_request"]

        changed = time.monotonic()
        m.python(POKE, str(backing / str(ino)), "NEW!", "70000")  # another program
        expected = data[:70_000] + b"NEW!" + data[70_004:]
        wait_until(lambda: cat(f) == expected,
                   "cat shows the new bytes", timeout=1 - (time.monotonic() - changed))
        assert view[70_000:70_004] == b"NEW!"
        view.close()
    finally:
        os.close(fd)
    locks = [t for t in m.trace_lines() if t["msg"] == "lock_request"]
    assert [(t["object"], t["should_flush"]) for t in locks][:1] == [(ino, True)]
    assert any(t["msg"] == "lock_completed" and t["object"] == ino for t in m.trace_lines())

    m.umount()  # and the contents survive the mount
    m = mount("--pager", f"dir:{backing}")
    assert (m.path / "f").read_bytes() == expected
