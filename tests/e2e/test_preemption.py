"""The preemption check: the highvisor's HVC handler runs with preemption enabled, so a
host_cpuid that answers smp_processor_id() is a bug even when its numbers look right.
The harness's host config (PREEMPT + DEBUG_PREEMPT) makes the kernel say so, and the run
must fail with that line, on every kernel profile."""
from __future__ import annotations

import pytest

from harness.jobs import run as run_mod
from harness.core.config import override

from .helpers import processes_mentioning, require_stack_tools

pytestmark = pytest.mark.e2e

SAFE = "READ_ONCE(vcpu->cpu)"
UNSAFE = "smp_processor_id()"


@pytest.fixture(scope="module", autouse=True)
def _tools():
    require_stack_tools()


def test_smp_processor_id_in_the_handler_fails_the_run(harness_config, artefacts, e2e_runs, tmp_path):
    reference = artefacts.profile.reference_kvm_patch.read_text()
    assert reference.count(SAFE) == 1, "the reference kvm.patch should name the pCPU exactly once"
    unsafe = tmp_path / "kvm-smp-processor-id.patch"
    unsafe.write_text(reference.replace(SAFE, UNSAFE))
    # unpinned: the check stays silent for a thread that is bound to a single CPU
    cfg = override(harness_config, [f"patches.host='{unsafe}'", "scenarios=[{name: unpinned, calls: 300}]"])
    summary = run_mod.main_job(cfg, run_mod.new_run_dir(cfg, "preempt-bug"))

    assert summary["verdict"] == "kernel-bug", summary.get("verdict_text")
    lines = [f["line"] for f in summary["kernel_log_findings"]]
    assert any("BUG: using smp_processor_id() in preemptible" in ln for ln in lines), lines
    assert "smp_processor_id" in summary["verdict_text"]
    # the calls themselves still answered with a CPU number: only the kernel log tells
    per_vcpu = summary["scenarios"][0]["per_vcpu"].values()
    assert all(s["outcomes"].get("pcpu", 0) > 0 for s in per_vcpu), [s["outcomes"] for s in per_vcpu]
    assert processes_mentioning(summary["run_dir"]) == []
