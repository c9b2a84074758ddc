"""Migration experiments: the scenario library run (and repeated) on one booted stack,
then ``experiments.json``, plots and a report, all from the run directory.

    kvm-harness experiment [SCENARIO...] [--repeat N] [--out DIR]   # boots, runs, reports
    kvm-harness report RUN_DIR                                      # re-renders, boots nothing

Data flows one way: ``run.main_job`` writes summary.json and traces/; ``collect()``
turns them into experiments.json (per scenario: expectation, verdict, per-vCPU
ground truth, and mean with a 95 % interval over repetitions); ``report.render()``
draws the plots and writes report.md and report.html from those files (``render_report``
does both).  The report reads files only: it never imports this module.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from ..core import config
from . import run
from ..core.errors import ConfigError

DEFAULT_EXPERIMENT = config.CONFIGS / "experiments.yaml"
EXPERIMENTS_JSON = "experiments.json"

# two-sided 95 % Student t quantiles by degrees of freedom (n - 1); 1.96 beyond
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def interval(values: List[float]) -> dict:
    """Mean and half-width of the 95 % confidence interval (t distribution)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "ci95": None, "n": 0, "values": []}
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return {"mean": round(mean, 3), "ci95": None, "n": 1, "values": vals}
    df = len(vals) - 1
    t = next((_T95[k] for k in sorted(_T95) if k >= df), 1.96)
    half = t * statistics.stdev(vals) / math.sqrt(len(vals))
    return {"mean": round(mean, 3), "ci95": round(half, 3), "n": len(vals), "values": [round(v, 3) for v in vals]}


def _rep_figures(sc: dict) -> dict:
    """changes per 10k calls, calls/s, latency percentiles of one repetition (all vCPUs)."""
    samples = sum(s["samples"] for s in sc["per_vcpu"].values())
    changes = sum(s["pcpu_changes"] for s in sc["per_vcpu"].values())
    rates = [s["calls_per_s"] for s in sc["per_vcpu"].values()]
    p50 = [s["latency_us"]["p50"] for s in sc["per_vcpu"].values() if s["latency_us"]["p50"] is not None]
    p99 = [s["latency_us"]["p99"] for s in sc["per_vcpu"].values() if s["latency_us"]["p99"] is not None]
    return {"changes_per_10k": 1e4 * changes / samples if samples else None,
            "calls_per_s": statistics.fmean(rates) if rates else None,
            "p50_us": statistics.fmean(p50) if p50 else None, "p99_us": statistics.fmean(p99) if p99 else None}


def _merge_vcpu(reps: List[dict]) -> dict:
    pcpus: Counter = Counter()
    gt = {"hvc_events": 0, "samples": 0, "agreeing": 0, "changes": 0, "changes_explained": 0, "aligned": True,
          "raced": 0, "disagreeing": 0}
    out = {"samples": 0, "changes": 0}
    for s in reps:
        out["samples"] += s["samples"]
        out["changes"] += s["pcpu_changes"]
        pcpus.update({int(k): v for k, v in s["pcpus"].items()})
        g = s.get("ground_truth") or {}
        gt["hvc_events"] += g.get("hvc_events", 0)
        gt["samples"] += g.get("samples", s["samples"])
        gt["aligned"] = gt["aligned"] and bool(g.get("aligned"))
        if g.get("aligned"):
            gt["agreeing"] += round(g["agreement"] * g["samples"])
            gt["changes"] += g["changes"] or 0
            gt["changes_explained"] += g["changes_explained"] or 0
            raced, disagreeing = map(int, g.get("disagreements_explained", "0/0").split("/"))
            gt["raced"] += raced
            gt["disagreeing"] += disagreeing
    out["pcpus"] = {str(k): v for k, v in sorted(pcpus.items())}
    agreement = round(gt["agreeing"] / gt["samples"], 6) if gt["aligned"] and gt["samples"] else None
    out["ground_truth"] = {"hvc_events": gt["hvc_events"], "agreement": agreement,
                           "changes_explained": f"{gt['changes_explained']}/{gt['changes']}" if gt["aligned"] else None,
                           "disagreements_explained": f"{gt['raced']}/{gt['disagreeing']}" if gt["aligned"] else None,
                           "aligned": gt["aligned"]}
    return out


