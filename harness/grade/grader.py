"""Grading one submission: intake -> report -> patch shape -> static evidence ->
pairings -> checks -> results.json (and the per-submission outputs).  Never raises for
the submission's own faults; an infrastructure failure raises GradeInfraError so the
batch can tell it apart (and the submission is graded again on the next run)."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

from ..build import kbuild
from ..core.config import Config, override
from ..build.profiles import Profile
from . import checks as chk
from . import diffcheck, intake, machinery, outputs, pdfreport, static
from .errors import GradeInfraError
from .pairing import (CallId, Pairing, PairingResult, guest_call_id, host_call_id, issued_from_trace, recheck,
                      run_pairing)
from .rubric import Rubric

Progress = Callable[[str], None]
RESULTS_FORMAT = 1


@dataclass
class Context:
    base: Config
    profile: Profile
    tree: Optional[Path]              # pristine kernel tree (read-only: apply checks, blob ids)
    rubric: Rubric
    out: Path
    run_pairings: bool = True         # False: intake + static only (no builds, no boots)
    progress: Progress = print
    timings: Dict[str, float] = field(default_factory=dict)
    # after a pairing timed out: does the reference pairing still work on this machine?
    # (raises GradeInfraError when not; returns what it saw).  None: not checked
    machine_check: Optional[Callable[[str], str]] = None
    # set when the batch is interrupted (Ctrl-C, SIGTERM): a pairing that ends after it is
    # the machine's doing, never the submission's; nothing more is graded
    cancelled: threading.Event = field(default_factory=threading.Event)


def sub_dir_for(ctx: Context, sub_id: str) -> Path:
    return ctx.out / "submissions" / sub_id


def previous(ctx: Context, sub_id: str, digest: str) -> Optional[dict]:
    """The finished results of the same bytes, if any (resume)."""
    try:
        res = json.loads((sub_dir_for(ctx, sub_id) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if res.get("format") == RESULTS_FORMAT and res.get("digest") == digest and res.get("status") == "graded" \
            and res.get("mode") == ("full" if ctx.run_pairings else "static") \
            and not any(c.get("inconclusive") for c in res.get("checks", [])):
        return res  # (a check the machine left inconclusive is graded again)
    return None


def own_ccache(cfg: Config, sub_id: str) -> Optional[Path]:
    """The ccache directory of a submission's sandboxed builds, inside the batch's: it
    names their worktrees and private ccaches (harness/build/kbuild.py), so no submission builds
    in what another's make wrote.  Removed once the submission is graded.  None when
    builds are not sandboxed with a batch's ccache."""
    k = cfg.kernel
    return Path(k.sandbox_ccache) / "submissions" / sub_id if k.sandbox and k.sandbox_ccache else None


