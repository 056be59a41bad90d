"""Mount lifecycle: check the mountpoint, open store and pager, serve FUSE, write back on exit.

The order on the way out matters: when FUSE stops (``fusermount3 -u``, SIGTERM, SIGINT)
the cache still holds dirty pages. They are returned and synchronized with the pager,
and the metadata committed durably, before the process exits.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from pagers import SQLitePager, open_pager

from .control import Broadcast, ControlServer
from .errors import StoreError, UserError
from .fs import Operations, syncfs
from .fsck import quick_check
from .journal import ReturnJournal
from .kernel import Kernel
from .namespace import Namespace
from .trace import Tee, Trace

log = logging.getLogger(__name__)

EXIT_MOUNTPOINT = 4


@dataclass
class MountConfig:
    """Everything ``mofs mount`` was asked for."""

    store: str
    mountpoint: str
    pager_url: str | None = None
    cache_size: int = 256 << 20
    page_size: int = 64 << 10
    timeout: float = 30.0
    trace: str | None = None
    allow_other: bool = False


def check_mountpoint(path: str) -> str:
    """The mountpoint's real path, or a UserError saying why it cannot be used."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"mountpoint {path} does not exist", EXIT_MOUNTPOINT) from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UserError(
                f"mountpoint {path} is a dead mount (transport endpoint not connected); "
                f"run 'fusermount3 -u {path}' first", EXIT_MOUNTPOINT) from None
        raise UserError(f"mountpoint {path}: {exc.strerror}", EXIT_MOUNTPOINT) from None
    real = os.path.realpath(path)
    if not os.path.isdir(real) or st is None:
        raise UserError(f"mountpoint {path} is not a directory", EXIT_MOUNTPOINT)
    if os.path.ismount(real):
        raise UserError(f"mountpoint {path} is already a mount point (in use)", EXIT_MOUNTPOINT)
    if os.listdir(real):
        raise UserError(f"mountpoint {path} is not empty", EXIT_MOUNTPOINT)
    return real


MIN_CACHE_PAGES = 16  # a reader must find its page still resident when it wakes


