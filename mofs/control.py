"""The daemon's control socket: ``mofs trace`` follows the live trace of a mount through it.

The socket is a Unix-domain stream socket at a path derived from the mountpoint's real
path (:func:`socket_paths`), in a directory only its owner may enter. A client sends one
JSON line, ``{"objects": [2, 5] | null, "msgs": ["data_request"] | null}``, and receives
the trace lines that match it, starting with ``{"dir": "meta", "msg": "connected", ...}``.

Clients never slow the daemon down: :class:`Broadcast` queues at most ``capacity`` lines
per client and drops what does not fit, telling the client later with one
``{"dir": "meta", "msg": "dropped", "count": N}`` line. With no client connected a trace
line is not even built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import time

import trio

from .trace import TraceSink

log = logging.getLogger(__name__)

REQUEST_LIMIT = 1 << 16  # bytes of the client's request line
REQUEST_TIMEOUT = 10.0  # seconds a client has to send it
BATCH = 1 << 16  # bytes written to a client at once
# A client that went away ends its tasks quietly: nothing leaves a nursery (no group).
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def socket_dirs() -> list[str]:
    """Where control sockets may live, best first: /run, then per-user runtime dirs."""
    dirs = ["/run/mofs"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(os.path.join(runtime, "mofs"))
    dirs.append(f"/tmp/mofs-{os.getuid()}")
    return dirs


def socket_paths(mountpoint: str) -> list[str]:
    """The candidate control-socket paths of the mount at ``mountpoint``, best first."""
    digest = hashlib.sha1(os.fsencode(os.path.realpath(mountpoint))).hexdigest()
    return [os.path.join(d, f"{digest}.sock") for d in socket_dirs()]


def _private_dir(path: str) -> bool:
    """Make ``path`` a directory only we may use (mode 0700); False if it cannot be."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
        return os.access(path, os.W_OK | os.X_OK)
    except OSError:
        return False


def _line(fields: dict[str, object]) -> bytes:
    return (json.dumps(fields) + "\n").encode()


class _Client:
    __slots__ = ("send", "msgs", "objects", "dropped")

    def __init__(self, send: trio.MemorySendChannel[bytes], msgs: set[str] | None,
                 objects: set[int] | None) -> None:
        self.send = send
        self.msgs = msgs
        self.objects = objects
        self.dropped = 0

    def wants(self, line: dict[str, object]) -> bool:
        return ((self.msgs is None or line["msg"] in self.msgs)
                and (self.objects is None or line.get("object") in self.objects))

    def offer(self, data: bytes) -> None:
        """Queue ``data`` if there is room, after a notice of what was dropped before it."""
        try:
            if self.dropped:
                self.send.send_nowait(self.dropped_notice())
                self.dropped = 0
            self.send.send_nowait(data)
        except trio.WouldBlock:
            self.dropped += 1

    def dropped_notice(self) -> bytes:
        return _line({"t": time.time(), "dir": "meta", "msg": "dropped", "count": self.dropped})


class Broadcast(TraceSink):
    """A tracer that copies each line to every connected ``mofs trace`` client."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._clients: set[_Client] = set()

    @property
    def active(self) -> bool:
        return bool(self._clients)

    def emit(self, line: dict[str, object]) -> None:
        data = b""
        for client in self._clients:
            if client.wants(line):
                data = data or _line(line)
                client.offer(data)

    async def follow(self, stream: trio.abc.Stream, *, msgs: set[str] | None = None,
                     objects: set[int] | None = None,
                     hello: dict[str, object] | None = None) -> None:
        """Send matching lines to ``stream`` until it closes (or breaks)."""
        send, receive = trio.open_memory_channel[bytes](self.capacity)
        client = _Client(send, msgs, objects)
        send.send_nowait(_line({"t": time.time(), "dir": "meta", "msg": "connected",
                                **(hello or {})}))
        self._clients.add(client)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, stream, nursery.cancel_scope)
                with contextlib.suppress(*_GONE):
                    await _write(stream, receive, client)
                nursery.cancel_scope.cancel()
        finally:
            self._clients.discard(client)
            send.close()


async def _write(stream: trio.abc.Stream, receive: trio.MemoryReceiveChannel[bytes],
                 client: _Client) -> None:
    async for data in receive:
        batch = [data]
        size = len(data)
        while size < BATCH:
            try:
                data = receive.receive_nowait()
            except trio.WouldBlock:
                break
            batch.append(data)
            size += len(data)
        await stream.send_all(b"".join(batch))
        if client.dropped and not receive.statistics().current_buffer_used:
            notice, client.dropped = client.dropped_notice(), 0
            await stream.send_all(notice)


async def _until_closed(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    with contextlib.suppress(*_GONE):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


class ControlServer:
    """The listening control socket of one mount; bound at once so it is there when the
    mount appears, served once :meth:`serve` runs, removed by :meth:`close`."""

    def __init__(self, mountpoint: str, broadcast: Broadcast) -> None:
        self.mountpoint = os.path.realpath(mountpoint)
        self.broadcast = broadcast
        self.path: str | None = None
        self._ino = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for path in socket_paths(self.mountpoint):
            if not _private_dir(os.path.dirname(path)):
                continue
            try:
                if os.path.lexists(path):  # left by a daemon that was killed
                    os.unlink(path)
                self._sock.bind(path)
                os.chmod(path, 0o600)  # the trace shows file activity: the owner's alone
            except OSError as exc:
                log.debug("cannot bind control socket %s: %s", path, exc)
                continue
            self._sock.listen(16)
            self.path = path
            self._ino = os.stat(path).st_ino
            return
        self._sock.close()
        log.warning("no directory for the control socket; mofs trace will not work")

    async def serve(self, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) \
            -> None:
        """Accept clients until cancelled."""
        if self.path is None:
            task_status.started()
            return
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        await trio.serve_listeners(self._handle, [listener], task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                request = None
                with trio.move_on_after(REQUEST_TIMEOUT):
                    request = await _read_line(stream)
                try:
                    msgs, objects = _parse_request(request)
                except ValueError as exc:
                    await stream.send_all(_line({"dir": "meta", "msg": "error",
                                                 "error": str(exc)}))
                    return
                await self.broadcast.follow(
                    stream, msgs=msgs, objects=objects,
                    hello={"pid": os.getpid(), "mountpoint": self.mountpoint})
        except _GONE:
            pass  # the client went away
        except Exception:  # a trace client must never take the mount down
            log.exception("trace client failed")

    def close(self) -> None:
        """Stop listening and remove the socket file, unless another daemon replaced it."""
        if self.path is None:
            return
        self._sock.close()
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass
        self.path = None


async def _read_line(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < REQUEST_LIMIT:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _parse_request(request: bytes | None) -> tuple[set[str] | None, set[int] | None]:
    """``(msgs, objects)`` of a request line; None means no filter."""
    if request is None:
        raise ValueError(f"no request within {REQUEST_TIMEOUT:g} seconds")
    try:
        req = json.loads(request)
    except ValueError:
        raise ValueError("the request is not JSON") from None
    if not isinstance(req, dict):
        raise ValueError("the request is not a JSON object")
    msgs, objects = req.get("msgs"), req.get("objects")
    if msgs is not None and not (isinstance(msgs, list)
                                 and all(isinstance(m, str) for m in msgs)):
        raise ValueError("msgs must be a list of message names")
    if objects is not None and not (isinstance(objects, list) and all(
            isinstance(o, int) and not isinstance(o, bool) for o in objects)):
        raise ValueError("objects must be a list of object ids")
    return (None if msgs is None else set(msgs),
            None if objects is None else set(objects))
