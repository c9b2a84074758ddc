"""The words a TA reads at a glance in grades.csv (and index.html, grade.md): what a
finding of the checks means, not the id of a failing check.  Every such text is made
here, from the results; a new kind of flag is one entry in ``WORDS`` and, when it needs
more than the finding, one line in ``words()``."""
from __future__ import annotations

import re
from typing import List, Optional

# finding -> the words.  A check carries its finding (checks.Check.finding); the rubric
# may cap a part for a serious one (configs/hw2-rubric.yaml: caps)
WORDS = {
    "no-hypercall": "no hypercall (answers like an unpatched kernel)",
    "no-syscall": "no syscall (-ENOSYS, as on an unpatched kernel)",
    "empty-kvm": "no hypercall (kvm.patch is empty)",
    "empty-vm": "no syscall (vm.patch is empty)",
    "preempt-leak": "preemption left disabled",
    "smp-preemptible": "preemption bug (smp_processor_id in preemptible code)",
    "sleep-in-atomic": "sleeps in atomic context",
    "oops": "kernel crash (Oops)",
    "kernel-warning": "kernel warnings",
    "vcpu-id": "answers the vCPU id, not the pCPU",
    "constant": "answers one constant, not the pCPU",
}
SERIOUS = ("preempt-leak", "sleep-in-atomic", "oops")   # may cap a part (rubric caps)


def bug_kind(lines: List[str]) -> Optional[str]:
    """What L1's or L2's BUG:/WARNING:/Oops lines are, as a TA names it."""
    text = " ".join(lines)
    if not text:
        return None
    if re.search(r"scheduling while atomic|exited with preempt_count|preempt_count: [1-9]|preempt count leak|"
                 r"at preempt_count_add|PREEMPT_MASK", text):   # 6.1: the count nears its 8-bit limit
        return "preempt-leak"
    if re.search(r"smp_processor_id\(\) in preemptible|debug_smp_processor_id", text):
        return "smp-preemptible"
    if "sleeping function called from invalid context" in text:
        return "sleep-in-atomic"
    if re.search(r"Internal error: |Unable to handle kernel |Kernel panic", text):
        return "oops"
    return "kernel-warning"


def words(results: dict) -> List[str]:
    """The flags of one graded submission, most telling first, each said once."""
    out: List[str] = []
    for c in results.get("checks", []) or []:
        f = c.get("finding")
        if not f or f not in WORDS:
            continue
        where = " in L1" if c["id"].startswith("hc.") and f in SERIOUS + ("smp-preemptible",) else \
            " in L2" if c["id"].startswith("sc.") and f in SERIOUS + ("smp-preemptible",) else ""
        w = WORDS[f] + where
        if w not in out:
            out.append(w)
    for cat, s in (results.get("scores") or {}).items():
        cap = (s or {}).get("capped")
        if cap:
            out.append(f"{cat} capped at {cap['at']:g} ({WORDS.get(cap['by'], cap['by'])})")
    return out
