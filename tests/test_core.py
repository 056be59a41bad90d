"""The pure core, driven message by message with no I/O: scripted protocol dialogues."""

from __future__ import annotations

import errno

import pytest

from mofs.cache import Cache
from mofs.errors import LocalProtocolError, PagerFailed, RemoteProtocolError
from mofs.memory_object import KERN_MEMORY_PRESENT, MemoryObject, ObjectState, Outbox
from mofs.messages import (
    MEMORY_OBJECT_RETURN_ALL,
    MEMORY_OBJECT_RETURN_DIRTY,
    MEMORY_OBJECT_RETURN_NONE,
    VM_PROT_NO_CHANGE,
    VM_PROT_NONE,
    VM_PROT_READ,
    VM_PROT_WRITE,
    VM_SYNC_ASYNCHRONOUS,
    VM_SYNC_INVALIDATE,
    VM_SYNC_SYNCHRONOUS,
    DataError,
    DataRequest,
    DataReturn,
    DataSupply,
    DataUnavailable,
    DataUnlock,
    Init,
    LockCompleted,
    LockRequest,
    ObjectId,
    Ready,
    SetSize,
    SupplyCompleted,
    Synchronize,
    SynchronizeCompleted,
    Terminate,
)
from mofs.pages import Page, PageEvent, PageState

PS = 4096
OBJ = ObjectId(7)
RW = VM_PROT_READ | VM_PROT_WRITE


def make(size: int = 16 * PS, budget: int = 64 * PS, **ready: object):
    out = Outbox()
    cache = Cache(budget)
    obj = MemoryObject(OBJ, PS, cache, out, size)
    obj.start()
    obj.receive(Ready(OBJ, **ready))  # type: ignore[arg-type]
    out.messages.clear()
    out.wakeups.clear()
    return obj, out


def take(out: Outbox) -> list:
    msgs, out.messages = out.messages, []
    return msgs


def supply(obj: MemoryObject, index: int, byte: int, **kw: object) -> None:
    obj.receive(DataSupply(OBJ, index * PS, bytes([byte]) * PS, **kw))  # type: ignore[arg-type]


def resident(obj: MemoryObject, index: int, byte: int = 1, **kw: object) -> None:
    assert obj.fault(index, VM_PROT_READ) is not None
    supply(obj, index, byte, **kw)
    assert obj.fault(index, VM_PROT_READ) is None


# --- lifecycle -------------------------------------------------------------------------------


def test_start_sends_init_and_faults_wait_for_ready() -> None:
    out, cache = Outbox(), Cache(PS * 4)
    obj = MemoryObject(OBJ, PS, cache, out, size=100)
    obj.start()
    assert take(out) == [Init(OBJ, PS), SetSize(OBJ, 100)]
    assert obj.fault(0, VM_PROT_READ) == obj.ready_key
    assert take(out) == []
    obj.receive(Ready(OBJ))
    assert (obj.ready_key, 0) in out.wakeups
    assert obj.fault(0, VM_PROT_READ) == obj.page_key(0)
    assert take(out) == [DataRequest(OBJ, 0, PS, VM_PROT_READ)]


def test_terminate_returns_dirty_and_precious_pages_before_terminate() -> None:
    obj, out = make()
    resident(obj, 0, 1)
    assert obj.write(0, 0, b"x" * PS) is None
    resident(obj, 1, 2)
    resident(obj, 2, 3, precious=True)
    take(out)
    obj.fault(3, VM_PROT_READ)
    take(out)
    obj.terminate()
    msgs = take(out)
    assert [type(m) for m in msgs] == [DataReturn, DataReturn, Terminate]
    assert msgs[1].offset == 2 * PS and msgs[1].dirty is False and msgs[1].kernel_copy is False
    assert (obj.page_key(3), errno.EIO) in out.wakeups  # a request that never came back
    assert obj.state is ObjectState.TERMINATED and obj.cache.resident_bytes == 0


def test_copy_call_is_refused() -> None:
    out = Outbox()
    obj = MemoryObject(OBJ, PS, Cache(PS), out)
    obj.start()
    with pytest.raises(RemoteProtocolError, match="COPY_CALL"):
        obj.receive(Ready(OBJ, copy_strategy=1))


# --- reads -----------------------------------------------------------------------------------


