"""What people read: per submission results.json, junit.xml and grade.md; per batch
grades.csv (submission,hypercall,syscall,report,total,flags) and index.html (a table
linking every submission's evidence and report thumbnails, and the similar pairs)."""
from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Dict, List
from xml.etree import ElementTree as ET

from . import flags as flagwords
from .rubric import Rubric

CSV_COLUMNS = ["submission", "hypercall", "syscall", "report", "total", "flags"]


def _fmt(x) -> str:
    return "" if x is None else (f"{x:g}" if isinstance(x, float) else str(x))


def row(results: dict) -> Dict[str, str]:
    """One grades.csv row.  The report column is blank until a human grades it (its
    automatic checks carry no points); an infra error leaves every score blank."""
    sc = results.get("scores") or {}
    flags = list(results.get("flags") or []) + list(results.get("problems") or [])
    if results.get("status") != "graded":
        return {"submission": results["id"], "hypercall": "", "syscall": "", "report": "", "total": "",
                "flags": "; ".join([f"NOT GRADED ({results.get('status')}): {results.get('error', '')}"] + flags)}
    if results.get("mode") == "static":
        return {"submission": results["id"], "hypercall": "", "syscall": "", "report": "", "total": "",
                "flags": "; ".join(["static only: not built or booted"] + flagwords.words(results) + flags)}
    withheld = [c for cat in ("hypercall", "syscall") for c in (sc.get(cat) or {}).get("inconclusive", [])]
    if withheld:
        pts = sum((sc.get(cat) or {}).get("inconclusive_points", 0) for cat in ("hypercall", "syscall"))
        flags.insert(0, f"INCONCLUSIVE (the machine's, not the student's): {', '.join(withheld)} "
                        f"({_fmt(float(pts))} points withheld); rerun the batch to regrade")
    flags[:0] = flagwords.words(results)
    failed = [c["id"] for c in results.get("checks", []) if c["status"] == "FAIL" and c.get("category")]
    if failed:
        flags.append("failed: " + ", ".join(failed))
    auto_report = (sc.get("report") or {}).get("points", 0.0)
    total = sum((sc.get(c) or {}).get("points", 0.0) for c in ("hypercall", "syscall")) + auto_report
    return {"submission": results["id"], "hypercall": _fmt((sc.get("hypercall") or {}).get("points")),
            "syscall": _fmt((sc.get("syscall") or {}).get("points")),
            "report": "" if auto_report == 0 else _fmt(auto_report), "total": _fmt(total),
            "flags": "; ".join(flags)}


def junit(results: dict) -> str:
    suite = ET.Element("testsuite", name=f"hw2.{results['id']}")
    n = fails = skips = 0
    for c in results.get("checks", []):
        n += 1
        case = ET.SubElement(suite, "testcase", classname=f"hw2.{results['id']}.{c['category'] or 'info'}",
                             name=f"{c['id']} {c['title']}")
        body = c["reason"] + ("\n" + "\n".join(c["evidence"]) if c["evidence"] else "")
        if c["status"] == "FAIL":
            fails += 1
            ET.SubElement(case, "failure", message=c["reason"][:500]).text = body
        elif c["status"] == "SKIP":
            skips += 1
            ET.SubElement(case, "skipped", message=c["reason"][:500])
        else:
            ET.SubElement(case, "system-out").text = body
    suite.set("tests", str(n))
    suite.set("failures", str(fails))
    suite.set("skipped", str(skips))
    return ET.tostring(suite, encoding="unicode")


