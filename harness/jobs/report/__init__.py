"""The experiment report: answers the assignment's three questions (what host CPU id is
returned each time; does it stay the same or change; what KVM does that causes it) with
this run's numbers, L1's ground truth and references into the kernel tree that was used.

    render(run_dir)  ->  run_dir/report.md, run_dir/report.html (self-contained), run_dir/plots/*.png

Reads only the run directory (experiments.json, traces/): re-rendering boots nothing.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Dict, List

from ...observe import groundtruth, kernelrefs
from ...core.errors import ConfigError
from ...observe.groundtruth import CallKey
from ...observe.trace import pcpu_of, read_trace
from . import plots


def _series(run_dir: Path, sc: dict, trace_dir: str, key: CallKey) -> tuple:
    """Per vCPU (time in L1, returned pCPU) of one repetition, L1's migrations and the marks."""
    d = run_dir / trace_dir
    host = groundtruth.parse(d / "l1-trace.txt") if (d / "l1-trace.txt").exists() else groundtruth.HostTrace()
    t0 = groundtruth.first_ts(host)
    series, lat = {}, {}
    tids = {}
    summary_sc = sc
    for v in sc["per_vcpu"]:
        f = d / f"vcpu{v}.bin"
        if not f.exists():
            continue
        tr = read_trace(f)
        rets = [pcpu_of(r) for r in tr.ret]
        lat[v] = [x / 1000.0 for x in tr.lat_ns]
        tid = summary_sc.get("vcpu_threads", {}).get(v)
        times = groundtruth.call_times(host, int(tid), key) if tid else []
        if len(times) == len(rets) and rets:
            t = [ts - t0 for ts, _cpu in times]
        else:  # no one-to-one match with L1's HVCs: the guest's own clock, from its first call
            t = [(x - tr.t_ns[0]) / 1e9 for x in tr.t_ns]
        series[v] = {"t": t, "pcpu": rets}
        if tid:
            tids[int(tid)] = v
    migrations = [{"t": ts - t0, "vcpu": tids[pid], "dest": dest} for ts, _c, pid, _o, dest in host.migrations
                  if pid in tids]
    marks = [{"t": ts - t0, "do": what, "label": f"{what} " + " ".join(f"{k}={v}" for k, v in args.items()
                                                                      if k in ("vcpu", "to", "cpu"))}
             for ts, what, args in host.marks if not what.endswith("_done")]
    return series, lat, migrations, marks


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _ref(refs: Dict[str, dict], name: str) -> str:
    r = refs.get(name)
    return f"`{r['file']}:{r['line']}` (`{r['text']}`)" if r else "(not found in this tree)"


def _values_line(v: str, pv: dict) -> str:
    pc = pv["pcpus"]
    total = sum(pc.values()) or 1
    if len(pc) == 1:
        (p, n), = pc.items()
        return f"vCPU {v}: always pCPU {p} ({n} of {n} calls)"
    parts = ", ".join(f"pCPU {p} {n / total:.0%}" for p, n in sorted(pc.items(), key=lambda kv: -kv[1]))
    return f"vCPU {v}: {parts} ({total} calls, {pv['changes']} changes)"