def grade(path: Path, sub_id: str, ctx: Context) -> dict:
    t0 = time.monotonic()
    sdir = sub_dir_for(ctx, sub_id)
    sdir.mkdir(parents=True, exist_ok=True)
    sub = intake.load(path, sdir)
    sub.sub_id = sub_id
    old = previous(ctx, sub_id, sub.digest)
    if old is not None:
        ctx.progress(f"{sub_id}: unchanged since the last grading; kept")
        old["resumed"] = True
        return old
    ctx.progress(f"{sub_id}: intake done ({len(sub.flags)} flags, {len(sub.problems)} problems)")
    report = pdfreport.inspect(sub.member("report.pdf"), sdir)
    diffs: Dict[str, diffcheck.DiffReport] = {}
    evidence: Dict[str, dict] = {}
    work = sdir / "work"
    work.mkdir(exist_ok=True)
    for role, member in (("host", "kvm.patch"), ("guest", "vm.patch")):
        p = sub.member(member)
        d = diffcheck.check(p.read_bytes() if p else None, role, ctx.tree)
        diffs[role] = d
        if d.normalized is not None:
            (work / member).write_bytes(d.normalized)
        text = d.normalized.decode("utf-8", "replace") if d.normalized else None
        evidence[role] = static.host_evidence(text) if role == "host" else static.guest_evidence(text)
    results = {"format": RESULTS_FORMAT, "id": sub_id, "digest": sub.digest, "status": "graded",
               "mode": "full" if ctx.run_pairings else "static", "profile": ctx.profile.name,
               "syscall_nr": ctx.profile.syscall_nr, "intake": sub.to_dict(), "report": report.to_dict(),
               "patches": {k: v.to_dict() for k, v in diffs.items()}, "evidence": evidence,
               "flags": list(sub.flags) + [f for d in diffs.values() for f in d.flags], "problems": list(sub.problems)}
    review = [f for role, d in diffs.items() if d.normalized is not None
              for f in machinery.review(d.normalized.decode("utf-8", "replace"), role)]
    results["review"] = [f.to_dict() for f in review]   # build machinery for a human to read: no points
    results["flags"] += [f.flag() for f in review]
    if report.present and not report.valid:
        results["problems"].append(f"report.pdf: {report.why}")
    for role, name in (("host", "kvm.patch"), ("guest", "vm.patch")):
        why = _unusable(diffs[role], name)
        if why and sub.member(name) is not None and not diffs[role].empty:  # (an empty one is flagged in words)
            results["problems"].append(why)
    pin = next((sc.pin for sc in ctx.base.scenarios if sc.pin), {})
    l1_cpus = ctx.base.l1.cpus
    pairings: Dict[str, PairingResult] = {}
    learned: Dict[str, dict] = {}
    if ctx.run_pairings:
        # with -j N several submissions print at once: every line names its submission
        own = own_ccache(ctx.base, sub_id)
        base = override(ctx.base, [f"kernel.sandbox_ccache={json.dumps(str(own))}"]) if own else ctx.base
        mine = dataclasses.replace(ctx, base=base, progress=lambda m: ctx.progress(f"{sub_id}: {m}"))
        try:
            pairings, learned = run_matrix(mine, work, diffs, evidence, sdir / "pairings")
        finally:
            if own is not None:
                kbuild.remove_sandboxed_builds(own)
    checks: Dict[str, chk.Check] = {}
    if ctx.run_pairings:
        why_h = _unusable(diffs["host"], "kvm.patch")
        why_g = _unusable(diffs["guest"], "vm.patch")
        checks.update(chk.hypercall_checks(pairings.get("hypercall"), l1_cpus, pin, why_h))
        gcid = _cid(learned.get("syscall_host_answers"))
        checks.update(chk.syscall_checks(pairings.get("syscall"), ctx.profile.syscall_nr, pin, gcid,
                                         evidence["guest"], why_g))
        checks["e2e.works"] = chk.e2e_check(pairings.get("e2e"), l1_cpus, "a half is missing or does not apply")
    else:
        for cid in chk.CHECKS:
            if cid != "rp.valid":
                checks[cid] = chk.Check(cid, chk.SKIP, "static grading only (--static-only): nothing built or booted")
        for role, name, first in (("host", "kvm.patch", "hc.builds"), ("guest", "vm.patch", "sc.builds")):
            why = _unusable(diffs[role], name)
            if why:
                checks[first] = chk.Check(first, chk.FAIL, why)
    checks["rp.valid"] = chk.report_check(report)
    for role, part, name, finding in (("host", "hypercall", "kvm.patch", "empty-kvm"),
                                      ("guest", "syscall", "vm.patch", "empty-vm")):
        if diffs[role].empty:
            chk.gate(checks, part, f"no {part} was added: {name} is empty", finding, proof=chk.EXISTENCE_GATED[part][0])
    results["scores"] = chk.score(checks, ctx.rubric)
    results["checks"] = [c.to_dict() for c in checks.values()]
    results["learned"] = learned
    results["pairings"] = {k: v.to_dict() for k, v in pairings.items()}
    results["timings"] = _timings(pairings)
    results["seconds"] = round(time.monotonic() - t0, 1)
    outputs.write_submission(sdir, results, ctx.rubric)
    return results


def _cid(d: Optional[dict]) -> Optional[CallId]:
    if not d:
        return None
    f = d.get("func_id")
    return CallId(int(f, 16) if f else None, d.get("imm"), d.get("source", ""))


def _unusable(d: diffcheck.DiffReport, name: str) -> str:
    if not d.ok:
        return f"{name}: {d.why}"
    if d.apply == "fails":
        return f"{name} does not apply: {d.apply_detail}"
    return ""


def _timings(pairings: Dict[str, PairingResult]) -> dict:
    out = {}
    for name, p in pairings.items():
        s = p.summary or {}
        out[name] = {"builds": {r: (s.get("builds") or {}).get(r, {}).get("seconds") for r in ("host", "guest")},
                     "cached": {r: (s.get("builds") or {}).get(r, {}).get("cached") for r in ("host", "guest")},
                     "boot": s.get("timings", {}), "seconds": s.get("seconds")}
    return out


