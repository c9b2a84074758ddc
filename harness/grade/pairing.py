"""One pairing: a host patch and a guest patch built (sandboxed), booted and measured
with the harness's own main job, and the outcome sorted into what it means for grading.

    student kvm.patch x grading guest   -> grades the hypercall
    grading host      x student vm.patch -> grades the syscall
    student kvm.patch x student vm.patch -> what the student saw (informational)

The grading patches (images/profiles/<v>/grading/) are the reference patches plus
command-line knobs: the guest issues ``host_cpuid.func=`` / ``host_cpuid.imm=``; the
host answers ``host_cpuid_func=`` / ``host_cpuid_imm=`` and puts ``host_cpuid_hi=``
in the answer's upper half.  Without them they behave as the reference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..core import config as cfgmod
from ..jobs import run
from ..core.errors import INFRA, HarnessError
from ..build.profiles import PROFILES
from ..observe import groundtruth
from ..observe.trace import read_trace

Progress = Callable[[str], None]
HI_TAG = 0x5A5A          # the grading host's upper 32 bits in pairing "syscall"


VERDICT_TEXT = {
    "ok": "every call answered the pCPU: pinned vCPUs their pCPU, every value the CPU that handled the HVC in L1",
    "kernel-bug": "a kernel logged BUG:/WARNING:/Oops (see kernel_log_findings)",
    "wrong-pcpu": "the values are not the pCPU running the vCPU (a pinned vCPU answered another pCPU, or the values "
                  "disagree with the CPU that handled the HVC in L1)",
    "hvc-mismatch": "L1's trace does not show exactly one hypercall with the learned call ID per call",
}


@dataclass
class CallId:
    """What a guest issues: x0 (None = any) and the HVC immediate (None = any)."""
    func: Optional[int]
    imm: Optional[int]
    source: str               # "trace (pairing e2e)", "vm.patch", "kvm.patch", "reference"

    def host_args(self) -> str:
        f = "any" if self.func is None else hex(self.func)
        i = "any" if self.imm is None else str(self.imm)
        return f"host_cpuid_func={f} host_cpuid_imm={i}"

    def guest_args(self) -> str:
        return f"host_cpuid.func={hex(self.func or 0)} host_cpuid.imm={self.imm or 0}"

    def to_dict(self) -> dict:
        return {"func_id": None if self.func is None else hex(self.func), "imm": self.imm, "source": self.source}


@dataclass
class Pairing:
    name: str                 # hypercall | syscall | e2e
    host: str                 # patch path or "grading"
    guest: str
    student_roles: Tuple[str, ...]
    l1_append: str = ""
    l2_append: str = ""
    # which HVCs L1's tracer counts as the calls (None: learned after the run, from the trace)
    trace_key: Optional[CallId] = None


@dataclass
class PairingResult:
    name: str
    status: str               # ran | patch-failed | build-failed | boot-failed | run-failed | infra | not-run
    run_dir: Optional[str] = None
    failed_role: Optional[str] = None
    why: str = ""
    error: Optional[dict] = None
    summary: dict = field(default_factory=dict)
    rets: Dict[str, Dict[str, List[int]]] = field(default_factory=dict)   # scenario -> vcpu -> raw x0s
    call_id: Optional[dict] = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("rets")
        d["summary"] = {k: v for k, v in self.summary.items() if k not in ("scenarios",)}
        d["scenarios"] = self.summary.get("scenarios", [])
        return d


def grading_patch(profile_name: str, role: str) -> Path:
    return PROFILES / profile_name / "grading" / ("kvm.patch" if role == "host" else "vm.patch")


def pairing_config(base: cfgmod.Config, p: Pairing, profile_name: str) -> cfgmod.Config:
    host = str(grading_patch(profile_name, "host")) if p.host == "grading" else p.host
    guest = str(grading_patch(profile_name, "guest")) if p.guest == "grading" else p.guest
    sets = [f"patches.host={json.dumps(host)}", f"patches.guest={json.dumps(guest)}",
            f"l1.append={json.dumps((base.l1.append + ' ' + p.l1_append).strip())}",
            f"l2.append={json.dumps((base.l2.append + ' ' + p.l2_append).strip())}"]
    if p.trace_key is not None:
        sets += [f"trace.func_id={'null' if p.trace_key.func is None else p.trace_key.func}",
                 f"trace.imm={'null' if p.trace_key.imm is None else p.trace_key.imm}"]
    return cfgmod.override(base, sets)


def recheck(r: PairingResult, cid: CallId) -> None:
    """The pairing's ground truth again, from its stored L1 traces, for the call ID learned
    from them (a student's own function ID or immediate)."""
    if r.run_dir and r.summary.get("scenarios"):
        key = groundtruth.CallKey(func_id=cid.func, imm=cid.imm)
        # the run judged its trace with the reference's ID: its verdict changes with the key
        before = r.summary.get("verdict")
        run.recheck(Path(r.run_dir), r.summary, key)
        r.summary["verdict_text"] = VERDICT_TEXT.get(r.summary["verdict"], r.summary["verdict"])
        r.summary["recheck"] = {"call_key": key.describe(), "source": cid.source, "verdict_before": before}
        (Path(r.run_dir) / "summary.json").write_text(json.dumps(r.summary, indent=1, default=str))


def _role_of(e: HarnessError, p: Pairing) -> Optional[str]:
    text = f"{e.stage} {e.message}"
    for role in ("host", "guest"):
        if f"({role})" in text or f"{role} kernel" in text:
            return role
    if "kvm.patch" in text:
        return "host"
    if "vm.patch" in text:
        return "guest"
    return p.student_roles[0] if len(p.student_roles) == 1 else None


def classify(e: HarnessError, p: Pairing) -> Tuple[str, Optional[str]]:
    """(status, failed role) for a failure of the main job."""
    if e.kind == INFRA:
        return "infra", None
    stage = e.stage or ""
    if stage.startswith("patch") or "does not apply" in e.message:
        return "patch-failed", _role_of(e, p)
    if stage.startswith("kernel-build") or stage.startswith("kernel-config"):
        return "build-failed", _role_of(e, p)
    if stage.startswith(("l1", "boot")):
        return "boot-failed", "host"
    if stage.startswith("l2"):
        return "boot-failed", "guest" if p.student_roles == ("guest",) else "host" if p.student_roles == ("host",) \
            else None
    return "run-failed", None


def run_pairing(base: cfgmod.Config, p: Pairing, profile_name: str, out_dir: Path,
                progress: Progress = print) -> PairingResult:
    run_dir = out_dir / p.name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = pairing_config(base, p, profile_name)
    res = PairingResult(name=p.name, status="ran", run_dir=str(run_dir))
    try:
        res.summary = run.main_job(cfg, run_dir=run_dir, progress=lambda m: progress(f"[{p.name}] {m}"))
    except HarnessError as e:
        res.status, res.failed_role = classify(e, p)
        res.error = e.to_dict()
        res.why = e.message
        try:
            res.summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            res.summary = {}
    res.rets = read_rets(run_dir, res.summary)
    return res


def read_rets(run_dir: Path, summary: dict) -> Dict[str, Dict[str, List[int]]]:
    out: Dict[str, Dict[str, List[int]]] = {}
    for sc in summary.get("scenarios", []) or []:
        for v in sc.get("per_vcpu", {}):
            f = run_dir / "traces" / sc["name"] / f"vcpu{v}.bin"
            if f.exists():
                out.setdefault(sc["name"], {})[v] = list(read_trace(f).ret)
    return out


def issued_from_trace(summary: dict) -> Optional[Tuple[CallId, int]]:
    """The (function ID, immediate) the guest's workload issued, from L1's trace
    (groundtruth.issued_key: the most frequent non-standard one, issued about once per
    call or more), as a CallId."""
    t = groundtruth.issued_key(summary)
    if t is None:
        return None
    key, n = t
    return CallId(key.func_id, key.imm, "L1 trace"), n


def hvc_count(summary: dict, cid: CallId) -> Optional[int]:
    """HVCs matching ``cid`` across the scenarios, or None when no trace was recorded."""
    total, seen = 0, False
    for sc in summary.get("scenarios", []) or []:
        if "hvc_calls" not in sc:
            continue
        seen = True
        for c in sc["hvc_calls"]:
            f, imm = int(str(c.get("func_id")), 0), int(c.get("imm", 0))
            if (cid.func is None or (f & 0xFFFFFFFF) == (cid.func & 0xFFFFFFFF)) and (cid.imm is None or imm == cid.imm):
                total += int(c.get("count", 0))
    return total if seen else None


def guest_call_id(static_guest: dict, default_func: int) -> CallId:
    """What a student's guest issues, read from vm.patch (fallback when no trace)."""
    imms = [i for i in static_guest.get("hvc_imms", []) if i]
    funcs = static_guest.get("func_ids", [])
    if imms:
        return CallId(None, imms[0], "vm.patch (hvc immediate)")
    if funcs:
        return CallId(funcs[0], None, "vm.patch (x0)")
    return CallId(default_func, None, "reference ID (nothing found in vm.patch)")


def host_call_id(static_host: dict, static_guest: dict, default_func: int) -> CallId:
    """What a student's host answers, read from kvm.patch (fallback when no trace)."""
    if static_host.get("imms"):
        g = static_guest.get("func_ids") or [0]
        return CallId(g[0], static_host["imms"][0], "kvm.patch (hvc immediate)")
    if static_host.get("func_ids"):
        return CallId(static_host["func_ids"][0], 0, "kvm.patch (function ID)")
    return CallId(default_func, 0, "reference ID (nothing found in kvm.patch)")