def markdown(results: dict, rubric: Rubric) -> str:
    r = results
    out = [f"# {r['id']}: hw2 grade", ""]
    sc = r.get("scores") or {}
    for cat in ("hypercall", "syscall", "report"):
        s = sc.get(cat) or {}
        if s.get("manual_reserved") and s.get("manual_reserved") >= (s.get("max") or 0):
            out.append(f"- **{cat}**: to be graded by a human (/ {_fmt(s.get('max'))})")
            continue
        manual = f" (+ {s.get('manual_reserved'):g} graded by a human)" if s.get("manual_reserved") else ""
        withheld = (f"; {_fmt(float(s['inconclusive_points']))} withheld, inconclusive: {', '.join(s['inconclusive'])}"
                    if s.get("inconclusive") else "")
        why = f": {s['reason']}" if s.get("reason") else ""
        out.append(f"- **{cat}**: {_fmt(s.get('points'))} / {_fmt(s.get('max'))}{manual}{withheld}{why}")
    out += ["", f"Profile {r.get('profile')} (syscall {r.get('syscall_nr')}); learned: "
            + (json.dumps(r.get("learned")) if r.get("learned") else "nothing (no pairing ran)"), ""]
    if r.get("flags") or r.get("problems"):
        out.append("## Flags and problems")
        out += [f"- {f}" for f in (r.get("problems") or []) + (r.get("flags") or [])] + [""]
    for f in r.get("review") or []:  # harness/grade/machinery.py
        out += [f"## For a human to read: {f['member']} {f['why']} ({f['file']})", "", "```diff", f["hunk"], "```", ""]
    out += ["## Checks", "", "| check | status | points | reason |", "|---|---|---|---|"]
    for c in r.get("checks", []):
        gated = " (0: the part does not exist)" if c.get("gated") else ""
        out.append(f"| {c['id']} | {c['status']} | {_fmt(c['points'])}/{_fmt(c['max'])}{gated} | "
                   f"{c['reason'].replace('|', '/')[:300]} |")
    out.append("")
    for c in r.get("checks", []):
        if c["evidence"]:
            out += [f"### {c['id']} evidence", "```", *[e[:2000] for e in c["evidence"]], "```", ""]
    ev = r.get("evidence") or {}
    out.append("## Static evidence (read from the patches, for the human)")
    for role in ("host", "guest"):
        e = ev.get(role) or {}
        p = (r.get("patches") or {}).get(role) or {}
        out.append(f"### {'kvm.patch' if role == 'host' else 'vm.patch'}")
        out.append(f"- files: {', '.join(p.get('files') or []) or '-'}")
        out.append(f"- functions: {', '.join(p.get('functions') or []) or '-'}")
        out.append(f"- applies: {p.get('apply') or '-'} {p.get('apply_detail') or ''}")
        for s in e.get("sites", [])[:5]:
            out.append(f"- handled in {s['file']}:{s['function']}: `{s['line']}`")
        for s in e.get("returns", [])[:5]:
            out.append(f"- answers **{s['value']}** ({s['function']}: `{s['line']}`)")
        for s in e.get("issues", [])[:5]:
            out.append(f"- issues {s['how']} in {s['function']}: `{s['line']}`")
        if e.get("syscall"):
            out.append(f"- syscall: {json.dumps(e['syscall'])}")
        for k in ("func_ids", "imms", "hvc_imms"):
            if e.get(k):
                out.append(f"- {k}: {', '.join(hex(x) for x in e[k])}")
        out += [f"- note: {n}" for n in e.get("notes", [])]
    t = r.get("timings") or {}
    if t:
        out += ["", "## Times", "```", json.dumps(t, indent=1), "```"]
    return "\n".join(out) + "\n"


