"""Any fsspec file system as backing store (``fsspec+PROTO://...``).

``fsspec+memory://bucket/prefix``, ``fsspec+file:///var/lib/x`` or, with s3fs installed,
``fsspec+s3://bucket/prefix``: each memory object is one whole file (object, blob) at
``<prefix>/<object id>``. Object stores cannot write a byte range in place, so:

* ``read_page`` is a ranged read (``cat_file(path, start, end)``); a missing file, a
  range past its end or a page of zeros is "no data", which the kernel zero-fills.
* ``write_page`` only buffers the page in memory (the object's dirty pages), where reads
  find it. ``sync`` writes the object out: read-modify-write of the whole file (fetch it,
  apply the size and the buffered pages, ``pipe_file``). So does ``terminate``, and
  ``close`` for every object still buffered; an object whose buffer exceeds
  :attr:`FsspecPager.max_buffered` is written out as soon as it does.
* ``set_size`` applies at once to the buffered pages and is remembered for the backing
  file until the next write-out; size 0 removes the file. Zeros past the end are not
  written, so a file extended by a partial last page is not padded to a page boundary.
* A failed write-out keeps the buffered pages and reports the errno in the next
  ``synchronize_completed``; errors of the store that are not ``OSError`` count as EIO.

Every call into fsspec blocks, perhaps for long on a remote store, so it runs in a worker
thread (``trio.to_thread``); the kit's per-object workers keep each object's calls in
order while different objects proceed concurrently.

Limitations: each write-out costs a read and a write of the whole object, so large,
often-synced objects are slow; ``durable`` means what the store's ``pipe_file`` means,
except on ``file://``, where the file is replaced atomically (written beside it, then
renamed) and, when ``durable``, fsynced with its directory. Changes made
to the store by other programs are not noticed while the kernel caches the object.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import fsspec
import trio
from fsspec.implementations.local import LocalFileSystem

from mofs.messages import ObjectId

from .kit import Pager

log = logging.getLogger(__name__)

T = TypeVar("T")


class FsspecPager(Pager):
    """Stores each memory object as one file of the fsspec file system named by ``url``."""

    may_cache = True
    silent_overwrite = True
    max_buffered = 16 << 20
    """Bytes of dirty pages one object may buffer before it is written out unasked."""

    def __init__(self, url: str, **storage_options: object) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self._pages: dict[ObjectId, dict[int, bytes]] = {}  # dirty pages by offset
        self._cut: dict[ObjectId, int] = {}  # backing bytes past this are gone (set_size)
        self._bytes: dict[ObjectId, int] = {}  # bytes buffered per object
        self._root_made = False

    def key(self, obj: ObjectId) -> str:
        """The path of ``obj``'s file in the file system."""
        return f"{self.root}/{int(obj)}"

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking fsspec call in a thread; foreign exceptions become EIO."""
        try:
            return await trio.to_thread.run_sync(functools.partial(fn, *args))
        except OSError:
            raise
        except Exception as exc:
            raise OSError(errno.EIO, f"{self.url}: {type(exc).__name__}: {exc}") from exc

    # --- the kit's methods -------------------------------------------------------------

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        """The buffered page, else the stored bytes; None for zeros, past the end or if
        the file is missing."""
        data = self._pages.get(obj, {}).get(offset)
        if data is None:
            end = min(offset + length, self._cut.get(obj, offset + length))
            if end <= offset:
                return None
            try:
                data = bytes(await self._call(self.fs.cat_file, self.key(obj), offset, end))
            except FileNotFoundError:
                return None
        return None if data.count(0) == len(data) else data  # zeros: no data

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        """Buffer the page; write the object out if its buffer is full."""
        pages = self._pages.setdefault(obj, {})
        old = pages.get(offset, b"")
        pages[offset] = bytes(data)
        self._bytes[obj] = self._bytes.get(obj, 0) + len(data) - len(old)
        if self._bytes[obj] > self.max_buffered:
            await self._write_out(obj, durable=False)

    async def set_size(self, obj: ObjectId, size: int) -> None:
        """Cut the buffered pages at ``size`` and the stored file at the next write-out."""
        pages = self._pages.get(obj, {})
        for offset in list(pages):
            if offset >= size:
                del pages[offset]
            elif offset + len(pages[offset]) > size:
                pages[offset] = pages[offset][: size - offset]
        self._bytes[obj] = sum(len(page) for page in pages.values())
        self._cut[obj] = min(size, self._cut.get(obj, size))

    async def sync(self, obj: ObjectId, durable: bool) -> None:
        await self._write_out(obj, durable)

    async def terminate(self, obj: ObjectId) -> None:
        """Write the object out; on failure keep its pages (reads and ``close`` retry)."""
        try:
            await self._write_out(obj, durable=False)
        except OSError as exc:
            log.error("%s: could not write object %s out: %s", self.url, obj, exc)

    async def close(self) -> None:
        for obj in sorted(set(self._pages) | set(self._cut)):
            try:
                await self._write_out(obj, durable=False)
            except OSError as exc:
                log.error("%s: could not write object %s out, its returned pages are lost: %s",
                          self.url, obj, exc)

    # --- writing out -------------------------------------------------------------------

    async def _write_out(self, obj: ObjectId, durable: bool) -> None:
        """Read-modify-write the object's file with its size and buffered pages."""
        pages, cut = self._pages.get(obj), self._cut.get(obj)
        if not pages and cut is None:
            return
        await self._call(self._rewrite, self.key(obj), dict(pages or {}), cut, durable)
        self._pages.pop(obj, None)
        self._cut.pop(obj, None)
        self._bytes.pop(obj, None)

    def _rewrite(self, path: str, pages: dict[int, bytes], cut: int | None,
                 durable: bool) -> None:
        """In a worker thread: fetch, apply, store (or remove when nothing is left)."""
        try:
            base = self.fs.cat_file(path)
        except FileNotFoundError:
            base = None
        if not pages and (base is None or cut is None or len(base) <= cut):
            return  # only a size change, and it cuts nothing
        data = bytearray(base or b"")
        if cut is not None:
            del data[cut:]
        end = len(data)
        for offset, page in sorted(pages.items()):
            if offset > len(data):
                data.extend(bytes(offset - len(data)))
            data[offset : offset + len(page)] = page
            end = max(end, offset + len(page.rstrip(b"\0")))
        del data[end:]  # zeros past the end need not be stored
        if not data:
            if base is not None:
                self.fs.rm_file(path)
            return
        if not self._root_made:
            try:
                self.fs.makedirs(self.root, exist_ok=True)
            except Exception as exc:  # a store without directories may refuse; pipe_file tells
                log.debug("%s: makedirs(%s): %r", self.url, self.root, exc)
            self._root_made = True
        if isinstance(self.fs, LocalFileSystem):
            _replace_local(path, bytes(data), durable)
        else:
            self.fs.pipe_file(path, bytes(data))


def _replace_local(path: str, data: bytes, durable: bool) -> None:
    """Write a local file atomically: a crash leaves the old contents or the new ones."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
