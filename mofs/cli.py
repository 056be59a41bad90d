"""The ``mofs`` command: mount, umount, stat, trace, fsck.

Every failure the user can cause ends in one line on stderr and a documented exit code
(docs/cli.md); tracebacks go to the daemon's log, never to the terminal.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time

from .errors import UserError

EXIT_USAGE = 2
EXIT_MOUNTPOINT = 4
EXIT_WRITEBACK = 5
CONTROL_STAT = "user.mofs.stat"
CONTROL_SYNC = "user.mofs.sync"
CONTROL_DROP_CACHES = "user.mofs.drop_caches"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``16M``, ``256MiB``, ``1g``, ``65536`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mofs", description="A FUSE file system whose contents are served by memory-object "
        "pagers speaking the Mach external-pager protocol.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mount", help="mount a store (created if missing)",
                       description="Mount STORE on MOUNTPOINT. Creates the store if it does not "
                       "exist. Returns once the mount is up unless --foreground is given.")
    m.add_argument("store", metavar="STORE", help="the store file (SQLite)")
    m.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    m.add_argument("--pager", metavar="URL", default=None,
                   help="pager serving file contents: sqlite: (default, the store itself), "
                   "sqlite:PATH, memory:[SWAP], dir:PATH, fsspec+PROTO://..., "
                   "python:MODULE:CLASS[:ARG], or an installed plug-in's scheme "
                   "(see 'mofs pagers')")
    m.add_argument("--cache-size", metavar="SIZE", type=parse_size, default=256 << 20,
                   help="memory budget for cached pages (default 256M)")
    m.add_argument("--page-size", metavar="SIZE", type=parse_size, default=64 << 10,
                   help="protocol page size for a new store (power of two, default 64K)")
    m.add_argument("--pager-timeout", metavar="SECONDS", type=float, default=30.0,
                   help="fail an operation with EIO when the pager does not answer in time")
    m.add_argument("--allow-other", action="store_true",
                   help="let users other than the one mounting access the files (FUSE "
                   "allow_other; permissions are still checked)")
    m.add_argument("--foreground", action="store_true", help="do not detach; log to stderr")
    m.add_argument("--trace", metavar="FILE", help="append one JSON line per protocol message")
    m.add_argument("--log", metavar="FILE",
                   help="daemon log when detached (default: STORE.log)")
    m.add_argument("--debug", action="store_true", help="log debug messages")
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="write back every dirty page, then unmount",
                       description="Return and synchronize every dirty page, unmount, and wait "
                       "for the daemon to exit.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("--timeout", metavar="SECONDS", type=float, default=120.0,
                   help="how long to wait for open files to be closed and the daemon to exit "
                   "(default 120)")

    s = sub.add_parser("stat", help="show cache and protocol statistics of a mount",
                       description="Objects, resident/dirty/precious bytes, the budget and the "
                       "count of each protocol message.")
    s.add_argument("mountpoint", metavar="MOUNTPOINT")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    t = sub.add_parser(
        "trace", help="follow the protocol messages of a mount as they happen",
        description="Print the protocol messages of the mount at MOUNTPOINT as the daemon "
        "sends them: one JSON object per line, as in the file of 'mofs mount --trace', with "
        "the file-system calls that bracket a dialogue as \"dir\": \"fuse\" lines. Runs until "
        "interrupted (Ctrl-C), until --count lines are printed, or until --timeout seconds "
        "pass (counted from the start); a line on stderr says when it is connected. The "
        "filters combine: a line is printed if it matches one --path and one --msg.",
        epilog="The daemon never waits for a slow reader: lines that do not fit in its buffer "
        "are dropped, and a {\"dir\": \"meta\", \"msg\": \"dropped\", \"count\": N} line says so "
        "(it does not count for --count).")
    t.add_argument("mountpoint", metavar="MOUNTPOINT")
    t.add_argument("--path", metavar="FILE", action="append",
                   help="only messages about FILE, a file on the mount (repeatable)")
    t.add_argument("--msg", metavar="NAME", action="append",
                   help="only messages named NAME, e.g. data_request (or "
                   "memory_object_data_request), data_return or fsync (repeatable)")
    t.add_argument("--count", metavar="N", type=_positive_int,
                   help="exit after printing N lines")
    t.add_argument("--timeout", metavar="SECONDS", type=float,
                   help="exit after SECONDS seconds")
    d = sub.add_parser("drop-caches", help="write back, then empty every cache of a mount",
                       description="What 'echo 3 > /proc/sys/vm/drop_caches' is to a local "
                       "disk, for one mount: return and synchronize every dirty page, empty "
                       "mofs's own cache and the Linux page cache, attributes and names of "
                       "the mount. The next reads are cold.")
    d.add_argument("mountpoint", metavar="MOUNTPOINT")
    d.add_argument("--timeout", metavar="SECONDS", type=float, default=120.0,
                   help="how long to wait for the write-back (default 120)")
    sub.add_parser("pagers", help="list the pager URL schemes this mofs can use",
                   description="The built-in pager schemes and the plug-ins installed under "
                   "the 'mofs.pagers' entry-point group.")
    c = sub.add_parser("pager-check", help="check that a pager keeps the protocol's promises",
                       description="Drive the pager named by URL through the conformance "
                       "suite (pagers/conformance.py) and report each guarantee; exit 1 at the "
                       "first broken one, naming it.")
    c.add_argument("url", metavar="URL")
    c.add_argument("--store", metavar="STORE",
                   help="store file for sqlite: (default: a temporary one)")
    c.add_argument("--persistent", action=argparse.BooleanOptionalAction, default=None,
                   help="also check that data survives a new pager on the same store "
                   "(default: inferred for built-in pagers)")
    c.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0,
                   help="how long one answer may take (default 10)")
    from .serve_pager import add_parser as add_serve_pager_parser  # a pager apart

    add_serve_pager_parser(sub)
    f = sub.add_parser(
        "fsck", help="check that an unmounted store's metadata and pages agree",
        description="Check the store: names of missing inodes, orphans, link counts, "
        "directories cut off from the root, pages that belong to no file or lie past its "
        "end, pages of the wrong size, bytes past the end of a file. One line per problem "
        "on stdout, then a summary. Exit 0 if clean (or all repaired), 1 if problems are "
        "left, 3 if STORE is not a mofs store, 4 if it is mounted.")
    f.add_argument("store", metavar="STORE")
    f.add_argument("--repair", action="store_true",
                   help="fix what is safe to fix, in one transaction (nameless files and cut-off "
                   "directories go to /lost+found)")
    f.add_argument("--quiet", action="store_true", help="no progress on stderr")
    from .bench import add_parser as add_bench_parser  # mofs bench: docs/performance.md

    add_bench_parser(sub)
    return p


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mofs`` script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "mount":
            return _mount(args)
        if args.command == "umount":
            return _umount(args)
        if args.command == "trace":
            return _trace(args)
        if args.command == "drop-caches":
            return _drop_caches(args)
        if args.command == "pagers":
            return _pagers()
        if args.command == "pager-check":
            return _pager_check(args)
        if args.command == "serve-pager":
            from .serve_pager import main as serve_pager

            return serve_pager(args)
        if args.command == "fsck":
            from .fsck import main as fsck

            return fsck(args.store, repair=args.repair, quiet=args.quiet)
        if args.command == "bench":
            from .bench import main as bench

            return bench(args)
        return _stat(args)
    except UserError as exc:
        print(f"mofs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mofs stat | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --- mount ------------------------------------------------------------------------------


def _mount(args: argparse.Namespace) -> int:
    if not args.foreground:
        return _mount_detached(args)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .mount import MountConfig, serve  # imports pyfuse3: only for the daemon

    config = MountConfig(store=args.store, mountpoint=args.mountpoint, pager_url=args.pager,
                         cache_size=args.cache_size, page_size=args.page_size,
                         timeout=args.pager_timeout, trace=args.trace,
                         allow_other=args.allow_other)

    ready_fd = [args.ready_fd] if args.ready_fd is not None else []

    def report(line: str) -> None:
        """Tell a waiting ``mofs mount`` how it went, once; the pipe closes after."""
        if ready_fd:
            fd = ready_fd.pop()
            try:
                os.write(fd, f"{line}\n".encode())
            finally:
                os.close(fd)

    def ready(message: str) -> None:
        print(f"mofs: {message}", flush=True)
        report(f"ok {message}")

    try:
        serve(config, ready)
    except UserError as exc:
        report(f"error {exc.exit_code} {exc}")
        raise
    except Exception as exc:
        logging.getLogger("mofs").exception("daemon failed")
        message = f"internal error: {type(exc).__name__}: {exc}"
        report(f"error 1 {message}")
        raise UserError(message) from None
    return 0


def _mount_detached(args: argparse.Namespace) -> int:
    """Start the daemon in its own session and wait until it reports the mount up or not."""
    log_path = args.log or os.path.abspath(args.store) + ".log"
    argv = _mount_argv(args)
    read_fd, write_fd = os.pipe()
    try:
        log_file = open(log_path, "ab")  # noqa: SIM115
    except OSError as exc:
        if args.log:
            raise UserError(f"cannot open log file {log_path}: {exc.strerror}") from None
        # The store's directory is not writable (the store check will say why): log
        # somewhere that is, so the daemon can report it.
        log_path = os.path.join(tempfile.gettempdir(),
                                f"mofs-{os.getuid()}-{os.path.basename(args.store)}.log")
        log_file = open(log_path, "ab")  # noqa: SIM115
    with log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mofs", *argv, "--foreground", "--ready-fd", str(write_fd)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            pass_fds=(write_fd,), start_new_session=True,
        )
    os.close(write_fd)
    answer = b""
    deadline = time.monotonic() + 60
    while b"\n" not in answer and time.monotonic() < deadline:
        ready, _, _ = select.select([read_fd], [], [], 0.5)
        if ready:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            answer += chunk
    os.close(read_fd)
    line = answer.decode(errors="replace").strip()
    if line.startswith("ok "):
        print(f"mofs: {line[3:]} (daemon pid {proc.pid}, log {log_path})")
        return 0
    if line.startswith("error "):
        _, code, message = line.split(" ", 2)
        raise UserError(message, int(code))
    if proc.poll() is None:
        proc.kill()
    raise UserError(f"the daemon did not start; see {log_path}")


def _mount_argv(args: argparse.Namespace) -> list[str]:
    argv = ["mount", args.store, args.mountpoint, "--cache-size", str(args.cache_size),
            "--page-size", str(args.page_size), "--pager-timeout", str(args.pager_timeout)]
    if args.pager:
        argv += ["--pager", args.pager]
    if args.trace:
        argv += ["--trace", os.path.abspath(args.trace)]
    if args.debug:
        argv.append("--debug")
    if args.allow_other:
        argv.append("--allow-other")
    return argv


# --- umount and stat ----------------------------------------------------------------------


def _mofs_mount(path: str) -> str:
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1] == real and fields[2] == "fuse.mofs":
                return real
    raise UserError(f"{path} is not a mounted mofs file system", EXIT_MOUNTPOINT)


def _read_stat(mnt: str) -> dict[str, object]:
    try:
        return json.loads(os.getxattr(mnt, CONTROL_STAT))
    except OSError as exc:
        raise UserError(f"cannot reach the daemon of {mnt}: {exc.strerror}", EXIT_MOUNTPOINT) \
            from None


def _umount(args: argparse.Namespace) -> int:
    """Write back, then unmount; while files are open, keep writing back and waiting."""
    mnt = _mofs_mount(args.mountpoint)
    try:
        stats = _read_stat(mnt)
    except UserError:
        # The daemon is gone; all we can do is remove the dead mount.
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        raise UserError(f"the daemon of {mnt} is not running; removed the dead mount",
                        EXIT_MOUNTPOINT) from None
    pid = int(stats["pid"])  # type: ignore[call-overload]
    deadline = time.monotonic() + args.timeout
    waiting = False
    while True:
        dirty = int(stats.get("dirty_bytes", 0))  # type: ignore[call-overload]
        if dirty:
            print(f"mofs: writing back {dirty / (1 << 20):.1f} MiB of {mnt}", file=sys.stderr)
        try:
            os.setxattr(mnt, CONTROL_SYNC, b"1")
        except OSError as exc:
            raise UserError(f"could not write back {mnt} ({exc.strerror}); still mounted, "
                            "dirty data kept", EXIT_WRITEBACK) from None
        done = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
        if done.returncode == 0:
            break
        why = (done.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        if "busy" not in why or time.monotonic() > deadline:
            raise UserError(f"cannot unmount {mnt}: {why}", EXIT_MOUNTPOINT)
        if not waiting:
            print(f"mofs: {mnt} is in use; waiting up to {args.timeout:g} s for its files "
                  "to be closed", file=sys.stderr)
            waiting = True
        time.sleep(0.2)
        stats = _read_stat(mnt)
    while _alive(pid):
        if time.monotonic() > deadline:
            raise UserError(f"unmounted {mnt}, but daemon {pid} is still writing back")
        time.sleep(0.05)
    print(f"mofs: unmounted {mnt}")
    return 0


def _drop_caches(args: argparse.Namespace) -> int:
    """Ask the daemon to write back and drop its caches; wait until the kernel's names
    are forgotten too (the daemon does that after answering)."""
    mnt = _mofs_mount(args.mountpoint)
    _read_stat(mnt)  # a dead daemon is a clear error, not a hang
    try:
        os.setxattr(mnt, CONTROL_DROP_CACHES, b"1")
    except OSError as exc:
        raise UserError(f"could not write back {mnt} ({exc.strerror}); caches kept",
                        EXIT_WRITEBACK) from None
    deadline = time.monotonic() + args.timeout
    while int(_read_stat(mnt).get("linux_notices_pending", 0)):  # type: ignore[call-overload]
        if time.monotonic() > deadline:
            raise UserError(f"the kernel of {mnt} did not forget its names within "
                            f"{args.timeout:g} s", EXIT_WRITEBACK)
        time.sleep(0.01)
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _stat(args: argparse.Namespace) -> int:
    mnt = _mofs_mount(args.mountpoint)
    stats = _read_stat(mnt)
    if args.json:
        print(json.dumps(stats))
        return 0
    mib = 1 << 20
    print(f"mount          {mnt} (store {stats['store']}, pager {stats['pager']}, "
          f"pid {stats['pid']})")
    print(f"objects        {stats['objects']}")
    for key in ("resident_bytes", "dirty_bytes", "precious_bytes", "budget_bytes"):
        print(f"{key.replace('_bytes', ''):<14} {int(stats[key]) / mib:.1f} MiB")  # type: ignore[call-overload]
    if stats.get("pager_failure"):
        print(f"pager failed   {stats['pager_failure']}")
    print("messages")
    for name, count in stats["messages"].items():  # type: ignore[union-attr]
        print(f"  {name:<22} {count}")
    return 0


# --- trace ---------------------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 30.0


def _trace(args: argparse.Namespace) -> int:
    try:
        return _follow(args)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader of our output went away, e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _follow(args: argparse.Namespace) -> int:
    mnt = _mofs_mount(args.mountpoint)
    objects = sorted({_object_of(path, mnt) for path in args.path}) if args.path else None
    msgs = sorted({m.removeprefix("memory_object_") for m in args.msg}) if args.msg else None
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with _connect_control(mnt) as sock:
        sock.sendall(json.dumps({"objects": objects, "msgs": msgs}).encode() + b"\n")
        reader = _LineReader(sock, mnt)
        handshake = time.monotonic() + HANDSHAKE_TIMEOUT
        hello = reader.readline(handshake if deadline is None else min(deadline, handshake))
        if hello is None:
            if deadline is not None and time.monotonic() >= deadline:
                return 0
            raise UserError(f"the daemon of {mnt} does not answer", EXIT_MOUNTPOINT)
        first = json.loads(hello)
        if first.get("msg") == "error":
            raise UserError(f"the daemon of {mnt} refused to trace: {first.get('error')}")
        print(f"mofs: tracing {mnt} (daemon pid {first.get('pid')})", file=sys.stderr,
              flush=True)
        printed = 0
        while args.count is None or printed < args.count:
            line = reader.readline(deadline)
            if line is None:
                return 0
            print(line, flush=True)
            if json.loads(line).get("dir") != "meta":
                printed += 1
    return 0


def _object_of(path: str, mnt: str) -> int:
    """The memory object of a file: its inode number (on the mount, not elsewhere)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}", EXIT_USAGE) from None
    if st.st_dev != os.stat(mnt).st_dev:
        raise UserError(f"{path} is not on the mount {mnt}", EXIT_USAGE)
    return st.st_ino


