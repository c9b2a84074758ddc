"""Where, in the kernel tree that was used, KVM does what makes the host CPU id change:
file and line of each piece of the mechanism, found in that tree (5.4 keeps the arm
code in virt/kvm/arm/, 6.1 in arch/arm64/kvm/), so a report quotes the tree it ran.

    refs = find_refs(tree_root, host_patch_text)   # stored in summary.json, read by the report
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ARM = ("arch/arm64/kvm/arm.c", "virt/kvm/arm/arm.c")
# name: (what it shows, candidate files, pattern, anchor: the pattern is searched after its
# first match, or before it when the anchor starts with '<')
REFS = {
    "vcpu_load": ("kvm_arch_vcpu_load() records the CPU the vCPU thread now runs on", ARM,
                  r"vcpu->cpu\s*=\s*cpu\s*;", r"void kvm_arch_vcpu_load\("),
    "sched_in": ("the preempt notifier's sched-in hook calls kvm_arch_vcpu_load() on the new CPU",
                 ("virt/kvm/kvm_main.c",), r"kvm_arch_vcpu_load\(vcpu,\s*cpu\)", r"static void kvm_sched_in\("),
    "sched_out": ("the sched-out hook calls kvm_arch_vcpu_put() when the thread is preempted",
                  ("virt/kvm/kvm_main.c",), r"kvm_arch_vcpu_put\(vcpu\)", r"static void kvm_sched_out\("),
    "notifier_register": ("vcpu_load() registers the notifiers for the thread that runs the vCPU",
                          ("virt/kvm/kvm_main.c",), r"preempt_notifier_register\(", r"void vcpu_load\("),
    # searched backwards from the anchor: the last preempt_enable() before handle_exit()
    "run_preempt_enable": ("the run loop re-enables preemption before it handles the exit",
                           ARM, r"preempt_enable\(\)\s*;", r"<ret\s*=\s*handle_exit\(vcpu"),
    "handle_exit": ("handle_exit() dispatches the exit (preemptible: the thread can move here)",
                    ARM, r"ret\s*=\s*handle_exit\(vcpu", None),
    "handle_hvc": ("handle_hvc() takes the guest's HVC", ("arch/arm64/kvm/handle_exit.c",),
                   r"static int handle_hvc\(", None),
    "hvc_tracepoint": ("... fires kvm_hvc_arm64 (PC, x0, immediate): the event L1's tracer records",
                       ("arch/arm64/kvm/handle_exit.c",), r"trace_kvm_hvc_arm64\(", r"static int handle_hvc\("),
    # kvm_hvc_call_handler() up to 6.3; renamed kvm_smccc_call_handler() in 6.4 (SMCCC filter)
    "hvc_call_handler": ("the SMCCC handler answers SMCCC/vendor hypercalls",
                         ("arch/arm64/kvm/hypercalls.c", "virt/kvm/arm/psci.c"),
                         r"^int kvm_(?:hvc|smccc)_call_handler\(", None),
}


def _find(root: Path, files: Sequence[str], pattern: str, anchor: Optional[str]) -> Optional[dict]:
    for rel in files:
        path = root / rel
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        start, order = 0, None
        if anchor:
            backwards = anchor.startswith("<")
            anchor = anchor.lstrip("<")
            start = next((i for i, line in enumerate(lines) if re.search(anchor, line)), None)
            if start is None:
                continue
            if backwards:
                order = range(start, -1, -1)
        for i in order or range(start, len(lines)):
            if re.search(pattern, lines[i]):
                return {"file": rel, "line": i + 1, "text": lines[i].strip()}
    return None


def handler_name(refs: Dict[str, dict]) -> str:
    """The SMCCC handler's name in the tree that was used (it changed in 6.4)."""
    m = re.search(r"(kvm_\w+_call_handler)\(", refs.get("hvc_call_handler", {}).get("text", ""))
    return m.group(1) if m else "kvm_hvc_call_handler"


def patch_answer(patch_text: str) -> Optional[dict]:
    """Where the host patch answers the call, and with what (the added line that returns
    or assigns the value)."""
    file, line_no = None, 0
    for raw in patch_text.splitlines():
        if raw.startswith("+++ "):
            file = re.sub(r"^(b/)", "", raw[4:].split("\t")[0].strip())
            continue
        m = re.match(r"^@@ -\d+(?:,\d+)? \+(\d+)", raw)
        if m:
            line_no = int(m.group(1)) - 1
            continue
        if raw.startswith("-") or file is None:
            continue
        line_no += 1
        body = raw[1:].strip()
        if body.startswith(("*", "/*", "//")):
            continue
        if raw.startswith("+") and re.search(r"vcpu->cpu|smp_processor_id|raw_smp_processor_id|get_cpu\(|vcpu_id",
                                             raw):
            return {"file": file, "line": line_no, "text": raw[1:].strip()}
    return None


def find_refs(root: Path, host_patch_text: str = "") -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for name, (what, files, pattern, anchor) in REFS.items():
        hit = _find(Path(root), files, pattern, anchor)
        if hit:
            out[name] = {"what": what, **hit}
    ans = patch_answer(host_patch_text) if host_patch_text else None
    if ans:
        out["patch_answer"] = {"what": "the host patch answers host_cpuid with this value", **ans}
    return out


def missing(refs: Dict[str, dict]) -> List[str]:
    return [n for n in REFS if n not in refs]
