"""Fixtures: ``mount`` starts real mofs mounts and guarantees their teardown."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import Mount

HAVE_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
needs_fuse = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3")

MountFactory = Callable[..., Mount]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[MountFactory]:
    """``mount(*args, store=None, name="mnt")`` mounts a store and returns a running Mount.

    Every mount made through it is unmounted and its daemon stopped when the test ends,
    whatever happened; a daemon log with undeclared warnings or tracebacks fails the test
    (declare expected lines with ``m.expected_log.append(regex)``)."""
    made: list[Mount] = []

    def factory(*args: str, store: Path | None = None, name: str = "mnt",
                start: bool = True) -> Mount:
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        m = Mount(store=store or tmp_path / "store.mofs", path=path,
                  log=tmp_path / f"{name}.log", trace=tmp_path / f"{name}.trace", args=args)
        made.append(m)
        return m.start() if start else m

    yield factory
    problems = []
    for m in made:
        m.close()
        problems += m.unexpected_log_lines()
    assert not problems, "daemon logged:\n" + "\n".join(problems)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths this process fsyncs during the test, in order (os.fsync still runs)."""
    paths: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths
