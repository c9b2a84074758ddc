"""Migration experiments on the real stack, checked against L1's own trace: the six
scenarios of configs/experiments.yaml run on one boot, then a host patch that answers
the vCPU id instead of the pCPU is caught by the ground truth."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from harness.jobs import experiment
from harness.jobs import run as run_mod
from harness.core import config as config_mod

from .helpers import processes_mentioning, require_stack_tools

pytestmark = pytest.mark.e2e

SAFE = "READ_ONCE(vcpu->cpu)"


@pytest.fixture(scope="module", autouse=True)
def _tools():
    require_stack_tools()


def _experiment_config(harness_config) -> config_mod.Config:
    """The experiment scenarios on the kernel and patches the e2e run is configured with."""
    exp = config_mod.load(experiment.DEFAULT_EXPERIMENT)
    scenarios = [dataclasses.asdict(s) for s in exp.scenarios]
    return config_mod.override(harness_config, [f"scenarios={yaml.safe_dump(scenarios)}"])


@pytest.fixture(scope="module")
def experiment_run(harness_config, artefacts):
    cfg = _experiment_config(harness_config)
    run_dir = run_mod.new_run_dir(cfg, "e2e-experiment")
    exp = experiment.run_experiment(cfg, out=run_dir)
    assert processes_mentioning(str(run_dir)) == []
    return exp


def _scenario(exp, name):
    return next(s for s in exp["scenarios"] if s["name"] == name)


def test_every_call_matches_one_hvc_and_agrees_with_l1(experiment_run):
    """Reference patches: on every vCPU of every scenario, L1 saw exactly one HVC with the
    workload's function ID per call, handled on the CPU the call returned."""
    assert [s["name"] for s in experiment_run["scenarios"]] == \
        ["pinned", "unpinned", "loaded", "overcommit", "repin", "hotplug"]
    for sc in experiment_run["scenarios"]:
        for v, pv in sc["per_vcpu"].items():
            gt = pv["ground_truth"]
            assert gt["hvc_events"] == pv["samples"] > 0, (sc["name"], v, gt)
            # a value may differ from the HVC's CPU only when L1 moved the thread between the
            # HVC and the read of vcpu->cpu (the handler is preemptible): every such case shown
            assert gt["agreement"] >= 0.99, (sc["name"], v, gt)
            done, total = map(int, gt["disagreements_explained"].split("/"))
            assert done == total, (sc["name"], v, gt)
            done, total = map(int, gt["changes_explained"].split("/"))
            assert done == total, (sc["name"], v, gt)


def test_expectations_met_or_honestly_inconclusive(experiment_run):
    assert experiment_run["verdict"] == "ok"  # re-pinned and hot-unplugged vCPUs are not "wrong-pcpu"
    for sc in experiment_run["scenarios"]:
        assert sc["verdict"] in ("met", "inconclusive"), (sc["name"], sc["reason"])
    # these do not depend on the scheduler's mood: they must be met
    for name in ("pinned", "unpinned", "repin", "hotplug"):
        assert _scenario(experiment_run, name)["verdict"] == "met", _scenario(experiment_run, name)["reason"]


def test_repin_is_exactly_one_explained_change(experiment_run):
    sc = _scenario(experiment_run, "repin")
    pv = sc["per_vcpu"]["0"]
    assert pv["changes"] == 1 and pv["ground_truth"]["changes_explained"] == "1/1"
    assert set(pv["pcpus"]) == {"3", "2"}


def test_hotplug_never_returns_the_offline_cpu(experiment_run):
    sc = _scenario(experiment_run, "hotplug")
    off = next(a for a in sc["actions"] if a["do"] == "offline")
    assert off["rc"] == 0, off
    assert "none returned it while offline" in sc["reason"], sc["reason"]


def test_unpinned_affinity_is_shown_not_assumed(experiment_run):
    sc = _scenario(experiment_run, "unpinned")
    ncpu = experiment_run["l1_cpus"]
    for when in ("start", "end"):
        assert set(sc["affinity"][when].values()) == {f"0-{ncpu - 1}"}, sc["affinity"]


def test_tracing_overhead_is_measured(experiment_run):
    over = _scenario(experiment_run, "pinned")["trace_overhead"]
    assert over["calls_per_s_tracing_on"] > 0 and over["calls_per_s_tracing_off"] > 0
    low, high = over["overhead_pct_range"]
    assert low <= over["overhead_pct"] <= high
    # the "on" rounds recorded every call and the "off" rounds none
    assert over["calls_traced"] == over["calls_made_traced"] == over["rounds"] * over["calls_per_round"], over


def test_report_and_plots_are_written_and_rerender(experiment_run):
    run_dir = Path(experiment_run["run_dir"])
    html = (run_dir / "report.html").read_text()
    assert "What does KVM do" in html and "data:image/png;base64," in html
    md = (run_dir / "report.md").read_text()
    refs = experiment_run["kernel_refs"]
    assert refs["vcpu_load"]["text"].startswith("vcpu->cpu = cpu")
    assert f"{refs['vcpu_load']['file']}:{refs['vcpu_load']['line']}" in md
    for name in ("pinned", "repin", "hotplug"):
        assert (run_dir / "plots" / f"{name}-timeline.png").stat().st_size > 10_000
    before = (run_dir / "experiments.json").read_text()
    experiment.render_report(run_dir)  # from the stored run, nothing booted
    assert json.loads((run_dir / "experiments.json").read_text()) == json.loads(before)


def test_vcpu_id_host_patch_is_caught_by_the_ground_truth(harness_config, artefacts, tmp_path):
    """A host patch answering the vCPU id: with vCPU k pinned to pCPU p != k, its values
    disagree with the CPU L1 handled the HVC on, and the pinned expectation is not met."""
    reference = artefacts.profile.reference_kvm_patch.read_text()
    assert reference.count(SAFE) == 1
    wrong = tmp_path / "kvm-vcpu-id.patch"
    wrong.write_text(reference.replace(SAFE, "vcpu->vcpu_id"))
    cfg = config_mod.override(harness_config, [
        f"patches.host='{wrong}'", "scenarios=[{name: pinned, kind: pinned, pin: {0: 3, 1: 2}, calls: 500}]"])
    run_dir = run_mod.new_run_dir(cfg, "e2e-vcpu-id")
    exp = experiment.run_experiment(cfg, out=run_dir)
    sc = exp["scenarios"][0]
    assert sc["verdict"] == "not-met", sc["reason"]
    for v, pv in sc["per_vcpu"].items():
        assert pv["ground_truth"]["hvc_events"] == pv["samples"]  # the guest did issue the HVCs
        assert pv["ground_truth"]["agreement"] < 0.5, (v, pv["ground_truth"])
    assert exp["verdict"] == "wrong-pcpu"
    assert processes_mentioning(str(run_dir)) == []
