"""Pagers in another process or on another host, reached over a Unix or TCP socket.

The client, :class:`RemotePager`, is what ``--pager unix:PATH`` or ``--pager
tcp:HOST:PORT`` opens: a stand-in whose ``serve(inbox, outbox)`` forwards the kernel's
messages to the socket and puts the replies on ``outbox``, in the framing of
:mod:`mofs.wire`. It connects and shakes hands when it is made, so that a pager that is
not there is a one-line error at mount time, and the kernel knows the pager's
attributes (``precious``) before its first message. When the connection drops or the
peer sends nonsense, ``serve`` raises: the kernel then fails the pager's objects (EIO,
nothing hangs) and, because ``reconnectable`` is set, connects again at the next use of
one of its files (``Kernel.connect``).

The server, :func:`serve_pager`, is ``mofs serve-pager``: it listens, and gives each
connection a fresh pager opened from its URL, one connection at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

import trio

from mofs import wire
from mofs.channel import Channel
from mofs.errors import UserError
from mofs.messages import TO_KERNEL, TO_PAGER, Message

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to connect and get the pager's hello. The daemon waits this long at most, at
mount time or when it reconnects (the connect is synchronous, like opening any pager)."""
BUSY_WAIT = 2.0
"""Seconds a new connection waits for the previous one to finish before it is refused."""
DRAIN_TIMEOUT = 60.0
"""Seconds a pager may take to handle what it got once its connection has ended."""
MAX_QUEUED = 64 << 20  # page bytes read from a socket but not yet handled by the pager
_BATCH = 1 << 20  # messages sent together in one write, up to about this many bytes
_CHUNK = 1 << 20


class RemotePagerLost(Exception):
    """The connection to a pager in another process broke."""


@dataclass(frozen=True)
class Address:
    """Where a pager listens: ``unix:PATH`` or ``tcp:HOST:PORT``."""

    scheme: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(url: str) -> Address:
    """``unix:PATH`` (made absolute) or ``tcp:HOST:PORT`` (``[v6]`` in brackets);
    UserError (exit code 2) for anything else."""
    scheme, _, rest = url.partition(":")
    if scheme == "unix":
        if not rest:
            raise UserError(f"{url!r}: write unix:PATH", exit_code=2)
        return Address("unix", path=os.path.abspath(rest))
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise UserError(f"{url!r}: write tcp:HOST:PORT", exit_code=2)
        return Address("tcp", host=host, port=int(port))
    raise UserError(f"{url!r}: write unix:PATH or tcp:HOST:PORT", exit_code=2)


# --- the client: the kernel's end ------------------------------------------------------------


