"""PROTOCOL.md §9 edge cases not covered in test_core.py, scripted against the pure core.

Each test plays the pager by hand (or with the small scripted scheduler below, for
several kernels) and asserts the exact messages the kernel side sends back.
"""

from __future__ import annotations

import errno
from collections import defaultdict, deque
from dataclasses import dataclass, field

import pytest

from mofs.cache import Cache
from mofs.errors import LocalProtocolError, PagerFailed, RemoteProtocolError
from mofs.memory_object import (
    KERN_MEMORY_PRESENT,
    KERN_SUCCESS,
    MemoryObject,
    ObjectState,
    Outbox,
)
from mofs.messages import (
    MEMORY_OBJECT_COPY_CALL,
    MEMORY_OBJECT_COPY_DELAY,
    MEMORY_OBJECT_COPY_NONE,
    MEMORY_OBJECT_COPY_TEMPORARY,
    MEMORY_OBJECT_RETURN_ALL,
    MEMORY_OBJECT_RETURN_DIRTY,
    MEMORY_OBJECT_RETURN_NONE,
    VM_PROT_NO_CHANGE,
    VM_PROT_NONE,
    VM_PROT_READ,
    VM_PROT_WRITE,
    VM_SYNC_SYNCHRONOUS,
    ChangeAttributes,
    ChangeCompleted,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnlock,
    Destroy,
    Init,
    LockCompleted,
    LockRequest,
    Message,
    ObjectId,
    Ready,
    SetSize,
    SupplyCompleted,
    Synchronize,
    SynchronizeCompleted,
    Terminate,
)
from mofs.pages import PageState

PS = 4096
OBJ = ObjectId(7)
READ = VM_PROT_READ
RW = VM_PROT_READ | VM_PROT_WRITE
SYNC = VM_SYNC_SYNCHRONOUS
EIO = errno.EIO


def make(size: int = 16 * PS, budget: int = 64 * PS, **ready: object):
    """A READY object with an empty outbox."""
    out = Outbox()
    obj = MemoryObject(OBJ, PS, Cache(budget), out, size)
    obj.start()
    obj.receive(Ready(OBJ, **ready))  # type: ignore[arg-type]
    out.messages.clear()
    out.wakeups.clear()
    return obj, out


def take(out: Outbox) -> list[Message]:
    msgs, out.messages = out.messages, []
    return msgs


def fill(byte: int, pages: int = 1) -> bytes:
    return bytes([byte]) * (pages * PS)


def supply(obj: MemoryObject, index: int, byte: int, **kw: object) -> None:
    obj.receive(DataSupply(OBJ, index * PS, fill(byte), **kw))  # type: ignore[arg-type]


def resident(obj: MemoryObject, index: int, byte: int = 1, **kw: object) -> None:
    assert obj.fault(index, READ) is not None
    supply(obj, index, byte, **kw)
    assert obj.fault(index, READ) is None


def dirty(obj: MemoryObject, index: int, byte: int, text: bytes) -> bytes:
    """Make page ``index`` resident with ``byte``s, write ``text`` at its start; its data."""
    resident(obj, index, byte)
    assert obj.write(index, 0, text) is None
    return text + bytes([byte]) * (PS - len(text))


# --- 02 ----------------------------------------------------------------------------------------


def test_edge_02_supply_into_a_page_being_cleaned_reports_present_and_keeps_its_data() -> None:
    """A page whose data_return travels with an outstanding synchronize is RESIDENT with
    ``cleaning > 0``; mofs has no separate busy state. Nothing has to wait for the clean
    to finish: its data_return is already queued ahead of anything the pager sends next,
    so the supply is refused at once like any supply into a present page (decision 4),
    and the kernel's copy, not the offered one, survives even if the clean fails."""
    obj, out = make()
    mine = dirty(obj, 0, 1, b"kernel")
    obj.fault(1, READ)
    take(out)
    key, started = obj.begin_sync(0, PS, SYNC)
    assert started
    assert take(out) == [DataReturn(OBJ, 0, mine, True, True), Synchronize(OBJ, 0, PS, SYNC)]
    page = obj.pages[0]
    assert page.state is PageState.RESIDENT and page.cleaning == 1 and not page.dirty

    obj.receive(DataSupply(OBJ, 0, fill(2) + fill(3), precious=True, reply=True))
    assert take(out) == [
        DataReturn(OBJ, 0, fill(2), False, False),  # the refused precious copy goes back first
        SupplyCompleted(OBJ, 0, 2 * PS, KERN_MEMORY_PRESENT, 0),
    ]
    assert page.data == mine and page.cleaning == 1 and not page.precious
    assert obj.page_data(1) == fill(3) and obj.pages[1].precious  # the rest is installed

    obj.receive(SynchronizeCompleted(OBJ, 0, PS, error=errno.EIO))
    assert (key, errno.EIO) in out.wakeups
    assert page.dirty and page.cleaning == 0 and page.data == mine  # kept for a retry
    obj.evict(0)
    assert take(out) == [DataReturn(OBJ, 0, mine, True, False)]


# --- 08 ----------------------------------------------------------------------------------------


