"""One slowdown factor scales every stage budget (harness/core/deadline.py): configured by
KVM_HARNESS_SLOWDOWN or measured by timing QEMU, and routed into every budget of the
stack (boot/SSH deadlines, guest commands, workloads, tool timeouts, build estimates)."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.stack import accel, ssh
from harness.core import deadline, procs
from harness.build import kbuild, sandbox
from harness.jobs import run
from harness.core.config import Scenario, from_dict
from harness.core.deadline import Deadline
from harness.core.errors import ConfigError, HarnessError

HARNESS = Path(__file__).resolve().parents[2] / "harness"


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv(deadline.ENV, raising=False)
    deadline.reset()
    yield
    deadline.reset()


# -- where the factor comes from -----------------------------------------------------------

def test_default_is_one_and_says_so():
    s = deadline.current()
    assert (s.factor, s.source) == (1.0, "default")
    assert deadline.scaled(90) == 90


def test_configured_factor_wins_over_a_measurement(monkeypatch):
    monkeypatch.setenv(deadline.ENV, "2.5")
    measured = []
    s = deadline.calibrate(measure=lambda: measured.append(1) or 10.0)
    assert (s.factor, s.source, s.detail) == (2.5, "configured", "KVM_HARNESS_SLOWDOWN=2.5")
    assert measured == []  # configured: nothing is timed
    assert deadline.scaled(10) == 25


@pytest.mark.parametrize("raw", ["fast", "0", "-1"])
def test_a_bad_configured_factor_is_an_input_error(monkeypatch, raw):
    monkeypatch.setenv(deadline.ENV, raw)
    with pytest.raises(ConfigError, match="KVM_HARNESS_SLOWDOWN"):
        deadline.slowdown()


@pytest.mark.parametrize("best,factor", [(0.10, 1.0), (0.38, 1.0), (0.47, 1.0), (0.48, 4.0), (3.0, 25.0), (1.2, 10.0)])
def test_measured_factor_is_the_ratio_above_load_noise(best, factor):
    assert deadline.factor_from(best, reference_s=0.12) == factor


def test_calibration_measures_once_per_process():
    calls = []

    def measure():
        calls.append(1)
        return 3.0

    first = deadline.calibrate(measure)
    again = deadline.calibrate(measure)
    assert calls == [1] and first is again
    assert (first.factor, first.source) == (25.0, "measured") and "3.00 s" in first.detail
    assert deadline.slowdown() == 25.0 and deadline.current() is first


def test_calibration_without_qemu_keeps_one_and_says_why():
    def measure():
        raise FileNotFoundError(2, "No such file or directory")

    s = deadline.calibrate(measure)
    assert (s.factor, s.source) == (1.0, "default") and "No such file" in s.detail


def test_calibration_that_times_out_is_at_least_that_slow():
    def measure():
        raise RuntimeError(f"qemu did not power the calibration guest off within {deadline.CALIBRATION_TIMEOUT_S} s")

    s = deadline.calibrate(measure)
    assert s.source == "measured" and s.factor == deadline.factor_from(deadline.CALIBRATION_TIMEOUT_S) > 100


@pytest.mark.skipif(not shutil.which("qemu-system-aarch64"), reason="qemu-system-aarch64 not installed (make setup)")
def test_calibration_guest_powers_qemu_off():
    """The real measurement: QEMU boots the tiny guest, which powers the machine off (PSCI)."""
    t0 = time.monotonic()
    best = deadline.time_qemu(runs=1)
    assert 0 < best <= time.monotonic() - t0 < deadline.CALIBRATION_TIMEOUT_S


def test_calibration_guest_is_psci_system_off():
    words = [int.from_bytes(deadline.calibration_guest()[i:i + 4], "little") for i in range(0, 16, 4)]
    assert words[2] == 0xD4000002  # hvc #0
    # movz x0, #8; movk x0, #0x8400, lsl 16 -> x0 = 0x84000008 (SYSTEM_OFF)
    x0 = ((words[0] >> 5) & 0xFFFF) | (((words[1] >> 5) & 0xFFFF) << 16)
    assert x0 == 0x84000008 and words[0] & 0x1F == 0 and words[1] & 0x1F == 0


# -- every budget goes through it ----------------------------------------------------------

def test_stage_deadlines_scale(monkeypatch):
    monkeypatch.setenv(deadline.ENV, "25")
    for budget in (run.L1_BOOT_S, run.L1_SSH_S, run.L2_LAUNCH_S, run.L2_SSH_S):
        assert Deadline(budget, "x").budget == budget * 25


def test_workload_and_measuring_budgets_scale(monkeypatch):
    sc = Scenario(name="s", calls=2000)
    base = run.workload_budget(sc), run.workload_budget(Scenario(name="d", duration_s=30)), run.calls_budget(3000)
    assert base == (70.0, 100.0, 90.0)  # 2000 calls: 10 s + 60; 30 s + 10 s + 60; 30 s + 60
    monkeypatch.setenv(deadline.ENV, "4")
    assert (run.workload_budget(sc), run.workload_budget(Scenario(name="d", duration_s=30)),
            run.calls_budget(3000)) == tuple(4 * b for b in base)


def test_guest_commands_without_a_budget_get_the_scaled_default(monkeypatch):
    """Session.run gives start and finish the scaled default, or the caller's own budget."""
    monkeypatch.setenv(deadline.ENV, "3")
    seen = []
    monkeypatch.setattr(ssh.Session, "start", lambda self, argv, stage="", timeout=0: seen.append(("start", timeout)))
    monkeypatch.setattr(ssh.Session, "finish", lambda self, chan, argv, timeout, stage="":
                        seen.append(("finish", timeout)) or ssh.Result(list(argv), 0, "", ""))
    s = ssh.Session("l2", object())
    s.run(["true"])
    s.run(["true"], timeout=7)  # a caller's own budget is already scaled: taken as given
    assert seen == [("start", ssh.COMMAND_S * 3), ("finish", ssh.COMMAND_S * 3), ("start", 7), ("finish", 7)]