def _answers(exp: dict) -> List[str]:
    scs = exp["scenarios"]
    refs = exp.get("kernel_refs", {})
    agree = [pv["ground_truth"]["agreement"] for sc in scs for pv in sc["per_vcpu"].values()]
    aligned = all(a is not None for a in agree)
    total_calls = sum(pv["samples"] for sc in scs for pv in sc["per_vcpu"].values())
    out = ["## 1. What is the returned host CPU ID each time?", ""]
    for sc in scs:
        out.append(f"- **{sc['name']}** ({sc['kind']}): " + "; ".join(_values_line(v, pv) for v, pv in
                                                                      sc["per_vcpu"].items()))
    if aligned and agree:
        worst = min(agree)
        raced = [tuple(map(int, pv["ground_truth"].get("disagreements_explained", "0/0").split("/")))
                 for sc in scs for pv in sc["per_vcpu"].values()]
        done, total = sum(r[0] for r in raced), sum(r[1] for r in raced)
        rest = ""
        if total:
            rest = (f" Of the {total} calls that did not, {done} are shown by L1 to have raced with the scheduler: "
                    "the thread was moved to the returned CPU between the HVC and the handler's read of "
                    "`vcpu->cpu` (the handler runs preemptible)."
                    + ("" if done == total else f" **{total - done} are not explained.**"))
        out += ["", f"L1's trace confirms the values: each call's value was compared with the CPU on which L1 "
                    f"handled that very HVC (`kvm:kvm_hvc_arm64`); they agree on {worst:.2%} of the calls of the "
                    f"worst vCPU ({total_calls} calls in all).{rest} So the value is the physical CPU that ran "
                    f"the vCPU at the moment of the hypercall."]
    else:
        out += ["", "**L1's trace does not match the calls one to one** on some vCPU (see the table): the values "
                    "cannot be confirmed as the pCPU that handled each HVC."]
    out += ["", "## 2. Does it remain the same or change?", ""]
    for sc in scs:
        st = sc["stats"]["changes_per_10k"]
        ci = f" ± {st['ci95']}" if st.get("ci95") is not None else ""
        expl = [pv["ground_truth"]["changes_explained"] for pv in sc["per_vcpu"].values()]
        out.append(f"- **{sc['name']}**: {st['mean']}{ci} changes per 10k calls; explained by L1 "
                   f"(migration or switch-in of the vCPU thread onto the new CPU between the two calls): "
                   f"{', '.join(e or 'n/a' for e in expl)}. Expectation *{sc['expectation']}*: "
                   f"**{sc['verdict']}** — {sc['reason']}")
    still = [sc["name"] for sc in scs if all(pv["changes"] == 0 for pv in sc["per_vcpu"].values())]
    moved = [sc["name"] for sc in scs if any(pv["changes"] for pv in sc["per_vcpu"].values())]
    out += ["", f"It stays the same as long as L1 keeps the vCPU's thread on one CPU ({', '.join(still) or 'no scenario'} "
                f"here), and it changes when L1 moves that thread ({', '.join(moved) or 'no scenario'} here): "
                "every change the guest saw lines up with a migration or a switch-in of the vCPU thread in L1."]
    out += ["", "## 3. What does KVM do that results in this behaviour?", "",
            "To L1 a vCPU is an ordinary thread of L2's QEMU (`CPU k/KVM`), scheduled like any other: by "
            "affinity, load balancing, wake-ups, CPU hotplug. KVM follows the thread, not the reverse:",
            "",
            f"1. When the vCPU thread enters `KVM_RUN`, `vcpu_load()` registers preempt notifiers for it: "
            f"{_ref(refs, 'notifier_register')}.",
            f"2. Every time L1's scheduler switches the thread in — on whatever CPU it picked — the notifier "
            f"`kvm_sched_in()` calls `kvm_arch_vcpu_load(vcpu, cpu)`: {_ref(refs, 'sched_in')}; when it is "
            f"switched out, `kvm_arch_vcpu_put()`: {_ref(refs, 'sched_out')}.",
            f"3. `kvm_arch_vcpu_load()` records that CPU: {_ref(refs, 'vcpu_load')}, and loads the vCPU's "
            "state (timers, GIC, stage-2 context) on it.",
            f"4. The guest's `hvc` exits to the host; the run loop re-enables preemption "
            f"{_ref(refs, 'run_preempt_enable')} before it handles the exit {_ref(refs, 'handle_exit')}, so "
            "the thread may move even here.",
            f"5. `handle_hvc()` {_ref(refs, 'handle_hvc')} fires the `kvm_hvc_arm64` tracepoint "
            f"{_ref(refs, 'hvc_tracepoint')} (what L1's tracer records) and calls `{kernelrefs.handler_name(refs)}()` "
            f"{_ref(refs, 'hvc_call_handler')}.",
            f"6. The host patch answers with {_ref(refs, 'patch_answer')}: the CPU recorded at the last "
            "sched-in, i.e. the physical CPU running the vCPU now. Reading `smp_processor_id()` there would "
            "be a preemption bug (the code is preemptible), which the harness's CONFIG_DEBUG_PREEMPT kernels "
            "report.",
            "",
            "So the ID stays the same while the thread stays put (pinned, idle host), and changes exactly when "
            "L1 migrates the thread or switches it in on another CPU (load, re-pinning, a CPU going offline)."]
    return out