def test_read_miss_sends_one_request_and_supply_wakes_waiters() -> None:
    obj, out = make()
    key = obj.fault(2, VM_PROT_READ)
    assert take(out) == [DataRequest(OBJ, 2 * PS, PS, VM_PROT_READ)]
    assert obj.fault(2, RW) == key  # O7: a later fault waits, no second message
    assert take(out) == []
    supply(obj, 2, 9)
    assert (key, 0) in out.wakeups
    assert obj.fault(2, VM_PROT_READ) is None
    assert obj.page_data(2) == bytes([9]) * PS


def test_request_clusters_absent_pages() -> None:
    obj, out = make(cluster_size=4 * PS)
    resident(obj, 2)
    take(out)
    obj.request(0, 8, VM_PROT_READ)
    assert take(out) == [
        DataRequest(OBJ, 0, 2 * PS, VM_PROT_READ),
        DataRequest(OBJ, 3 * PS, 4 * PS, VM_PROT_READ),
        DataRequest(OBJ, 7 * PS, PS, VM_PROT_READ),
    ]


def test_edge_06_data_unavailable_gives_writable_zero_page() -> None:
    obj, out = make()
    key = obj.fault(0, VM_PROT_READ)
    obj.receive(DataUnavailable(OBJ, 0, PS))
    assert (key, 0) in out.wakeups
    assert obj.page_data(0) == bytes(PS)
    take(out)
    assert obj.write(0, 10, b"abc") is None
    assert take(out) == []  # no data_unlock needed
    key, _ = obj.begin_sync(0, PS, VM_SYNC_SYNCHRONOUS)
    ret, sync = take(out)
    assert isinstance(ret, DataReturn) and ret.dirty and ret.data[10:13] == b"abc"
    assert sync == Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS)


def test_edge_05_data_error_reason_reaches_waiters_and_next_fault_retries() -> None:
    obj, out = make()
    key = obj.fault(1, VM_PROT_READ)
    take(out)
    obj.receive(DataError(OBJ, PS, PS, errno.ENOSPC))
    assert (key, errno.ENOSPC) in out.wakeups
    assert 1 not in obj.pages
    assert obj.fault(1, VM_PROT_READ) is not None
    assert take(out) == [DataRequest(OBJ, PS, PS, VM_PROT_READ)]


def test_data_error_with_kernel_code_becomes_eio_and_is_ignored_when_not_requested() -> None:
    obj, out = make()
    resident(obj, 0)
    key = obj.fault(1, VM_PROT_READ)
    obj.receive(DataError(OBJ, 0, 2 * PS, 10))  # KERN_MEMORY_ERROR
    assert (key, errno.EIO) in out.wakeups
    assert obj.pages[0].state is PageState.RESIDENT


def test_edge_04_partial_page_supply_is_discarded_and_misaligned_rejected() -> None:
    obj, out = make()
    obj.fault(0, VM_PROT_READ)
    obj.fault(1, VM_PROT_READ)
    obj.receive(DataSupply(OBJ, 0, b"a" * (PS + 100)))
    assert obj.pages[0].state is PageState.RESIDENT
    assert obj.pages[1].state is PageState.REQUESTED
    with pytest.raises(RemoteProtocolError, match="aligned"):
        obj.receive(DataSupply(OBJ, 100, b"a" * PS))


def test_edge_01_supply_into_present_page_reports_and_returns_precious() -> None:
    obj, out = make()
    resident(obj, 1, byte=1)
    obj.fault(0, VM_PROT_READ)
    obj.fault(2, VM_PROT_READ)
    take(out)
    data = b"\x02" * PS + b"\x03" * PS + b"\x04" * PS
    obj.receive(DataSupply(OBJ, 0, data, precious=True, reply=True))
    msgs = take(out)
    assert msgs == [
        DataReturn(OBJ, PS, b"\x03" * PS, False, False),
        SupplyCompleted(OBJ, 0, 3 * PS, KERN_MEMORY_PRESENT, PS),
    ]
    assert obj.page_data(1) == b"\x01" * PS  # the kernel's copy is not overwritten
    assert obj.page_data(2) == b"\x04" * PS  # OSF: later pages still installed


def test_edge_03_unsolicited_supply_is_prefetch_into_absent_pages() -> None:
    obj, out = make()
    key = obj.fault(1, VM_PROT_READ)
    obj.receive(DataSupply(OBJ, 0, b"\x05" * (2 * PS)))
    assert out.wakeups.count((key, 0)) == 1
    assert obj.pages[0].state is PageState.RESIDENT
    assert obj.page_data(0) == b"\x05" * PS


