"""run.judge_vcpu: each vCPU's verdict says what is wrong with that vCPU."""
from __future__ import annotations

from harness.jobs import run


def summary(pcpus, observed=(0,), verdict="ok"):
    return {"pcpus": dict(pcpus), "observed_vcpus": list(observed), "verdict": verdict}


def test_pinned_vcpu_on_its_pin_is_ok():
    s = run.judge_vcpu(summary({3: 100}), 0, 3, 451)
    assert (s["verdict"], s["pin_respected"], s["pinned_to"]) == ("ok", True, 3)
    assert s["verdict_text"] == "every call returned a pCPU id"


def test_pinned_vcpu_elsewhere_is_not_ok():
    s = run.judge_vcpu(summary({0: 60, 3: 40}), 0, 3, 451)
    assert s["pin_respected"] is False
    assert s["verdict"] == "wrong-pcpu"
    assert "pinned to pCPU 3" in s["verdict_text"] and "[0, 3]" in s["verdict_text"]


def test_unpinned_vcpu_on_the_wrong_vcpu():
    s = run.judge_vcpu(summary({1: 5}, observed=(0, 1)), 0, None, 451)
    assert s["verdict"] == "wrong-vcpu" and s["vcpu_pinning_in_guest_failed"] is True
    assert "pin_respected" not in s


def test_a_failing_hypercall_keeps_its_own_verdict():
    s = run.judge_vcpu(summary({}, verdict="not-supported"), 1, 2, 436)
    assert s["verdict"] == "not-supported" and s["pin_respected"] is False
    assert "NOT_SUPPORTED" in s["verdict_text"]


def test_overall_verdict_of_a_wrong_pin():
    sc = {"per_vcpu": {"0": run.judge_vcpu(summary({0: 10}), 0, 3, 451)}}
    assert run.overall_verdict([sc], []) == "wrong-pcpu"
