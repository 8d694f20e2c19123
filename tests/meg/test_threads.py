"""Thread counts from the CPUs a process may actually use: cgroup quota, affinity, load."""

import pytest

from meg import threads
from meg.threads import CpuInfo, cgroup_cpu_quota, choose_threads, detect_cpus


def _tree(tmp_path, files: dict[str, str], proc: str = "0::/\n"):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc)
    return tmp_path / "cg", tmp_path / "proc_cgroup"


@pytest.mark.parametrize("files, proc, expected", [
    ({"cg/cpu.max": "200000 100000\n"}, "0::/\n", 2.0),
    ({"cg/cpu.max": "max 100000\n"}, "0::/\n", None),
    # v2 with the process in a child cgroup: its own cpu.max counts.
    ({"cg/kubepods/pod1/cpu.max": "150000 100000\n"}, "0::/kubepods/pod1\n", 1.5),
    # v1: quota over period, in the controller's own hierarchy.
    ({"cg/cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000\n",
      "cg/cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/docker/x\n0::/\n", 3.0),
    ({"cg/cpu/cpu.cfs_quota_us": "-1\n", "cg/cpu/cpu.cfs_period_us": "100000\n"},
     "1:cpu:/\n0::/\n", None),
    ({}, "", None),  # no cgroup files at all (not Linux, or not mounted)
    ({"cg/cpu.max": "garbage here\n"}, "0::/\n", None),
])
def test_cgroup_quota_v1_and_v2(tmp_path, files, proc, expected):
    root, proc_path = _tree(tmp_path, files, proc)
    assert cgroup_cpu_quota(root, proc_path) == expected


@pytest.mark.parametrize("cpus, use_load, expected", [
    (CpuInfo(cpu_count=64, quota=2.0, affinity=64), False, 2),  # a container on a big host
    (CpuInfo(cpu_count=64, quota=1.5, affinity=64), False, 2),  # a fractional quota rounds up
    (CpuInfo(cpu_count=64, quota=0.5), False, 1),
    (CpuInfo(cpu_count=16, affinity=4), False, 4),  # taskset / cpuset
    (CpuInfo(cpu_count=8), False, 8),  # nothing known but the core count
    (CpuInfo(cpu_count=8, affinity=8, omp_env=3), False, 3),
    (CpuInfo(cpu_count=2, affinity=2, load=5.0), True, 1),  # a busy 2-core machine
    (CpuInfo(cpu_count=2, affinity=2, load=5.0), False, 2),  # the service ignores load
    (CpuInfo(cpu_count=2, affinity=2, load=0.3), True, 2),
    (CpuInfo(cpu_count=16, affinity=16, load=6.0), True, 10),
])
def test_auto_takes_the_tightest_bound(cpus, use_load, expected):
    choice = choose_threads(0, cpus, use_load=use_load)
    assert choice.threads == expected
    assert choice.reason.startswith(f"{expected} (auto: ")


def test_reason_names_each_bound_and_requests_win():
    cpus = CpuInfo(cpu_count=64, quota=2.0, affinity=8, load=0.2)
    assert choose_threads(0, cpus, use_load=True).reason == (
        "2 (auto: 64 CPUs, cgroup quota 2.0 CPUs, affinity 8, load 0.2)")
    assert choose_threads(4, cpus).threads == 4  # an explicit count is taken as is
    assert choose_threads(0, cpus, processes=2).threads == 1  # two workers share two CPUs
    with pytest.raises(ValueError, match=">= 0"):
        choose_threads(-1, cpus)


def test_detect_cpus_reads_affinity_quota_and_env(tmp_path, monkeypatch):
    root, proc_path = _tree(tmp_path, {"cg/cpu.max": "100000 100000\n"})
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 32)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.5, 0.5, 0.5), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    cpus = detect_cpus(root, proc_path)
    assert cpus == CpuInfo(cpu_count=32, affinity=3, quota=1.0, load=0.5, omp_env=2)
    assert choose_threads(0, cpus).threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    monkeypatch.setattr(threads.os, "sched_getaffinity", _raise, raising=False)
    cpus = detect_cpus(root, proc_path)
    assert cpus.affinity is None and cpus.omp_env is None


def _raise(pid):
    raise OSError("no affinity here")


def test_the_service_sizes_ort_sessions_from_the_quota(monkeypatch):
    from service.engine.models import session_options
    from service.settings import Settings

    monkeypatch.setattr(threads, "detect_cpus", lambda: CpuInfo(cpu_count=64, quota=2.0))
    assert session_options(Settings(ort_threads=0)).intra_op_num_threads == 2
    assert session_options(Settings(ort_threads=3)).intra_op_num_threads == 3