def run_matrix(ctx: Context, work: Path, diffs, evidence, out_dir: Path):
    """The three pairings in the order that lets each learn from the one before."""
    prof = ctx.profile
    usable = {r: not _unusable(diffs[r], r) for r in ("host", "guest")}
    student = {"host": str(work / "kvm.patch"), "guest": str(work / "vm.patch")}
    pairings: Dict[str, PairingResult] = {}
    learned: Dict[str, dict] = {}

    def not_interrupted(p: Pairing, r: PairingResult) -> None:
        if ctx.cancelled.is_set():
            raise GradeInfraError(f"pairing {p.name}: the batch was interrupted while it ran ({r.status}); "
                                  "not graded", stage="interrupted")

    def go(p: Pairing) -> PairingResult:
        ctx.progress(f"pairing {p.name}: host {Path(p.host).name if p.host != 'grading' else 'grading'} x guest "
                     f"{Path(p.guest).name if p.guest != 'grading' else 'grading'} ({p.l1_append} | {p.l2_append})")
        if ctx.cancelled.is_set():
            raise GradeInfraError(f"pairing {p.name}: the batch was interrupted", stage="interrupted")
        r = run_pairing(ctx.base, p, prof.name, out_dir, ctx.progress)
        not_interrupted(p, r)
        timed_out = (r.error or {}).get("error") == "StageTimeout"  # consoles clean (else KernelBugError)
        if r.status == "infra" and not timed_out and p.student_roles:
            # a guest or a connection lost with clean consoles (seen once under load on 5.4: L2's
            # SSH channel closed mid-scenario): the machine's passing trouble or the kernel's;
            # the same pairing once more tells them apart before anyone stops the batch
            ctx.progress(f"pairing {p.name} lost its machine with clean consoles ({r.why}): running it once more")
            first = r.why
            r = dataclasses.replace(run_pairing(ctx.base, dataclasses.replace(p, name=f"{p.name}-again"), prof.name,
                                                out_dir, ctx.progress), name=p.name)
            not_interrupted(p, r)
            if r.status == "infra":
                r.why = f"{r.why} (and before, in the first attempt: {first})"
            timed_out = (r.error or {}).get("error") == "StageTimeout"
        if timed_out and p.student_roles and ctx.machine_check is not None:
            # a timeout may be the machine's (overloaded) rather than the kernel's: the
            # reference pairing must still come up now, or nobody is graded as failing
            ctx.progress(f"pairing {p.name} timed out ({r.why}): checking the machine with the reference pairing")
            seen = ctx.machine_check(f"{out_dir.parent.name}-{p.name}")
            r.why += f" (the reference pairing, run right after on this machine, came up: {seen})"
            if r.status == "infra":  # the machine works: the stage that hung ran the student's kernel
                r.status, r.failed_role = "run-failed", p.student_roles[0] if len(p.student_roles) == 1 else None
                r.error["kind"] = "subject"
        if r.status == "infra":
            raise GradeInfraError(f"pairing {p.name}: {r.why}", stage="pairing")
        return r

    def failed_before(name: str, role: str) -> Optional[PairingResult]:
        """A student's half that did not build in the e2e pairing fails the same way in its
        own pairing: not built again (a failed build is not cached, and costs minutes)."""
        e = pairings.get("e2e")
        if e is None or e.status not in ("patch-failed", "build-failed") or e.failed_role != role:
            return None
        ctx.progress(f"pairing {name}: not run, the student's {role} kernel already failed in pairing e2e")
        return dataclasses.replace(e, name=name, why=e.why + " (in pairing e2e; the same build, not repeated)")

    traced = None
    if usable["host"] and usable["guest"]:
        pairings["e2e"] = go(Pairing("e2e", student["host"], student["guest"], ("host", "guest")))
        t = issued_from_trace(pairings["e2e"].summary)
        if t:
            traced = t[0]
            traced.source = "L1 trace (student x student)"
            recheck(pairings["e2e"], traced)
    if usable["guest"] and failed_before("syscall", "guest"):
        pairings["syscall"] = failed_before("syscall", "guest")
    elif usable["guest"]:
        gid = traced or guest_call_id(evidence["guest"], prof.hvc_func_id)
        if gid.imm == 0 and traced:
            gid = CallId(gid.func, None, gid.source)  # keyed on x0: any immediate
        p = Pairing("syscall", "grading", student["guest"], ("guest",),
                    l1_append=f"{gid.host_args()} host_cpuid_hi={hex(chk.HI_TAG)}", trace_key=gid)
        r = go(p)
        t = issued_from_trace(r.summary)
        if t and not traced and (t[0].func, t[0].imm) != (gid.func, gid.imm):
            # the guest issued something else than vm.patch suggested: answer that, once more
            gid = CallId(t[0].func, t[0].imm, "L1 trace (grading host x student guest)")
            p.l1_append = f"{gid.host_args()} host_cpuid_hi={hex(chk.HI_TAG)}"
            p.trace_key = gid
            r = go(p)
        elif t and not traced:
            traced = t[0]
        pairings["syscall"] = r
        learned["syscall_host_answers"] = gid.to_dict()
    if usable["host"] and failed_before("hypercall", "host"):
        pairings["hypercall"] = failed_before("hypercall", "host")
    elif usable["host"]:
        hid = traced or host_call_id(evidence["host"], evidence["guest"], prof.hvc_func_id)
        hid = CallId(hid.func if hid.func is not None else 0, hid.imm or 0, hid.source)
        pairings["hypercall"] = go(Pairing("hypercall", student["host"], "grading", ("host",),
                                           l2_append=hid.guest_args(), trace_key=hid))
        learned["hypercall_guest_issues"] = hid.to_dict()
    if traced:
        learned["student_guest_issues"] = traced.to_dict()
    return pairings, learned
