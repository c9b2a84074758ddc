"""From traces to numbers: per-vCPU samples, distinct pCPUs, pCPU changes, call rate,
latency percentiles, and what the return values mean (pCPU, not supported, ENOSYS)."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence

from .trace import Trace, classify_ret


def percentile(sorted_values: Sequence[int], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summarize_trace(trace: Trace) -> dict:
    """Summary of one workload process's trace."""
    outcomes: Counter = Counter()
    pcpus: List[int] = []
    for ret in trace.ret:
        kind, value = classify_ret(ret)
        outcomes[kind] += 1
        if kind == "pcpu":
            pcpus.append(value)
    changes = sum(1 for a, b in zip(pcpus, pcpus[1:]) if a != b)
    lat = sorted(trace.lat_ns)
    observed_vcpus = sorted(set(trace.vcpu))
    return {
        "mode": trace.mode,
        "pinned_vcpu": trace.pinned_vcpu,
        "observed_vcpus": observed_vcpus,
        "samples": len(trace),
        "requested": trace.requested_count,
        "outcomes": dict(outcomes),
        "pcpus": dict(sorted(Counter(pcpus).items())),
        "distinct_pcpus": len(set(pcpus)),
        "pcpu_changes": changes,
        "first_pcpu": pcpus[0] if pcpus else None,
        "calls_per_s": round(trace.calls_per_s, 1),
        "latency_us": {
            "p50": _us(percentile(lat, 0.5)), "p90": _us(percentile(lat, 0.9)),
            "p99": _us(percentile(lat, 0.99)), "max": _us(lat[-1] if lat else None),
        },
        "verdict": verdict(outcomes, len(trace)),
    }


def _us(ns: Optional[float]) -> Optional[float]:
    return None if ns is None else round(ns / 1000.0, 1)


def verdict(outcomes: Dict[str, int], samples: int) -> str:
    """One plain word for what the hypercall did."""
    if samples == 0:
        return "no-samples"
    if outcomes.get("pcpu", 0) == samples:
        return "ok"
    if outcomes.get("not_supported", 0) == samples:
        return "not-supported"  # the host kernel does not know the hypercall
    if outcomes.get("enosys", 0) == samples:
        return "no-syscall"     # the guest kernel does not know the syscall
    return "mixed"


def describe(verdict_word: str, syscall_nr: int) -> str:
    return {
        "ok": "every call returned a pCPU id",
        "not-supported": "the host answered SMCCC NOT_SUPPORTED (-1): the host kernel does not implement the "
                         "host_cpuid hypercall",
        "no-syscall": f"the guest kernel has no syscall {syscall_nr} (-ENOSYS)",
        "mixed": "some calls failed; see outcomes",
        "no-samples": "the trace is empty",
        "wrong-pcpu": "a pinned vCPU reported a pCPU other than the one its thread was pinned to",
        "wrong-vcpu": "a workload did not stay on the vCPU it was bound to in L2",
    }.get(verdict_word, verdict_word)


def human_summary(summary: dict) -> str:
    """A few lines for the terminal at the end of a run."""
    lines = []
    if summary.get("learned_call_key"):
        k = summary["learned_call_key"]
        lines.append(f"{k['note']} ({k['configured']} never appeared; {k['hvcs']} HVCs for {k['calls']} calls)")
    for sc in summary.get("scenarios", []):
        pins = ", ".join(f"vCPU{v}->pCPU{p}" for v, p in sorted(sc.get("pin", {}).items())) or "none"
        lines.append(f"scenario {sc['name']}: pins {pins}, host load {sc.get('host_load', 0)}")
        for v, s in sorted(sc["per_vcpu"].items(), key=lambda kv: int(kv[0])):
            pc = ", ".join(f"{p}x{n}" for p, n in s["pcpus"].items()) or "-"
            lines.append(f"  vCPU {v}: {s['samples']} samples, pCPUs [{pc}], {s['pcpu_changes']} changes, "
                         f"{s['calls_per_s']:.0f} calls/s, p50 {s['latency_us']['p50']} us -> {s['verdict']}")
            gt = s.get("ground_truth")
            if gt:
                lines.append(f"    L1: {ground_truth_line(gt)}")
        for name, value in sc.get("compare", {}).items():
            lines.append(f"  {name}: {value}")
        to = sc.get("trace_overhead") or {}
        if to:
            spread = to.get("overhead_pct_range")
            lines.append(f"  L1 tracing overhead: {to['overhead_pct']} % (median of {to['rounds']} on/off pairs"
                         + (f", pairs from {spread[0]} to {spread[1]} %" if spread else "")
                         + f"; host_cpuid calls/s {to['calls_per_s_tracing_on']} traced, "
                         f"{to['calls_per_s_tracing_off']} not)")
        if sc.get("verdict"):
            lines.append(f"  expectation {sc['verdict']}: {sc.get('reason')}")
    return "\n".join(lines)


def ground_truth_line(gt: dict) -> str:
    """One line: HVCs seen by L1 vs calls, agreement, changes explained."""
    if not gt.get("aligned"):
        return gt.get("reason", "no ground truth")
    text = f"{gt['hvc_events']} HVCs for {gt['samples']} calls, agreement {gt['agreement']:.2%}"
    if gt["agreement"] < 1:
        text += (f" ({gt.get('disagreements_explained')} disagreements explained: L1 moved the thread between "
                 "the HVC and the read of vcpu->cpu)")
    if gt.get("changes"):
        text += f", changes explained {gt['changes_explained']}/{gt['changes']}"
    else:
        text += ", no pCPU change"
    return text