def test_edge_08_refused_unlock_flushes_then_errors_the_write_refetch() -> None:
    obj, out = make()
    resident(obj, 0, 1, lock_value=VM_PROT_WRITE)  # read-only, e.g. a hole with no blocks
    resident(obj, 1, 2)
    rkey = obj.fault(2, READ)  # a reader of another page, still waiting for its data
    take(out)
    out.wakeups.clear()

    wkey = obj.write(0, 0, b"w")
    assert take(out) == [DataUnlock(OBJ, 0, PS, VM_PROT_WRITE)]
    assert not obj.pages[0].dirty  # a write-locked page cannot have been modified

    # libpager's refusal: flush without return, keep write-locked ...
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_NONE, True, VM_PROT_WRITE))
    assert take(out) == [LockCompleted(OBJ, 0, PS)]
    assert 0 not in obj.pages and out.wakeups and set(out.wakeups) == {(wkey, 0)}
    # ... the woken writer asks again, now with write access ...
    assert obj.write(0, 0, b"w") == wkey
    assert take(out) == [DataRequest(OBJ, 0, PS, RW)]
    # ... and that refetch gets the error.
    out.wakeups.clear()
    obj.receive(DataError(OBJ, 0, PS, errno.ENOSPC))
    assert out.wakeups == [(wkey, errno.ENOSPC)]
    assert 0 not in obj.pages and take(out) == []

    # Readers of other pages are unaffected.
    assert obj.fault(1, READ) is None and obj.page_data(1) == fill(2)
    supply(obj, 2, 3)
    assert out.wakeups[-1] == (rkey, 0) and obj.page_data(2) == fill(3)
    # No dirty data existed anywhere: terminating returns nothing.
    obj.terminate()
    assert take(out) == [Terminate(OBJ)]


# --- 11 ----------------------------------------------------------------------------------------


def test_edge_11_flush_racing_an_eviction_returns_each_page_once() -> None:
    obj, out = make()
    data0 = dirty(obj, 0, 1, b"dirty")
    resident(obj, 1, 2, precious=True)
    take(out)
    obj.evict(0)  # cache pressure wins the race: its return is queued first
    obj.receive(LockRequest(OBJ, 0, 2 * PS, MEMORY_OBJECT_RETURN_ALL, True, VM_PROT_NO_CHANGE))
    assert take(out) == [
        DataReturn(OBJ, 0, data0, True, False),
        DataReturn(OBJ, PS, fill(2), False, False),
        LockCompleted(OBJ, 0, 2 * PS),
    ]
    assert obj.pages == {} and obj.cache.resident_bytes == 0


def test_edge_11_flush_after_eviction_and_refetch_leaves_the_request_alone() -> None:
    obj, out = make()
    data0 = dirty(obj, 0, 1, b"dirty")
    take(out)
    obj.evict(0)
    key = obj.fault(0, READ)  # re-requested at once (O11)
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_ALL, True, VM_PROT_NO_CHANGE))
    assert take(out) == [
        DataReturn(OBJ, 0, data0, True, False),
        DataRequest(OBJ, 0, PS, READ),
        LockCompleted(OBJ, 0, PS),
    ]
    assert obj.pages[0].state is PageState.REQUESTED
    supply(obj, 0, 4)
    assert (key, 0) in out.wakeups and obj.page_data(0) == fill(4)


# --- 15 ----------------------------------------------------------------------------------------


def test_edge_15_evicting_a_clean_precious_page_returns_it_without_a_kernel_copy() -> None:
    obj, out = make(budget=2 * PS)
    resident(obj, 0, 5, precious=True)
    resident(obj, 1, 6)
    resident(obj, 2, 7)
    take(out)
    assert obj.cache.reclaim() == 1  # least recently used: the precious page
    assert take(out) == [DataReturn(OBJ, 0, fill(5), False, False)]
    assert 0 not in obj.pages
    resident(obj, 3, 8)
    take(out)
    assert obj.cache.reclaim() == 1  # a clean non-precious page goes silently
    assert take(out) == [] and 1 not in obj.pages


# --- 19 ----------------------------------------------------------------------------------------


def test_edge_19_terminate_returns_dirty_and_precious_pages_first() -> None:
    obj, out = make()
    data0 = dirty(obj, 0, 1, b"zero")
    resident(obj, 1, 2)
    resident(obj, 2, 3, precious=True)
    data3 = dirty(obj, 3, 4, b"three")
    take(out)
    obj.terminate()
    assert take(out) == [
        DataReturn(OBJ, 0, data0, True, False),
        DataReturn(OBJ, 2 * PS, fill(3), False, False),
        DataReturn(OBJ, 3 * PS, data3, True, False),
        Terminate(OBJ),
    ]
    assert obj.state is ObjectState.TERMINATED and obj.cache.resident_bytes == 0


def test_edge_19_temporary_object_returns_nothing_at_terminate() -> None:
    obj, out = make(copy_strategy=MEMORY_OBJECT_COPY_TEMPORARY)
    dirty(obj, 0, 1, b"scratch")
    resident(obj, 1, 2, precious=True)
    take(out)
    obj.terminate()
    assert take(out) == [Terminate(OBJ)]
    assert obj.pages == {} and obj.cache.resident_bytes == 0


