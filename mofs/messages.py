"""The memory_object protocol's vocabulary: one frozen dataclass per message, no logic.

Names follow the OSF Mach 3 manual pages (``memory_object_data_request`` is
:class:`DataRequest`, its wire name ``data_request``). Every message names the memory
object it is about; sequence numbers are stamped by the channel that carries it, not
here. Offsets and lengths are byte values, page-integral in every message
(PROTOCOL.md O12). Two fields are mofs extensions (PROTOCOL.md decisions 3 and 10):
``SynchronizeCompleted.error`` and the :class:`SetSize` message.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NewType

ObjectId = NewType("ObjectId", int)

# Access bits. In ``desired_access`` they name access wanted; in ``lock_value`` they
# name access *prohibited* (the inverted sense of the manual pages).
VM_PROT_NONE = 0
VM_PROT_READ = 1
VM_PROT_WRITE = 2
VM_PROT_EXECUTE = 4
VM_PROT_ALL = 7
VM_PROT_NO_CHANGE = 8  # lock_request only: leave page locks as they are (GNU value)

MEMORY_OBJECT_RETURN_NONE = 0
MEMORY_OBJECT_RETURN_DIRTY = 1
MEMORY_OBJECT_RETURN_ALL = 2
MEMORY_OBJECT_RETURN_ANYTHING = 3

MEMORY_OBJECT_COPY_NONE = 0
MEMORY_OBJECT_COPY_CALL = 1
MEMORY_OBJECT_COPY_DELAY = 2
MEMORY_OBJECT_COPY_TEMPORARY = 3

VM_SYNC_ASYNCHRONOUS = 1
VM_SYNC_SYNCHRONOUS = 2
VM_SYNC_INVALIDATE = 4

KERN_SUCCESS = 0
KERN_INVALID_ARGUMENT = 4
KERN_MEMORY_FAILURE = 9
KERN_MEMORY_ERROR = 10
KERN_MEMORY_PRESENT = 23


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message; ``object`` is the memory object it concerns."""

    object: ObjectId

    @classmethod
    def name(cls) -> str:
        """The protocol name without the ``memory_object_`` prefix, e.g. ``data_request``."""
        return _NAMES[cls]

    def describe(self) -> dict[str, object]:
        """The message's fields for a trace line; page data is summarised by its length."""
        out: dict[str, object] = {"msg": self.name()}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (bytes, bytearray, memoryview)):
                out["length"] = len(value)
            else:
                out[f.name] = value
        return out


# --- kernel -> pager -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init(Message):
    """memory_object_init: the kernel starts caching the object; pages are ``page_size`` bytes.

    The pager answers with :class:`Ready` (or :class:`Destroy` to refuse)."""

    page_size: int


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    """memory_object_terminate: no further messages from this kernel about the object.

    Every dirty or precious page was returned before it (O6)."""


@dataclass(frozen=True, slots=True)
class DataRequest(Message):
    """memory_object_data_request: a cache miss on ``[offset, offset+length)``.

    The pager must answer every page once: supply, unavailable or error."""

    offset: int
    length: int
    desired_access: int


@dataclass(frozen=True, slots=True)
class DataUnlock(Message):
    """memory_object_data_unlock: the kernel holds the pages but needs ``desired_access``,
    which their lock prohibits. Granted by a :class:`LockRequest` that lifts the lock."""

    offset: int
    length: int
    desired_access: int


@dataclass(frozen=True, slots=True)
class DataReturn(Message):
    """memory_object_data_return: pages written back. ``dirty`` is false for an
    unmodified precious page; ``kernel_copy`` says the kernel kept a clean copy. Without
    one, ``data`` may be the evicted page's own buffer (a bytearray nobody else holds),
    handed over instead of copied; treat it as read-only."""

    offset: int
    data: bytes | bytearray
    dirty: bool
    kernel_copy: bool


@dataclass(frozen=True, slots=True)
class Synchronize(Message):
    """memory_object_synchronize: forwards fsync/msync; the range's returns precede it.
    The pager answers :class:`SynchronizeCompleted` with the same range."""

    offset: int
    length: int
    sync_flags: int


