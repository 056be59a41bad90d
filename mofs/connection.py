"""One pager and the two ordered channels that connect the kernel to it.

A mount may have several pagers at once (a directory tagged with ``user.mofs.pager``
sends its new files to another one); each gets its own connection, and each memory
object is routed to exactly one. A pager that fails takes only its own objects down.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .channel import Channel
from .messages import DataReturn, Message, ObjectId, Synchronize, SynchronizeCompleted

Tracer = Callable[[str, int, Message], None]


class PagerConnection:
    """The kernel's end of one pager: its channels, its health, and when it stopped."""

    def __init__(self, name: str, pager: object, count: Tracer) -> None:
        self.name = name
        self.pager = pager
        self._count = count
        self.inbox = Channel(trace=self._to_pager)
        self.outbox = Channel(trace=self._to_kernel)
        self.failure: str | None = None
        self.done = trio.Event()
        # A pager that declares itself precious (the kit's attribute) keeps no copy of
        # any page, so every return to it is journaled.
        self.precious = bool(getattr(pager, "precious", False))
        # A pager in another process can come back: the kernel may connect again after a
        # failure (never to a precious one, whose pages the journal must give back first).
        self.reconnectable = bool(getattr(pager, "reconnectable", False)) and not self.precious
        self.retry_at = 0.0  # no new connection attempt before this (trio clock)
        self.retried = False  # a reconnection failed already (logged once, not each time)
        # Changed pages returned but not yet covered by a successful synchronize sent after
        # them: object -> {offset: (seqno, length)}. If the pager dies, those the kernel
        # no longer holds may be lost, and the object's next fsync must say so.
        self._unconfirmed: dict[ObjectId, dict[int, tuple[int, int]]] = {}
        self._syncs: dict[tuple[ObjectId, int, int], list[int]] = {}

    def send(self, msg: Message) -> None:
        """Queue ``msg`` unless the pager has failed (then nothing reaches it)."""
        if self.failure is None:
            self.inbox.send(msg)

    def may_reconnect(self) -> bool:
        """Whether a new connection may replace this failed one: the pager lives in another
        process, that connection is over, and it was lost (the process died, the network
        broke), not ended because the pager broke the protocol (it would again)."""
        return (self.reconnectable and self.done.is_set()
                and bool(getattr(self.pager, "lost", False)))

    def unconfirmed(self) -> dict[ObjectId, list[tuple[int, int]]]:
        """(offset, length) of the changed pages each object returned that the pager has
        not confirmed storing (by answering a later synchronize without error)."""
        return {obj: [(offset, length) for offset, (_, length) in runs.items()]
                for obj, runs in self._unconfirmed.items()}

    def _to_pager(self, seqno: int, msg: Message) -> None:
        self._count("to_pager", seqno, msg)
        if isinstance(msg, DataReturn) and msg.dirty:
            self._unconfirmed.setdefault(msg.object, {})[msg.offset] = (seqno, len(msg.data))
        elif isinstance(msg, Synchronize):
            self._syncs.setdefault((msg.object, msg.offset, msg.length), []).append(seqno)

    def _to_kernel(self, seqno: int, msg: Message) -> None:
        self._count("to_kernel", seqno, msg)
        if isinstance(msg, SynchronizeCompleted):
            key = (msg.object, msg.offset, msg.length)
            sent = self._syncs.get(key)
            if not sent:
                return  # matches no synchronize: the kernel's core says so
            sync_seqno = sent.pop(0)
            if not sent:
                del self._syncs[key]
            runs = self._unconfirmed.get(msg.object)
            if msg.error or not runs:
                return
            end = msg.offset + msg.length
            for offset, (returned, length) in list(runs.items()):
                if returned < sync_seqno and msg.offset <= offset and offset + length <= end:
                    del runs[offset]  # the pager has stored it
            if not runs:
                del self._unconfirmed[msg.object]