def test_supplied_bytes_past_end_of_file_are_zeroed() -> None:
    obj, out = make(size=PS + 10)
    obj.fault(1, VM_PROT_READ)
    supply(obj, 1, 0xFF)
    assert obj.page_data(1) == b"\xff" * 10 + bytes(PS - 10)


# --- writes and locks --------------------------------------------------------------------------


def test_partial_write_fetches_page_with_read_write_access() -> None:
    obj, out = make()
    key = obj.write(0, 5, b"hi")
    assert take(out) == [DataRequest(OBJ, 0, PS, RW)]
    supply(obj, 0, 1)
    assert (key, 0) in out.wakeups
    assert obj.write(0, 5, b"hi") is None
    assert obj.page_data(0)[4:8] == b"\x01hi\x01" and obj.pages[0].dirty


def test_whole_page_write_skips_fetch_only_with_silent_overwrite() -> None:
    obj, out = make()
    assert obj.write(0, 0, b"z" * PS) is not None
    assert take(out) == [DataRequest(OBJ, 0, PS, RW)]
    obj2, out2 = make(silent_overwrite=True)
    assert obj2.write(0, 0, b"z" * PS) is None
    assert take(out2) == []


def test_write_past_end_of_file_needs_no_fetch() -> None:
    obj, out = make(size=PS)
    assert obj.write(3, 7, b"tail") is None
    assert take(out) == []
    assert obj.size == 3 * PS + 11


def test_edge_07_write_locked_page_sends_one_unlock_and_grant_wakes() -> None:
    obj, out = make()
    obj.fault(0, VM_PROT_READ)
    supply(obj, 0, 1, lock_value=VM_PROT_WRITE)
    take(out)
    key = obj.write(0, 0, b"a")
    assert take(out) == [DataUnlock(OBJ, 0, PS, VM_PROT_WRITE)]
    assert obj.write(0, 1, b"b") == key  # concurrent writer: no duplicate unlock
    assert take(out) == []
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_NONE, False, VM_PROT_NO_CHANGE))
    assert take(out) == [LockCompleted(OBJ, 0, PS)]
    assert obj.pages[0].unlock_requested == VM_PROT_WRITE  # NO_CHANGE does not clear it
    assert obj.write(0, 0, b"a") == key and take(out) == []
    out.wakeups.clear()
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_NONE, False, VM_PROT_NONE, False))
    assert (key, 0) in out.wakeups and take(out) == []
    assert obj.write(0, 0, b"a") is None


def test_edge_09_lock_request_resets_unlock_requested_so_unlock_repeats() -> None:
    obj, out = make()
    obj.fault(0, VM_PROT_READ)
    supply(obj, 0, 1, lock_value=VM_PROT_WRITE)
    obj.write(0, 0, b"a")
    take(out)
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_NONE, False, VM_PROT_WRITE, False))
    obj.write(0, 0, b"a")
    assert take(out) == [DataUnlock(OBJ, 0, PS, VM_PROT_WRITE)]


def test_edge_13_lock_request_return_and_flush_of_precious_pages() -> None:
    obj, out = make()
    resident(obj, 0, 1, precious=True)
    take(out)
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_DIRTY, True, VM_PROT_NO_CHANGE))
    assert take(out) == [LockCompleted(OBJ, 0, PS)]  # dropped, not returned
    assert 0 not in obj.pages
    resident(obj, 0, 1, precious=True)
    take(out)
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_ALL, False, VM_PROT_NO_CHANGE))
    assert take(out) == [DataReturn(OBJ, 0, b"\x01" * PS, False, True), LockCompleted(OBJ, 0, PS)]
    assert obj.pages[0].precious  # kernel still responsible
    obj.evict(0)
    assert take(out) == [DataReturn(OBJ, 0, b"\x01" * PS, False, False)]


def test_edge_14_return_none_flush_discards_dirty_data_and_invalidates() -> None:
    obj, out = make()
    resident(obj, 0)
    obj.write(0, 0, b"lost")
    take(out)
    obj.receive(LockRequest(OBJ, 0, 2 * PS, MEMORY_OBJECT_RETURN_NONE, True, VM_PROT_NO_CHANGE))
    assert take(out) == [LockCompleted(OBJ, 0, 2 * PS)]
    assert obj.pages == {} and out.invalidations == [(OBJ, 0, 2 * PS)]


