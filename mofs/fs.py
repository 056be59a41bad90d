"""The FUSE edge: pyfuse3 ``Operations`` that map inodes to memory objects.

Metadata (names, sizes, modes, owners, times, links, xattrs) lives in the store's
SQLite tables (:mod:`mofs.namespace`); file *contents* only ever move through the cache
and the protocol (:mod:`mofs.kernel`). The object id of a file is its inode number. This
is the only module that raises ``FUSEError``: lower layers raise their own exceptions and
:func:`_fuse_errors` turns them into errnos here, as S3QL's ``fs.py`` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import json
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from .errors import PageError, PagerFailed, PagerTimeout
from .extents import Extents
from .kernel import Kernel
from .messages import VM_SYNC_ASYNCHRONOUS, VM_SYNC_SYNCHRONOUS, ObjectId
from .namespace import Inode, Namespace
from .trace import TraceSink

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 1.0
NAME_MAX = 255
RELATIME_DAY_NS = 24 * 3600 * 10**9  # relatime: an atime this old moves on any read
TIME_MIN_NS, TIME_MAX_NS = -(2**63), 2**63 - 1  # times are SQLite integers of nanoseconds
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")  # what local file systems store
DOT_POSITIONS = 2  # readdir positions 1 and 2 are '.' and '..'; entry ids are shifted by 2
CONTROL_PREFIX = b"user.mofs."  # reserved xattr names on the root: the control interface
PAGER_XATTR = b"user.mofs.pager"  # on a directory: the pager of files created below it

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _fuse_errors(func: F) -> F:
    """Turn the exceptions of lower layers into the errno the caller should see."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except PageError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except PagerFailed as exc:
            # A timeout is news; a pager or object that already failed was reported then.
            level = logging.WARNING if isinstance(exc, PagerTimeout) else logging.DEBUG
            log.log(level, "%s: %s", func.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except OSError as exc:
            if not exc.errno or exc.errno == errno.EIO:
                log.error("%s failed: %s", func.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:  # a bug must fail one request, not take the mount down
            log.exception("%s failed", func.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)


def _check_xattr_name(name: bytes) -> None:
    """The kernel hands FUSE every name; ext4 and tmpfs know only these namespaces (and
    the kernel itself answers system.posix_acl_*)."""
    if not name.startswith(XATTR_NAMESPACES):
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)


def _clamp_time(ns: int) -> int:
    """Like a Linux file system clamps to its s_time_min/s_time_max, instead of failing:
    64-bit nanoseconds cover the years 1677 to 2262."""
    return min(max(ns, TIME_MIN_NS), TIME_MAX_NS)


def _relatime_due(inode: Inode, now: int) -> bool:
    """Whether a read moves the atime, as on a relatime mount (the Linux default)."""
    return (inode.atime_ns <= inode.mtime_ns or inode.atime_ns <= inode.ctime_ns
            or now - inode.atime_ns >= RELATIME_DAY_NS)


def _in_group(gid: int, pid: int, group: int) -> bool:
    """Whether the process ``pid`` (fs gid ``gid``) is a member of ``group``."""
    if gid == group:
        return True
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return str(group) in line.split()[1:]
    except OSError:
        pass
    return False


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str) -> None:
    """syncfs(2) of the file system at ``path``: the kernel writes back its dirty pages."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who opened a file handle (writes carry no request context of their own)."""

    uid: int
    gid: int
    pid: int
    noatime: bool = False
    writable: bool = False  # opened for writing

    @classmethod
    def of(cls, ctx: pyfuse3.RequestContext, flags: int = 0) -> Caller:
        return cls(ctx.uid, ctx.gid, ctx.pid, bool(flags & os.O_NOATIME),
                   flags & os.O_ACCMODE != os.O_RDONLY)


