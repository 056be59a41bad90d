#!/usr/bin/env python3
"""Run ``mofs bench`` against every target in one go and write the table, plot and JSON.

Targets: a native directory (the limit), bindfs -o big_writes (C libfuse passthrough),
pyfuse3's passthroughfs.py example, rclone mount --vfs-cache-mode full, and mofs. Each
gets a fresh backing directory and a fresh mount, and every mount is taken down again
whatever happens, so a failed run leaves nothing mounted or running. Needs root (cache
drops, apt-get). Run it with the Python of mofs's virtualenv:

    .venv/bin/python benchmarks/run.py [--targets ...] [--phases ...] [--repeat N]
                                       [--scale F] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MOFS = [sys.executable, "-m", "mofs"]
MIB = 1 << 20
KERNEL_DROP = "sync; echo 3 > /proc/sys/vm/drop_caches"
MOFS_CACHE = 256 * MIB  # mofs's default --cache-size; scaled with --scale
MOUNT_TIMEOUT = 60.0
BENCH_TIMEOUT = 4 * 3600.0
TARGETS = ["native", "bindfs", "passthroughfs", "rclone", "mofs"]
LABELS = {"native": "native", "bindfs": "bindfs big_writes",
          "passthroughfs": "pyfuse3 passthroughfs", "rclone": "rclone vfs full",
          "mofs": "mofs"}
ORDER = ["seq_write", "fsync_p50", "fsync_p99", "cold_read", "warm_read", "rand_read",
         "rand_write", "small_files", "stat_cold", "stat_warm", "cp_r", "big_copy_rss",
         "peak_rss"]


class RunError(Exception):
    """Something a person can fix; printed as one line."""


def log(msg: str) -> None:
    print(f"run.py: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float = 600, check: bool = True,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """A program with a timeout and captured text output; RunError when it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise RunError(f"{shlex.join(cmd)} took over {timeout:g} s") from None
    except FileNotFoundError:
        raise RunError(f"{cmd[0]} is not installed") from None
    if check and done.returncode != 0:
        raise RunError(f"{shlex.join(cmd)} exited {done.returncode}: {last_line(done)}")
    return done


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return lines[-1] if lines else "no output"


# --- what the run needs ------------------------------------------------------------------------


def ensure_packages(targets: list[str]) -> None:
    """apt-get the peers that are missing (bindfs, rclone), once, with a fresh package list."""
    want = {"bindfs": "bindfs", "rclone": "rclone"}
    missing = [pkg for t, pkg in want.items() if t in targets and not shutil.which(pkg)]
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], timeout=900, env=env)
    run(["apt-get", "install", "-y", "-q", *missing], timeout=1800, env=env)


def ensure_matplotlib() -> bool:
    """The plot needs matplotlib in this Python; pip-install it when missing."""
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        log("installing matplotlib with pip (for the plot)")
        done = run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], timeout=900,
                   check=False)
        if done.returncode != 0:
            log(f"no plot: pip could not install matplotlib: {last_line(done)}")
            return False
        return True


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = Path(base) / "mofs-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def passthroughfs_script() -> Path:
    """examples/passthroughfs.py from the sdist of the pyfuse3 this Python has (cached)."""
    import pyfuse3

    version = pyfuse3.__version__
    dest = cache_dir() / f"pyfuse3-{version}-passthroughfs.py"
    if dest.exists():
        return dest
    log(f"fetching passthroughfs.py from the pyfuse3 {version} source distribution")
    with tempfile.TemporaryDirectory(prefix="mofs-bench-sdist-") as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             f"pyfuse3=={version}", "-d", tmp], timeout=900)
        sdists = list(Path(tmp).glob("pyfuse3-*.tar.gz"))
        if not sdists:
            raise RunError(f"pip download of pyfuse3=={version} gave no source archive")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers()
                           if m.name.endswith("/examples/passthroughfs.py")), None)
            data = tar.extractfile(member).read() if member else None  # type: ignore[union-attr]
    if not data:
        raise RunError(f"the pyfuse3 {version} sdist has no examples/passthroughfs.py")
    dest.write_bytes(data)
    return dest


def mofs_has_drop_caches() -> bool:
    return run([*MOFS, "drop-caches", "--help"], check=False, timeout=60).returncode == 0


# --- mounts ------------------------------------------------------------------------------------


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == real for line in f)


@dataclass
class Mounted:
    """A running FUSE daemon and its mount point."""

    name: str
    mnt: Path
    proc: subprocess.Popen[bytes]
    log_path: Path


def start_mount(name: str, cmd: list[str], mnt: Path, log_path: Path,
                env: dict[str, str] | None = None) -> Mounted:
    """Start a daemon in the foreground, in its own session (Ctrl-C is ours to handle)."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=log_file, start_new_session=True, env=env)
    m = Mounted(name, mnt, proc, log_path)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_mounted(mnt):
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()
            raise RunError(f"{name}: {cmd[0]} exited {proc.returncode} before mounting: "
                           f"{tail[-1] if tail else 'no output'}")
        if time.monotonic() > deadline:
            stop_mount(m)
            raise RunError(f"{name}: not mounted after {MOUNT_TIMEOUT:g} s (log {log_path})")
        time.sleep(0.05)
    return m


def stop_mount(m: Mounted) -> None:
    """Unmount and stop the daemon, escalating; never raises, never hangs."""
    steps: list[list[str]] = []
    if m.name == "mofs":
        steps.append([*MOFS, "umount", str(m.mnt)])
    steps += [["fusermount3", "-u", str(m.mnt)], ["umount", "-l", str(m.mnt)]]
    for cmd in steps:
        if not is_mounted(m.mnt):
            break
        try:
            done = run(cmd, timeout=300, check=False)
            if done.returncode != 0:
                log(f"{m.name}: {shlex.join(cmd)}: {last_line(done)}")
        except RunError as exc:
            log(f"{m.name}: {exc}")
    for action in (None, m.proc.terminate, m.proc.kill):
        if action is not None:
            log(f"{m.name}: daemon {m.proc.pid} still running; "
                f"{'terminating' if action == m.proc.terminate else 'killing'} it")
            action()
        try:
            m.proc.wait(timeout=60 if action is None else 15)
            break
        except subprocess.TimeoutExpired:
            continue
    if is_mounted(m.mnt):
        log(f"{m.name}: {m.mnt} is still mounted; run 'umount -l {m.mnt}'")


# --- one target --------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything the targets share: sizes, phases, where to work."""

    work: Path
    phases: list[str]
    repeat: int
    scale: float
    cache_size: int
    drop_caches_cmd: bool
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def bench_cmd(plan: Plan, directory: Path, drop: str, pid: int | None) -> list[str]:
    phases = [p for p in plan.phases if pid is not None or p != "big_copy"]
    cmd = [*MOFS, "bench", str(directory), "--json", "--scale", f"{plan.scale:g}",
           "--repeat", str(plan.repeat), "--phases", ",".join(phases), "--drop-caches", drop]
    if pid is not None:
        cmd += ["--pid", str(pid)]
        if "big_copy" in phases:
            cmd += ["--big-copy", str(4 * plan.cache_size)]
    return cmd


