"""One direction of a pager connection: an unbounded FIFO that stamps sequence numbers.

The protocol is one-way messages on ordered ports (PROTOCOL.md O1, O2). Sending never
blocks, so neither side can deadlock waiting for the other (the kernel "cannot be
stalled by a memory manager"); instead the channel counts the page bytes queued in it,
and a producer that must not run ahead of its consumer waits with
:meth:`Channel.wait_drained`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from .messages import DataReturn, DataSupply, Message


def _payload(msg: Message) -> int:
    if isinstance(msg, (DataReturn, DataSupply)):
        return len(msg.data)
    return 0


class Channel:
    """FIFO of ``(seqno, message)``; ``trace`` sees every message as it is sent."""

    def __init__(self, trace: Callable[[int, Message], None] | None = None) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[int, Message]](math.inf)
        self._seqno = 0
        self._trace = trace
        self.queued_bytes = 0
        self.closed = False
        self._drained = trio.Event()
        self._drained.set()

    def send(self, msg: Message) -> int:
        """Queue ``msg`` without blocking and return its sequence number."""
        self._seqno += 1
        if self._trace is not None:
            self._trace(self._seqno, msg)
        size = _payload(msg)
        if size:
            self.queued_bytes += size
            if self._drained.is_set():
                self._drained = trio.Event()
        self._send.send_nowait((self._seqno, msg))
        return self._seqno

    async def receive(self, *, hold: bool = False) -> tuple[int, Message]:
        """Next ``(seqno, message)``; raises ``trio.EndOfChannel`` once closed and empty.

        With ``hold``, the message's page bytes still count as queued until
        :meth:`release`: a receiver that hands messages on to workers releases them
        when they are handled, so back-pressure sees its real backlog."""
        seqno, msg = await self._receive.receive()
        if not hold:
            self.release(msg)
        return seqno, msg

    def receive_nowait(self, *, hold: bool = False) -> tuple[int, Message]:
        """Like :meth:`receive`; raises ``trio.WouldBlock`` when nothing is queued."""
        seqno, msg = self._receive.receive_nowait()
        if not hold:
            self.release(msg)
        return seqno, msg

    def release(self, msg: Message) -> None:
        """The message has been dealt with: its page bytes no longer count as queued."""
        size = _payload(msg)
        if size:
            self.queued_bytes -= size
            if self.queued_bytes <= 0:
                self._drained.set()

    async def wait_drained(self, limit: int) -> None:
        """Back-pressure: if more than ``limit`` page bytes are queued, wait until none are."""
        if self.queued_bytes > limit:
            await self._drained.wait()

    def abandon(self) -> None:
        """The receiver is gone for good (a dead pager): wake whoever waits for it to
        catch up, instead of letting them wait out their timeout."""
        self._drained.set()

    def close(self) -> None:
        """No more messages; the receiver gets ``trio.EndOfChannel`` after the queue."""
        self.closed = True
        self._send.close()

    def pending(self) -> int:
        """Messages queued and not yet received."""
        return self._send.statistics().current_buffer_used