@dataclass(frozen=True, slots=True)
class LockCompleted(Message):
    """memory_object_lock_completed: every action of the lock request on this range,
    including its data returns, is done."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class SupplyCompleted(Message):
    """memory_object_supply_completed: the outcome of a supply that asked for a reply.
    ``result`` is KERN_SUCCESS or KERN_MEMORY_PRESENT at ``error_offset``."""

    offset: int
    length: int
    result: int
    error_offset: int


@dataclass(frozen=True, slots=True)
class ChangeCompleted(Message):
    """memory_object_change_completed: the attributes of :class:`ChangeAttributes` apply."""

    may_cache: bool
    copy_strategy: int


@dataclass(frozen=True, slots=True)
class SetSize(Message):
    """mofs extension (decision 10): the file is now ``size`` bytes long.

    Sizes live outside the protocol. The pager discards pages past ``size`` and zeroes
    the tail of a partial last page; the kernel already did the same in its cache."""

    size: int


# --- pager -> kernel -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """memory_object_ready: the pager serves the object; faults may proceed.

    ``cluster_size`` (OSF performance attribute, bytes) lets the kernel ask for several
    pages per request; ``silent_overwrite`` (OSF behaviour attribute) lets it create a
    page that a write covers completely without asking the pager for it first."""

    may_cache: bool = True
    copy_strategy: int = MEMORY_OBJECT_COPY_DELAY
    cluster_size: int = 0
    silent_overwrite: bool = False


@dataclass(frozen=True, slots=True)
class ChangeAttributes(Message):
    """memory_object_change_attributes: new attributes; also asserts readiness."""

    may_cache: bool
    copy_strategy: int
    reply: bool = False


@dataclass(frozen=True, slots=True)
class DataSupply(Message):
    """memory_object_data_supply: page contents, with the access they prohibit
    (``lock_value``) and whether the kernel must return them (``precious``)."""

    offset: int
    data: bytes
    lock_value: int = VM_PROT_NONE
    precious: bool = False
    reply: bool = False


@dataclass(frozen=True, slots=True)
class DataUnavailable(Message):
    """memory_object_data_unavailable: no data; the kernel zero-fills, writable, clean."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class DataError(Message):
    """memory_object_data_error: the pages cannot be provided; ``reason`` is the errno."""

    offset: int
    length: int
    reason: int


@dataclass(frozen=True, slots=True)
class LockRequest(Message):
    """memory_object_lock_request: lock, clean and/or flush the resident pages of a range.
    ``reply`` asks for a :class:`LockCompleted` after the returns it causes."""

    offset: int
    length: int
    should_return: int
    should_flush: bool
    lock_value: int
    reply: bool = True


@dataclass(frozen=True, slots=True)
class SynchronizeCompleted(Message):
    """memory_object_synchronize_completed: the range of a :class:`Synchronize` is on
    backing store. ``error`` (mofs extension, decision 3) is an errno if write-back
    failed, 0 otherwise."""

    offset: int
    length: int
    error: int = 0


@dataclass(frozen=True, slots=True)
class Destroy(Message):
    """memory_object_destroy: the pager shuts the object down; pages are discarded."""

    reason: int = 0


TO_PAGER: tuple[type[Message], ...] = (
    Init, Terminate, DataRequest, DataUnlock, DataReturn, Synchronize,
    LockCompleted, SupplyCompleted, ChangeCompleted, SetSize,
)
TO_KERNEL: tuple[type[Message], ...] = (
    Ready, ChangeAttributes, DataSupply, DataUnavailable, DataError, LockRequest,
    SynchronizeCompleted, Destroy,
)

_NAMES: dict[type[Message], str] = {
    Init: "init", Terminate: "terminate", DataRequest: "data_request",
    DataUnlock: "data_unlock", DataReturn: "data_return", Synchronize: "synchronize",
    LockCompleted: "lock_completed", SupplyCompleted: "supply_completed",
    ChangeCompleted: "change_completed", SetSize: "set_size", Ready: "ready",
    ChangeAttributes: "change_attributes", DataSupply: "data_supply",
    DataUnavailable: "data_unavailable", DataError: "data_error",
    LockRequest: "lock_request", SynchronizeCompleted: "synchronize_completed",
    Destroy: "destroy",
}
