"""One pager and the two ordered channels that connect the kernel to it.

A mount may have several pagers at once (a directory tagged with ``user.mofs.pager``
sends its new files to another one); each gets its own connection, and each memory
object is routed to exactly one. A pager that fails takes only its own objects down.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .channel import Channel
from .messages import Message

Tracer = Callable[[str, int, Message], None]


class PagerConnection:
    """The kernel's end of one pager: its channels, its health, and when it stopped."""

    def __init__(self, name: str, pager: object, count: Tracer) -> None:
        self.name = name
        self.pager = pager
        self.inbox = Channel(trace=lambda seqno, msg: count("to_pager", seqno, msg))
        self.outbox = Channel(trace=lambda seqno, msg: count("to_kernel", seqno, msg))
        self.failure: str | None = None
        self.done = trio.Event()
        # A pager that declares itself precious (the kit's attribute) keeps no copy of
        # any page, so every return to it is journaled.
        self.precious = bool(getattr(pager, "precious", False))

    def send(self, msg: Message) -> None:
        """Queue ``msg`` unless the pager has failed (then nothing reaches it)."""
        if self.failure is None:
            self.inbox.send(msg)
