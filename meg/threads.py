"""How many intra-op threads a process should use: the CPUs it can actually run on.

torch and ONNX Runtime size their pools from the host's core count, which ignores a
container's CPU quota and the process's CPU affinity; on a machine that other work keeps
busy, more threads than free CPUs make every parallel region wait on descheduled
threads (a 21 s training run took 45 min). `choose_threads` is the pure decision,
`detect_cpus` reads the system, `auto_threads` does both.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CpuInfo:
    """What bounds the CPUs this process can use (None: no such bound found)."""

    cpu_count: int  # os.cpu_count()
    affinity: int | None = None  # CPUs in os.sched_getaffinity(0)
    quota: float | None = None  # cgroup CPU quota in CPUs (quota / period)
    load: float | None = None  # 1-minute load average of the machine
    omp_env: int | None = None  # OMP_NUM_THREADS when set to a positive integer


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # e.g. "auto: cgroup quota 2.0 CPUs, affinity 2"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """controller -> cgroup path from /proc/self/cgroup ("" for the v2 unified tree)."""
    out: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2].strip()
    return out


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The cgroup CPU limit in CPUs (v2 `cpu.max`, else v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us`), or None when unlimited or unreadable. Inside a container the
    process's cgroup is usually the namespace root, so the root files are tried too."""
    paths = _cgroup_paths(proc_cgroup)
    v2 = [root / paths[""].lstrip("/")] if "" in paths else []
    try:
        for d in [*v2, root]:
            text = _read(d / "cpu.max")
            if text is not None:
                fields = text.split()
                if len(fields) >= 1 and fields[0] != "max":
                    period = float(fields[1]) if len(fields) > 1 else 100_000.0
                    return _positive_ratio(float(fields[0]), period)
                return None
        sub = paths.get("cpu", "/").lstrip("/")
        for d in [root / name / sub for name in ("cpu", "cpu,cpuacct")] + [root / "cpu", root]:
            quota_us = _read(d / "cpu.cfs_quota_us")
            period_us = _read(d / "cpu.cfs_period_us")
            if quota_us is not None and period_us is not None:
                return _positive_ratio(float(quota_us), float(period_us))
    except ValueError:  # a file we do not understand: no bound rather than a crash
        return None
    return None


def _positive_ratio(quota: float, period: float) -> float | None:
    return quota / period if quota > 0 and period > 0 else None  # v1 uses -1 for unlimited


def detect_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CpuInfo:
    """Read every bound on this process's CPUs from the system."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = None
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return CpuInfo(
        cpu_count=os.cpu_count() or 1, affinity=affinity,
        quota=cgroup_cpu_quota(root, proc_cgroup), load=load,
        omp_env=int(omp) if omp.isdigit() and int(omp) > 0 else None,
    )


def choose_threads(
    requested: int, cpus: CpuInfo, use_load: bool = False, processes: int = 1
) -> ThreadChoice:
    """The thread count for `requested` (> 0: exactly that; 0: auto).

    Auto takes the smallest of the CPU count, the affinity set and the cgroup quota
    (rounded up: a 1.5-CPU quota still runs two threads' worth of work in bursts), then
    OMP_NUM_THREADS when set, and with `use_load` the CPUs the 1-minute load average leaves
    free (a batch job: one thread too few costs at most a factor of the thread count, one
    too many on a busy machine costs a hundredfold). `processes` sharing the machine (data-
    parallel workers on one host) split what is left."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0: auto), got {requested}")
    if requested > 0:
        return ThreadChoice(requested, f"{requested} (requested)")
    n = max(1, cpus.cpu_count)
    why = [f"{cpus.cpu_count} CPUs"]
    if cpus.quota is not None:
        n = min(n, max(1, math.ceil(cpus.quota - 1e-9)))
        why.append(f"cgroup quota {cpus.quota:.1f} CPUs")
    if cpus.affinity is not None:
        n = min(n, max(1, cpus.affinity))
        why.append(f"affinity {cpus.affinity}")
    if cpus.omp_env is not None:
        n = min(n, cpus.omp_env)
        why.append(f"OMP_NUM_THREADS={cpus.omp_env}")
    if use_load and cpus.load is not None:
        free = max(1, int(n - cpus.load + 0.5))
        if free < n:
            n = free
        why.append(f"load {cpus.load:.1f}")
    if processes > 1:
        n = max(1, n // processes)
        why.append(f"{processes} processes")
    return ThreadChoice(n, f"{n} (auto: {', '.join(why)})")


def auto_threads(requested: int = 0, use_load: bool = False, processes: int = 1) -> ThreadChoice:
    """`choose_threads` on this machine's CPUs."""
    return choose_threads(requested, detect_cpus(), use_load=use_load, processes=processes)
