"""Cross-build the workload and run it under qemu-aarch64-static (user-mode emulation)."""
import json
import shutil
import subprocess

import pytest

from harness.observe import trace as tr
from harness.observe import workload as wl

from harness.core import hostarch

missing = [t for t in (wl.CC, *hostarch.arm64_runner()) if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (cross compiler / qemu-user-static)")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return wl.build_workload(tmp_path_factory.mktemp("logs"))


def run(binary, argv, **kw):
    return subprocess.run([*hostarch.arm64_runner(), str(binary), *argv[1:]], capture_output=True, text=True,
                          timeout=120, **kw)


def test_getppid_trace(binary, tmp_path):
    out = tmp_path / "trace.bin"
    p = run(binary, wl.workload_argv(count=1000, mode="getppid", out=str(out)))
    assert p.returncode == 0, p.stderr
    s = wl.parse_summary_line(p.stdout)
    assert s["calls"] == 1000 and s["mode"] == "getppid" and not s["bare"]
    t = tr.read_trace(out)
    assert len(t) == 1000 and t.requested_count == 1000 and t.syscall_nr == 173
    assert list(t.seq) == list(range(1000))
    import os
    # getppid under qemu-user returns our pid (qemu's parent is this test process)
    assert set(t.ret) == {os.getpid()}
    assert all(a <= b for a, b in zip(t.t_ns, t.t_ns[1:]))
    assert min(t.vcpu) >= 0
    # timestamps are CLOCK_MONOTONIC nanoseconds (read from the counter, converted after the loop)
    import time
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert now - 60e9 < t.t_ns[0] <= t.t_ns[-1] <= now
    assert t.start_ns <= t.t_ns[0] and t.t_ns[-1] <= t.end_ns
    assert all(0 <= lat < 1e9 for lat in t.lat_ns)
    assert s["clock"] == "cntvct" and s["tick_hz"] > 0


def test_interleaved_bare_blocks_measure_the_overhead_in_one_run(binary, tmp_path):
    out = tmp_path / "trace.bin"
    p = run(binary, wl.workload_argv(count=3000, mode="getppid", out=str(out), interleave_bare=500))
    assert p.returncode == 0, p.stderr
    s = wl.parse_summary_line(p.stdout)
    assert s["calls"] == 3000 and s["bare_calls"] == 3000
    assert s["bare_calls_per_s"] > 0 and s["calls_per_s"] > 0
    expected = 100 * (s["bare_calls_per_s"] - s["calls_per_s"]) / s["bare_calls_per_s"]
    assert abs(s["overhead_pct"] - expected) < 0.01
    t = tr.read_trace(out)
    assert len(t) == 3000 and list(t.seq) == list(range(3000))  # only recorded calls are records


def test_unknown_syscall_returns_raw_enosys(binary, tmp_path):
    out = tmp_path / "trace.bin"
    p = run(binary, wl.workload_argv(count=20, syscall_nr=451, vcpu=0, out=str(out)))
    assert p.returncode == 0, p.stderr
    t = tr.read_trace(out)
    assert t.pinned_vcpu == 0 and set(t.ret) == {-38} and set(t.vcpu) == {0}
    assert t.vcpu_source == "getcpu"  # qemu-user does not implement rseq: the syscall fallback
    assert t.outcome_counts() == {"no such syscall": 20}


def test_duration_limit(binary, tmp_path):
    out = tmp_path / "trace.bin"
    p = run(binary, wl.workload_argv(count=2**32 - 1, duration=0.2, mode="getppid", out=str(out)))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["stopped_by_time"] is True
    t = tr.read_trace(out)
    assert t.stopped_by_time and 0 < len(t) < 2**32 - 1
    assert 0.15e9 < t.elapsed_ns < 5e9


def test_bare(binary):
    p = run(binary, wl.workload_argv(count=5000, mode="getppid", bare=True, out=None))
    assert p.returncode == 0, p.stderr
    s = wl.parse_summary_line(p.stdout)
    assert s["bare"] is True and s["calls"] == 5000


def test_allocation_failure_is_reported(binary, tmp_path):
    p = run(binary, wl.workload_argv(count=2**32 - 1, mode="getppid", out=str(tmp_path / "t.bin")))
    assert p.returncode == 4 and "cannot allocate" in p.stderr


@pytest.mark.parametrize("args,code", [(["-n", "0", "-o", "x"], 2), (["-n", "5", "-o", "x"], 2),
                                       (["-m", "getppid", "-d", "1", "--interleave-bare", "5", "-o", "x"], 2),
                                       (["-m", "getppid", "-n", "5", "--interleave-bare", "0", "-o", "x"], 2),
                                       (["-m", "getppid", "-n", "5", "-c", "999", "-o", "x"], 3),
                                       (["-m", "getppid", "-n", "5", "-o", "/nonexistent/dir/x"], 5)])
def test_bad_arguments_exit_nonzero(binary, args, code):
    p = run(binary, ["x", *args])
    assert p.returncode == code, (p.stdout, p.stderr)
    assert "hostcpuid-trace:" in p.stderr
