"""Trace lines: one JSON object per protocol message, in the order they were sent.

Lines look like ``{"t": 1700000000.123, "seqno": 7, "dir": "to_pager", "msg":
"data_request", "object": 2, "offset": 0, "length": 65536, "desired_access": 1}``; page
data is summarised by its ``length``. File-system calls that bracket a dialogue (fsync)
appear as ``"dir": "fuse"`` lines, so a reader can see where a call returned.

A :class:`TraceSink` turns messages and events into line dicts and hands them to
:meth:`TraceSink.emit`. :class:`Trace` appends them to the ``--trace`` file,
:class:`mofs.control.Broadcast` sends them to ``mofs trace`` clients, and :class:`Tee`
feeds several sinks, since the kernel takes a single tracer.
"""

from __future__ import annotations

import json
import time
from typing import IO

from .messages import Message


class TraceSink:
    """The tracer interface: ``sink(direction, seqno, msg)`` and ``sink.event(op, ...)``."""

    @property
    def active(self) -> bool:
        """False when nobody would see a line: building it is then skipped."""
        return True

    def __call__(self, direction: str, seqno: int, msg: Message) -> None:
        if self.active:
            self.emit({"t": time.time(), "seqno": seqno, "dir": direction, **msg.describe()})

    def event(self, op: str, **fields: object) -> None:
        """A file-system call or its return, e.g. ``event("fsync", object=2, phase="return")``."""
        if self.active:
            self.emit({"t": time.time(), "dir": "fuse", "msg": op, **fields})

    def emit(self, line: dict[str, object]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Trace(TraceSink):
    """Appends trace lines to a file, flushing each so a reader sees it at once."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def emit(self, line: dict[str, object]) -> None:
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._file.close()


class Tee(TraceSink):
    """Hands every line to each of ``sinks`` that is active."""

    def __init__(self, *sinks: TraceSink) -> None:
        self.sinks = sinks

    @property
    def active(self) -> bool:
        return any(s.active for s in self.sinks)

    def emit(self, line: dict[str, object]) -> None:
        for sink in self.sinks:
            if sink.active:
                sink.emit(line)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