def check_sizes(config: MountConfig) -> None:
    """Page size a power of two of at least 4 KiB (the cache is checked against the
    store's own page size once the store is open)."""
    ps = config.page_size
    if ps < 4096 or ps & (ps - 1):
        raise UserError(f"--page-size {ps} is not a power of two of at least 4096", 2)


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0): hand the free memory inside the heap back to the system.

    Pages of 64 KiB come and go all the time, among messages of every size, and glibc
    keeps freed heap memory: after a copy of 1 GiB through a 256 MiB cache had been
    written back, the daemon still held 314 MB, and 44 MB after a trim. (Making glibc
    map each page on its own frees it too, but a cold read then ran at a fifth of its
    speed: every page cost an mmap, an munmap and its page faults.)"""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator's own business
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


def serve(config: MountConfig, on_ready: Callable[[str], None]) -> None:
    """Mount, call ``on_ready`` with a one-line description, serve until unmounted."""
    check_sizes(config)
    mountpoint = check_mountpoint(config.mountpoint)
    store = os.path.abspath(config.store)
    if store.startswith(mountpoint + os.sep):
        raise UserError(f"the store {config.store} must not live inside the mountpoint",
                        EXIT_MOUNTPOINT)
    pager = open_pager(config.pager_url, store)  # before the store: a bad URL creates nothing
    if not os.path.exists(store) and config.cache_size < MIN_CACHE_PAGES * config.page_size:
        raise UserError(f"--cache-size must hold at least {MIN_CACHE_PAGES} pages "
                        f"({MIN_CACHE_PAGES * config.page_size // 1024} KiB)", 2)
    ns = Namespace.open(store, create=True, page_size=config.page_size)
    for level, line in [] if ns.created else quick_check(store):  # orphans, dangling names
        log.log(level, "%s", line)
    if ns.created:
        os.chmod(store, 0o600)  # file contents live in it: the owner's alone
    if isinstance(pager, SQLitePager) and _same_file(pager.path, store):
        pager.share(ns.connection, ns.sync_wal)  # the default: pages and metadata in one database
        missing = pager.missing_data_file()
        if missing:
            ns.close()
            raise StoreError(missing)
    if config.cache_size < MIN_CACHE_PAGES * ns.page_size:  # the store's page size rules
        ns.close()
        raise UserError(f"--cache-size must hold at least {MIN_CACHE_PAGES} pages of this "
                        f"store ({MIN_CACHE_PAGES * ns.page_size // 1024} KiB)", 2)
    trace_file = Trace(config.trace) if config.trace else None
    broadcast = Broadcast()  # to `mofs trace` clients
    trace = Tee(trace_file, broadcast) if trace_file is not None else broadcast
    journal = ReturnJournal(store)
    control: ControlServer | None = None
    try:
        kernel = Kernel(
            pager,
            pager_name=config.pager_url or "sqlite:",
            page_size=ns.page_size,
            budget=config.cache_size,
            timeout=config.timeout,
            tracer=trace,
            journal=journal,
            pager_factory=lambda url: open_pager(url, store),
        )
        ops = Operations(ns, kernel, trace)
        kernel.linux = ops
        fsname = store if "," not in store else "mofs"  # commas would split the option
        control = ControlServer(mountpoint, broadcast)  # before the mount appears
        options = set(pyfuse3.default_options) | {f"fsname={fsname}", "subtype=mofs"}
        if config.allow_other:  # opt-in: other users may then reach the files
            options.add("allow_other")
        try:
            pyfuse3.init(ops, mountpoint, options)
        except RuntimeError as exc:
            raise UserError(f"cannot mount on {mountpoint}: {exc}", EXIT_MOUNTPOINT) from None
        ops.mountpoint = mountpoint
        how = "created a new store" if ns.created else "existing store"
        message = f"mounted {config.store} on {mountpoint} ({how}, pager {kernel.conn.name})"
        unmounted = False
        try:
            trio.run(_run, ops, control, lambda: on_ready(message))
            unmounted = not _listed_mount(mountpoint)
        finally:
            pyfuse3.close(unmount=not unmounted)
    finally:
        if control is not None:
            control.close()
        journal.close()
        ns.close()
        trace.close()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _listed_mount(path: str) -> bool:
    """Whether ``path`` is still mounted, read from /proc/mounts.

    Never ``os.path.ismount`` here: once FUSE stops serving, a stat of our own mount
    would wait for an answer that only this process could give."""
    with open("/proc/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == path for line in f)


async def _run(ops: Operations, control: ControlServer, ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery  # deleted files are freed here, in the background
        await nursery.start(ops.kernel.run)
        await nursery.start(control.serve)  # until the end: clients see the write-back too
        replayed = await ops.kernel.replay_journal(ops.file_of)  # returns a crash left
        if replayed:
            log.info("replayed %d returned pages from the journal", replayed)
        for ino in ops.ns.orphans():  # unlinked while open, or deleted while being freed
            ops.forget_orphan(ino)
        nursery.start_soon(_stop_on_signal, ops)
        nursery.start_soon(_housekeeping, ops)
        ready()
        try:
            await pyfuse3.main()
        finally:
            with trio.CancelScope(shield=True):
                await ops.settle()  # deleted files: their pages go before the pagers stop
                ops.save_allocations()
                await ops.kernel.shutdown()
                ops.ns.commit(durable=True)
        nursery.cancel_scope.cancel()


async def _housekeeping(ops: Operations, every: float = 0.25) -> None:
    """Store the times of overwritten files (see Namespace.touch) at least once a second,
    and give freed memory back to the system when pages have come and gone."""
    trim = _malloc_trim()
    last_times = trio.current_time()
    churn = ops.kernel.cache.churn
    while True:
        await trio.sleep(every)
        if trio.current_time() - last_times >= 1.0:
            last_times = trio.current_time()
            try:
                ops.ns.flush_times()
            except OSError as exc:  # a full disk: kept in memory, tried again
                log.debug("could not store file times yet: %s", exc)
        if ops.kernel.cache.churn - churn >= TRIM_AFTER_BYTES:
            churn = ops.kernel.cache.churn
            trim()


TRIM_AFTER_BYTES = 32 << 20  # of pages dropped from the cache


async def _stop_on_signal(ops: Operations) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s: writing back and unmounting", signal.Signals(signum).name)
            if ops.mountpoint is not None:
                try:  # the Linux page cache's dirty pages first: after terminate, no one
                    with trio.move_on_after(ops.kernel.timeout):  # could take them
                        await trio.to_thread.run_sync(syncfs, ops.mountpoint,
                                                      abandon_on_cancel=True)
                except OSError as exc:
                    log.error("could not write back the kernel's dirty pages: %s", exc)
            pyfuse3.terminate()
            return