def test_edge_19_terminate_during_outstanding_paging_fails_it_and_ignores_late_answers() -> None:
    """mofs does not wait for paging to finish as GNU Mach does: a request, a synchronize
    outstanding at terminate fail with EIO (nothing hangs) and their answers are ignored;
    a page whose write-back was not confirmed goes back once more, dirty."""
    obj, out = make()
    data1 = dirty(obj, 1, 2, b"unsynced")
    rkey = obj.fault(0, READ)
    skey, _ = obj.begin_sync(PS, PS, SYNC)
    take(out)
    out.wakeups.clear()
    obj.terminate()
    assert take(out) == [DataReturn(OBJ, PS, data1, True, False), Terminate(OBJ)]
    assert set(out.wakeups) == {(rkey, EIO), (skey, EIO)}
    out.wakeups.clear()
    supply(obj, 0, 9)
    obj.receive(SynchronizeCompleted(OBJ, PS, PS))  # no protocol error either
    assert take(out) == [] and out.wakeups == []
    assert obj.pages == {} and obj.cache.resident_bytes == 0


def test_edge_19_last_close_during_an_outstanding_read_terminates_and_fails_it() -> None:
    obj, out = make(may_cache=False)
    obj.map()
    key = obj.fault(0, READ)
    take(out)
    obj.unmap()  # may_cache is off: the last unmap terminates
    assert take(out) == [Terminate(OBJ)]
    assert (key, EIO) in out.wakeups and obj.state is ObjectState.TERMINATED
    supply(obj, 0, 1)
    assert obj.pages == {} and take(out) == []


def test_edge_19_terminate_before_ready_fails_the_faults_waiting_for_it() -> None:
    out = Outbox()
    obj = MemoryObject(OBJ, PS, Cache(4 * PS), out, 4 * PS)
    obj.start()
    assert obj.fault(0, READ) == obj.ready_key
    take(out)
    obj.terminate()
    assert take(out) == [Terminate(OBJ)] and out.wakeups == [(obj.ready_key, EIO)]
    obj.receive(Ready(OBJ))  # late: ignored
    assert obj.state is ObjectState.TERMINATED
    with pytest.raises(PagerFailed):
        obj.fault(0, READ)


# --- 20 ----------------------------------------------------------------------------------------


def test_edge_20_init_after_terminate_follows_it_and_ignores_the_old_incarnation() -> None:
    """Messages carry no control port, so the new incarnation tells stale pager messages
    apart by order: the pager answers ``init`` before anything else (O2), so whatever
    arrives before ``ready`` was sent before the pager saw the previous ``terminate``."""
    obj, out = make()
    cache = obj.cache
    data0 = dirty(obj, 0, 1, b"old")
    obj.fault(1, READ)  # the pager answers this one late
    obj.begin_sync(0, PS, SYNC)
    take(out)
    obj.terminate()
    again = MemoryObject(OBJ, PS, cache, out, 16 * PS)
    again.start()
    assert take(out) == [
        DataReturn(OBJ, 0, data0, True, False),
        Terminate(OBJ),
        Init(OBJ, PS),
        SetSize(OBJ, 16 * PS),
    ]
    # Answers the pager sent before it saw the terminate reach the new incarnation:
    supply(again, 1, 9)
    again.receive(SynchronizeCompleted(OBJ, 0, PS))
    again.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_ALL, True, VM_PROT_NO_CHANGE))
    assert take(out) == [] and again.pages == {} and cache.resident_bytes == 0
    assert again.fault(1, READ) == again.ready_key
    again.receive(Ready(OBJ))
    assert again.fault(1, READ) == again.page_key(1)
    assert take(out) == [DataRequest(OBJ, PS, PS, READ)]
    supply(again, 1, 5)
    assert again.fault(1, READ) is None and again.page_data(1) == fill(5)
    assert cache.resident_bytes == PS


# --- 21 ----------------------------------------------------------------------------------------


def test_edge_21_uncaching_an_unmapped_object_terminates_it_before_change_completed() -> None:
    obj, out = make()
    data0 = dirty(obj, 0, 1, b"d")
    resident(obj, 1, 2, precious=True)
    resident(obj, 2, 3)
    take(out)
    assert obj.mapped == 0
    obj.receive(ChangeAttributes(OBJ, False, MEMORY_OBJECT_COPY_DELAY, reply=True))
    assert take(out) == [
        DataReturn(OBJ, 0, data0, True, False),
        DataReturn(OBJ, PS, fill(2), False, False),
        Terminate(OBJ),
        ChangeCompleted(OBJ, False, MEMORY_OBJECT_COPY_DELAY),  # O9: after the terminate
    ]
    assert obj.state is ObjectState.TERMINATED and obj.cache.resident_bytes == 0


def test_edge_21_uncaching_a_mapped_object_only_replies_and_the_last_unmap_terminates() -> None:
    obj, out = make()
    obj.map()
    obj.map()
    data0 = dirty(obj, 0, 1, b"d")
    take(out)
    obj.receive(ChangeAttributes(OBJ, False, MEMORY_OBJECT_COPY_DELAY, reply=True))
    assert take(out) == [ChangeCompleted(OBJ, False, MEMORY_OBJECT_COPY_DELAY)]
    assert obj.state is ObjectState.READY and not obj.may_cache
    assert obj.fault(0, READ) is None
    obj.unmap()
    assert take(out) == [] and obj.state is ObjectState.READY
    obj.unmap()
    assert take(out) == [DataReturn(OBJ, 0, data0, True, False), Terminate(OBJ)]
    with pytest.raises(LocalProtocolError):
        obj.unmap()


def test_edge_21_a_cacheable_object_outlives_its_last_unmap() -> None:
    obj, out = make()
    obj.map()
    resident(obj, 0, 1)
    take(out)
    obj.unmap()
    assert take(out) == [] and obj.state is ObjectState.READY
    assert obj.fault(0, READ) is None  # still cached
    obj.receive(ChangeAttributes(OBJ, True, MEMORY_OBJECT_COPY_DELAY, reply=True))
    assert take(out) == [ChangeCompleted(OBJ, True, MEMORY_OBJECT_COPY_DELAY)]
    assert obj.state is ObjectState.READY


