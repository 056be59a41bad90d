"""The wire codec of pagers in another process: every message survives a round trip, in
any chunking of the stream, and every malformed frame is a WireError that says why."""

from __future__ import annotations

import dataclasses
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mofs import wire
from mofs.errors import RemoteProtocolError
from mofs.messages import TO_KERNEL, TO_PAGER, DataRequest, DataReturn, Init, Message, Ready

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
_FIELD = {int: U64, bool: st.booleans(), bytes: st.binary(max_size=300)}


def message_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Any instance of ``cls`` whose fields have their wire types."""
    _, kinds = wire.SCHEMA[cls.name()]
    return st.builds(cls, *(_FIELD[kind] for _, kind in kinds))


ANY_MESSAGE = st.one_of(*(message_of(cls) for cls in (*TO_PAGER, *TO_KERNEL)))


def test_every_message_type_has_a_schema() -> None:
    assert {cls for cls, _ in wire.SCHEMA.values()} == set(TO_PAGER) | set(TO_KERNEL)


@pytest.mark.parametrize("cls", [*TO_PAGER, *TO_KERNEL], ids=lambda c: c.name())
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip_of_each_message_type(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(message_of(cls))
    payloads = list(wire.FrameReader().feed(wire.encode(msg)))
    assert len(payloads) == 1
    assert wire.decode(payloads[0]) == msg


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(ANY_MESSAGE, max_size=12), cuts=st.lists(st.integers(0, 5000)))
def test_a_stream_cut_anywhere_gives_back_the_messages_in_order(
        messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(wire.encode(m) for m in messages)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader = wire.FrameReader()
    got = []
    for a, b in zip(points, points[1:], strict=False):
        got += [wire.decode(p) for p in reader.feed(stream[a:b])]
    assert got == messages
    assert reader.pending == 0


def test_each_side_accepts_only_its_own_messages() -> None:
    (payload,) = wire.FrameReader().feed(wire.encode(Init(1, 4096)))
    assert wire.decode(payload, TO_PAGER) == Init(1, 4096)
    with pytest.raises(wire.WireError, match="init is not a message this side accepts"):
        wire.decode(payload, TO_KERNEL)


def _payload(body: object) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(("body", "why"), [
    (b"\xc1", "undecodable frame"),  # 0xc1 is never used by msgpack
    (_payload({"x": 1}), r"must be \[name, fields...\]"),
    (_payload([]), r"must be \[name, fields...\]"),
    (_payload(["no_such_message", 1]), "unknown message 'no_such_message'"),
    (_payload(["init", 1]), "init needs 2 fields, got 1"),
    (_payload(["init", 1, 2, 3]), "init needs 2 fields, got 3"),
    (_payload(["init", -1, 4096]), "init.object must be an unsigned 64-bit integer"),
    (_payload(["init", 1, "4096"]), "init.page_size must be an unsigned 64-bit integer, "
                                    "not '4096'"),
    (_payload(["init", True, 4096]), "init.object must be an unsigned 64-bit integer"),
    (_payload(["data_return", 1, 0, "text", True, False]), "data_return.data must be binary"),
    (_payload(["ready", 1, 1, 2, 0, 0]), "ready.may_cache must be a boolean"),
    (_payload(["init", 1, 2.5]), "init.page_size must be"),
    (_payload(["init", 1, 4096]) + b"\x00", "undecodable frame"),  # trailing bytes
])
def test_malformed_frames_raise_a_clear_protocol_error(body: bytes, why: str) -> None:
    with pytest.raises(wire.WireError, match=why) as caught:
        wire.decode(body)
    assert isinstance(caught.value, RemoteProtocolError)  # the kernel fails the pager


def test_an_oversized_frame_is_refused_before_it_is_read() -> None:
    reader = wire.FrameReader(max_frame=1000)
    with pytest.raises(wire.WireError, match="frame of 1001 bytes announced"):
        list(reader.feed(struct.pack(">I", 1001)))


def test_a_frame_cut_off_at_the_end_is_pending() -> None:
    frame = wire.encode(DataRequest(1, 0, 4096, 1))
    reader = wire.FrameReader()
    assert list(reader.feed(frame[:-1])) == []
    assert reader.pending == len(frame) - 1


def test_page_data_travels_as_binary_not_as_a_string() -> None:
    msg = DataReturn(7, 65536, bytes(range(256)) * 16, True, False)
    (payload,) = wire.FrameReader().feed(wire.encode(msg))
    body = msgpack.unpackb(payload, raw=False)
    assert body[0] == "data_return" and isinstance(body[3], bytes)


@settings(max_examples=50, deadline=None)
@given(precious=st.booleans(), persistent=st.one_of(st.none(), st.booleans()),
       pager=st.text(max_size=40))
def test_hello_round_trip(precious: bool, persistent: bool | None, pager: str) -> None:
    for hello in (wire.Hello("kernel"),
                  wire.Hello("pager", pager=pager, precious=precious, persistent=persistent),
                  wire.Hello("pager", error="busy serving another kernel")):
        (payload,) = wire.FrameReader().feed(wire.encode_hello(hello))
        got = wire.decode_hello(payload)
        if hello.role == "pager" and not hello.error:
            assert got == hello
        else:
            assert (got.role, got.error, got.version) == (
                "" if hello.error else hello.role, hello.error, wire.VERSION)


@pytest.mark.parametrize(("body", "why"), [
    ({"hello": 1}, "does not speak the mofs pager protocol"),
    (["init", 1, 4096], "does not speak the mofs pager protocol"),
    ({"mofs": "pager"}, "hello without a version"),
    ({"mofs": "pager", "version": 1, "role": "pager", "precious": 1}, "malformed hello"),
    ({"mofs": "pager", "version": 1, "role": "other"}, "unknown role 'other'"),
])
def test_malformed_hellos_raise(body: object, why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        wire.decode_hello(_payload(body))


def test_the_version_is_carried_so_a_peer_can_refuse_another() -> None:
    hello = dataclasses.replace(wire.Hello("kernel"), version=wire.VERSION + 1)
    (payload,) = wire.FrameReader().feed(wire.encode_hello(hello))
    assert wire.decode_hello(payload).version == wire.VERSION + 1


def test_ready_defaults_are_sent_explicitly() -> None:
    (payload,) = wire.FrameReader().feed(wire.encode(Ready(5)))
    assert msgpack.unpackb(payload) == ["ready", 5, True, 2, 0, False]
