"""PNG plots of an experiment (matplotlib, headless Agg backend).

Per scenario: a timeline (L1 time -> returned pCPU, one series per vCPU; L1's
migrations of the vCPU threads and the harness's actions marked), the pCPU occupancy
per vCPU, and the latency distribution.  One summary chart: pCPU changes per 10k calls
per scenario, with 95 % intervals over repetitions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
ACTION_COLORS = {"repin": "#6a3d9a", "offline": "#b15928", "online": "#33a02c"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline(series: Dict[str, dict], marks: List[dict], migrations: List[dict], ncpu: int, title: str,
             path: Path) -> Path:
    """series: vCPU -> {"t": [s], "pcpu": [id]}; marks: {"t", "label", "do"}; migrations:
    {"t", "vcpu", "dest"}."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    n = max(1, len(series))
    for i, (v, s) in enumerate(sorted(series.items(), key=lambda kv: int(kv[0]))):
        offset = (i - (n - 1) / 2) * 0.12  # vCPUs on one pCPU stay distinguishable
        ax.step(s["t"], [p + offset if p is not None else None for p in s["pcpu"]], where="post",
                color=COLORS[i % len(COLORS)], lw=1.4, label=f"vCPU {v}")
    for m in migrations:
        i = sorted(series, key=int).index(m["vcpu"]) if m["vcpu"] in series else 0
        ax.plot([m["t"]], [m["dest"]], marker="v", ms=5, color=COLORS[i % len(COLORS)], alpha=0.6, ls="none")
    seen = set()
    for m in marks:
        color = ACTION_COLORS.get(m["do"], "gray")
        ax.axvline(m["t"], color=color, ls="--", lw=1)
        ax.annotate(m["label"], (m["t"], ncpu - 0.5), rotation=90, va="top", ha="right", fontsize=7, color=color)
        seen.add(m["do"])
    if migrations:
        ax.plot([], [], marker="v", ls="none", color="gray", label="L1 migration (dest CPU)")
    ax.set_yticks(range(ncpu))
    ax.set_ylim(-0.6, ncpu - 0.4)
    ax.set_xlabel("time in L1 (s, from the first traced event)")
    ax.set_ylabel("returned pCPU")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=min(4, n + 1))
    return _save(fig, path)


def occupancy(per_vcpu: Dict[str, Dict[str, int]], ncpu: int, title: str, path: Path) -> Path:
    """per_vcpu: vCPU -> {pCPU: calls}; stacked horizontal bars of the share per pCPU."""
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.55 * max(1, len(per_vcpu))))
    labels = sorted(per_vcpu, key=int)
    for y, v in enumerate(labels):
        counts = {int(k): c for k, c in per_vcpu[v].items()}
        total = sum(counts.values()) or 1
        left = 0.0
        for p in range(ncpu):
            share = counts.get(p, 0) / total
            if share:
                ax.barh(y, share, left=left, color=COLORS[p % len(COLORS)], edgecolor="white")
                if share > 0.06:
                    ax.text(left + share / 2, y, f"pCPU {p}\n{share:.0%}", ha="center", va="center", fontsize=7,
                            color="white")
                left += share
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([f"vCPU {v}" for v in labels])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of calls per returned pCPU")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def latency(per_vcpu: Dict[str, List[float]], title: str, path: Path) -> Path:
    """per_vcpu: vCPU -> latencies in microseconds."""
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, (v, lat) in enumerate(sorted(per_vcpu.items(), key=lambda kv: int(kv[0]))):
        if lat:
            lo, hi = max(min(lat), 1.0), max(lat)
            bins = [lo * (hi / lo) ** (k / 60) for k in range(61)] if hi > lo else 10
            ax.hist(lat, bins=bins, histtype="step", lw=1.4, color=COLORS[i % len(COLORS)], label=f"vCPU {v}")
    ax.set_xscale("log")
    ax.set_xlabel("host_cpuid round trip (µs, log scale)")
    ax.set_ylabel("calls")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def changes_summary(rows: List[dict], path: Path) -> Path:
    """rows: {"name", "mean", "ci95", "verdict"}: bars with 95 % intervals."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["name"] for r in rows]
    means = [r["mean"] or 0 for r in rows]
    errs = [r["ci95"] or 0 for r in rows]
    colors = ["#2ca02c" if r["verdict"] == "met" else "#ff7f0e" if r["verdict"] == "inconclusive" else "#d62728"
              for r in rows]
    ax.bar(names, means, yerr=errs, capsize=4, color=colors)
    for x, m in enumerate(means):
        ax.text(x, m, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("pCPU changes per 10k calls")
    ax.set_title("pCPU changes per scenario (bars: 95 % interval over repetitions; green: expectation met)",
                 fontsize=9)
    return _save(fig, path)