# --- 22 ----------------------------------------------------------------------------------------


def test_edge_22_destroy_discards_mapped_dirty_pages_fails_waiters_and_terminates() -> None:
    obj, out = make()
    obj.map()
    obj.map()
    dirty(obj, 0, 1, b"lost")
    resident(obj, 1, 2, precious=True)
    rkey = obj.fault(2, READ)
    skey, _ = obj.begin_sync(3 * PS, PS, SYNC)
    take(out)
    out.wakeups.clear()
    obj.receive(Destroy(OBJ))
    assert take(out) == [Terminate(OBJ)]  # discarded: no data_return at all
    assert {(rkey, EIO), (skey, EIO)} <= set(out.wakeups)
    assert obj.state is ObjectState.DESTROYED
    assert obj.pages == {} and obj.cache.resident_bytes == 0
    with pytest.raises(PagerFailed):
        obj.fault(0, READ)
    with pytest.raises(PagerFailed):
        obj.write(0, 0, b"x")
    obj.unmap()
    obj.unmap()
    supply(obj, 2, 3)  # a late answer
    assert take(out) == [] and obj.pages == {}  # no second terminate, nothing installed


def test_edge_22_return_flush_and_lock_before_destroy_loses_nothing() -> None:
    obj, out = make()
    obj.map()
    data0 = dirty(obj, 0, 1, b"keep")
    resident(obj, 1, 2, precious=True)
    resident(obj, 2, 3)
    take(out)
    obj.receive(LockRequest(OBJ, 0, 16 * PS, MEMORY_OBJECT_RETURN_ALL, True, VM_PROT_WRITE))
    wkey = obj.write(0, 0, b"late")  # a user writes again between the two
    obj.receive(Destroy(OBJ))
    assert take(out) == [
        DataReturn(OBJ, 0, data0, True, False),
        DataReturn(OBJ, PS, fill(2), False, False),
        LockCompleted(OBJ, 0, 16 * PS),
        DataRequest(OBJ, 0, PS, RW),  # the late write had to ask: the pager knows of it
        Terminate(OBJ),
    ]
    assert (wkey, EIO) in out.wakeups


# --- 23 ----------------------------------------------------------------------------------------


def test_edge_23_pager_death_fails_waiters_and_keeps_only_unreturned_data() -> None:
    """Decision: when the pager dies (:meth:`MemoryObject.fail`) requested pages become
    absent and every waiter (data, unlock, synchronize, ready) gets EIO at once. Clean
    non-precious pages are dropped, not served: a dead pager can no longer invalidate
    them, and the restarted pager is the authority on their content, so every later
    fault, write or sync raises PagerFailed (EIO). Dirty and precious pages, including
    one whose synchronize never completed, are kept outside the cache budget (eviction
    can neither lose them nor return them to a dead pager) until a restarted pager's
    object adopts them."""
    obj, out = make()
    cache = obj.cache
    dirty(obj, 0, 1, b"dirty")
    resident(obj, 1, 2)
    resident(obj, 2, 3, precious=True)
    dirty(obj, 3, 4, b"syncing")
    resident(obj, 5, 6, lock_value=VM_PROT_WRITE)
    rkey = obj.fault(4, READ)
    skey, _ = obj.begin_sync(3 * PS, PS, SYNC)
    wkey = obj.write(5, 0, b"w")  # waits for its data_unlock
    take(out)
    out.wakeups.clear()

    obj.fail()
    assert take(out) == []  # nothing goes to a dead pager
    assert {(rkey, EIO), (skey, EIO), (wkey, EIO), (obj.ready_key, EIO)} <= set(out.wakeups)
    assert obj.state is ObjectState.DEAD
    assert sorted(obj.pages) == [0, 2, 3]
    assert obj.pages[0].dirty and obj.pages[2].precious
    assert obj.pages[3].dirty and obj.pages[3].cleaning == 0  # write-back never confirmed
    assert cache.resident_bytes == 0 and len(cache) == 0
    with pytest.raises(PagerFailed):
        obj.fault(0, READ)
    with pytest.raises(PagerFailed):
        obj.write(0, 0, b"x")
    with pytest.raises(PagerFailed):
        obj.begin_sync(0, PS, SYNC)  # fsync reports EIO; the data stays
    supply(obj, 4, 9)  # a late answer from the dead pager
    assert 4 not in obj.pages and take(out) == []
    assert sorted(obj.pages) == [0, 2, 3]