def test_tool_timeouts_scale_in_procs_run(monkeypatch):
    """procs.run's timeout is the reference machine's: a command that needs 0.6 s fails
    a 0.2 s budget at factor 1 and fits it at factor 10 (real processes)."""
    with pytest.raises(HarnessError, match="timed out after 0 s"):
        procs.run(["sleep", "0.6"], stage="t", timeout=0.2)
    monkeypatch.setenv(deadline.ENV, "10")
    assert procs.run(["sleep", "0.6"], stage="t", timeout=0.2).returncode == 0


def test_accel_probe_timeout_scales(monkeypatch):
    monkeypatch.setenv(deadline.ENV, "6")
    seen = {}

    def fake_run(argv, **kw):
        seen["timeout"] = kw["timeout"]
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    monkeypatch.setattr(accel.subprocess, "run", fake_run)
    rc, why = accel.local_probe()
    assert seen["timeout"] == accel.PROBE_TIMEOUT_S * 6
    assert rc == 124 and f"within {accel.PROBE_TIMEOUT_S * 6} s" in why


@pytest.mark.skipif(sandbox.available() != "", reason="bubblewrap/prlimit/timeout missing (make setup)")
def test_sandbox_wall_limit_scales(monkeypatch):
    monkeypatch.setenv(deadline.ENV, "5")
    argv = sandbox.confine(["true"], limits=sandbox.Limits(wall_s=100))
    assert argv[:3] == ["timeout", "--kill-after=10", "500"]


def test_build_estimate_in_progress_lines_scales(monkeypatch):
    assert kbuild.cold_estimate() == "cold: 5-8 min on 2 cores"
    monkeypatch.setenv(deadline.ENV, "3")
    assert kbuild.cold_estimate() == "cold: 15-24 min on 2 cores, slowdown x3 (configured)"
    monkeypatch.setenv(deadline.ENV, "25")
    assert kbuild.cold_estimate().startswith("cold: 2.1 h-3.3 h on 2 cores, slowdown x25")


