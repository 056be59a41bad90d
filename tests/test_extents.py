"""``Extents``, the written pages behind ``st_blocks``, against a plain set of pages."""

from __future__ import annotations

import random

from mofs.extents import Extents

PS = 65536


def test_adds_and_cuts_agree_with_a_set_of_pages_and_stay_merged() -> None:
    for seed in range(300):
        r = random.Random(seed)
        extents, model = Extents(), set()
        for _ in range(40):
            if r.random() < 0.8:
                first = r.randrange(60)
                end = first + r.randrange(9)
                extents.add(first, end)
                model |= set(range(first, end))
            else:
                end = r.randrange(70)
                extents.cut(end)
                model = {p for p in model if p < end}
            ranges = extents.ranges()
            assert extents.pages == len(model), (seed, ranges)
            assert {p for s, e in ranges for p in range(s, e)} == model, seed
            gaps = zip(ranges, ranges[1:], strict=False)
            assert all(a[1] < b[0] for a, b in gaps), ranges  # merged: none touch
            assert all((p in extents) == (p in model) for p in range(72))


def test_encoding_round_trips() -> None:
    extents = Extents([(0, 3), (10, 11), (1 << 40, (1 << 40) + 5)])
    assert Extents.decode(extents.encode()).ranges() == extents.ranges()
    assert Extents.decode(b"").ranges() == []


def test_changed_only_when_the_pages_change() -> None:
    extents = Extents([(0, 4)])
    assert not extents.changed
    extents.add(1, 3)  # rewriting pages already counted
    extents.cut(10)  # past the last page
    assert not extents.changed
    extents.add(4, 5)
    assert extents.changed and extents.ranges() == [(0, 5)]


def test_allocated_bytes_stop_at_the_end_of_the_file() -> None:
    extents = Extents([(0, 1), (5, 6)])
    assert extents.allocated_bytes(6 * PS, PS) == 2 * PS
    assert extents.allocated_bytes(5 * PS + 100, PS) == PS + 100  # a partial last page
    assert extents.allocated_bytes(100, PS) == 100  # pages past the end never count
    assert Extents().allocated_bytes(1 << 30, PS) == 0  # truncated up only