def test_edge_23_restarted_pager_reinits_and_gets_the_kept_data_back() -> None:
    obj, out = make()
    data0 = dirty(obj, 0, 1, b"dirty")
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_NONE, False, VM_PROT_WRITE))
    resident(obj, 1, 2)
    resident(obj, 2, 3, precious=True)
    take(out)
    obj.fail()
    assert obj.pages[0].dirty and obj.pages[0].lock == VM_PROT_WRITE
    with pytest.raises(LocalProtocolError):
        MemoryObject(OBJ, PS, obj.cache, out, 16 * PS).adopt(obj)  # not started
    again = MemoryObject(OBJ, PS, obj.cache, out, 16 * PS)
    with pytest.raises(LocalProtocolError):
        obj.adopt(again)  # only a dead object can be adopted
    again.start()
    again.adopt(obj)
    assert take(out) == [Init(OBJ, PS), SetSize(OBJ, 16 * PS)]
    assert obj.pages == {} and sorted(again.pages) == [0, 2]
    assert obj.cache.resident_bytes == 2 * PS
    again.receive(Ready(OBJ))
    key, started = again.begin_sync(0, 4 * PS, SYNC)
    assert started
    assert take(out) == [
        DataReturn(OBJ, 0, data0, True, True),
        DataReturn(OBJ, 2 * PS, fill(3), False, True),
        Synchronize(OBJ, 0, 4 * PS, SYNC),
    ]
    again.receive(SynchronizeCompleted(OBJ, 0, 4 * PS))
    assert (key, 0) in out.wakeups
    assert again.fault(1, READ) == again.page_key(1)  # the clean page comes from the new pager
    assert take(out) == [DataRequest(OBJ, PS, PS, READ)]
    # The old pager's lock died with it: the new one never prohibited anything.
    assert again.write(0, 0, b"again") is None and take(out) == []
    obj.fail()  # idempotent, and harmless once emptied
    assert take(out) == []


# --- 24 ----------------------------------------------------------------------------------------


def test_edge_24_an_unanswered_request_is_never_repeated_and_fails_with_the_pager() -> None:
    """The timeout itself lives in the trio edge (mofs.kernel); the core's part is that
    waiting costs no messages (O7) and that failing the pager frees every waiter."""
    obj, out = make()
    key = obj.fault(0, READ)
    assert take(out) == [DataRequest(OBJ, 0, PS, READ)]
    assert obj.requested == 1
    for _ in range(3):
        assert obj.fault(0, READ) == key
        assert obj.write(0, 0, b"w") == key
    assert take(out) == []  # no second request, no unlock
    assert obj.pages[0].desired == RW  # the stronger access is remembered locally
    assert obj.requested == 1 and obj.statistics()["requested"] == 1
    obj.fail()  # what the edge does once the pager is declared gone
    assert (key, EIO) in out.wakeups
    assert obj.requested == 0 and 0 not in obj.pages
    with pytest.raises(PagerFailed):
        obj.fault(0, READ)


def test_edge_24_a_pager_that_never_answers_init_fails_the_faults_waiting_for_ready() -> None:
    out = Outbox()
    obj = MemoryObject(OBJ, PS, Cache(4 * PS), out, 4 * PS)
    obj.start()
    take(out)
    assert obj.fault(0, READ) == obj.ready_key
    assert obj.fault(1, RW) == obj.ready_key
    assert take(out) == [] and obj.requested == 0
    obj.fail()
    assert out.wakeups == [(obj.ready_key, EIO)]


# --- 25, 26: several kernels against one scripted pager -------------------------------------


class Node:
    """One kernel: its own outbox, cache and MemoryObject for the shared object."""

    def __init__(self, name: str, page_size: int, size: int) -> None:
        self.name = name
        self.out = Outbox()
        self.obj = MemoryObject(OBJ, page_size, Cache(1 << 20), self.out, size)


@dataclass
class SchedPage:
    readers: set[str] = field(default_factory=set)
    owner: str | None = None
    acks: set[str] = field(default_factory=set)  # kernels whose lock_completed is awaited
    queue: deque[tuple[str, DataRequest | DataUnlock]] = field(default_factory=deque)