def _connect(address: Address, timeout: float) -> socket.socket:
    if address.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address.path)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((address.host, address.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def _read_hello_blocking(sock: socket.socket, reader: wire.FrameReader) -> wire.Hello:
    """The peer's hello; what came after it stays in ``reader``."""
    while True:
        data = sock.recv(4096)
        if not data:
            raise RemotePagerLost("it closed the connection before saying hello")
        for payload in reader.feed(data, limit=1):
            return wire.decode_hello(payload)


class RemotePager:
    """The kernel's stand-in for a pager served by ``mofs serve-pager`` elsewhere.

    Not a :class:`~pagers.kit.Pager`: it speaks the whole protocol by forwarding it."""

    reconnectable = True
    """The kernel may replace a lost connection (``lost``) by a new one to the same URL."""
    lost = False
    """The connection broke (as opposed to: the pager sent nonsense, or it was closed)."""

    def __init__(self, url: str, timeout: float = CONNECT_TIMEOUT) -> None:
        self._sock: socket.socket | None = None
        self.url = url
        self.address = parse_address(url)
        try:
            sock = _connect(self.address, timeout)
        except OSError as exc:
            why = exc.strerror or str(exc) or type(exc).__name__
            raise UserError(f"cannot reach pager {url}: {why} (is 'mofs serve-pager' "
                            "listening there?)") from None
        self._reader = wire.FrameReader()  # what follows the hello is read by serve
        try:
            sock.sendall(wire.encode_hello(wire.Hello("kernel")))
            hello = _read_hello_blocking(sock, self._reader)
        except (OSError, RemotePagerLost, wire.WireError) as exc:
            sock.close()
            why = f"no hello within {timeout:g} s" if isinstance(exc, TimeoutError) else exc
            raise UserError(f"pager {url} is not a mofs pager ({why})") from None
        refusal = hello.error or ("" if hello.role == "pager" else "it is not a pager")
        if not refusal and hello.version != wire.VERSION:
            refusal = f"it speaks protocol version {hello.version}, not {wire.VERSION}"
        if refusal:
            sock.close()
            raise UserError(f"pager {url} refused: {refusal}")
        sock.settimeout(None)
        self._sock = sock
        self.remote = hello.pager
        self.precious = hello.precious
        self.persistent = hello.persistent

    def disconnect(self) -> None:
        """Close a connection that will never be served (a pager opened only to look)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __del__(self) -> None:
        self.disconnect()

    async def serve(self, inbox: Channel, outbox: Channel) -> None:
        """Forward ``inbox`` to the pager and its answers to ``outbox`` until ``inbox``
        closes and the pager has answered everything; raise if the connection breaks."""
        sock, self._sock = self._sock, None
        if sock is None:
            raise RemotePagerLost("this connection was already served; open a new one")
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        finished = trio.Event()  # everything sent and our end shut for writing
        failure: list[BaseException] = []

        async def sending(cancel: trio.CancelScope) -> None:
            try:
                await _forward(inbox, stream)
                await stream.send_eof()
                finished.set()
            except Exception as exc:  # broken pipe, or a message too big for a frame
                failure.append(RemotePagerLost(f"sending failed: {_why(exc)}"))
                cancel.cancel()

        async with stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sending, nursery.cancel_scope)
                try:
                    await _receive(stream, outbox, TO_KERNEL, self._reader)
                    if not finished.is_set():
                        raise RemotePagerLost("the pager closed the connection")
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    failure.append(RemotePagerLost(f"the connection broke: {_why(exc)}"))
                except (RemotePagerLost, wire.WireError) as exc:
                    failure.append(exc)
                nursery.cancel_scope.cancel()
        if failure:
            self.lost = isinstance(failure[0], RemotePagerLost)  # not nonsense: may come back
            raise failure[0]


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno)
    return str(cause) or type(cause).__name__


async def _forward(channel: Channel, stream: trio.SocketStream) -> None:
    """Send what ``channel`` carries until it closes; its page bytes count as queued
    until they are written, so the sender's back-pressure sees a slow peer."""
    while True:
        try:
            _, msg = await channel.receive(hold=True)
        except trio.EndOfChannel:
            return
        batch = [msg]
        frames = [wire.encode(msg)]
        size = len(frames[0])
        while size < _BATCH:
            try:
                _, more = channel.receive_nowait(hold=True)
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.append(more)
            frames.append(wire.encode(more))
            size += len(frames[-1])
        try:
            await stream.send_all(b"".join(frames))
        finally:
            for sent in batch:
                channel.release(sent)


async def _receive(stream: trio.SocketStream, channel: Channel,
                   allowed: tuple[type[Message], ...], reader: wire.FrameReader | None = None,
                   limit: int | None = None) -> None:
    """Put every message read from ``stream`` on ``channel`` until the peer's EOF.

    With ``limit``, wait while the channel holds more page bytes than that."""
    reader = reader or wire.FrameReader()
    data = b""  # first, what arrived with the hello
    while True:
        for payload in reader.feed(data):
            channel.send(wire.decode(payload, allowed))
        if limit is not None:
            await channel.wait_drained(limit)
        data = await stream.receive_some(_CHUNK)
        if not data:
            if reader.pending:
                raise wire.WireError("the connection closed in the middle of a frame")
            return


# --- the server: mofs serve-pager ------------------------------------------------------------


class Listening:
    """A bound, listening socket for :func:`serve_pager`; made before trio runs, so that
    an address in use is a plain error. A Unix socket is created 0600, and a stale
    socket file that nobody listens on is replaced."""

    def __init__(self, listen: str) -> None:
        requested = parse_address(listen)
        self._identity: int | None = None
        self.sock = self._bind(requested)
        self.sock.listen(16)
        if requested.scheme == "unix":
            self.address = requested
            self._identity = os.stat(requested.path).st_ino
        else:
            host, port = self.sock.getsockname()[:2]
            self.address = Address("tcp", host=host, port=port)

    @staticmethod
    def _bind(address: Address) -> socket.socket:
        if address.scheme == "unix":
            path = address.path
            if os.path.lexists(path):
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise UserError(f"cannot listen on {address}: a file that is not a "
                                    "socket is in the way")
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(path)
                except OSError:
                    os.unlink(path)  # nobody listens there: left over by a killed server
                else:
                    raise UserError(f"cannot listen on {address}: another server is "
                                    "listening there")
                finally:
                    probe.close()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            where: object = path
            old = os.umask(0o177)  # 0600 from the start: no moment where others may connect
        else:
            try:
                infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise UserError(f"cannot listen on {address}: {exc.strerror}") from None
            family, kind, proto, _, where = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            old = None
        try:
            sock.bind(where)
        except OSError as exc:
            sock.close()
            raise UserError(f"cannot listen on {address}: {exc.strerror}") from None
        finally:
            if old is not None:
                os.umask(old)
        return sock

    def close(self) -> None:
        """Stop listening; remove the socket file if it is still ours."""
        self.sock.close()
        if self._identity is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.address.path).st_ino == self._identity:
                    os.unlink(self.address.path)
            self._identity = None


async def serve_pager(url: str, listening: Listening, open_pager: Callable[[str], object],
                      ) -> None:
    """Serve the pager named by ``url`` on ``listening`` until cancelled, then close it.

    Each connection gets a new pager from ``open_pager(url)`` and fresh channels, so a
    daemon that reconnects starts clean; connections are served one at a time (a second
    one waits up to :data:`BUSY_WAIT` seconds, then is refused with a reason)."""
    busy = trio.Lock()
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(listening.sock))
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_connection, stream, url, open_pager, busy)
    finally:
        listening.close()


