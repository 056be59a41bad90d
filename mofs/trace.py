"""The ``--trace`` file: one JSON line per protocol message, in the order they were sent.

Lines look like ``{"t": 1700000000.123, "seqno": 7, "dir": "to_pager", "msg":
"data_request", "object": 2, "offset": 0, "length": 65536, "desired_access": 1}``; page
data is summarised by its ``length``. File-system calls that bracket a dialogue (fsync)
appear as ``"dir": "fuse"`` lines, so a reader can see where a call returned.
"""

from __future__ import annotations

import json
import time
from typing import IO

from .messages import Message


class Trace:
    """Appends trace lines to a file, flushing each so a reader sees it at once."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def __call__(self, direction: str, seqno: int, msg: Message) -> None:
        line = {"t": time.time(), "seqno": seqno, "dir": direction, **msg.describe()}
        self._file.write(json.dumps(line) + "\n")

    def event(self, op: str, **fields: object) -> None:
        """A file-system call or its return, e.g. ``event("fsync", object=2, phase="return")``."""
        self._file.write(json.dumps({"t": time.time(), "dir": "fuse", "msg": op, **fields}) + "\n")

    def close(self) -> None:
        self._file.close()
