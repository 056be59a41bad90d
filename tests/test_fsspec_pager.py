"""The fsspec pager (``fsspec+PROTO://...``): whole objects in any fsspec file system."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
from conftest import needs_fuse
from test_pagers import OBJ, PS, RW, page, running

from mofs.errors import UserError
from mofs.messages import (
    MEMORY_OBJECT_COPY_DELAY,
    VM_PROT_READ,
    VM_SYNC_ASYNCHRONOUS,
    VM_SYNC_SYNCHRONOUS,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    ObjectId,
    Ready,
    SetSize,
    Synchronize,
    SynchronizeCompleted,
    Terminate,
)
from pagers import FsspecPager, open_pager


@pytest.fixture(params=["memory", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store: a unique prefix of the process-global memory fs, or a local folder."""
    if request.param == "file":
        yield f"file://{tmp_path}/fs"
        return
    prefix = f"/mofs-test-{uuid.uuid4().hex}"
    yield f"memory://{prefix}/objects"
    fs = fsspec.filesystem("memory")
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)


def stored(url: str, obj: ObjectId = OBJ) -> bytes | None:
    """The object's file as another user of the store sees it."""
    fs, root = fsspec.core.url_to_fs(url)
    try:
        return fs.cat_file(f"{root.rstrip('/')}/{obj}")
    except FileNotFoundError:
        return None


def test_open_pager_fsspec_scheme(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    pager = open_pager(f"fsspec+file://{tmp_path}/x", store)
    assert isinstance(pager, FsspecPager) and pager.key(OBJ) == f"{tmp_path}/x/7"
    assert not (tmp_path / "x").exists()  # opening a pager touches nothing
    assert open_pager("fsspec+memory://b/p", store).key(OBJ) == "/b/p/7"  # type: ignore
    for bad in ("fsspec+", "fsspec+nosuchproto://x"):
        with pytest.raises(UserError) as info:
            open_pager(bad, store)
        assert info.value.exit_code == 2 and "\n" not in str(info.value)


async def test_ready_attributes(url: str) -> None:
    async with running(FsspecPager(url)) as kernel:
        assert await kernel.init() == Ready(OBJ, may_cache=True,
                                            copy_strategy=MEMORY_OBJECT_COPY_DELAY,
                                            cluster_size=0, silent_overwrite=True)


async def test_pages_are_buffered_until_synchronize_then_stored_whole(url: str) -> None:
    async with running(FsspecPager(url)) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, PS, page(1) + page(2), dirty=True, kernel_copy=False))
        assert await kernel.ask(DataRequest(OBJ, 0, 4 * PS, RW), replies=3) == [
            DataUnavailable(OBJ, 0, PS),
            DataSupply(OBJ, PS, page(1) + page(2)),
            DataUnavailable(OBJ, 3 * PS, PS)]
        assert stored(url) is None  # only in the buffer so far
        assert await kernel.ask(Synchronize(OBJ, 0, 3 * PS, VM_SYNC_ASYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, 3 * PS)]
        assert stored(url) == bytes(PS) + page(1) + page(2)
        kernel.inbox.send(DataReturn(OBJ, 0, b"head".ljust(PS, b"\0"), True, False))
        kernel.inbox.send(DataReturn(OBJ, 2 * PS, page(3), True, False))
        await kernel.ask(Synchronize(OBJ, 0, 3 * PS, VM_SYNC_SYNCHRONOUS))
        assert stored(url) == b"head".ljust(PS, b"\0") + page(1) + page(3)
        assert await kernel.ask(DataRequest(OBJ, 0, 3 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, b"head".ljust(PS, b"\0") + page(1) + page(3))]


async def test_holes_read_as_no_data_and_a_partial_last_page_is_not_padded(url: str) -> None:
    async with running(FsspecPager(url)) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 2 * PS, b"tail".ljust(PS, b"\0"), True, False))
        await kernel.ask(Synchronize(OBJ, 0, 3 * PS, VM_SYNC_ASYNCHRONOUS))
        assert stored(url) == bytes(2 * PS) + b"tail"
        assert await kernel.ask(DataRequest(OBJ, 0, 4 * PS, VM_PROT_READ), replies=3) == [
            DataUnavailable(OBJ, 0, 2 * PS),
            DataSupply(OBJ, 2 * PS, b"tail".ljust(PS, b"\0")),
            DataUnavailable(OBJ, 3 * PS, PS)]


async def test_set_size_cuts_buffer_and_store_and_zero_removes(url: str) -> None:
    async with running(FsspecPager(url)) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1) + page(2), True, False))
        await kernel.ask(Synchronize(OBJ, 0, 2 * PS, VM_SYNC_ASYNCHRONOUS))
        kernel.inbox.send(DataReturn(OBJ, 2 * PS, page(3) + page(4), True, False))
        kernel.inbox.send(SetSize(OBJ, PS + 100))  # cuts the stored page 2, drops 3 and 4
        assert await kernel.ask(DataRequest(OBJ, 0, 4 * PS, VM_PROT_READ), replies=2) == [
            DataSupply(OBJ, 0, page(1) + b"\2" * 100 + bytes(PS - 100)),
            DataUnavailable(OBJ, 2 * PS, 2 * PS)]
        kernel.inbox.send(SetSize(OBJ, 4 * PS))  # growing again: the cut bytes stay zeros
        kernel.inbox.send(DataReturn(OBJ, 3 * PS, page(5), True, False))
        await kernel.ask(Synchronize(OBJ, 0, 4 * PS, VM_SYNC_ASYNCHRONOUS))
        assert stored(url) == page(1) + b"\2" * 100 + bytes(2 * PS - 100) + page(5)
        kernel.inbox.send(SetSize(OBJ, 0))  # a deleted file leaves nothing behind
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS))
        assert stored(url) is None
        kernel.inbox.send(SetSize(OBJ, 3 * PS))  # a size change alone stores nothing
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS))
        assert stored(url) is None