class NmsPager:
    """A scripted [NMS] single-writer/multiple-reader pager for several kernels.

    Per scheduler page (``sched_size``, at least every kernel's page size), either any
    number of readers hold read-only copies (supplied with lock_value=WRITE) or one owner
    holds write access. A write request flushes every other holder and waits for their
    ``lock_completed`` before it grants; a read request downgrades the owner (dirty data
    returned, pages write-locked) and waits likewise. Requests are served in FIFO order.
    After every message it sends it checks that the kernels are coherent."""

    def __init__(self, nodes: list[Node], sched_size: int, size: int) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.sp = sched_size
        self.data = bytearray(size)
        self.pages: defaultdict[int, SchedPage] = defaultdict(SchedPage)
        self.log: list[tuple[str, str, Message]] = []

    def start(self) -> None:
        for node in self.nodes.values():
            node.obj.start()
        self.pump()
        self.log.clear()

    def send(self, name: str, msg: Message) -> None:
        self.log.append(("to", name, msg))
        self.nodes[name].obj.receive(msg)
        self.check_coherence()

    def pump(self) -> None:
        """Deliver the kernels' messages (FIFO per kernel) until all are quiet."""
        busy = True
        while busy:
            busy = False
            for node in self.nodes.values():
                msgs, node.out.messages = node.out.messages, []
                for msg in msgs:
                    busy = True
                    self.log.append(("from", node.name, msg))
                    self.handle(node.name, msg)

    def sched(self, offset: int, length: int) -> int:
        first, last = offset // self.sp, (offset + length - 1) // self.sp
        assert first == last, "a kernel page never spans two scheduler pages"
        return first

    def handle(self, name: str, msg: Message) -> None:
        if isinstance(msg, Init):
            self.send(name, Ready(OBJ, may_cache=True, copy_strategy=MEMORY_OBJECT_COPY_NONE))
        elif isinstance(msg, (DataRequest, DataUnlock)):
            s = self.sched(msg.offset, msg.length)
            self.pages[s].queue.append((name, msg))
            self.serve(s)
        elif isinstance(msg, DataReturn):
            if msg.dirty:
                self.data[msg.offset : msg.offset + len(msg.data)] = msg.data
        elif isinstance(msg, LockCompleted):
            s = self.sched(msg.offset, msg.length)
            self.pages[s].acks.remove(name)
            self.serve(s)

    def serve(self, s: int) -> None:
        page, base = self.pages[s], s * self.sp
        while page.queue and not page.acks:
            name, msg = page.queue[0]
            if msg.desired_access & VM_PROT_WRITE:
                others = (page.readers | {page.owner}) - {name, None}
                if others:
                    for other in sorted(others):  # type: ignore[type-var]
                        page.acks.add(other)  # type: ignore[arg-type]
                        self.send(other, LockRequest(  # type: ignore[arg-type]
                            OBJ, base, self.sp, MEMORY_OBJECT_RETURN_DIRTY, True,
                            VM_PROT_NO_CHANGE))
                    page.readers -= others  # type: ignore[operator]
                    page.owner = None if page.owner in others else page.owner
                    continue  # wait for every lock_completed
                page.owner, page.readers, lock = name, set(), VM_PROT_NONE
            elif page.owner not in (None, name):
                owner = page.owner
                page.acks.add(owner)
                page.owner, page.readers = None, {owner}
                self.send(owner, LockRequest(
                    OBJ, base, self.sp, MEMORY_OBJECT_RETURN_DIRTY, False, VM_PROT_WRITE))
                continue
            elif page.owner == name:
                lock = VM_PROT_NONE
            else:
                page.readers.add(name)
                lock = VM_PROT_WRITE
            page.queue.popleft()
            if isinstance(msg, DataRequest):
                chunk = bytes(self.data[msg.offset : msg.offset + msg.length])
                self.send(name, DataSupply(OBJ, msg.offset, chunk, lock_value=lock))
            else:
                self.send(name, LockRequest(OBJ, msg.offset, msg.length,
                                            MEMORY_OBJECT_RETURN_NONE, False, lock, reply=False))

    def check_coherence(self) -> None:
        for s in range(len(self.data) // self.sp):
            lo, hi = s * self.sp, (s + 1) * self.sp
            holders, writers = set(), set()
            for node in self.nodes.values():
                ps = node.obj.page_size
                for index, p in node.obj.pages.items():
                    if p.state is PageState.RESIDENT and lo <= index * ps < hi:
                        holders.add(node.name)
                        if not p.lock & VM_PROT_WRITE:
                            writers.add(node.name)
            assert not writers or holders == writers and len(writers) == 1, (s, holders, writers)

    def take_log(self) -> list[tuple[str, str, Message]]:
        log, self.log = self.log, []
        return log


def test_edge_25_two_kernels_single_writer_multiple_readers() -> None:
    a, b = Node("A", PS, 4 * PS), Node("B", PS, 4 * PS)
    pager = NmsPager([a, b], sched_size=PS, size=4 * PS)
    pager.start()
    # Both kernels read page 0, B also page 1: read-only copies everywhere.
    for node, index in ((b, 0), (b, 1), (a, 0)):
        node.obj.fault(index, READ)
        pager.pump()
        assert node.obj.fault(index, READ) is None
        assert node.obj.pages[index].lock == VM_PROT_WRITE
    pager.take_log()

    # A writes page 0, which it holds read-only: unlock, B is flushed first.
    key = a.obj.write(0, 0, b"A1")
    assert key is not None
    pager.pump()
    assert pager.take_log() == [
        ("from", "A", DataUnlock(OBJ, 0, PS, VM_PROT_WRITE)),
        ("to", "B", LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_DIRTY, True, VM_PROT_NO_CHANGE)),
        ("from", "B", LockCompleted(OBJ, 0, PS)),  # the grant waits for this
        ("to", "A", LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_NONE, False, VM_PROT_NONE,
                                reply=False)),
    ]
    assert (key, 0) in a.out.wakeups and 0 not in b.obj.pages
    assert a.obj.write(0, 0, b"A1") is None

    # A writes page 1, which it does not hold but B reads: request, B is flushed first.
    key = a.obj.write(1, 0, b"A2")
    pager.pump()
    assert pager.take_log() == [
        ("from", "A", DataRequest(OBJ, PS, PS, RW)),
        ("to", "B", LockRequest(OBJ, PS, PS, MEMORY_OBJECT_RETURN_DIRTY, True, VM_PROT_NO_CHANGE)),
        ("from", "B", LockCompleted(OBJ, PS, PS)),
        ("to", "A", DataSupply(OBJ, PS, bytes(PS), lock_value=VM_PROT_NONE)),
    ]
    assert a.obj.write(1, 0, b"A2") is None

    # B's next read refetches and sees A's write, after A gave it back.
    new0 = b"A1" + bytes(PS - 2)
    assert b.obj.fault(0, READ) is not None
    pager.pump()
    assert pager.take_log() == [
        ("from", "B", DataRequest(OBJ, 0, PS, READ)),
        ("to", "A", LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_DIRTY, False, VM_PROT_WRITE)),
        ("from", "A", DataReturn(OBJ, 0, new0, True, True)),
        ("from", "A", LockCompleted(OBJ, 0, PS)),
        ("to", "B", DataSupply(OBJ, 0, new0, lock_value=VM_PROT_WRITE)),
    ]
    assert b.obj.fault(0, READ) is None and b.obj.page_data(0) == new0
    assert a.obj.fault(0, READ) is None and a.obj.pages[0].lock == VM_PROT_WRITE

    # Now B writes: A, a reader again, is flushed before B's unlock is granted.
    key = b.obj.write(0, 2, b"B1")
    pager.pump()
    assert [(d, n, type(m)) for d, n, m in pager.take_log()] == [
        ("from", "B", DataUnlock), ("to", "A", LockRequest), ("from", "A", LockCompleted),
        ("to", "B", LockRequest)]
    assert b.obj.write(0, 2, b"B1") is None and 0 not in a.obj.pages
    assert a.obj.fault(0, READ) is not None
    pager.pump()
    assert a.obj.page_data(0)[:4] == b"A1B1"