def _privileges_dropped(inode: Inode, mode: int, caller: Caller) -> int:
    """``mode`` without the set-user-ID and set-group-ID bits a write or truncate by
    ``caller`` must clear (Linux's file_remove_privs; uid 0 stands for CAP_FSETID).

    The FUSE kernel module already clears set-user-ID and set-group-ID with group execute
    by a setattr of its own, but it keeps set-group-ID without group execute even when the
    writer is not in the file's group, which ext4 clears; and with atomic O_TRUNC it
    sends no setattr at all."""
    if caller.uid == 0 or not stat.S_ISREG(inode.mode):
        return mode
    mode &= ~stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP
                                or not _in_group(caller.gid, caller.pid, inode.gid)):
        mode &= ~stat.S_ISGID
    return mode


class Operations(pyfuse3.Operations):
    """File-system requests in, namespace updates and cache calls out."""

    supports_dot_lookup = False
    # No writeback cache: with it the kernel keeps every regular file's mtime, ctime and
    # size to itself and ignores ours, which breaks POSIX times (truncate to the same
    # size, utimes clamping, ctime on setattr; tests/test_posix.py). Writes arrive in
    # 1 MiB requests without it, and overwrites cost no metadata transaction (lazy times).
    enable_writeback_cache = False

    def __init__(self, ns: Namespace, kernel: Kernel, trace: TraceSink | None = None) -> None:
        super().__init__()
        self.ns = ns
        self.kernel = kernel
        self.trace = trace
        self.lookups: Counter[int] = Counter()
        self.opens: Counter[int] = Counter()
        self.handles: dict[int, int] = {}
        self.callers: dict[int, Caller] = {}  # by file handle
        self._fh = itertools.count(1)
        self.pid = os.getpid()
        self.mountpoint: str | None = None  # once mounted
        self.allocated: dict[int, Extents] = {}  # written pages of files in use (st_blocks)
        self.freeing: dict[int, trio.Event] = {}  # deleted files whose pages are being dropped
        self.nursery: trio.Nursery | None = None  # where that happens (set by mount._run)

    # --- helpers -------------------------------------------------------------------------

    def _attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(inode.ino)
        a.generation = 0
        a.entry_timeout = ATTR_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = pyfuse3.ModeT(inode.mode)
        a.st_nlink = inode.nlink
        a.st_uid = inode.uid
        a.st_gid = inode.gid
        a.st_rdev = inode.rdev
        a.st_size = inode.size
        a.st_blksize = self.ns.page_size
        a.st_blocks = -(-self._allocated_bytes(inode) // 512)
        a.st_atime_ns = inode.atime_ns
        a.st_mtime_ns = inode.mtime_ns
        a.st_ctime_ns = inode.ctime_ns
        return a

    def _dir(self, ino: int) -> Inode:
        inode = self.ns.get(ino)
        if not stat.S_ISDIR(inode.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    def _new(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
             rdev: int = 0, target: bytes | None = None) -> Inode:
        _check_name(name)
        directory = self._dir(parent)
        if self.ns.lookup(parent, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        gid = ctx.gid
        if directory.mode & stat.S_ISGID:  # a set-group-ID directory passes on its group,
            gid = directory.gid  # and its set-group-ID bit to subdirectories
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        with self.ns.transaction():
            inode = self.ns.make_inode(mode, ctx.uid, gid, rdev=rdev, target=target)
            self.ns.link(parent, name, inode.ino)
            pager = self._pager_of(parent)  # inherited by files and directories made below
            if pager is not None and (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                self.ns.setxattr(inode.ino, PAGER_XATTR, pager.encode())
        self.lookups[inode.ino] += 1
        return self.ns.get(inode.ino)

    def _touch_atime(self, ino: int, inode: Inode) -> Inode:
        """Move the atime of a read file or listed directory if relatime says so. Best
        effort, as in Linux: a full or read-only store must not fail the read."""
        now = time.time_ns()
        if not _relatime_due(inode, now):
            return inode
        try:
            return self.ns.set_attrs(ino, atime_ns=now)
        except OSError as exc:
            log.debug("atime of inode %d not updated: %s", ino, exc)
            return inode

    def _pager_of(self, ino: int) -> str | None:
        """The URL of the pager an inode was created with (None: the mount's default)."""
        try:
            return self.ns.getxattr(ino, PAGER_XATTR).decode()
        except KeyError:
            return None

    def _object(self, ino: int) -> ObjectId:
        """The memory object of a regular file, started if the cache does not hold it."""
        obj_id = ObjectId(ino)
        if obj_id not in self.kernel.objects:
            self.kernel.open(obj_id, self.ns.get(ino).size, self._pager_of(ino))
        return obj_id

    def _allocated_bytes(self, inode: Inode) -> int:
        """Bytes of the file in pages written so far (st_blocks); see mofs.extents."""
        extents = self.allocated.get(inode.ino)
        if extents is not None:
            return extents.allocated_bytes(inode.size, self.ns.page_size)
        return inode.size if inode.allocated is None else min(inode.allocated, inode.size)

    def _extents(self, ino: int, size: int) -> Extents:
        """The written pages of a file in use, loaded from the store on first use."""
        extents = self.allocated.get(ino)
        if extents is None:
            saved = self.ns.allocation(ino)
            if saved is None:  # made before mofs kept track: count it as fully written
                extents = Extents([(0, -(-size // self.ns.page_size))])
                extents.changed = True
            else:
                extents = Extents.decode(saved)
            self.allocated[ino] = extents
        return extents

    def _save_extents(self, ino: int, size: int | None = None, keep: bool = True) -> None:
        """Store a file's written pages if they changed (on close, fsync and truncate).

        Best effort, like the atime: a full store must not fail the close or the fsync."""
        extents = self.allocated.get(ino) if keep else self.allocated.pop(ino, None)
        if extents is None or not extents.changed:
            return
        try:
            size = self.ns.get(ino).size if size is None else size
            self.ns.set_allocation(ino, extents.allocated_bytes(size, self.ns.page_size),
                                   extents.encode())
            extents.changed = False
        except (OSError, KeyError) as exc:
            log.debug("written pages of inode %d not saved: %s", ino, exc)

    def _truncated(self, ino: int, old: int, size: int) -> None:
        """A truncate cuts the written pages at the new end; saved at once (not hot)."""
        extents = self._extents(ino, old)
        extents.cut(-(-size // self.ns.page_size))
        extents.changed = True  # the bytes of a partial last page changed too
        self._save_extents(ino, size, keep=self.opens[ino] > 0)

    def save_allocations(self) -> None:
        """Store the written pages of every file in use (at unmount)."""
        for ino in list(self.allocated):
            with contextlib.suppress(KeyError):
                self._save_extents(ino, self.ns.get(ino).size)

    def _maybe_delete(self, ino: int) -> None:
        """Free an inode once no name, no open file and no kernel reference is left.

        A regular file keeps its inode (link count 0) until its pager has committed
        dropping the contents (:meth:`_free`): a crash in between leaves an orphan that
        the next mount frees, never pages that belong to no inode."""
        try:
            inode = self.ns.get(ino)
        except KeyError:
            return
        if inode.nlink > 0 or self.opens[ino] > 0 or self.lookups[ino] > 0:
            return
        self.lookups.pop(ino, None)
        self.opens.pop(ino, None)
        self.allocated.pop(ino, None)
        if not stat.S_ISREG(inode.mode):
            self.ns.delete_inode(ino)
        elif ino not in self.freeing and self.nursery is not None:  # else: the next mount
            self.freeing[ino] = trio.Event()
            self.nursery.start_soon(self._free, ino, inode.size)

    async def _free(self, ino: int, size: int) -> None:
        """Have the pager drop a deleted file's pages and commit that, then delete the inode.

        An asynchronous synchronize suffices: it returns once the pager has committed,
        which survives a crash of mofs (the default pager commits the inode's deletion to
        the same WAL after it, so a power loss keeps that order too)."""
        obj_id = ObjectId(ino)
        try:
            self.kernel.open(obj_id, size, self._pager_of(ino))  # restarts a failed object
            for attempt in (1, 2, 3):
                self.kernel.set_size(obj_id, 0)  # the pager drops the contents
                try:
                    await self.kernel.sync(obj_id, 0, 1, VM_SYNC_ASYNCHRONOUS)
                    break
                except PageError:  # older write errors come first: the pager's, the kernel's
                    if attempt == 3:
                        raise
            self.kernel.terminate(obj_id)
            self.ns.delete_inode(ino)
        except Exception as exc:
            level = logging.INFO if isinstance(exc, PagerFailed) else logging.WARNING
            log.log(level, "could not free the pages of deleted inode %d (the next mount "
                    "will): %s", ino, exc)
            with contextlib.suppress(Exception):
                self.kernel.terminate(obj_id)
        finally:
            self.freeing.pop(ino).set()

    async def settle(self) -> None:
        """Wait until the deleted files being freed are freed (before the pagers stop)."""
        while self.freeing:
            await next(iter(self.freeing.values())).wait()

    def file_of(self, obj_id: ObjectId) -> tuple[int, str | None] | None:
        """A file's size and pager, or None if it no longer exists (for journal replay)."""
        try:
            return self.ns.get(obj_id).size, self._pager_of(obj_id)
        except KeyError:
            return None

    def forget_orphan(self, ino: int) -> None:
        """Free an inode the daemon left without a name when it died: unlinked while open,
        or deleted before its pager had dropped the contents."""
        self._maybe_delete(ino)

    def _note(self, op: str, ino: int, phase: str) -> None:
        if self.trace is not None:
            self.trace.event(op, object=ino, phase=phase)

    # --- names ---------------------------------------------------------------------------

    @_fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> Any:
        _check_name(name)
        self._dir(parent_inode)
        if name == b".":
            ino: int | None = parent_inode
        else:
            ino = self.ns.lookup(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.lookups[ino] += 1
        return self._attrs(self.ns.get(ino))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # forget has no reply: an exception here would end the whole FUSE session.
        for ino, n in inode_list:
            self.lookups[ino] -= n
            if self.lookups[ino] <= 0:
                del self.lookups[ino]
                try:
                    self._maybe_delete(ino)
                except Exception:
                    log.exception("could not free inode %d", ino)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> Any:
        return self._attrs(self.ns.get(inode))

    @_fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> Any:
        if fields.update_size:  # stores queued before were copied at the old size
            await self.kernel.notices.settle(ObjectId(inode))
        now = time.time_ns()
        changes: dict[str, int] = {}
        current = self.ns.get(inode)
        mode = current.mode
        if fields.update_mode:
            mode = stat.S_IFMT(current.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_size:
            if stat.S_ISDIR(current.mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            self.kernel.set_size(self._object(inode), attr.st_size)
            self._truncated(inode, current.size, attr.st_size)
            changes.update(size=attr.st_size, mtime_ns=now)
            mode = _privileges_dropped(current, mode, Caller.of(ctx))
        if mode != current.mode:
            changes["mode"] = mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = _clamp_time(attr.st_atime_ns)
        if fields.update_mtime:
            changes["mtime_ns"] = _clamp_time(attr.st_mtime_ns)
        changes["ctime_ns"] = _clamp_time(attr.st_ctime_ns) if fields.update_ctime else now
        return self._attrs(self.ns.set_attrs(inode, **changes))

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.ns.readlink(inode)

    @_fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> Any:
        return self._attrs(self._new(parent_inode, name, mode, ctx, rdev=rdev))

    @_fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> Any:
        return self._attrs(self._new(parent_inode, name, stat.S_IFDIR | mode, ctx))

    @_fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> Any:
        return self._attrs(self._new(parent_inode, name, stat.S_IFLNK | 0o777, ctx,
                                     target=target))

    @_fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> Any:
        _check_name(new_name)
        self._dir(new_parent_inode)
        if stat.S_ISDIR(self.ns.get(inode).mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        self.ns.link(new_parent_inode, new_name, inode)
        self.lookups[inode] += 1
        return self._attrs(self.ns.get(inode))

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self.ns.lookup(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if stat.S_ISDIR(self.ns.get(ino).mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.ns.unlink(parent_inode, name)
        self._maybe_delete(ino)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self.ns.lookup(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._dir(ino)
        self.ns.unlink(parent_inode, name)
        self._maybe_delete(ino)

    @_fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        _check_name(name_new)
        replaced = self.ns.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        if replaced is not None:
            self._maybe_delete(replaced.ino)

    # --- directories ---------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._dir(inode)
        return inode

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self.ns.get(fh)
        if directory.nlink == 0:
            return  # a removed directory lists nothing, not even '.' and '..'
        directory = self._touch_atime(fh, directory)
        # '.' and '..' as a local disk lists them; the kernel takes no reference for them
        dots = [(b".", directory, 1), (b"..", self.ns.get(self.ns.parent(fh)), 2)]
        for name, inode, position in dots[start_id:]:
            if not pyfuse3.readdir_reply(token, name, self._attrs(inode), position):
                return
        start = max(start_id - DOT_POSITIONS, 0)
        while entries := self.ns.listing(fh, start):
            for name, inode, position in entries:
                if not pyfuse3.readdir_reply(token, name, self._attrs(inode),
                                             position + DOT_POSITIONS):
                    return
                self.lookups[inode.ino] += 1  # readdirplus: each entry is a kernel reference
                start = position

    async def releasedir(self, fh: int) -> None:
        pass

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = os.statvfs(os.path.dirname(os.path.abspath(self.ns.path)))
        inodes, _ = self.ns.counts()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = disk.f_frsize
        s.f_blocks = disk.f_blocks
        s.f_bfree = disk.f_bfree
        s.f_bavail = disk.f_bavail
        s.f_files = inodes + disk.f_ffree
        s.f_ffree = s.f_favail = disk.f_ffree
        s.f_namemax = NAME_MAX
        return s

    # --- files ---------------------------------------------------------------------------

    async def _open_handle(self, ino: int, caller: Caller) -> pyfuse3.FileInfo:
        # (a failed object starts anew here)
        self.kernel.open(ObjectId(ino), self.ns.get(ino).size, self._pager_of(ino))
        self.kernel.map(ObjectId(ino), writable=caller.writable)
        if caller.writable:  # no speculative store may land after this handle's writes
            await self.kernel.notices.settle(ObjectId(ino))
        fh = next(self._fh)
        self.handles[fh] = ino
        self.callers[fh] = caller
        self.opens[ino] += 1
        # keep_cache: the Linux page cache stays valid across opens; pagers invalidate it
        # with lock_request, which reaches it through invalidate_inode.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> Any:
        current = self.ns.get(inode)
        if stat.S_ISDIR(current.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        caller = Caller.of(ctx, flags)
        if flags & os.O_ACCMODE != os.O_WRONLY and not flags & os.O_TRUNC \
                and not caller.noatime:
            # Reads served from the Linux page cache (keep_cache) never reach us, so the
            # atime a read would move (relatime) moves when the file is opened for
            # reading: unlike a local disk, even if nothing is then read. Dropping the
            # page cache instead would also drop the pages pagers push into it.
            touched = self._touch_atime(inode, current)
            if touched.atime_ns != current.atime_ns:
                # the kernel's cached attributes would show the old atime until they
                # expire; attributes only, so this cannot block (no writeback cache)
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(pyfuse3.InodeT(inode), True)
        fi = await self._open_handle(inode, caller)
        if flags & os.O_TRUNC and stat.S_ISREG(current.mode):
            # libfuse asks for FUSE_CAP_ATOMIC_O_TRUNC, so the kernel passes O_TRUNC to
            # open and sends no setattr: truncating is up to us (the kernel has checked
            # write permission and emptied its page cache).
            try:
                self.kernel.set_size(ObjectId(inode), 0)
                now = time.time_ns()
                self.ns.set_attrs(inode, size=0, mtime_ns=now, ctime_ns=now,
                                  mode=_privileges_dropped(current, current.mode, caller))
                self._truncated(inode, current.size, 0)
            except BaseException:
                self._close_handle(fi.fh)  # the open fails: no release will come
                raise
        return fi

    @_fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> Any:
        inode = self._new(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return await self._open_handle(inode.ino, Caller.of(ctx, flags)), self._attrs(inode)

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        ino = self.handles[fh]
        data = await self.kernel.read(ObjectId(ino), off, size)
        if not self.callers[fh].noatime:
            self._touch_atime(ino, self.ns.get(ino))
        return data

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        ino = self.handles[fh]
        old = self.kernel.objects[ObjectId(ino)].size
        size = await self.kernel.write(ObjectId(ino), off, buf)
        ps = self.ns.page_size  # the pages written count for st_blocks
        self._extents(ino, old).add(off // ps, -(-(off + len(buf)) // ps))
        now = time.time_ns()
        inode = None
        if size != old:  # the size at once: no page may ever lie past the stored size
            inode = self.ns.set_attrs(ino, size=size, mtime_ns=now, ctime_ns=now)
        else:  # an overwrite moves only the times, which are written lazily
            self.ns.touch(ino, now)
        caller = self.callers[fh]
        if caller.uid != 0:  # root keeps set-user-ID and set-group-ID bits (CAP_FSETID)
            inode = inode or self.ns.get(ino)
            mode = _privileges_dropped(inode, inode.mode, caller)
            if mode != inode.mode:
                self.ns.set_attrs(ino, mode=mode)
        return len(buf)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        ino = self.handles[fh]
        self._note("fsync", ino, "call")
        obj = self.kernel.objects[ObjectId(ino)]
        # Times first: when the pager shares the store's WAL, its fsync makes them durable
        # too, and the commit below finds nothing left to fsync.
        self.ns.flush_times()
        await self.kernel.sync(obj.id, 0, max(obj.size, 1), VM_SYNC_SYNCHRONOUS)
        self._save_extents(ino, obj.size)
        self.ns.commit(durable=True)
        self._note("fsync", ino, "return")

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        # close(2): start writing back, as msync(MS_ASYNC) would; fsync is what waits.
        obj_id = ObjectId(self.handles[fh])
        if obj_id in self.kernel.objects:
            self.kernel.sync_nowait(obj_id, VM_SYNC_ASYNCHRONOUS)

    @_fuse_errors
    async def release(self, fh: int) -> None:
        self._close_handle(fh)

    def _close_handle(self, fh: int) -> None:
        ino = self.handles.pop(fh)
        caller = self.callers.pop(fh, None)
        self.opens[ino] -= 1
        self.kernel.unmap(ObjectId(ino), writable=caller is not None and caller.writable)
        if self.opens[ino] <= 0:
            del self.opens[ino]
            self._save_extents(ino, keep=False)
            self._maybe_delete(ino)

    # --- extended attributes (and the control interface on the root) ----------------------

    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == pyfuse3.ROOT_INODE and name == CONTROL_PREFIX + b"stat":
            stats = self.kernel.statistics()
            stats["pid"] = self.pid
            stats["store"] = os.path.abspath(self.ns.path)
            return json.dumps(stats).encode()
        _check_xattr_name(name)
        try:
            return self.ns.getxattr(inode, name)
        except KeyError:
            if name == PAGER_XATTR and stat.S_ISREG(self.ns.get(inode).mode):
                return self.kernel.conn.name.encode()  # which pager backs the file
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    @_fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if inode == pyfuse3.ROOT_INODE and name == CONTROL_PREFIX + b"sync":
            await self.sync_all()
            return
        if inode == pyfuse3.ROOT_INODE and name == CONTROL_PREFIX + b"drop_caches":
            await self.drop_caches()
            return
        _check_xattr_name(name)
        if name == PAGER_XATTR:
            self._check_pager(inode, value)
        self.ns.get(inode)
        self.ns.setxattr(inode, name, value)
        self.ns.set_attrs(inode, ctime_ns=time.time_ns())

    def _check_pager(self, inode: int, value: bytes) -> None:
        """Only directories choose a pager (a file keeps the one it was created with),
        and only one that can be opened."""
        if not stat.S_ISDIR(self.ns.get(inode).mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        try:
            self.kernel.connect(value.decode())
        except Exception as exc:
            log.warning("%s on inode %d: %s", PAGER_XATTR.decode(), inode, exc)
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        self.ns.get(inode)
        return self.ns.listxattr(inode)

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name == PAGER_XATTR and not stat.S_ISDIR(self.ns.get(inode).mode):
            raise pyfuse3.FUSEError(errno.EPERM)  # a file keeps the pager it was made with
        _check_xattr_name(name)
        try:
            self.ns.removexattr(inode, name)
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
        self.ns.set_attrs(inode, ctime_ns=time.time_ns())

    # --- whole-mount operations ----------------------------------------------------------

    async def sync_all(self) -> None:
        """Write back every dirty page and make it and the metadata durable (``mofs umount``).

        Dirty pages of shared mappings may still sit in the Linux page cache: the kernel
        is asked to write them to us first (``syncfs`` of the mount, in a thread, since
        those writes are requests that this process serves meanwhile). Like syncfs(2),
        every object gets its write-back before the first error is raised, so one
        failure (a full disk, pages a dead pager lost) is reported once."""
        if self.mountpoint is not None:
            try:
                await trio.to_thread.run_sync(syncfs, self.mountpoint)
            except OSError as exc:  # a file's write error is its own fsync's news
                log.debug("syncfs of %s: %s", self.mountpoint, exc)
        failed: Exception | None = None
        for obj in list(self.kernel.objects.values()):
            if obj.id in self.kernel.objects and obj.id not in self.freeing:
                try:
                    await self.kernel.sync(obj.id, 0, max(obj.size, 1), VM_SYNC_SYNCHRONOUS)
                except (PageError, PagerFailed) as exc:
                    # (a pager that came back restarts a failed object: a new incarnation)
                    if obj.id in self.kernel.objects:
                        failed = failed or exc  # else deleted meanwhile: terminate ended it
        self.ns.commit(durable=True)
        if failed is not None:
            raise failed

    async def drop_caches(self) -> None:
        """``mofs drop-caches``: what ``echo 3 > drop_caches`` is to a local disk, for this
        mount alone. The Linux page cache of every file the kernel knows is written back
        to us and dropped, everything is written back and synchronized, mofs's own cache
        is emptied, and the kernel's names below the root are forgotten.

        The names are forgotten after this request returns: the request holds the root
        directory's lock, which forgetting a name in it takes too. ``mofs drop-caches``
        waits for ``linux_notices_pending`` in the statistics to reach zero."""
        files = [ino for ino in self.lookups if ino != pyfuse3.ROOT_INODE]
        await trio.to_thread.run_sync(self._invalidate_data, files)
        await self.sync_all()
        self.kernel.drop_clean()
        for name, ino, _ in self.ns.entries(pyfuse3.ROOT_INODE):
            if ino in self.lookups:
                self.kernel.notify_linux(functools.partial(
                    pyfuse3.invalidate_entry, pyfuse3.InodeT(pyfuse3.ROOT_INODE),
                    pyfuse3.FileNameT(name)))

    @staticmethod
    def _invalidate_data(inodes: list[int]) -> None:
        for ino in inodes:
            with contextlib.suppress(OSError):  # not (or no longer) known to the kernel
                pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), False)

    # --- the Linux page cache (called by the kernel in a worker thread) ------------------

    def invalidate(self, obj_id: ObjectId) -> None:
        """Drop a file's pages from the Linux page cache, mappings included."""
        pyfuse3.invalidate_inode(pyfuse3.InodeT(obj_id), False)

    def store(self, obj_id: ObjectId, offset: int, data: bytes) -> None:
        """Put prefetched bytes into the Linux page cache (``notify_store``)."""
        pyfuse3.notify_store(pyfuse3.InodeT(obj_id), offset, data)
