"""Writing results: results.json, junit.xml and evidence.txt per submission, and a
summary (summary.json, summary.csv, junit.xml) for a batch."""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List

from .grade import FAIL, SKIP, Result

# The assignment's requirements, as a TA reads them, and the checks that decide each
REQUIREMENTS = (
    ("Part B", "printVal", "printval"),
    ("Part B", "getNumExits", "getnumexits"),
    ("Part B", "display in one exit", "display_one_exit"),
    ("Part C", "open/read/write", "fs_read"),
    ("Part C", "several files", "fs_several_files"),
    ("Part C", "multi-argument passing", "multi_arg"),
)


def ta_note(r: Result) -> List[str]:
    """Per requirement: PASS/PARTIAL/FAIL/SKIP and the exits that prove it."""
    by = {c.id: c for c in r.checks}
    lines = []
    if r.review:
        lines += [f"REVIEW: {x}" for x in r.review]
    if r.build:
        lines.append(f"build: {r.build}" + (f" (-{r.deduction:g} points)" if r.deduction else ""))
    if r.handin:
        lines.append(f"HAND-IN: {r.handin}")
    for part, name, cid in REQUIREMENTS:
        c = by.get(cid)
        if c is not None:
            lines.append(f"{part} {name + ':':24} {c.status:8} {c.message}")
    if "seek" in r.extras:
        lines.append(f"Part C {'seek (optional):':24} {r.extras['seek']}")
    lines.append(f"robustness (not asked for): {r.robustness}")
    return lines


def evidence_text(r: Result) -> str:
    lines = [f"submission: {r.submission} ({r.origin})",
             f"verdict: {r.verdict}   score: {r.score}   ({r.duration:.1f} s, nonce {r.nonce})",
             ""] + ta_note(r) + [""]
    if r.error:
        lines.append(f"error: [{r.error.get('stage')}] {r.error.get('message')}")
    for name, run in r.runs.items():
        lines.append(f"run {name}: {' '.join(run['argv'])} -> {run['status']}, {run['exits']} exits, "
                     f"oracle {run['oracle']}")
    for c in r.checks:
        lines.append("")
        lines.append(f"[{c.status}] {c.id}: {c.title}" + (" (robustness)" if c.kind == "robustness" else ""))
        lines.append(f"    {c.message}")
        for e in c.evidence:
            lines.append(f"    - {e}")
        if c.records:
            lines.append("    oracle records:")
            lines.extend(f"      {x}" for x in c.records)
        if c.output:
            lines.append("    output:")
            lines.extend(f"      | {x}" for x in c.output.splitlines()[:20])
    return "\n".join(lines) + "\n"


def _suite(r: Result) -> ET.Element:
    suite = ET.Element("testsuite", name=f"kvmlab.{r.submission}", tests=str(len(r.checks)),
                       failures=str(sum(c.status == FAIL for c in r.checks)),
                       skipped=str(sum(c.status == SKIP for c in r.checks)),
                       time=f"{r.duration:.3f}")
    for c in r.checks:
        case = ET.SubElement(suite, "testcase", classname=f"kvmlab.{r.submission}", name=c.id)
        body = "\n".join([c.message] + c.evidence + c.records + ([c.output] if c.output else []))
        if c.status == FAIL:
            ET.SubElement(case, "failure", message=c.message).text = body
        elif c.status == SKIP:
            ET.SubElement(case, "skipped", message=c.message)
        else:
            ET.SubElement(case, "system-out").text = body
    return suite


def write_one(r: Result, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({**r.to_dict(), "ta_note": ta_note(r)}, indent=2) + "\n")
    ET.ElementTree(_suite(r)).write(out_dir / "junit.xml", encoding="utf-8", xml_declaration=True)
    (out_dir / "evidence.txt").write_text(evidence_text(r))


def write_summary(results: List[Result], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"submission": r.submission, "verdict": r.verdict, "score": r.score, "build": r.build or "",
             "robustness": r.robustness, "review": "; ".join(r.review), "handin": r.handin,
             **{c.id: c.status for c in r.checks}} for r in results]
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    first = ["submission", "verdict", "score", "build", "robustness", "review", "handin"]
    fields = first + sorted({k for row in rows for k in row} - set(first))
    with open(out_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    root = ET.Element("testsuites")
    for r in results:
        root.append(_suite(r))
    ET.ElementTree(root).write(out_dir / "junit.xml", encoding="utf-8", xml_declaration=True)