async def _serve_connection(stream: trio.SocketStream, url: str,
                            open_pager: Callable[[str], object], busy: trio.Lock) -> None:
    peer = _peer(stream)
    async with stream:
        reader = wire.FrameReader()
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                hello = await _read_hello(stream, reader)
        except RemotePagerLost:  # a probe: is anybody listening here?
            log.debug("%s closed before saying hello", peer)
            return
        except (trio.TooSlowError, wire.WireError, trio.BrokenResourceError, OSError) as exc:
            log.warning("%s: no valid hello (%s); closed", peer, exc)
            return
        refusal = ""
        if hello.error or hello.role != "kernel":
            refusal = "expected the hello of a mofs kernel"
        elif hello.version != wire.VERSION:
            refusal = f"protocol version {hello.version} is not supported (this is {wire.VERSION})"
        acquired = False
        if not refusal:
            with trio.move_on_after(BUSY_WAIT):
                await busy.acquire()
                acquired = True
            if not acquired:
                refusal = "busy serving another kernel"
        if refusal:
            log.warning("%s: refused: %s", peer, refusal)
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await stream.send_all(wire.encode_hello(wire.Hello("pager", error=refusal)))
            return
        try:
            await _serve_one(stream, reader, url, open_pager, peer)
        finally:
            busy.release()


def _peer(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "a kernel"
    return f"kernel at {name[0]}:{name[1]}" if isinstance(name, tuple) else "a kernel"


async def _read_hello(stream: trio.SocketStream, reader: wire.FrameReader) -> wire.Hello:
    while True:
        data = await stream.receive_some(4096)
        if not data:
            raise RemotePagerLost("closed before saying hello")
        for payload in reader.feed(data, limit=1):
            return wire.decode_hello(payload)


async def _serve_one(stream: trio.SocketStream, reader: wire.FrameReader, url: str,
                     open_pager: Callable[[str], object], peer: str) -> None:
    try:
        pager = open_pager(url)
    except Exception as exc:  # a UserError, or a plug-in that raised
        log.error("%s: cannot open pager %s: %s", peer, url, exc)
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.send_all(wire.encode_hello(wire.Hello(
                "pager", error=f"cannot open pager {url}: {exc}")))
        return
    from .conformance import persistence_of  # (conformance imports this package)

    await stream.send_all(wire.encode_hello(wire.Hello(
        "pager", pager=url, precious=bool(getattr(pager, "precious", False)),
        persistent=persistence_of(url, pager))))
    log.info("%s connected", peer)
    inbox, outbox = Channel(), Channel()
    reading = trio.CancelScope()

    async def serving() -> None:
        try:
            await pager.serve(inbox, outbox)  # type: ignore[attr-defined]
            if not inbox.closed:
                log.error("pager %s stopped serving; closing the connection", url)
        except Exception as exc:
            log.error("pager %s failed: %s: %s; closing the connection", url,
                      type(exc).__name__, exc)
        finally:
            outbox.close()

    async def writing() -> None:
        try:
            await _forward(outbox, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            with contextlib.suppress(trio.EndOfChannel):  # the kernel left: let the pager
                while True:  # finish anyway, and drop its answers
                    await outbox.receive()
        reading.cancel()  # the pager has said all it will say: the connection is done

    with trio.CancelScope() as everything:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serving)
            nursery.start_soon(writing)
            with reading:
                try:
                    await _receive(stream, inbox, TO_PAGER, reader, MAX_QUEUED)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.warning("%s: connection lost: %s", peer, _why(exc))
                except wire.WireError as exc:
                    log.error("%s sent nonsense, closing: %s", peer, exc)
            # What arrived is handled: returns the kernel sent are stored even if it left,
            # unless the pager takes longer than this.
            inbox.close()
            everything.deadline = trio.current_time() + DRAIN_TIMEOUT
    if everything.cancelled_caught:
        log.error("pager %s did not finish within %g s of the connection's end",
                  url, DRAIN_TIMEOUT)
    log.info("%s disconnected", peer)


def is_remote(url: str | None) -> bool:
    """Whether ``url`` names a pager reached over a socket."""
    return url is not None and url.partition(":")[0] in ("unix", "tcp")


__all__ = ["Address", "Listening", "RemotePager", "RemotePagerLost", "is_remote",
           "parse_address", "serve_pager"]