def test_edge_26_different_page_sizes_meet_in_scheduler_pages() -> None:
    small, big = PS, 4 * PS
    a, b = Node("A", small, 4 * big), Node("B", big, 4 * big)
    pager = NmsPager([a, b], sched_size=big, size=4 * big)
    pager.start()

    for index, text in ((1, b"a1"), (2, b"a2")):  # A owns scheduler page 0
        assert a.obj.write(index, 0, text) is not None
        pager.pump()
        assert a.obj.write(index, 0, text) is None
    pager.take_log()

    # B reads its page 0 (= A's pages 0-3): A is downgraded over the whole scheduler page.
    assert b.obj.fault(0, READ) is not None
    pager.pump()
    log = pager.take_log()
    seen = bytearray(big)
    seen[small : small + 2] = b"a1"
    seen[2 * small : 2 * small + 2] = b"a2"
    assert log == [
        ("from", "B", DataRequest(OBJ, 0, big, READ)),
        ("to", "A", LockRequest(OBJ, 0, big, MEMORY_OBJECT_RETURN_DIRTY, False, VM_PROT_WRITE)),
        ("from", "A", DataReturn(OBJ, small, bytes(seen[small : 3 * small]), True, True)),
        ("from", "A", LockCompleted(OBJ, 0, big)),
        ("to", "B", DataSupply(OBJ, 0, bytes(seen), lock_value=VM_PROT_WRITE)),
    ]
    assert b.obj.page_data(0) == seen

    # A writes its page 3 and then page 1 again: B is flushed, A becomes the owner.
    assert a.obj.write(3, 0, b"a3") is not None
    pager.pump()
    assert a.obj.write(3, 0, b"a3") is None
    assert a.obj.write(1, 0, b"A1") is not None  # write-locked since the downgrade
    pager.pump()
    assert a.obj.write(1, 0, b"A1") is None
    assert 0 not in b.obj.pages
    assert b.obj.fault(0, READ) is not None
    pager.pump()
    seen[small : small + 2] = b"A1"
    seen[3 * small : 3 * small + 2] = b"a3"
    assert b.obj.fault(0, READ) is None and b.obj.page_data(0) == seen

    # Each kernel speaks only in its own page size; the pager rounds to scheduler pages.
    for direction, name, msg in pager.log:
        ps = pager.nodes[name].obj.page_size
        offset = getattr(msg, "offset", 0)
        length = getattr(msg, "length", None)
        if isinstance(msg, (DataReturn, DataSupply)):
            length = len(msg.data)
        assert offset % ps == 0 and (length or 0) % ps == 0, (direction, name, msg)
    sizes = {(n, len(m.data)) for d, n, m in pager.log if isinstance(m, DataSupply)}
    assert sizes == {("A", small), ("B", big)}  # each kernel is served in its own size


def test_edge_26_a_kernel_accepts_supplies_only_in_its_own_page_size() -> None:
    big = 4 * PS
    node = Node("B", big, 4 * big)
    node.obj.start()
    node.obj.receive(Ready(OBJ))
    key = node.obj.fault(0, READ)
    assert take(node.out) == [Init(OBJ, big), SetSize(OBJ, 4 * big), DataRequest(OBJ, 0, big, READ)]
    node.obj.receive(DataSupply(OBJ, 0, fill(1), reply=True))  # one small page: a fragment
    # nothing accepted, and the completion stays page-integral in its own page size
    assert take(node.out) == [SupplyCompleted(OBJ, 0, 0, KERN_SUCCESS, 0)]
    assert node.obj.pages[0].state is PageState.REQUESTED and (key, 0) not in node.out.wakeups
    with pytest.raises(RemoteProtocolError, match="aligned"):
        node.obj.receive(DataSupply(OBJ, PS, fill(1, 4)))
    node.obj.receive(DataSupply(OBJ, 0, fill(2, 4)))
    assert (key, 0) in node.out.wakeups and node.obj.page_data(0) == fill(2, 4)


# --- 27 ----------------------------------------------------------------------------------------