def run_bench(plan: Plan, name: str, directory: Path, drop: str,
              pid: int | None) -> dict[str, Any]:
    log(f"{name}: running mofs bench on {directory}")
    tmp = plan.work / "tmp"  # the bench's sources; gone even if the bench is killed
    tmp.mkdir(exist_ok=True)
    try:
        done = run(bench_cmd(plan, directory, drop, pid), timeout=BENCH_TIMEOUT, check=False,
                   env=dict(os.environ, TMPDIR=str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if done.returncode != 0:
        raise RunError(f"{name}: mofs bench failed: {last_line(done)}")
    return json.loads(done.stdout)


def target_native(plan: Plan, tdir: Path) -> dict[str, Any]:
    data = tdir / "data"
    data.mkdir(parents=True)
    return run_bench(plan, "native", data, KERNEL_DROP, None)


def mounted_target(plan: Plan, name: str, tdir: Path,
                   make_cmd: Callable[[Path, Path], tuple[list[str], dict[str, str] | None]],
                   drop: Callable[[Path], str]) -> dict[str, Any]:
    """Mount, bench with the daemon's pid, unmount (always)."""
    mnt, backing = tdir / "mnt", tdir / "backing"
    mnt.mkdir(parents=True)
    backing.mkdir()
    cmd, env = make_cmd(backing, mnt)
    log(f"{name}: mounting ({shlex.join(cmd)})")
    m = start_mount(name, cmd, mnt, plan.work / "logs" / f"{name}.log", env)
    try:
        return run_bench(plan, name, mnt, drop(mnt), m.proc.pid)
    finally:
        stop_mount(m)


def bindfs_cmd(backing: Path, mnt: Path) -> tuple[list[str], dict[str, str] | None]:
    return ["bindfs", "-f", "-o", "big_writes", str(backing), str(mnt)], None


def passthroughfs_cmd(backing: Path, mnt: Path) -> tuple[list[str], dict[str, str] | None]:
    return [sys.executable, str(passthroughfs_script()), str(backing), str(mnt)], None


def rclone_cmd(backing: Path, mnt: Path) -> tuple[list[str], dict[str, str] | None]:
    conf = backing.parent / "rclone.conf"
    conf.touch()
    cache = backing.parent / "vfs-cache"
    env = dict(os.environ, RCLONE_CONFIG=str(conf))
    return ["rclone", "mount", str(backing), str(mnt), "--vfs-cache-mode", "full",
            "--cache-dir", str(cache)], env


def kernel_drop(mnt: Path) -> str:
    return KERNEL_DROP


def run_target(plan: Plan, name: str) -> dict[str, Any]:
    tdir = plan.work / name
    if tdir.exists():
        clean(tdir)
    if name == "native":
        return target_native(plan, tdir)
    if name == "bindfs":
        return mounted_target(plan, name, tdir, bindfs_cmd, kernel_drop)
    if name == "passthroughfs":
        return mounted_target(plan, name, tdir, passthroughfs_cmd, kernel_drop)
    if name == "rclone":
        return mounted_target(plan, name, tdir, rclone_cmd, kernel_drop)

    def mofs_cmd(backing: Path, mnt: Path) -> tuple[list[str], dict[str, str] | None]:
        return [*MOFS, "mount", str(backing / "store.mofs"), str(mnt), "--foreground",
                "--cache-size", str(plan.cache_size)], None

    def mofs_drop(mnt: Path) -> str:
        if not plan.drop_caches_cmd:
            return KERNEL_DROP
        own = shlex.join([*MOFS, "drop-caches", str(mnt)])
        return f"{own} && {{ {KERNEL_DROP}; }}"  # a failed mofs drop fails the hook

    return mounted_target(plan, name, tdir, mofs_cmd, mofs_drop)


def clean(tdir: Path) -> None:
    """Remove a target's directory, but never through a live mount."""
    mnt = tdir / "mnt"
    if mnt.exists() and is_mounted(mnt):
        for cmd in (["fusermount3", "-u", str(mnt)], ["umount", "-l", str(mnt)]):
            if is_mounted(mnt):
                run(cmd, timeout=120, check=False)
        if is_mounted(mnt):
            raise RunError(f"{mnt} is still mounted from an earlier run; unmount it first")
    shutil.rmtree(tdir, ignore_errors=True)


# --- reporting ---------------------------------------------------------------------------------


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def medians(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """metric -> target -> median, for the targets that finished."""
    out: dict[str, dict[str, float]] = {}
    for target, res in results.items():
        for name, m in res.get("metrics", {}).items():
            out.setdefault(name, {})[target] = m["median"]
    return out


def metric_info(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    for res in results.values():
        if name in res.get("metrics", {}):
            return res["metrics"][name]
    return {}


def table(plan: Plan, targets: list[str]) -> str:
    """Markdown: medians per target, and in parentheses each target's value / mofs's."""
    res, med = plan.results, medians(plan.results)
    head = ["metric", "unit", *[LABELS[t] for t in targets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in [n for n in ORDER if n in med]:
        info = metric_info(res, name)
        unit = f"{info['unit']} {'↑' if info['higher_is_better'] else '↓'}"
        cells = []
        for t in targets:
            v = med[name].get(t)
            if v is None:
                cells.append("—")
                continue
            mofs = med[name].get("mofs")
            ratio = f" ({v / mofs:.2f}×)" if t != "mofs" and mofs else ""
            cells.append(f"{fmt(v)}{ratio}")
        lines.append(f"| {name} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(plan: Plan) -> list[str]:
    """The issue's targets, met or not, from this run's medians."""
    med, out = medians(plan.results), []
    for name in [n for n in ORDER if n in med and n not in ("peak_rss", "big_copy_rss")]:
        m, peer = med[name].get("mofs"), med[name].get("bindfs")
        if m is None or peer is None:
            continue
        higher = metric_info(plan.results, name)["higher_is_better"]
        ok = m >= peer if higher else m <= peer
        out.append(f"- {'met' if ok else 'MISSED'}: {name} mofs/bindfs = {m / peer:.2f}× "
                   f"(needs {'≥' if higher else '≤'} 1.00×)")
    m, native = med.get("warm_read", {}).get("mofs"), med.get("warm_read", {}).get("native")
    if m and native:
        ok = m >= 0.5 * native
        out.append(f"- {'met' if ok else 'MISSED'}: warm_read mofs/native = {m / native:.2f}× "
                   "(needs ≥ 0.50×)")
    rss = med.get("big_copy_rss", {}).get("mofs")
    if rss is not None:
        limit = plan.cache_size / MIB + 100
        out.append(f"- {'met' if rss <= limit else 'MISSED'}: mofs VmRSS while copying "
                   f"{4 * plan.cache_size / MIB:.0f} MiB = {rss:.0f} MiB (needs ≤ cache "
                   f"{plan.cache_size / MIB:.0f} MiB + 100 MiB = {limit:.0f} MiB)")
    return out


def machine(work: Path) -> dict[str, str]:
    """What the numbers were measured on."""
    def first(cmd: list[str], prefix: str = "") -> str:
        try:
            done = run(cmd, timeout=60, check=False)
        except RunError:
            return "?"
        for line in done.stdout.splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip() if prefix != "/" else line
        return "?"

    with open("/proc/meminfo", encoding="ascii") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    import pyfuse3

    return {
        "cpu": first(["lscpu"], "Model name:"),
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / MIB:.1f} GiB",
        "disk": " ".join(first(["df", "-h", "--output=source,fstype,size", str(work)],
                               "/").split()) or "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyfuse3": pyfuse3.__version__,
        "bindfs": first(["bindfs", "--version"], "bindfs"),
        "rclone": first(["rclone", "version"], "rclone"),
        "mofs": first(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def write_outputs(plan: Plan, targets: list[str], out: Path, argv: list[str],
                  errors: dict[str, str], notes: list[str]) -> str:
    """performance-table.md, performance.json, performance.png in ``out``; the table."""
    out.mkdir(parents=True, exist_ok=True)
    info = machine(plan.work)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    smoke = " — SMOKE RUN (reduced sizes), not the benchmark" if plan.scale < 1 else ""
    body = table(plan, targets)
    md = [
        "<!-- written by benchmarks/run.py; do not edit by hand -->",
        f"Run of {when}: `{shlex.join(['benchmarks/run.py', *argv])}` — scale "
        f"{plan.scale:g}, repeat {plan.repeat}, medians{smoke}.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()),
        "",
        body,
        "",
        "In parentheses: the target's median divided by mofs's (↑ higher is better, so a "
        "ratio above 1 means the target is faster; ↓ lower is better, so below 1 means it is "
        "faster). MB/s is 10⁶ bytes per second.",
    ]
    if notes or errors:
        md += ["", "Notes:", ""] + [f"- {n}" for n in notes]
        md += [f"- {LABELS[t]} failed: {why}" for t, why in errors.items()]
    found = checks(plan)
    if found:
        md += ["", "Targets of issue 6 in this run:", "", *found]
    text = "\n".join(md) + "\n"
    (out / "performance-table.md").write_text(text)
    include_in_doc(out / "performance.md", text)
    (out / "performance.json").write_text(json.dumps(
        {"argv": argv, "when": when, "machine": info, "scale": plan.scale,
         "repeat": plan.repeat, "cache_size": plan.cache_size, "errors": errors,
         "notes": notes, "results": plan.results}, indent=1) + "\n")
    if ensure_matplotlib():
        plot(plan, targets, out / "performance.png", smoke)
    return text


BEGIN, END = "<!-- run.py table: begin -->", "<!-- run.py table: end -->"


def include_in_doc(doc: Path, text: str) -> None:
    """Put the table between the markers of performance.md, when it has them."""
    if not doc.exists():
        return
    old = doc.read_text()
    start, end = old.find(BEGIN), old.find(END)
    if 0 <= start < end:
        doc.write_text(old[:start + len(BEGIN)] + "\n" + text + old[end:])


def plot(plan: Plan, targets: list[str], path: Path, smoke: str) -> None:
    """Grouped bars, one group per metric: each target's speed relative to native."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = medians(plan.results)
    base = "native" if "native" in plan.results else "mofs"
    names = [n for n in ORDER if n in med and base in med[n] and "rss" not in n]
    shown = [t for t in targets if t in plan.results]
    if not names or not shown:
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(names)), 4.8))
    width = 0.8 / len(shown)
    for i, t in enumerate(shown):
        rel = []
        for n in names:
            v, ref = med[n].get(t), med[n][base]
            higher = metric_info(plan.results, n)["higher_is_better"]
            rel.append(0 if not v or not ref else (v / ref if higher else ref / v))
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, rel, width, label=LABELS[t])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel(f"relative to {LABELS[base]} (higher is better)")
    ax.set_title(f"mofs bench, scale {plan.scale:g}, median of {plan.repeat}{smoke}")
    ax.legend(fontsize="small", ncol=len(shown), loc="upper center",
              bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated (default {','.join(TARGETS)})")
    p.add_argument("--phases", default=None,
                   help="comma-separated phases for mofs bench (default: all; big_copy runs "
                   "on daemon targets only)")
    p.add_argument("--repeat", type=int, default=3, help="runs per phase (default 3)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="size factor; 0.1 is a quick smoke run (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "docs",
                   help="where the table, plot and JSON go (default docs/)")
    p.add_argument("--work", type=Path, default=Path("/var/tmp/mofs-bench"),
                   help="scratch directory on the disk to measure (default /var/tmp/mofs-bench)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise RunError(f"unknown target {bad[0] if bad else ''!r}; choose from "
                       f"{', '.join(TARGETS)}")
    if os.geteuid() != 0:
        raise RunError("needs root (cache drops, apt-get, mounts)")
    if not 0 < args.scale <= 100 or args.repeat < 1:
        raise RunError("--scale must be in (0, 100] and --repeat at least 1")
    try:
        from mofs.bench import PHASES
    except ImportError:
        raise RunError("mofs is not importable: run this with the Python of mofs's "
                       "virtualenv (e.g. .venv/bin/python benchmarks/run.py)") from None
    phases = (args.phases or "all").split(",")
    phases = list(PHASES) if phases == ["all"] else phases
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise RunError(f"unknown phase {unknown[0]!r}; choose from {', '.join(PHASES)}")
    ensure_packages(targets)
    if "passthroughfs" in targets:
        passthroughfs_script()
    cache_size = max(16, round(MOFS_CACHE * args.scale / MIB)) * MIB
    plan = Plan(work=args.work, phases=phases, repeat=args.repeat, scale=args.scale,
                cache_size=cache_size, drop_caches_cmd=mofs_has_drop_caches())
    notes = [f"mofs mounted with --cache-size {cache_size // MIB}M; big_copy copies "
             f"{4 * cache_size // MIB} MiB"]
    if "passthroughfs" in targets:
        notes.append("pyfuse3's passthroughfs.py has no fsync handler: the kernel gets ENOSYS "
                     "once and stops sending fsync, so its fsync numbers are not durable writes")
    if "mofs" in targets and plan.drop_caches_cmd:
        notes.append("cold phases on mofs run 'mofs drop-caches MOUNTPOINT' before the kernel "
                     "drop")
    if "mofs" in targets and not plan.drop_caches_cmd:
        notes.append("this mofs has no 'mofs drop-caches': its own cache was NOT emptied "
                     "before the cold phases (only the kernel's)")
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    for name in targets:
        started = time.monotonic()
        try:
            plan.results[name] = run_target(plan, name)
            log(f"{name}: done in {time.monotonic() - started:.0f} s")
        except RunError as exc:
            errors[name] = str(exc).removeprefix(f"{name}: ")
            log(f"{name}: FAILED: {errors[name]}")
        finally:
            tdir = args.work / name
            if not (tdir / "mnt").exists() or not is_mounted(tdir / "mnt"):
                shutil.rmtree(tdir, ignore_errors=True)
    text = write_outputs(plan, targets, args.out, argv, errors, notes)
    print(text)
    log(f"wrote {args.out}/performance-table.md, performance.json, performance.png "
        f"(daemon logs in {args.work / 'logs'})")
    return 1 if errors else 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main(sys.argv[1:]))
    except RunError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("run.py: interrupted; every mount was taken down", file=sys.stderr)
        sys.exit(130)
