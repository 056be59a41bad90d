"""Pagers for tests/test_remote_pager.py, loaded by ``mofs serve-pager python:...``."""

from __future__ import annotations

from mofs.channel import Channel
from mofs.messages import Init, Message, SynchronizeCompleted
from pagers import DictPager


class LiarPager(DictPager):
    """Answers every init with ready, then with a synchronize_completed nobody asked for:
    a well-formed message that breaks the protocol."""

    async def handle(self, msg: Message, outbox: Channel) -> None:
        await super().handle(msg, outbox)
        if isinstance(msg, Init):
            outbox.send(SynchronizeCompleted(msg.object, 0, msg.page_size))
