"""``mofs bench``: a smoke run on a directory and on a mount, and a wrong byte fails the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import needs_fuse
from mounting import mofs

from mofs.bench import DEFAULT_PHASES, METRICS, BenchError, verify

SMOKE = ("--scale", "0.01")
FLIP_BYTE = (f"{sys.executable} -c \"import os; f = open(os.environ['MOFS_BENCH_DIR'] + "
             "'/seq.dat', 'r+b'); f.seek(4097); b = f.read(1); f.seek(4097); "
             "f.write(bytes([b[0] ^ 1]))\"")


def expected_metrics(phases: list[str]) -> set[str]:
    return {name for name, info in METRICS.items() if info.phase in phases}


def one_line_error(done, *words: str) -> None:
    assert done.returncode == 1, done.stdout
    err = done.stderr.strip()
    assert "Traceback" not in done.stderr and len(err.splitlines()) == 1, err
    assert err.startswith("mofs: "), err
    for word in words:
        assert word in err, err


def test_every_phase_reports_a_verified_median_and_cleans_up(tmp_path: Path) -> None:
    done = mofs("bench", str(tmp_path), *SMOKE, "--repeat", "2", "--json",
                "--drop-caches", "true")
    result = json.loads(done.stdout)
    assert set(result["metrics"]) == expected_metrics(DEFAULT_PHASES)
    for name, m in result["metrics"].items():
        assert m["verified"] is True, name
        assert len(m["runs"]) == 2 and m["median"] > 0, (name, m)
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_the_table_names_each_metric(tmp_path: Path) -> None:
    done = mofs("bench", str(tmp_path), *SMOKE, "--phases", "warm_read,fsync_latency",
                "--drop-caches", "true")
    rows = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert rows == ["fsync_p50", "fsync_p99", "warm_read"]


def test_a_flipped_byte_fails_the_run_naming_phase_and_offset(tmp_path: Path) -> None:
    """The drop hook corrupts the file between seq_write's check and cold_read's read."""
    done = mofs("bench", str(tmp_path), *SMOKE, "--phases", "cold_read",
                "--drop-caches", FLIP_BYTE, check=False)
    one_line_error(done, "cold_read", "seq.dat", "offset 4097")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_drop_hook_fails_the_run(tmp_path: Path) -> None:
    done = mofs("bench", str(tmp_path), *SMOKE, "--phases", "stat_cold",
                "--drop-caches", "echo no permission >&2; exit 3", check=False)
    one_line_error(done, "drop-caches hook", "exited 3", "no permission")


def test_verify_names_the_first_wrong_byte() -> None:
    verify("same", b"abc" * 5000, bytearray(b"abc" * 5000))
    with pytest.raises(BenchError, match="x: wrong byte at offset 9000"):
        data = bytearray(b"\0" * 12000)
        data[9000] = 1
        verify("x", memoryview(data), bytes(12000))
    with pytest.raises(BenchError, match="3 bytes instead of 4"):
        verify("short", b"abc", b"abcd")


@needs_fuse
def test_bench_on_a_mofs_mount_reports_the_daemon_rss(mount) -> None:
    m = mount("--cache-size", "2M")
    has_drop = mofs("drop-caches", "--help", check=False).returncode == 0
    drop = f"{sys.executable} -m mofs drop-caches {m.path}" if has_drop else "true"
    done = mofs("bench", str(m.path), *SMOKE, "--json", "--phases", "all",
                "--pid", str(m.proc.pid), "--big-copy", "8M", "--drop-caches", drop)
    result = json.loads(done.stdout)
    assert set(result["metrics"]) == set(METRICS)
    assert all(m["verified"] for m in result["metrics"].values())
    assert result["metrics"]["peak_rss"]["median"] >= result["metrics"]["big_copy_rss"]["median"]
    assert list(m.path.iterdir()) == []