def _verdict(reps: List[dict]) -> tuple:
    verdicts = [r.get("verdict") for r in reps]
    if "not-met" in verdicts:
        r = reps[verdicts.index("not-met")]
        return "not-met", r.get("reason")
    if "inconclusive" in verdicts:
        r = reps[verdicts.index("inconclusive")]
        return "inconclusive", r.get("reason") + (f" (repetition {r['repetition']})" if len(reps) > 1 else "")
    return "met", reps[-1].get("reason")


def collect(run_dir: Path) -> dict:
    """experiments.json from a run directory's summary.json (written there, and returned)."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{run_dir}: no readable summary.json ({e}): is this a run directory?") from None
    by_name: Dict[str, List[dict]] = {}
    for sc in summary.get("scenarios", []):
        by_name.setdefault(sc["name"], []).append(sc)
    scenarios = []
    for name, reps in by_name.items():
        first = reps[0]
        vcpus = sorted({v for r in reps for v in r["per_vcpu"]}, key=int)
        figures = [_rep_figures(r) for r in reps]
        verdict, reason = _verdict(reps)
        scenarios.append({
            "name": name, "kind": first.get("kind"), "expectation": first.get("expectation"),
            "met": verdict == "met", "verdict": verdict, "reason": reason, "repetitions": len(reps),
            "pin": first.get("pin", {}), "host_load": first.get("host_load", 0), "actions": first.get("actions", []),
            "affinity": first.get("affinity", {}), "time_sharing": first.get("time_sharing", {}),
            "hvc_calls": first.get("hvc_calls", []), "trace_overhead": first.get("trace_overhead") or {},
            "per_vcpu": {v: _merge_vcpu([r["per_vcpu"][v] for r in reps if v in r["per_vcpu"]]) for v in vcpus},
            "stats": {k: interval([f[k] for f in figures]) for k in ("changes_per_10k", "calls_per_s", "p50_us",
                                                                     "p99_us")},
            "traces": sorted({str(Path(r["l1_trace"]["file"]).parent) for r in reps if r.get("l1_trace")}),
        })
    out = {"run_dir": str(run_dir), "kernel": summary.get("kernel"), "profile": summary.get("profile"),
           "syscall_nr": summary.get("syscall_nr"), "hvc_func_id": summary.get("hvc_func_id"),
           "patches": summary.get("patches"), "l1_cpus": (summary.get("scenarios") or [{}])[0].get("l1_cpus"),
           "repeat": summary.get("repeat", 1), "verdict": summary.get("verdict"),
           "kernel_log_findings": summary.get("kernel_log_findings", []),
           "kernel_refs": summary.get("kernel_refs", {}), "timings": summary.get("timings", {}),
           "learned_call_key": summary.get("learned_call_key"),   # a patch pair's own ID (run.learn_call_key)
           "scenarios": scenarios}
    (run_dir / EXPERIMENTS_JSON).write_text(json.dumps(out, indent=1))
    return out


def render_report(run_dir: Path) -> Path:
    """experiments.json from the run directory's summary.json, then the report from it (boots
    nothing: ``kvm-harness report RUN_DIR``); returns report.html."""
    from . import report  # plots need matplotlib: loaded only when a report is drawn

    collect(run_dir)
    return report.render(run_dir)


def run_experiment(cfg: config.Config, names: Optional[List[str]] = None, repeat: int = 1,
                   out: Optional[Path] = None, progress=print) -> dict:
    """Boot once, run the scenarios (``repeat`` times each), then collect and report."""
    run_dir = Path(out) if out else run.new_run_dir(cfg, "experiment")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    try:
        run.main_job(cfg, run_dir, progress, only=names, repeat=repeat)
    finally:
        if (run_dir / "summary.json").exists() and json.loads((run_dir / "summary.json").read_text()).get("scenarios"):
            render_report(run_dir)
    return json.loads((run_dir / EXPERIMENTS_JSON).read_text())