def test_edge_10_lock_request_does_not_touch_requested_pages() -> None:
    obj, out = make()
    key = obj.fault(0, VM_PROT_READ)
    obj.receive(LockRequest(OBJ, 0, PS, MEMORY_OBJECT_RETURN_ALL, True, VM_PROT_NONE))
    assert obj.pages[0].state is PageState.REQUESTED
    supply(obj, 0, 3)
    assert (key, 0) in out.wakeups


def test_edge_12_returns_precede_lock_completed_and_each_request_completes() -> None:
    obj, out = make()
    for i in range(3):
        resident(obj, i)
        obj.write(i, 0, b"d")
    take(out)
    for _ in range(2):
        obj.receive(LockRequest(OBJ, 0, 4 * PS, MEMORY_OBJECT_RETURN_ALL, False, VM_PROT_NO_CHANGE))
    msgs = take(out)
    assert [type(m) for m in msgs] == [DataReturn, LockCompleted, LockCompleted]
    assert len(msgs[0].data) == 3 * PS and msgs[0].kernel_copy


# --- eviction --------------------------------------------------------------------------------


def test_eviction_drops_clean_pages_and_returns_dirty_and_precious_ones() -> None:
    obj, out = make(budget=2 * PS)
    resident(obj, 0, 1)
    resident(obj, 1, 2, precious=True)
    assert obj.fault(1, VM_PROT_READ) is None  # touch
    resident(obj, 2, 3)
    obj.cache.reclaim()
    assert 0 not in obj.pages and take(out)[-1] == DataRequest(OBJ, 2 * PS, PS, VM_PROT_READ)
    obj.write(2, 0, b"dirty")
    resident(obj, 3, 4)
    obj.cache.reclaim()
    ret = take(out)[-1]
    assert ret == DataReturn(OBJ, PS, b"\x02" * PS, False, False)  # precious, clean
    resident(obj, 4, 5)
    obj.cache.reclaim()
    ret = take(out)[-1]
    assert isinstance(ret, DataReturn) and ret.offset == 2 * PS and ret.dirty
    assert obj.cache.resident_bytes <= 2 * PS


def test_edge_16_evicted_page_refetch_is_ordered_after_its_return() -> None:
    obj, out = make()
    resident(obj, 0)
    obj.write(0, 0, b"new")
    take(out)
    obj.evict(0)
    obj.fault(0, VM_PROT_READ)
    assert [type(m) for m in take(out)] == [DataReturn, DataRequest]


# --- synchronize -----------------------------------------------------------------------------


def test_edge_17_sync_returns_then_synchronizes_and_echo_must_match() -> None:
    obj, out = make()
    resident(obj, 0)
    resident(obj, 1)
    obj.write(0, 0, b"a")
    take(out)
    key, started = obj.begin_sync(0, 4 * PS, VM_SYNC_SYNCHRONOUS)
    assert started
    ret, sync = take(out)
    assert ret == DataReturn(OBJ, 0, b"a" + b"\x01" * (PS - 1), True, True)
    assert sync == Synchronize(OBJ, 0, 4 * PS, VM_SYNC_SYNCHRONOUS)
    with pytest.raises(RemoteProtocolError):
        obj.receive(SynchronizeCompleted(OBJ, 0, PS))
    obj.receive(SynchronizeCompleted(OBJ, 0, 4 * PS))
    assert (key, 0) in out.wakeups and not obj.pages[0].dirty


def test_sync_without_dirty_pages_still_synchronizes() -> None:
    obj, out = make()
    obj.begin_sync(0, PS, VM_SYNC_SYNCHRONOUS)
    assert take(out) == [Synchronize(OBJ, 0, PS, VM_SYNC_SYNCHRONOUS)]


def test_overlapping_syncs_serialize_disjoint_ones_run_together() -> None:
    obj, out = make()
    key1, started1 = obj.begin_sync(0, 2 * PS, VM_SYNC_SYNCHRONOUS)
    key2, started2 = obj.begin_sync(PS, 2 * PS, VM_SYNC_SYNCHRONOUS)
    key3, started3 = obj.begin_sync(4 * PS, PS, VM_SYNC_SYNCHRONOUS)
    assert started1 and not started2 and started3 and key2 == key1 and key3 != key1
    assert [m.offset for m in take(out)] == [0, 4 * PS]


