"""A stage that hangs is judged by the consoles first: a crash or stall there is the
submission's (with the lines as evidence, no machine check, the batch goes on); a clean
timeout is checked against the machine and is the submission's when the reference works."""
from __future__ import annotations

import pytest

from harness.core import config
from harness.jobs import run
from harness.core.errors import InfraError, StageTimeout
from harness.grade import grader, rubric
from harness.grade.diffcheck import DiffReport
from harness.grade.errors import GradeInfraError
from harness.grade.grader import Context
from harness.grade.pairing import Pairing, PairingResult, classify
from harness.build.profiles import all_profiles

BUG = ("[   41.2] kernel BUG at arch/arm64/kvm/hypercalls.c:236!\n"
       "[   41.2] Internal error: Oops - BUG: 00000000f2000800 [#1] PREEMPT SMP\n")
STALL = "[   62.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"


def workload_timeout():
    return StageTimeout("l2: `hostcpuid-trace -n 2000` did not finish within 70 s", stage="workload (default)")


def test_a_timeout_with_a_bug_on_l1s_console_is_the_kernels(tmp_path):
    (tmp_path / "l1-console.log").write_text("[    1.0] booting\n" + BUG)
    found = run.console_findings(tmp_path)
    e = run.judge_stuck_stage(workload_timeout(), found, tmp_path)
    assert type(e).__name__ == "KernelBugError" and e.kind == "subject" and e.stage == "workload (default)"
    assert "L1's console: [   41.2] Internal error: Oops - BUG" in e.message
    assert "kernel BUG at arch/arm64/kvm/hypercalls.c:236!" in e.tail
    status, role = classify(e, Pairing("hypercall", "kvm.patch", "grading", ("host",)))
    assert status == "run-failed"


def test_a_lost_ssh_with_a_stall_on_l2s_console_is_the_kernels(tmp_path):
    (tmp_path / "l1-console.log").write_text("[    1.0] booting\n")
    (tmp_path / "l2-console.log").write_text(STALL)
    e = InfraError("l2: the SSH connection was lost while `hostcpuid-trace` ran", stage="workload (default)")
    e = run.judge_stuck_stage(e, run.console_findings(tmp_path), tmp_path)
    assert e.kind == "subject" and "L2's console: [   62.0] rcu: INFO: rcu_preempt detected stalls" in e.message


def test_a_timeout_with_clean_consoles_stays_a_timeout(tmp_path):
    (tmp_path / "l1-console.log").write_text("[    1.0] booting\n[   2.0] WARNING: CPU: 0 PID: 1 at x\n")
    t = workload_timeout()
    assert run.judge_stuck_stage(t, run.console_findings(tmp_path), tmp_path) is t


def ctx(out):
    return Context(base=config.load(config.CONFIGS / "grade.yaml"), profile=all_profiles()["6.1"], tree=None,
                   rubric=rubric.load(), out=out, run_pairings=False, progress=lambda m: None)


def matrix(c, tmp_path):
    return grader.run_matrix(c, tmp_path, {r: DiffReport(r) for r in ("host", "guest")}, {"host": {}, "guest": {}},
                             tmp_path / "sub" / "pairings")


def test_a_workload_timeout_with_a_working_machine_is_the_submissions(tmp_path, monkeypatch):
    def hung(base, p, prof, out_dir, progress):  # what run_pairing makes of an infra-kind StageTimeout
        return PairingResult(p.name, "infra", why="workload (default): did not finish within 70 s",
                             error={"error": "StageTimeout", "stage": "workload (default)", "kind": "infra"},
                             summary={"timings": {"l1_ssh_s": 9}})

    monkeypatch.setattr(grader, "run_pairing", hung)
    c = ctx(tmp_path)
    seen = []
    c.machine_check = lambda tag: seen.append(tag) or "verdict ok"
    pairings, _ = matrix(c, tmp_path)
    assert len(seen) == 3
    assert pairings["hypercall"].status == "run-failed" and pairings["hypercall"].failed_role == "host"
    assert pairings["syscall"].failed_role == "guest" and "came up: verdict ok" in pairings["syscall"].why

    c.machine_check = lambda tag: (_ for _ in ()).throw(GradeInfraError("the reference pairing does not work"))
    with pytest.raises(GradeInfraError):  # the reference fails too: the machine's, the batch stops
        matrix(c, tmp_path)


def lost(base, p, prof, out_dir, progress):  # L2's SSH gone, consoles clean
    return PairingResult(p.name, "infra", why="l2: SSH failed: Channel closed.",
                         error={"error": "InfraError", "stage": "guest-command", "kind": "infra"})


def test_a_guest_lost_with_clean_consoles_runs_the_pairing_once_more(tmp_path, monkeypatch):
    """A lost L2 (SSH channel closed) with clean consoles: the pairing runs again; the
    second run decides, and only a second loss reaches the batch as the machine's."""
    runs = []

    def flaky(base, p, prof, out_dir, progress):
        runs.append(p.name)
        if p.name.endswith("-again"):
            return PairingResult(p.name, "ran", summary={"verdict": "ok"})
        return lost(base, p, prof, out_dir, progress)

    monkeypatch.setattr(grader, "run_pairing", flaky)
    c = ctx(tmp_path)
    c.machine_check = lambda tag: pytest.fail("a lost guest is retried, not checked against the reference")
    pairings, _ = matrix(c, tmp_path)
    assert {p.status for p in pairings.values()} == {"ran"} and set(pairings) == {"e2e", "hypercall", "syscall"}
    assert all(p.name in pairings for p in pairings.values())          # named as the pairing, not the retry
    assert sorted(runs) == sorted([n for n in pairings] + [f"{n}-again" for n in pairings])

    monkeypatch.setattr(grader, "run_pairing", lost)
    with pytest.raises(GradeInfraError, match="first attempt"):
        matrix(c, tmp_path)


def test_a_crash_is_not_checked_against_the_machine(tmp_path, monkeypatch):
    def crashed(base, p, prof, out_dir, progress):
        return PairingResult(p.name, "run-failed", why="the kernel under test crashed: L1's console: BUG",
                             error={"error": "KernelBugError", "stage": "workload (default)", "kind": "subject"})

    monkeypatch.setattr(grader, "run_pairing", crashed)
    c = ctx(tmp_path)
    c.machine_check = lambda tag: pytest.fail("a crash needs no machine check")
    pairings, _ = matrix(c, tmp_path)
    assert {p.status for p in pairings.values()} == {"run-failed"}


def test_a_clean_timeout_carries_the_consoles_tails(tmp_path):
    (tmp_path / "l1-console.log").write_text("[    1.0] booting\n[   9.0] l1 is quiet\n")
    (tmp_path / "l2-console.log").write_text("[    3.0] l2 last words\n")
    e = run.judge_stuck_stage(workload_timeout(), run.console_findings(tmp_path), tmp_path)
    assert "l2 last words" in e.tail and "l1 is quiet" in e.tail
