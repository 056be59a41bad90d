"""Real mounts for tests: start the daemon, wait for the mount, always tear it down.

Nothing here may hang: every wait has a deadline, every program runs with a timeout,
and teardown escalates from ``fusermount3 -u`` to a lazy unmount, to aborting the FUSE
connection (a lazy unmount alone does not break it), to killing the daemon.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOFS = [sys.executable, "-m", "mofs"]


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kw: object) \
        -> subprocess.CompletedProcess[str]:
    """Run a program with a timeout, capturing its output as text."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    done = subprocess.run(cmd, text=True, timeout=timeout, cwd=ROOT,
                          **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} exited {done.returncode}: {done.stderr.strip()}")
    return done


def mofs(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*MOFS, *args], timeout=timeout, check=check)


def is_mounted(path: str | Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == real for line in f)


def _connection(path: str) -> str | None:
    """The /sys/fs/fuse/connections entry of the FUSE mount at ``path``."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                return fields[2].split(":")[1]
    return None


def _mount_fusectl() -> None:
    """The abort files live in the fusectl file system, not always mounted."""
    if not os.listdir("/sys/fs/fuse/connections") and os.getuid() == 0:
        subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"],
                       capture_output=True, timeout=15)


def force_unmount(path: str | Path) -> None:
    """Unmount however it takes; never raises, never hangs."""
    path = str(path)
    for cmd in (["fusermount3", "-u", path], ["fusermount3", "-u", "-z", path]):
        if not is_mounted(path):
            return
        if cmd[-2] == "-z":
            _mount_fusectl()
            conn = _connection(path)
            if conn is not None:
                try:
                    Path(f"/sys/fs/fuse/connections/{conn}/abort").write_text("1")
                except OSError:
                    pass
        try:
            subprocess.run(cmd, capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            pass


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait for the daemon to exit; terminate, then kill, if it does not."""
    for action in (None, proc.terminate, proc.kill):
        if action is not None:
            action()
        try:
            proc.wait(timeout=timeout if action is None else 10)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Mount:
    """One running mount: the daemon process, its store, log and trace."""

    store: Path
    path: Path
    log: Path
    trace: Path
    args: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    expected_log: list[str] = field(default_factory=list)

    def start(self, timeout: float = 30) -> Mount:
        log = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*MOFS, "mount", str(self.store), str(self.path), "--foreground",
             "--trace", str(self.trace), *self.args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                raise AssertionError(f"mofs exited {self.proc.returncode} before mounting:\n"
                                     + self.log.read_text())
            if time.monotonic() > deadline:
                raise AssertionError("mount did not come up in time:\n" + self.log.read_text())
            time.sleep(0.02)
        return self

    def run(self, cmd: list[str], timeout: float = 120, check: bool = True,
            **kw: object) -> subprocess.CompletedProcess[str]:
        return run(cmd, timeout=timeout, check=check, **kw)

    def python(self, code: str, *args: str, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code args`` (a real separate program) against the mount."""
        return run([sys.executable, "-c", code, *args], timeout=timeout, check=check)

    def stat(self) -> dict[str, object]:
        return json.loads(mofs("stat", "--json", str(self.path), timeout=30).stdout)

    def trace_lines(self) -> list[dict[str, object]]:
        if not self.trace.exists():
            return []
        return [json.loads(line) for line in self.trace.read_text().splitlines() if line]

    def umount(self) -> None:
        """``mofs umount``, as a user would; the daemon must exit by itself."""
        mofs("umount", str(self.path), timeout=120)
        assert self.proc is not None
        self.proc.wait(timeout=60)
        assert self.proc.returncode == 0, self.log.read_text()

    def kill9(self) -> None:
        """Kill the daemon without a chance to write anything back, then clear the dead mount."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        force_unmount(self.path)

    def close(self) -> None:
        """Always called: leave no mount and no process behind."""
        force_unmount(self.path)
        if self.proc is not None:
            stop(self.proc)

    def unexpected_log_lines(self) -> list[str]:
        """Warnings, errors and tracebacks the test did not declare."""
        if not self.log.exists():
            return []
        bad = []
        for line in self.log.read_text(errors="replace").splitlines():
            if re.search(r"Traceback|\b(WARNING|ERROR|CRITICAL)\b", line) and not any(
                re.search(p, line) for p in self.expected_log
            ):
                bad.append(line)
        return bad