def _connect_control(mnt: str) -> socket.socket:
    from .control import socket_paths

    why = "it has no control socket"
    for path in socket_paths(mnt):
        if not os.path.exists(path):
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            why = f"{path}: {exc.strerror}"
    raise UserError(f"cannot reach the daemon of {mnt}: {why}", EXIT_MOUNTPOINT)


class _LineReader:
    """Lines from the control socket, each read waiting at most until a deadline."""

    def __init__(self, sock: socket.socket, mnt: str) -> None:
        self._sock = sock
        self._mnt = mnt
        self._buf = b""

    def readline(self, deadline: float | None) -> str | None:
        """The next line without its newline, or None once ``deadline`` has passed."""
        while b"\n" not in self._buf:
            if deadline is None:
                self._sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                return None
            except OSError as exc:
                chunk = b""
                if exc.errno != errno.ECONNRESET:
                    raise UserError(f"lost the daemon of {self._mnt}: {exc.strerror}") from None
            if not chunk:
                raise UserError(f"the daemon of {self._mnt} stopped (unmounted)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()


# --- pagers -----------------------------------------------------------------------------


def _pagers() -> int:
    from pagers import installed_pagers

    for _, description in installed_pagers():
        print(description)
    return 0


def _pager_check(args: argparse.Namespace) -> int:
    from pagers.conformance import GUARANTEES, PagerCheckFailed, check_pager_url

    with tempfile.TemporaryDirectory(prefix="mofs-check-") as scratch:
        store = args.store or os.path.join(scratch, "check.mofs")
        try:
            passed = check_pager_url(args.url, store, persistent=args.persistent,
                                     timeout=args.timeout)
        except PagerCheckFailed as exc:
            print(f"mofs: {exc}", file=sys.stderr)
            return 1
    for guarantee in GUARANTEES:
        print(f"{'ok  ' if guarantee in passed else 'skip'}  {guarantee}")
    print(f"mofs: {args.url} keeps {len(passed)} of {len(GUARANTEES)} guarantees "
          f"({len(GUARANTEES) - len(passed)} not applicable)")
    return 0
