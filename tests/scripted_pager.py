"""A memory pager that a test steers from outside, to provoke the full protocol.

Mounted with ``--pager python:tests.scripted_pager:ScriptedPager:SOCKET``; the test
connects to SOCKET and sends JSON lines. Each command is answered with ``ok``:

- ``{"op": "set", "object": N, "offset": O, "data": "text"}`` changes a page behind the
  kernel's back, then invalidates it with ``lock_request(RETURN_NONE, flush)`` (optional
  ``"length"`` and ``"should_return"`` widen the request);
- ``{"op": "flush", "object": N, "offset": O, "length": L}`` flushes without changing;
- ``{"op": "offer", "object": N, "offset": O, "length": L}`` supplies pages unasked
  (prefetch, as libpager's ``pager_offer_page``);
- ``{"op": "garbage", "object": N}`` breaks the protocol (a misaligned supply);
- ``{"op": "fail_reads", "object": N, "errno": E}`` answers reads with data_error(E)
  (0 stops);
- ``{"op": "fail_writes", "errno": E}`` fails every returned page with E (0 stops);
- ``{"op": "bug", "object": N}`` makes read_page raise ValueError (a pager bug);
- ``{"op": "twice", "object": N}`` answers every read of N a second time, with junk;
- ``{"op": "hang", "object": N}`` makes every later read of object N wait forever;
- ``{"op": "hang_writes"}`` makes every later returned page wait forever (its bytes
  stay queued, so writers meet back-pressure);
- ``{"op": "write_lock", "on": true}`` supplies pages write-locked (``data_unlock`` on
  the first write);
- ``{"op": "refuse_unlock", "errno": 28}`` refuses unlocks with that errno (0 grants).
"""

from __future__ import annotations

import json
import os

import trio

from mofs.channel import Channel
from mofs.messages import (
    MEMORY_OBJECT_RETURN_NONE,
    VM_PROT_NO_CHANGE,
    VM_PROT_NONE,
    VM_PROT_WRITE,
    DataSupply,
    LockRequest,
    Message,
    ObjectId,
)
from pagers import DictPager, MemoryPager
from pagers.sqlite import SQLitePager


class ScriptedPager(DictPager):
    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.hung: set[int] = set()
        self.writes_hung = False
        self.refuse = 0
        self.failing: dict[int, int] = {}
        self.write_errno = 0
        self.buggy: set[int] = set()
        self.twice: set[int] = set()
        self.second_answers: list[Message] = []
        self.outbox: Channel | None = None

    async def read_page(self, obj: ObjectId, offset: int, length: int) -> bytes | None:
        if obj in self.hung:
            await trio.sleep_forever()
        if self.failing.get(obj):
            raise OSError(self.failing[obj], os.strerror(self.failing[obj]))
        if obj in self.buggy:
            raise ValueError("a bug in this pager")
        if obj in self.twice:  # sent by idle(), after the kit has sent the real answer
            self.second_answers.append(DataSupply(obj, offset, b"junk" * (length // 4)))
        return await super().read_page(obj, offset, length)

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        if self.writes_hung:
            await trio.sleep_forever()
        if self.write_errno:
            raise OSError(self.write_errno, os.strerror(self.write_errno))
        await super().write_page(obj, offset, data)

    async def idle(self) -> None:
        while self.second_answers:
            self._send(self.second_answers.pop(0))
        await super().idle()

    async def unlock_page(self, obj: ObjectId, offset: int, length: int) -> None:
        if self.refuse:
            raise OSError(self.refuse, os.strerror(self.refuse))

    async def serve(self, inbox: Channel, outbox: Channel) -> None:
        self.outbox = outbox
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(self.socket_path)
        sock.listen()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._command,
                               [trio.SocketListener(sock)])
            await super().serve(inbox, outbox)
            nursery.cancel_scope.cancel()

    async def _command(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            async for chunk in stream:
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._do(json.loads(line))
                    await stream.send_all(b"ok\n")

    def _send(self, msg: Message) -> None:
        assert self.outbox is not None
        self.outbox.send(msg)

    def _do(self, cmd: dict) -> None:
        op = cmd["op"]
        if op == "set":
            obj, offset = ObjectId(cmd["object"]), cmd["offset"]
            size = self.page_size(obj)
            self.pages.setdefault(obj, {})[offset] = cmd["data"].encode().ljust(size, b"\0")
            self._send(LockRequest(obj, offset, cmd.get("length", size),
                                   cmd.get("should_return", MEMORY_OBJECT_RETURN_NONE), True,
                                   VM_PROT_NO_CHANGE, True))
        elif op == "flush":
            self._send(LockRequest(ObjectId(cmd["object"]), cmd["offset"], cmd["length"],
                                   MEMORY_OBJECT_RETURN_NONE, True, VM_PROT_NO_CHANGE, True))
        elif op == "offer":
            obj = ObjectId(cmd["object"])
            size = self.page_size(obj)
            pages = self.pages.get(obj, {})
            data = b"".join(pages.get(o, bytes(size)).ljust(size, b"\0")
                            for o in range(cmd["offset"], cmd["offset"] + cmd["length"], size))
            self._send(DataSupply(obj, cmd["offset"], data, VM_PROT_NONE, False))
        elif op == "garbage":
            self._send(DataSupply(ObjectId(cmd["object"]), 1, b"x" * 100))
        elif op == "fail_writes":
            self.write_errno = cmd["errno"]
        elif op == "bug":
            self.buggy.add(cmd["object"])
        elif op == "twice":
            self.twice.add(cmd["object"])
        elif op == "fail_reads":
            self.failing[cmd["object"]] = cmd["errno"]
        elif op == "hang":
            self.hung.add(cmd["object"])
        elif op == "hang_writes":
            self.writes_hung = True
        elif op == "write_lock":
            self.lock_value = VM_PROT_WRITE if cmd["on"] else VM_PROT_NONE
        elif op == "refuse_unlock":
            self.refuse = cmd["errno"]
        else:
            raise ValueError(f"unknown command {op!r}")


class SlowSwapPager(MemoryPager):
    """The anonymous-memory pager with a slow disk: returned pages wait in its queue."""

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        await self.idle()  # commit first: never wait with the swap transaction open
        await trio.sleep(0.02)
        await super().write_page(obj, offset, data)


class ForgetfulPager(DictPager):
    """Broken on purpose, for `mofs pager-check`: it forgets every page returned to it."""

    async def write_page(self, obj: ObjectId, offset: int, data: bytes) -> None:
        pass


class SlowDropPager(SQLitePager):
    """The default pager (``python:tests.scripted_pager:SlowDropPager:STORE``), stalled
    for a minute when told to drop the stored pages of an object (``set_size(0)`` of an
    object with rows): a kill -9 then lands while a deleted file is being freed."""

    async def set_size(self, obj: ObjectId, size: int) -> None:
        if size == 0 and self._sql("SELECT 1 FROM pages WHERE object = ? LIMIT 1", (obj,)):
            await self.idle()  # commit first: never wait with the transaction open
            await trio.sleep(60)
        await super().set_size(obj, size)