def test_other_estimates_in_progress_lines_scale(monkeypatch):
    assert deadline.about(30) == "about 30 s"
    monkeypatch.setenv(deadline.ENV, "21.4")
    assert deadline.about(30) == "about 11 min, slowdown x21.4"  # extracting the tarball under qemu-user
    assert deadline.duration(3 * 3600) == "3.0 h"


def test_summary_says_the_factor_even_when_the_run_fails_early(monkeypatch, tmp_path):
    monkeypatch.setenv(deadline.ENV, "7")
    cfg = from_dict({"kernel": {"source": "path", "path": str(tmp_path / "no-such-tree")}, "output": str(tmp_path)})
    lines = []
    with pytest.raises(HarnessError):
        run.main_job(cfg, run_dir=tmp_path / "r", progress=lines.append)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["slowdown"] == {"factor": 7.0, "source": "configured", "detail": "KVM_HARNESS_SLOWDOWN=7"}
    assert lines[0].startswith("slowdown factor 7 (configured")


# -- no budget bypasses it -----------------------------------------------------------------

# literal timeouts that are not budgets: polls and teardown after a kill (file, function)
NOT_BUDGETS = {
    ("console.py", "_drain"), ("console.py", "close"),     # a 0.5 s read poll, a 2 s thread join
    ("procs.py", "kill_group"),                            # reaping after SIGKILL
    ("deadline.py", "time_qemu"),                          # the calibration's own bound
    # teardown: closing a QMP connection that is already given up on (short on purpose,
    # so Ctrl-C ends a run in seconds; a kill follows)
    ("machine.py", "shutdown"), ("nested.py", "shutdown"), ("nested.py", "_connect_qmp"), ("qmp.py", "connect"),
    ("bench.py", "commit"),                                # git rev-parse of the checkout measured
}


def _literal_timeouts():
    """(file, function, call) of every call with a numeric literal timeout= that does not go
    through procs.run (which scales its timeout)."""
    found = []
    for path in sorted(HARNESS.rglob("*.py")):
        rel = path.relative_to(HARNESS)
        if rel.parts[0] == "kvmlab":  # the x86 /dev/kvm lab: its own per-run limits, not the stack's
            continue
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Call):
                    continue
                callee = ast.unparse(node.func)
                for kw in node.keywords:
                    if kw.arg == "timeout" and isinstance(kw.value, ast.Constant) and kw.value.value is not None:
                        if callee not in ("procs.run", "run") and (rel.name, func.name) not in NOT_BUDGETS:
                            found.append(f"{rel}:{node.lineno} {func.name}: {callee}(timeout={kw.value.value})")
    return sorted(set(found))


def test_no_fixed_timeout_bypasses_the_factor():
    assert _literal_timeouts() == []


def test_the_audit_finds_a_fixed_timeout(tmp_path, monkeypatch):
    """The audit above can fail: a literal subprocess timeout is reported."""
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "x.py").write_text("import subprocess\ndef f():\n    subprocess.run(['true'], timeout=30)\n")
    monkeypatch.setitem(globals(), "HARNESS", pkg)
    assert _literal_timeouts() == ["x.py:3 f: subprocess.run(timeout=30)"]


def test_a_tool_killed_by_a_signal_the_harness_did_not_send_is_the_machines(tmp_path):
    """The OOM killer or a person SIGKILLs tar: not the input's fault (a SourceError would
    say "your input is bad", exit 2), the machine's, naming the signal."""
    from harness.core.errors import INFRA, SourceError

    with pytest.raises(SourceError, match="killed by SIGKILL") as ei:
        procs.run(["sh", "-c", "kill -9 $$"], stage="source", error=SourceError, log=tmp_path / "l.log")
    assert ei.value.kind == INFRA
    with pytest.raises(SourceError) as ei:  # a tool failing of itself stays the error's own kind
        procs.run(["sh", "-c", "exit 2"], stage="source", error=SourceError)
    assert ei.value.kind != INFRA and "exit code 2" in ei.value.message
