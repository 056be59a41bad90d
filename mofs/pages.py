"""The page state machine: every state a cached page can be in, and the only code that moves it.

Theory of operation. The kernel side of the protocol keeps, per memory object, a record
for every page it knows anything about. A page it does not know is ABSENT (no record is
kept). A cache miss sends ``data_request`` and makes the page REQUESTED; nothing more is
sent about that page until the pager answers it (PROTOCOL.md O7). The answer makes it
RESIDENT (``data_supply``, ``data_unavailable``) or ABSENT again (``data_error``).
A RESIDENT page carries the facts that are not states, as libpager's pagemap bits do:
``dirty``, ``precious``, the prohibited access ``lock``, the access already asked for
with ``data_unlock`` (``unlock_requested``) and ``cleaning``, the number of outstanding
``synchronize`` requests whose ``data_return`` carried this page with a kernel copy.

Rule 1 (after h11): nothing outside this file assigns ``Page.state``. Every change goes
through :meth:`Page.apply`, which consults :data:`TRANSITIONS`; an event the table does
not allow raises and leaves the page unchanged. Events that the table maps to the same
state are the ones the protocol says to ignore (e.g. ``data_error`` for a page that was
never requested).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError


class PageState(enum.Enum):
    ABSENT = "absent"
    REQUESTED = "requested"
    RESIDENT = "resident"


class PageEvent(enum.Enum):
    # local events (the cache's own decisions)
    FAULT = "fault"  # a read or write needs the page
    CREATE = "create"  # the kernel makes the page itself (silent overwrite, past EOF)
    EVICT = "evict"  # memory pressure, terminate, truncate, sync with invalidate
    ABANDON = "abandon"  # the pager failed or the object went away while requested
    # pager messages
    SUPPLY = "data_supply"
    UNAVAILABLE = "data_unavailable"
    ERROR = "data_error"
    FLUSH = "lock_request(flush)"


S, E = PageState, PageEvent

# Local events that the table does not allow are bugs in mofs (LocalProtocolError);
# pager messages it does not allow are the pager's fault (RemoteProtocolError).
TRANSITIONS: dict[PageState, dict[PageEvent, PageState]] = {
    S.ABSENT: {
        E.FAULT: S.REQUESTED,
        E.CREATE: S.RESIDENT,
        E.SUPPLY: S.RESIDENT,  # unsolicited supply = prefetch (mofs decision 5)
        E.UNAVAILABLE: S.ABSENT,  # ignored
        E.ERROR: S.ABSENT,  # ignored
        E.FLUSH: S.ABSENT,  # nothing cached, nothing to do
    },
    S.REQUESTED: {
        E.FAULT: S.REQUESTED,  # wait; no second request
        E.SUPPLY: S.RESIDENT,
        E.UNAVAILABLE: S.RESIDENT,  # zero fill
        E.ERROR: S.ABSENT,  # waiters get the reason; next fault asks again
        E.FLUSH: S.REQUESTED,  # lock_request affects only data cached at the time
        E.ABANDON: S.ABSENT,
    },
    S.RESIDENT: {
        E.FAULT: S.RESIDENT,
        E.EVICT: S.ABSENT,
        E.FLUSH: S.ABSENT,
        E.SUPPLY: S.RESIDENT,  # rejected: KERN_MEMORY_PRESENT (decision 4)
        E.UNAVAILABLE: S.RESIDENT,  # ignored
        E.ERROR: S.RESIDENT,  # ignored
        E.ABANDON: S.RESIDENT,  # cached data outlives a dead pager
    },
}

_REMOTE = {E.SUPPLY, E.UNAVAILABLE, E.ERROR, E.FLUSH}


@dataclass(slots=True, eq=False)
class Page:
    """One page of a memory object, as the kernel side sees it."""

    state: PageState = PageState.ABSENT
    data: bytearray | None = None
    dirty: bool = False
    precious: bool = False
    lock: int = 0  # VM_PROT_* bits prohibited
    unlock_requested: int = 0  # VM_PROT_* bits already asked for with data_unlock
    desired: int = 0  # VM_PROT_* bits the outstanding data_request (or later faults) need
    cleaning: int = 0  # outstanding synchronize requests that returned this page

    def apply(self, event: PageEvent) -> PageState:
        """Move to the state the table gives for ``event``; raise if it gives none."""
        try:
            new = TRANSITIONS[self.state][event]
        except KeyError:
            cls = RemoteProtocolError if event in _REMOTE else LocalProtocolError
            raise cls(f"{event.value} is not allowed on a {self.state.value} page") from None
        self.state = new
        return new

    def install(self, data: bytearray, lock: int, precious: bool) -> None:
        """Fill the page with clean data (after SUPPLY, UNAVAILABLE or CREATE)."""
        self.data = data
        self.dirty = False
        self.precious = precious
        self.lock = lock
        self.unlock_requested = 0

    @property
    def must_return(self) -> bool:
        """Dropping this page without ``data_return`` would lose data."""
        return self.dirty or self.precious or self.cleaning > 0
