"""The pager protocol on a byte stream: msgpack frames, for pagers in another process.

Pure codec, no I/O (``pagers/remote.py`` does the sockets). A frame is a 4-byte
big-endian length, then that many bytes of msgpack. The first frame each way is a
*hello* map; every later frame is one message as an array: its protocol name, then its
fields in dataclass order, e.g. ``["data_request", 7, 0, 65536, 1]``.

- the kernel's hello: ``{"mofs": "pager", "version": 1, "role": "kernel"}``;
- the pager's: ``{"mofs": "pager", "version": 1, "role": "pager", "pager": URL,
  "precious": bool, "persistent": bool or None}``, the attributes the kernel must know
  before its first message (a precious pager's returns are journaled), or
  ``{"mofs": "pager", "version": 1, "error": "why"}`` to refuse.

msgpack, not pickle: a frame can only ever become ints, bools, bytes and strings, which
are then checked against the message's fields. Anything else raises :class:`WireError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from .errors import RemoteProtocolError
from .messages import TO_KERNEL, TO_PAGER, Message

VERSION = 1
MAGIC = "pager"
MAX_FRAME = 1 << 28  # 256 MiB: 32 pages of the largest page size anyone uses, and then some
_HEADER = struct.Struct(">I")
_UINT_LIMIT = 1 << 64  # every integer of the protocol is unsigned (offsets, ids, errnos)


class WireError(RemoteProtocolError):
    """The peer sent bytes that are not a valid frame, hello or message."""


def _kinds(cls: type[Message]) -> tuple[tuple[str, type], ...]:
    """(field name, int/bool/bytes) for each field, from the dataclass annotations."""
    kinds = {"int": int, "ObjectId": int, "bool": bool, "bytes": bytes,
             "bytes | bytearray": bytes}  # (an evicted page's buffer travels as bytes)
    out = []
    for f in fields(cls):
        kind = kinds.get(str(f.type))
        if kind is None:  # a new field type in messages.py needs a line here
            raise TypeError(f"{cls.__name__}.{f.name}: no wire encoding for {f.type}")
        out.append((f.name, kind))
    return tuple(out)


SCHEMA: dict[str, tuple[type[Message], tuple[tuple[str, type], ...]]] = {
    cls.name(): (cls, _kinds(cls)) for cls in (*TO_PAGER, *TO_KERNEL)
}


def frame(payload: bytes) -> bytes:
    """``payload`` with its length in front."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"a frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


def encode(msg: Message) -> bytes:
    """One message as a complete frame."""
    _, kinds = SCHEMA[msg.name()]
    body = [msg.name(), *(getattr(msg, name) for name, _ in kinds)]
    return frame(msgpack.packb(body, use_bin_type=True))


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack's several errors: all the same to us
        raise WireError(f"undecodable frame ({type(exc).__name__}: {exc})") from None


def decode(payload: bytes, allowed: tuple[type[Message], ...] = (*TO_PAGER, *TO_KERNEL),
           ) -> Message:
    """The message in one frame's payload; ``allowed`` are the types this side accepts."""
    body = _unpack(payload)
    if not isinstance(body, list) or not body or not isinstance(body[0], str):
        raise WireError(f"a message frame must be [name, fields...], not {_show(body)}")
    name, values = body[0], body[1:]
    found = SCHEMA.get(name)
    if found is None:
        raise WireError(f"unknown message {name!r}")
    cls, kinds = found
    if cls not in allowed:
        raise WireError(f"{name} is not a message this side accepts")
    if len(values) != len(kinds):
        raise WireError(f"{name} needs {len(kinds)} fields, got {len(values)}")
    for (field_name, kind), value in zip(kinds, values, strict=True):
        if kind is int:
            ok = type(value) is int and 0 <= value < _UINT_LIMIT
        else:
            ok = type(value) is kind
        if not ok:
            raise WireError(f"{name}.{field_name} must be {_describe(kind)}, not {_show(value)}")
    return cls(*values)


def _describe(kind: type) -> str:
    return {int: "an unsigned 64-bit integer", bool: "a boolean", bytes: "binary data"}[kind]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the handshake ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A peer's first frame: who it is and, from a pager, what the kernel must know."""

    role: str
    version: int = VERSION
    pager: str = ""
    precious: bool = False
    persistent: bool | None = None
    error: str = ""


def encode_hello(hello: Hello) -> bytes:
    """A hello as a complete frame; fields a role does not use are left out."""
    body: dict[str, object] = {"mofs": MAGIC, "version": hello.version}
    if hello.error:
        body["error"] = hello.error
    else:
        body["role"] = hello.role
    if hello.role == "pager" and not hello.error:
        body.update(pager=hello.pager, precious=hello.precious, persistent=hello.persistent)
    return frame(msgpack.packb(body, use_bin_type=True))


def decode_hello(payload: bytes) -> Hello:
    """A peer's hello; WireError if it is not one (say, not a mofs pager at all)."""
    body = _unpack(payload)
    if not isinstance(body, dict) or body.get("mofs") != MAGIC:
        raise WireError("the peer does not speak the mofs pager protocol")
    version = body.get("version")
    if type(version) is not int:
        raise WireError(f"hello without a version: {_show(body)}")
    error = body.get("error", "")
    role = body.get("role", "")
    persistent = body.get("persistent")
    if (not isinstance(error, str) or not isinstance(role, str)
            or not isinstance(body.get("pager", ""), str)
            or type(body.get("precious", False)) is not bool
            or (persistent is not None and type(persistent) is not bool)):
        raise WireError(f"malformed hello: {_show(body)}")
    if not error and role not in ("kernel", "pager"):
        raise WireError(f"hello with unknown role {role!r}")
    return Hello(role=role, version=version, pager=body.get("pager", ""),
                 precious=body.get("precious", False), persistent=persistent, error=error)


# --- framing ---------------------------------------------------------------------------


class FrameReader:
    """Cuts a byte stream into frame payloads, whatever the chunks it arrives in."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes = b"", limit: int | None = None) -> list[bytes]:
        """Add received bytes; return the payloads now complete, in order (at most
        ``limit``: the rest stay for the next call, which may pass no bytes)."""
        self._buf += data
        out: list[bytes] = []
        at = 0
        try:
            while len(self._buf) - at >= _HEADER.size and (limit is None or len(out) < limit):
                (length,) = _HEADER.unpack_from(self._buf, at)
                if length > self._max:
                    raise WireError(f"frame of {length} bytes announced; "
                                    f"the limit is {self._max}")
                end = at + _HEADER.size + length
                if len(self._buf) < end:
                    break
                out.append(bytes(self._buf[at + _HEADER.size:end]))
                at = end
        finally:
            del self._buf[:at]  # once per feed, not once per frame
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (nonzero at EOF: a cut-off frame)."""
        return len(self._buf)