def test_edge_27_a_complex_dialogue_has_one_deterministic_message_order() -> None:
    obj, out = make()
    data0 = dirty(obj, 0, 1, b"a")
    resident(obj, 1, 2, precious=True)
    data2 = dirty(obj, 2, 3, b"c")
    take(out)
    rkey = obj.fault(5, READ)
    skey, _ = obj.begin_sync(0, 2 * PS, SYNC)
    obj.receive(LockRequest(OBJ, 0, 8 * PS, MEMORY_OBJECT_RETURN_ALL, True, VM_PROT_NO_CHANGE))
    obj.receive(DataSupply(OBJ, 5 * PS, fill(6), reply=True))
    obj.receive(SynchronizeCompleted(OBJ, 0, 2 * PS))
    obj.receive(ChangeAttributes(OBJ, False, MEMORY_OBJECT_COPY_DELAY, reply=True))
    assert take(out) == [
        DataRequest(OBJ, 5 * PS, PS, READ),
        DataReturn(OBJ, 0, data0, True, True),  # sync: returns first ...
        DataReturn(OBJ, PS, fill(2), False, True),
        Synchronize(OBJ, 0, 2 * PS, SYNC),  # ... then synchronize (O5)
        DataReturn(OBJ, PS, fill(2), False, False),  # lock_request: precious handed back,
        DataReturn(OBJ, 2 * PS, data2, True, False),  # dirty returned, page 0 already clean
        LockCompleted(OBJ, 0, 8 * PS),  # ... then lock_completed (O3)
        SupplyCompleted(OBJ, 5 * PS, PS, KERN_SUCCESS, 0),
        Terminate(OBJ),  # page 5 is clean: nothing to return
        ChangeCompleted(OBJ, False, MEMORY_OBJECT_COPY_DELAY),  # O9
    ]
    assert [w for w in out.wakeups if w[0] in (rkey, skey)] == [(rkey, 0), (skey, 0)]


def test_edge_27_lock_request_completes_in_the_same_call_without_any_pager_answer() -> None:
    """libpager 385d9bf1: a pager handler that awaits the ``lock_completed`` of its own
    ``lock_request`` deadlocks if the kernel needs another answer from that pager first.
    Here the range holds a requested page (supply outstanding), a page being cleaned
    (synchronize_completed outstanding) and a page waiting for an unlock; the completion
    still comes out of the very call that received the request."""
    obj, out = make()
    resident(obj, 0, 1, lock_value=VM_PROT_WRITE)
    dirty(obj, 1, 2, b"d")
    obj.begin_sync(PS, PS, SYNC)
    obj.fault(2, READ)
    wkey = obj.write(0, 0, b"w")
    take(out)
    out.wakeups.clear()
    assert obj.receive(
        LockRequest(OBJ, 0, 3 * PS, MEMORY_OBJECT_RETURN_NONE, False, VM_PROT_NONE)
    ) is None
    assert take(out) == [LockCompleted(OBJ, 0, 3 * PS)]
    assert (wkey, 0) in out.wakeups and obj.write(0, 0, b"w") is None
    assert obj.pages[1].cleaning == 1 and obj.pages[2].state is PageState.REQUESTED


# --- 28 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [MEMORY_OBJECT_COPY_CALL, 4, 5, 6])
def test_edge_28_copy_call_and_kernel_only_strategies_are_refused(strategy: int) -> None:
    out = Outbox()
    obj = MemoryObject(OBJ, PS, Cache(PS), out)
    obj.start()
    match = "COPY_CALL" if strategy == MEMORY_OBJECT_COPY_CALL else "not supported"
    with pytest.raises(RemoteProtocolError, match=match):
        obj.receive(Ready(OBJ, copy_strategy=strategy))
    assert obj.state is ObjectState.INIT_SENT  # nothing was applied
    obj.receive(Ready(OBJ, copy_strategy=MEMORY_OBJECT_COPY_NONE))
    with pytest.raises(RemoteProtocolError, match=match):
        obj.receive(ChangeAttributes(OBJ, True, strategy, reply=True))
    assert obj.copy_strategy == MEMORY_OBJECT_COPY_NONE
    assert take(out) == [Init(OBJ, PS), SetSize(OBJ, 0)]  # no change_completed either


def test_edge_28_temporary_objects_return_nothing_at_terminate() -> None:
    obj, out = make()
    dirty(obj, 0, 1, b"d")
    resident(obj, 1, 2, precious=True)
    obj.receive(ChangeAttributes(OBJ, True, MEMORY_OBJECT_COPY_TEMPORARY))
    take(out)
    obj.terminate()
    assert take(out) == [Terminate(OBJ)]


def test_edge_28_delay_lets_the_kernel_serve_stale_data_until_the_pager_flushes() -> None:
    """COPY_DELAY is the pager's promise not to change data behind the kernel's back. A
    pager that changes it anyway (v1 -> v2 without a lock_request) gets what the spec
    warns about: the kernel goes on serving its resident v1 copy without asking, while
    pages it did not hold come from v2, so one reader sees both versions at once."""
    obj, out = make()
    assert obj.copy_strategy == MEMORY_OBJECT_COPY_DELAY
    v1, v2 = ord("1"), ord("2")
    resident(obj, 0, v1)
    take(out)
    # ... the pager's data becomes v2 here, and the kernel is not told ...
    assert obj.fault(0, READ) is None and take(out) == []
    assert obj.page_data(0) == fill(v1)  # stale
    assert obj.fault(1, READ) is not None
    assert take(out) == [DataRequest(OBJ, PS, PS, READ)]
    supply(obj, 1, v2)
    assert obj.page_data(1) == fill(v2)  # new: a torn view of the file
    # Only the pager's flush ends it (mofs also drops the Linux page cache above FUSE).
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_NONE, True, VM_PROT_NO_CHANGE))
    assert take(out) == [LockCompleted(OBJ, 0, PS)] and (OBJ, 0, PS) in out.invalidations
    assert obj.fault(0, READ) is not None
    assert take(out) == [DataRequest(OBJ, 0, PS, READ)]
    supply(obj, 0, v2)
    assert obj.page_data(0) == fill(v2)