def _table(exp: dict) -> List[str]:
    rows = ["| scenario | kind | vCPU | calls | pCPUs | changes | L1 HVCs | agreement | explained | expectation |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for sc in exp["scenarios"]:
        for v, pv in sc["per_vcpu"].items():
            gt = pv["ground_truth"]
            pcs = ", ".join(f"{p}×{n}" for p, n in pv["pcpus"].items())
            ag = f"{gt['agreement']:.2%}" if gt["agreement"] is not None else "not aligned"
            rows.append(f"| {sc['name']} | {sc['kind']} | {v} | {pv['samples']} | {pcs} | {pv['changes']} | "
                        f"{gt['hvc_events']} | {ag} | {gt['changes_explained'] or 'n/a'} | {sc['verdict']} |")
    return rows


def render(run_dir: Path) -> Path:
    """Write plots, report.md and report.html for a run directory from its experiments.json
    (and traces/); returns report.html."""
    run_dir = Path(run_dir)
    try:  # written by experiment.collect(), the stage before this one
        exp = json.loads((run_dir / "experiments.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{run_dir}: no readable experiments.json ({e}): collect the run first "
                          "(kvm-harness report RUN_DIR does both)") from None
    ncpu = exp.get("l1_cpus") or 4
    fid = exp.get("hvc_func_id")
    key = CallKey(func_id=int(fid, 16) if fid else None)
    plot_dir = run_dir / "plots"
    figures: List[tuple] = []
    for sc in exp["scenarios"]:
        summary_sc = _summary_scenario(run_dir, sc["name"])
        if not sc.get("traces"):
            continue
        series, lat, migrations, marks = _series(run_dir, summary_sc, sc["traces"][0], key)
        name = sc["name"]
        figures.append((name, "timeline", plots.timeline(
            series, marks, migrations, ncpu, f"{name} ({sc['kind']}): returned pCPU over time"
            + (" — repetition 0" if sc["repetitions"] > 1 else ""), plot_dir / f"{name}-timeline.png")))
        figures.append((name, "occupancy", plots.occupancy(
            {v: pv["pcpus"] for v, pv in sc["per_vcpu"].items()}, ncpu, f"{name}: pCPU occupancy",
            plot_dir / f"{name}-occupancy.png")))
        figures.append((name, "latency", plots.latency(lat, f"{name}: latency", plot_dir / f"{name}-latency.png")))
    summary_png = plots.changes_summary(
        [{"name": sc["name"], "verdict": sc["verdict"], **sc["stats"]["changes_per_10k"]} for sc in exp["scenarios"]],
        plot_dir / "summary-changes.png")

    k = exp.get("kernel") or {}
    head = ["# host_cpuid: does the physical CPU change, and why?", "",
            f"Kernel: Linux {k.get('version')} ({k.get('origin')}), profile {exp.get('profile')}, host_cpuid = "
            f"syscall {exp.get('syscall_nr')}, function ID {exp.get('hvc_func_id')}; host patch: "
            f"{(exp.get('patches') or {}).get('host')}; guest patch: {(exp.get('patches') or {}).get('guest')}; "
            f"{ncpu} L1 CPUs; {exp.get('repeat', 1)} repetition(s) per scenario. Run verdict: **{exp.get('verdict')}**.",
            ""]
    findings = exp.get("kernel_log_findings") or []
    if findings:
        head += ["**The kernels logged problems:** " + "; ".join(f"{f['where']}: `{f['line']}`" for f in findings[:3]), ""]
    body = _answers(exp) + ["", "## The evidence", ""] + _table(exp)
    md = head + body + ["", "![changes per scenario](plots/summary-changes.png)", ""]
    for name, kind, path in figures:
        md.append(f"![{name} {kind}](plots/{path.name})")
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    html_doc = _html(head + body, [("summary", "changes", summary_png)] + figures)
    (run_dir / "report.html").write_text(html_doc)
    return run_dir / "report.html"


def _summary_scenario(run_dir: Path, name: str) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return next(sc for sc in summary["scenarios"] if sc["name"] == name)


def _inline(text: str) -> str:
    """`code` first (its text is taken as it is), then **bold** and *italic* outside it."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        t = html.escape(part)
        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        out.append(re.sub(r"(?<![\w*])\*(\S.*?\S|\S)\*(?![\w*])", r"<i>\1</i>", t))
    return "".join(out)


def _html(lines: List[str], figures: List[tuple]) -> str:
    """A small markdown subset (headings, lists, tables, bold, code) to self-contained HTML."""
    out, in_list, table = [], None, []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            out.append("<table>")
            for i, r in enumerate(rows):
                cells = [c.strip() for c in r.strip("|").split("|")]
                tag = "th" if i == 0 else "td"
                cls = ""
                if i and cells[-1] in ("met", "not-met", "inconclusive"):
                    cls = f' class="{cells[-1]}"'
                out.append(f"<tr{cls}>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        m = re.match(r"^(- |\d+\. )(.*)", line)
        if m:
            tag = "ul" if m.group(1) == "- " else "ol"
            if in_list != tag:
                if in_list:
                    out.append(f"</{in_list}>")
                out.append(f"<{tag}>")
                in_list = tag
            out.append(f"<li>{_inline(m.group(2))}</li>")
            continue
        if in_list and line.strip() == "":
            out.append(f"</{in_list}>")
            in_list = None
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush_table()
    if in_list:
        out.append(f"</{in_list}>")
    out.append("<h2>Plots</h2>")
    current = None
    for name, kind, path in figures:
        if name != current:
            out.append(f"<h3>{html.escape(name)}</h3>")
            current = name
        out.append(f'<img alt="{html.escape(name)} {kind}" src="{_img(path)}">')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#eee}tr.met td:last-child{background:#d9f2d9}tr.not-met td:last-child{background:#f8d0d0}"
             "tr.inconclusive td:last-child{background:#fbe7c6}code{background:#f4f4f4;padding:0 3px}"
             "img{max-width:100%;display:block;margin:0.6em 0}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>host_cpuid experiment</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