def write_submission(sdir: Path, results: dict, rubric: Rubric) -> None:
    (sdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (sdir / "junit.xml").write_text(junit(results))
    (sdir / "grade.md").write_text(markdown(results, rubric))


def write_csv(path: Path, all_results: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in sorted(all_results, key=lambda r: r["id"]):
            w.writerow(row(r))


def _status_cell(results: dict, cat: str) -> str:
    cells = []
    for c in results.get("checks", []):
        if c["category"] == cat:
            cls = "i" if c.get("inconclusive") else {"PASS": "p", "FAIL": "f", "SKIP": "s"}[c["status"]]
            tip = html.escape(f"{c['id']}: {c['status']} - {c['reason']}", quote=True)
            cells.append(f'<span class="{cls}" title="{tip}">{c["id"].split(".", 1)[1]}</span>')
    why = [f'<li>{html.escape(c["id"].split(".", 1)[1])}: {html.escape(c["reason"][:180])}</li>'
           for c in results.get("checks", []) if c["category"] == cat and (c["status"] == "FAIL" or c.get("inconclusive"))]
    part = ((results.get("scores") or {}).get(cat) or {}).get("reason")
    if part:
        why.insert(0, f"<li><b>{html.escape(part[:200])}</b></li>")
    return " ".join(cells) + (f'<ul class=why>{"".join(why)}</ul>' if why else "")


def write_index(out: Path, all_results: List[dict], similar: List[dict]) -> None:
    rows = []
    for r in sorted(all_results, key=lambda r: r["id"]):
        rw = row(r)
        base = f"submissions/{r['id']}"
        thumbs = "".join(f'<a href="{base}/{t}"><img src="{base}/{t}" height="80"></a>'
                         for t in (r.get("report") or {}).get("thumbnails", [])[:3])
        rep = r.get("report") or {}
        rep_txt = f"{rep.get('pages')} p." if rep.get("valid") else html.escape(rep.get("why") or "")
        evidence = " ".join(f'<a href="{base}/{n}">{n}</a>' for n in ("grade.md", "results.json", "junit.xml"))
        if (out / base / "pairings").is_dir():
            evidence += " " + " ".join(f'<a href="{base}/pairings/{p.name}/">{p.name}</a>'
                                       for p in sorted((out / base / "pairings").iterdir()) if p.is_dir())
        flags = html.escape(rw["flags"]) + "".join(
            f"<details><summary>{html.escape(f['member'])}: {html.escape(f['file'])}</summary>"
            f"<pre>{html.escape(f['hunk'])}</pre></details>" for f in r.get("review") or [])
        rows.append(f"<tr><td><b>{html.escape(r['id'])}</b></td><td class=n>{rw['hypercall']}</td>"
                    f"<td>{_status_cell(r, 'hypercall')}</td><td class=n>{rw['syscall']}</td>"
                    f"<td>{_status_cell(r, 'syscall')}</td><td>{rep_txt}<br>{thumbs}</td>"
                    f"<td class=n>{rw['total']}</td><td class=fl>{flags}</td><td>{evidence}</td></tr>")
    sim_rows = "".join(
        f"<tr><td>{html.escape(s['a'])}</td><td>{html.escape(s['b'])}</td><td class=n>{s['score']:.2f}</td>"
        f"<td><a href=\"{html.escape(s['view'])}\">side by side</a></td></tr>" for s in similar)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hw2 grades</title><style>
body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}
th{{background:#eee}} .n{{text-align:right;font-weight:bold}} .p{{background:#c8f0c8}} .f{{background:#f5b5b5}} .s{{background:#e0e0e0}} .i{{background:#ffe08a}}
span{{padding:1px 3px;margin:1px;border-radius:3px;font-size:85%;display:inline-block}} .fl{{font-size:80%;max-width:28em}}
.why{{font-size:75%;margin:3px 0 0 0;padding-left:1.2em;max-width:30em;color:#700}}
</style></head><body><h1>hw2 (host_cpuid) grades: {len(all_results)} submissions</h1>
<p>Report points are graded by a human (thumbnails link to the pages). Cells: green PASS, red FAIL, grey SKIP
(a prerequisite failed), amber SKIP that was the machine's doing (points withheld, rerun to regrade); hover for the reason. <a href="grades.csv">grades.csv</a></p>
<table><tr><th>submission</th><th>hypercall</th><th>checks</th><th>syscall</th><th>checks</th><th>report</th>
<th>total (auto)</th><th>flags</th><th>evidence</th></tr>{''.join(rows)}</table>
<h2>Similar pairs (added lines)</h2>
{'<table><tr><th>a</th><th>b</th><th>similarity</th><th></th></tr>' + sim_rows + '</table>' if similar else '<p>none above the threshold</p>'}
</body></html>"""
    (out / "index.html").write_text(page)


def relpath(p: Path, start: Path) -> str:
    return os.path.relpath(p, start)