def test_sync_flags_synchronous_and_asynchronous_exclude_each_other() -> None:
    obj, _ = make()
    with pytest.raises(ValueError):
        obj.begin_sync(0, PS, VM_SYNC_SYNCHRONOUS | VM_SYNC_ASYNCHRONOUS)


def test_write_back_error_keeps_the_page_dirty_and_protects_it_from_silent_eviction() -> None:
    obj, out = make()
    resident(obj, 0)
    obj.write(0, 0, b"keep")
    key, _ = obj.begin_sync(0, PS, VM_SYNC_SYNCHRONOUS)
    take(out)
    assert obj.pages[0].must_return  # clean but in flight: eviction must return it
    obj.receive(SynchronizeCompleted(OBJ, 0, PS, error=errno.ENOSPC))
    assert (key, errno.ENOSPC) in out.wakeups
    assert obj.pages[0].dirty


def test_edge_18_invalidate_alone_flushes_and_returns_only_precious_pages() -> None:
    """The manual page (seeds) wins over PROTOCOL.md 5.3: dirty data is discarded."""
    obj, out = make()
    resident(obj, 0)
    resident(obj, 1, precious=True)
    resident(obj, 2)
    obj.write(0, 0, b"d")
    take(out)
    obj.begin_sync(0, 3 * PS, VM_SYNC_INVALIDATE)
    msgs = take(out)
    assert msgs == [DataReturn(OBJ, PS, b"\x01" * PS, False, False),
                    Synchronize(OBJ, 0, 3 * PS, VM_SYNC_INVALIDATE)]
    assert obj.pages == {}


def test_edge_18_synchronous_invalidate_writes_back_dirty_and_precious_then_flushes() -> None:
    obj, out = make()
    resident(obj, 0)
    resident(obj, 1, precious=True)
    obj.write(0, 0, b"d")
    take(out)
    obj.begin_sync(0, 2 * PS, VM_SYNC_SYNCHRONOUS | VM_SYNC_INVALIDATE)
    msgs = take(out)
    assert [(type(m), getattr(m, "dirty", None), getattr(m, "kernel_copy", None))
            for m in msgs] == [(DataReturn, True, False), (DataReturn, False, False),
                               (Synchronize, None, None)]
    assert obj.pages == {}


# --- size, failure ------------------------------------------------------------------------------


def test_edge_29_truncate_drops_pages_without_return_and_zeroes_the_tail() -> None:
    obj, out = make(size=4 * PS)
    for i in range(4):
        resident(obj, i, 7)
        obj.write(i, 0, b"d")
    take(out)
    obj.set_size(PS + 10)
    assert take(out) == [SetSize(OBJ, PS + 10)]
    assert sorted(obj.pages) == [0, 1]
    assert obj.page_data(1)[10:] == bytes(PS - 10)


def test_pager_failure_fails_waiters_and_keeps_resident_data() -> None:
    obj, out = make()
    resident(obj, 0)
    obj.write(0, 0, b"d")
    key = obj.fault(1, VM_PROT_READ)
    skey, _ = obj.begin_sync(0, PS, VM_SYNC_SYNCHRONOUS)
    obj.fail()
    assert (key, errno.EIO) in out.wakeups and (skey, errno.EIO) in out.wakeups
    assert obj.pages[0].dirty  # the failed write-back keeps the data
    with pytest.raises(PagerFailed):
        obj.fault(0, VM_PROT_READ)


# --- the page table itself -----------------------------------------------------------------------


def test_illegal_transitions_raise_and_change_nothing() -> None:
    page = Page()
    with pytest.raises(LocalProtocolError):
        page.apply(PageEvent.EVICT)
    assert page.state is PageState.ABSENT
    page.apply(PageEvent.FAULT)
    with pytest.raises(LocalProtocolError):
        page.apply(PageEvent.CREATE)
    assert page.state is PageState.REQUESTED


def test_every_state_has_a_row_in_the_table() -> None:
    from mofs.pages import TRANSITIONS

    assert set(TRANSITIONS) == set(PageState)


def test_cache_evicts_least_recently_used_first() -> None:
    order: list[int] = []

    class Owner:
        def evict(self, index: int) -> None:
            order.append(index)
            cache.remove(1, index)

    cache = Cache(2 * PS)
    owner = Owner()
    for i in range(3):
        cache.insert(owner, 1, i, PS)
    cache.touch(1, 0)
    cache.reclaim()
    assert order == [1] and cache.resident_bytes == 2 * PS