async def test_pages_outlive_terminate_and_the_pager(url: str) -> None:
    async with running(FsspecPager(url)) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(5), True, False))
        kernel.inbox.send(Terminate(OBJ))  # writes the object out
        await kernel.init()
        assert stored(url) == page(5)
        kernel.inbox.send(DataReturn(OBJ, PS, page(6), True, False))  # never synchronized
        kernel.inbox.send(DataReturn(ObjectId(8), 0, page(8), True, False))
    assert stored(url) == page(5) + page(6)  # close wrote every buffered object out
    assert stored(url, ObjectId(8)) == page(8)
    async with running(FsspecPager(url)) as kernel:
        await kernel.init()
        assert await kernel.ask(DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, page(5) + page(6))]


async def test_a_full_buffer_is_written_out_unasked(url: str) -> None:
    pager = FsspecPager(url)
    pager.max_buffered = 2 * PS
    async with running(pager) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1) + page(2), True, False))
        await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ))
        assert stored(url) is None
        kernel.inbox.send(DataReturn(OBJ, 2 * PS, page(3), True, False))
        await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ))
        assert stored(url) == page(1) + page(2) + page(3)


async def test_durable_sync_of_a_local_store_fsyncs_file_and_folder(
        tmp_path: Path, fsynced: list[str]) -> None:
    synced = fsynced
    async with running(FsspecPager(f"file://{tmp_path}/fs")) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1), True, False))
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_ASYNCHRONOUS))
        assert synced == []
        kernel.inbox.send(DataReturn(OBJ, 0, page(2), True, False))
        await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS))
    assert len(synced) == 2 and synced[1] == f"{tmp_path}/fs"
    assert synced[0].startswith(f"{tmp_path}/fs/7.")  # written beside, then renamed
    assert sorted(os.listdir(tmp_path / "fs")) == ["7"]
    assert (tmp_path / "fs" / "7").read_bytes() == page(2)


async def test_a_failed_write_out_is_reported_and_the_pages_are_kept(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_bytes(b"a file where the store's folder should be")
    async with running(FsspecPager(f"file://{tmp_path}/blocker/fs")) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1), True, False))
        assert await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, PS, error=errno.ENOTDIR)]
        assert await kernel.ask(DataRequest(OBJ, 0, PS, VM_PROT_READ)) == [
            DataSupply(OBJ, 0, page(1))]  # still here
        (tmp_path / "blocker").unlink()
        (tmp_path / "blocker" / "fs").mkdir(parents=True)
        assert await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, PS)]  # the retry writes them
    assert (tmp_path / "blocker" / "fs" / "7").read_bytes() == page(1)


async def test_store_errors_that_are_not_oserrors_become_eio(url: str) -> None:
    pager = FsspecPager(url)
    working = pager.fs

    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("the store is down")

    pager.fs = _Broken(broken)  # type: ignore[assignment]
    async with running(pager) as kernel:
        await kernel.init()
        kernel.inbox.send(DataReturn(OBJ, 0, page(1), True, False))
        assert await kernel.ask(Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS)) == [
            SynchronizeCompleted(OBJ, 0, PS, error=errno.EIO)]
        assert await kernel.ask(DataRequest(ObjectId(9), 0, PS, VM_PROT_READ)) == [
            DataError(ObjectId(9), 0, PS, errno.EIO)]
        pager.fs = working  # back up: close writes the kept page out
    assert stored(url) == page(1)


class _Broken:
    """A file system whose every call fails with a non-OSError exception."""

    def __init__(self, fail: Callable[..., bytes]) -> None:
        self.fail = fail

    def __getattr__(self, name: str) -> object:
        return self.fail


# --- through a real mount ----------------------------------------------------------------------


@needs_fuse
def test_mount_fsspec_file_store_round_trip(mount, tmp_path: Path) -> None:
    store = tmp_path / "fs"
    source = tmp_path / "source"
    data = os.urandom(200_000)
    source.write_bytes(data)
    m = mount("--pager", f"fsspec+file://{store}")
    f = m.path / "f"
    m.run(["cp", str(source), str(f)])
    assert subprocess.run(["cat", str(f)], capture_output=True, check=True,
                          timeout=30).stdout == data
    m.python("import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)", str(f))
    ino = os.stat(f).st_ino
    assert (store / str(ino)).read_bytes() == data
    m.umount()
    m = mount("--pager", f"fsspec+file://{store}")
    assert subprocess.run(["cat", str(m.path / "f")], capture_output=True, check=True,
                          timeout=30).stdout == data
    m.run(["rm", str(m.path / "f")])
    m.umount()
    assert not (store / str(ino)).exists()
