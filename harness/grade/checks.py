"""Pairing outcomes -> checks.  Each check is PASS, FAIL or SKIP with a reason, the
evidence that proves it (values, trace counts, console lines) and its points.
A FAIL of a prerequisite makes its dependents SKIP (with that reason).  Checks judge
what the kernels did, not how the code is written."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..observe.trace import RET_NOT_SUPPORTED, classify_ret
from . import flags
from .pairing import HI_TAG, CallId, PairingResult
from .rubric import CHECKS, Rubric

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
ENOSYS = -38


@dataclass
class Check:
    id: str
    status: str
    reason: str
    evidence: List[str] = field(default_factory=list)
    points: float = 0.0
    max_points: float = 0.0
    # a SKIP that is the machine's doing (no migration happened, L1's trace lost events):
    # its points are withheld and the row is flagged for a regrade, never counted as lost
    inconclusive: bool = False
    # set when the part does not exist (no hypercall / no syscall was added): the check is
    # shown as it came out, and earns nothing; the text says why
    gated: str = ""
    # what the check found, as flags.WORDS names it (grades.csv's words; the rubric's caps)
    finding: str = ""

    @property
    def category(self) -> Optional[str]:
        return CHECKS[self.id][0]

    @property
    def title(self) -> str:
        return CHECKS[self.id][1]

    def to_dict(self) -> dict:
        return {"id": self.id, "category": self.category, "title": self.title, "status": self.status,
                "reason": self.reason, "evidence": self.evidence, "points": self.points, "max": self.max_points,
                **({"inconclusive": True} if self.inconclusive else {}),
                **({"gated": self.gated} if self.gated else {}), **({"finding": self.finding} if self.finding else {})}


def signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def describe_values(rets: List[int], limit: int = 4) -> str:
    c = Counter(signed(r) for r in rets)
    parts = []
    for v, n in c.most_common(limit):
        kind, _ = classify_ret(v)
        label = {"not_supported": " (NOT_SUPPORTED)", "enosys": " (-ENOSYS)"}.get(kind, "")
        parts.append(f"{v if -4096 < v < 4096 else hex(v & 0xFFFFFFFFFFFFFFFF)}{label} x{n}")
    more = len(c) - limit
    return ", ".join(parts) + (f", ... {more} more distinct" if more > 0 else "")


def _failure_checks(res: PairingResult, ids: List[str], build_id: str, boot_ids: List[str]) -> Dict[str, Check]:
    """Checks for a pairing that did not run to the end."""
    out: Dict[str, Check] = {}
    ev = [res.why] + ([(res.error or {}).get("tail", "")[-1500:]] if res.error and res.error.get("tail") else [])
    if res.status in ("patch-failed", "build-failed"):
        out[build_id] = Check(build_id, FAIL, res.why, ev)
        for i in ids:
            out.setdefault(i, Check(i, SKIP, f"prerequisite {build_id} failed"))
        return out
    out[build_id] = Check(build_id, PASS, "built", [])
    if res.status == "boot-failed":
        first = boot_ids[0]
        stage = str((res.error or {}).get("stage") or "")
        if stage.startswith("l2") and len(boot_ids) > 1:
            # L1 came up with KVM (L2 is launched only then); it is L2 that did not
            first = boot_ids[1]
            out[boot_ids[0]] = Check(boot_ids[0], PASS, "L1 up with KVM in nVHE mode (L2 was launched in it)")
        out[first] = Check(first, FAIL, res.why, ev)
        for i in ids:
            out.setdefault(i, Check(i, SKIP, f"prerequisite {first} failed"))
        return out
    for i in ids:
        out.setdefault(i, Check(i, SKIP, f"the pairing did not finish: {res.why}", ev))
    return out


def l2_cpu_lines(run_dir: Optional[str]) -> List[str]:
    """L2's console lines about its CPUs coming up (a host that breaks PSCI CPU_ON shows here)."""
    try:
        text = (Path(run_dir) / "l2-console.log").read_text(errors="replace") if run_dir else ""
    except OSError:
        return []
    pat = re.compile(r"CPU\d+: failed|failed to boot CPU|psci: .*(fail|error)|smp: Brought up", re.I)
    return [ln.strip() for ln in text.splitlines() if pat.search(ln)][:5]


def kernel_lines(summary: dict, where: str) -> List[str]:
    return [f["line"] for f in summary.get("kernel_log_findings", []) or [] if f.get("where", "").startswith(where)]


PREFIX = {"preempt-leak": "preemption left disabled: ", "smp-preemptible": "preemption bug: ",
          "sleep-in-atomic": "sleeping in atomic context: ", "oops": "kernel crash: "}


def name_bug(lines: List[str]) -> str:
    return PREFIX.get(flags.bug_kind(lines) or "", "")


def clean_check(cid: str, lines: List[str], clean: str) -> Check:
    """hc.kernel_clean / sc.kernel_clean: the kernel's error lines, named."""
    if not lines:
        return Check(cid, PASS, clean)
    return Check(cid, FAIL, name_bug(lines) + lines[0], lines[:5], finding=flags.bug_kind(lines) or "")


# the checks a part earns only when it exists ("builds, boots, clean")
EXISTENCE_GATED = {"hypercall": ("hc.builds", "hc.l1_nvhe", "hc.l2_vcpus", "hc.kernel_clean"),
                   "syscall": ("sc.builds", "sc.kernel_clean")}


def gate(out: Dict[str, Check], part: str, why: str, finding: str, proof: Optional[str] = None) -> None:
    """The part does not exist: its build/boot/clean checks are shown with 0 points, and
    the check that proves it (``proof``) carries the finding."""
    for cid in EXISTENCE_GATED[part]:
        if cid in out:
            out[cid].gated = why
    proof = proof or {"hypercall": "hc.range", "syscall": "sc.number"}[part]
    if proof in out:
        out[proof].finding = finding


def hypercall_absent(rets: List[int]) -> str:
    """Why the host has no host_cpuid, or "": every answer is what an unpatched kernel
    gives an unknown call (NOT_SUPPORTED: 64-bit -1 from 5.4's PSCI and 6.1's filter, or
    0xFFFFFFFF from the SMCCC arch path)."""
    if not rets or any(classify_ret(signed(r))[0] != RET_NOT_SUPPORTED for r in rets):
        return ""
    return (f"no hypercall was added: the host answered all {len(rets)} calls of the grading guest with "
            f"NOT_SUPPORTED ({describe_values(rets, 2)}), as an unpatched kernel does")


def hypercall_checks(res: Optional[PairingResult], l1_cpus: int, pin: Dict[int, int], why_not: str = "") -> Dict[str, Check]:
    ids = ["hc.builds", "hc.l1_nvhe", "hc.l2_vcpus", "hc.range", "hc.pinned", "hc.ground_truth", "hc.kernel_clean"]
    if res is None:
        return {i: Check(i, FAIL if i == "hc.builds" else SKIP, why_not if i == "hc.builds" else "no kvm.patch to grade")
                for i in ids}
    if res.status != "ran" and not (res.status == "run-failed" and res.summary.get("timings")):
        out = _failure_checks(res, ids, "hc.builds", ["hc.l1_nvhe", "hc.l2_vcpus"])
        lines = kernel_lines(res.summary, "l1")
        if lines and "hc.kernel_clean" in out and out["hc.kernel_clean"].status == SKIP:
            out["hc.kernel_clean"] = clean_check("hc.kernel_clean", lines, "")
        return out
    s = res.summary
    out = {"hc.builds": Check("hc.builds", PASS, "host kernel built",
                              [f"host build {s.get('builds', {}).get('host', {}).get('seconds')} s"])}
    out["hc.l1_nvhe"] = Check("hc.l1_nvhe", PASS, "L1 up with KVM in nVHE mode",
                              [f"L1 SSH after {s.get('timings', {}).get('l1_ssh_s')} s"])
    scen = {sc["name"]: sc for sc in s.get("scenarios", []) or []}
    vcpus_seen = sorted({v for sc in scen.values() for st in sc["per_vcpu"].values() for v in st.get("observed_vcpus", [])})
    if res.status == "run-failed":
        out["hc.l2_vcpus"] = Check("hc.l2_vcpus", FAIL, res.why, [res.why] + l2_cpu_lines(res.run_dir))
    else:
        want = sorted({int(v) for sc in scen.values() for v in sc["per_vcpu"]})
        ok = set(want) <= set(vcpus_seen)
        out["hc.l2_vcpus"] = Check("hc.l2_vcpus", PASS if ok else FAIL,
                                   f"the workload ran on vCPUs {vcpus_seen}" + ("" if ok else f", wanted {want}"))
    allrets = [r for sc in res.rets.values() for rets in sc.values() for r in rets]
    if res.status == "run-failed" and not res.rets:
        for i in ("hc.range", "hc.pinned", "hc.ground_truth"):
            out[i] = Check(i, SKIP, "prerequisite hc.l2_vcpus failed: the workload could not run")
    elif not allrets:
        out.setdefault("hc.range", Check("hc.range", SKIP, "no samples"))
    else:
        bad = [r for r in allrets if not 0 <= signed(r) < l1_cpus]
        out["hc.range"] = Check("hc.range", FAIL if bad else PASS,
                                f"{len(bad)} of {len(allrets)} answers outside [0, {l1_cpus})" if bad
                                else f"all {len(allrets)} answers in [0, {l1_cpus})", [describe_values(allrets)])
    pinned = res.rets.get("pinned", {})
    if "hc.pinned" in out:
        pass
    elif not pinned:
        out["hc.pinned"] = Check("hc.pinned", SKIP, "the pinned scenario has no trace")
    else:
        fails, ev = [], []
        # the pattern over all pinned vCPUs: each its own id, or one value for all
        every = {v: set(pinned.get(str(v), [])) for v in pin}
        vcpu_id = all(vals == {v} for v, vals in every.items())
        constant = len(set().union(*every.values())) == 1 and len(every) > 1 and not vcpu_id
        for v, p in sorted(pin.items()):
            rets = pinned.get(str(v), [])
            line = f"vCPU{v} pinned to pCPU{p}: {describe_values(rets)}"
            ev.append(line)
            if not rets or any(signed(r) != p for r in rets):
                hint = ""
                if vcpu_id:
                    hint = " (the vCPU id, not the pCPU)"
                elif constant:
                    hint = " (the same constant on every vCPU)"
                elif rets and len(set(rets)) == 1:
                    hint = " (a constant)"
                fails.append(line + hint)
        out["hc.pinned"] = Check("hc.pinned", FAIL if fails else PASS,
                                 "; ".join(fails) if fails else "each pinned vCPU answered its pCPU on every call", ev,
                                 finding=("vcpu-id" if vcpu_id else "constant" if constant else "") if fails else "")
    out.setdefault("hc.ground_truth", ground_truth_check(scen.get("loaded")))
    out["hc.kernel_clean"] = clean_check("hc.kernel_clean", kernel_lines(s, "l1"), "no BUG:/WARNING:/Oops in L1")
    absent = hypercall_absent(allrets)
    if absent:
        gate(out, "hypercall", absent, "no-hypercall")
    return out


UNEXPLAINED_MAX = 0.001     # unexplained disagreements tolerated per call (trace timing), 1 in 1000


def _lost(sc: dict) -> int:
    """Events L1's ring buffer dropped in this scenario (then calls cannot be matched to HVCs)."""
    return int((sc.get("l1_trace") or {}).get("lost") or 0)


def _unaligned(sc: dict, what: str) -> List[str]:
    """Evidence lines for the vCPUs whose calls do not match L1's HVCs one to one."""
    ev = []
    for v, st in sorted(sc["per_vcpu"].items()):
        gt = st.get("ground_truth") or {}
        if gt and not gt.get("aligned"):
            others = ", ".join(f"{f} x{n}" for f, n in (gt.get("other_hvcs") or {}).items()) or "none"
            ev.append(f"{sc['name']} vCPU{v}: {gt.get('hvc_events')} HVCs with {gt.get('call_key')} for "
                      f"{gt.get('samples')} calls ({what}); other HVCs of this vCPU: {others}")
    return ev


def ground_truth_check(sc: Optional[dict]) -> Check:
    """The values agree with the CPU that handled each HVC in L1 (student host x grading
    guest, loaded scenario).  The grading guest issues exactly one HVC per call (the
    preflight's reference pairing shows it), so a trace that does not line up is the
    host's doing; a disagreement explained by L1 moving the thread between the HVC and
    the read of vcpu->cpu is a legitimate preemption race."""
    cid = "hc.ground_truth"
    if sc is None:
        return Check(cid, SKIP, "no loaded scenario ran")
    gts = {v: st.get("ground_truth") for v, st in sc["per_vcpu"].items()}
    if not any(gts.values()):
        return Check(cid, SKIP, "L1's trace was not recorded (no ground_truth in summary.json)", inconclusive=True)
    bad = _unaligned(sc, "the grading guest issues one per call")
    if bad:
        if _lost(sc):
            return Check(cid, SKIP, f"L1's ring buffer lost {_lost(sc)} events: calls cannot be matched to HVCs "
                         "(the machine's fault, not the submission's)", bad, inconclusive=True)
        return Check(cid, FAIL, "the calls of the grading guest do not line up with L1's HVCs one to one: "
                     "the host patch changed how many hypercalls a call takes", bad)
    ev, calls, unexplained, raced, migrations, changes = [], 0, 0, 0, 0, 0
    for v, gt in sorted(gts.items()):
        if not gt:
            continue
        n = int(gt.get("samples") or 0)
        agree = round(float(gt.get("agreement") or 0.0) * n)
        dis = n - agree
        k = int(str(gt.get("disagreements_explained") or f"0/{dis}").split("/")[0])
        calls += n
        raced += k
        unexplained += dis - k
        migrations += int(gt.get("migrations") or 0)
        changes += int(gt.get("changes") or 0)
        ev.append(f"vCPU{v}: {n} calls = {n} HVCs in L1's trace ({gt.get('call_key')}); {agree} answered the CPU "
                  f"that handled the HVC, {dis} did not, of which {k} explained by L1 moving the thread there "
                  f"before the reply; L1 migrated the thread {gt.get('migrations')} times; the answer changed "
                  f"{gt.get('changes')} times, {gt.get('changes_explained')} explained by L1")
        for d in (gt.get("disagreements") or [])[:3]:
            how = ("L1 moved the thread there before the reply (preemption race)" if d.get("moved_there_before_reply")
                   else "L1 did not move the thread there")
            ev.append(f"  vCPU{v} call {d.get('call')} at {d.get('t_s')} s: answered {signed(int(d['returned']))}, "
                      f"L1 handled the HVC on CPU {d.get('handled_on')}; {how}")
    if calls == 0:
        return Check(cid, SKIP, "the loaded scenario recorded no calls", ev, inconclusive=True)
    if unexplained > UNEXPLAINED_MAX * calls:
        return Check(cid, FAIL, f"{unexplained} of {calls} answers are not the CPU that handled the HVC in L1 "
                     f"(and L1 did not move the thread there before the reply)", ev)
    agreed = calls - raced - unexplained
    tail = (f", {raced} the CPU L1 moved the thread to between the HVC and the reply (a legitimate preemption race)"
            if raced else "") + (f", {unexplained} unexplained (up to 1 in 1000 tolerated: trace timing)"
                                 if unexplained else "")
    if migrations == 0 and changes == 0:
        return Check(cid, SKIP, f"L1 did not move the vCPU threads during the loaded scenario: {agreed} of {calls} "
                     "answers are the CPU that handled the HVC, but agreement under migration could not be judged "
                     "this time (the machine's, not the submission's; regrade)", ev, inconclusive=True)
    return Check(cid, PASS, f"{agreed} of {calls} answers are the CPU that handled the HVC in L1{tail}; L1 migrated "
                 f"the vCPU threads {migrations} times and the answer changed {changes} times", ev)


def syscall_checks(res: Optional[PairingResult], syscall_nr: int, pin: Dict[int, int], cid: Optional[CallId],
                   static_guest: dict, why_not: str = "") -> Dict[str, Check]:
    ids = ["sc.builds", "sc.number", "sc.one_hvc", "sc.value", "sc.kernel_clean"]
    if res is None:
        return {i: Check(i, FAIL if i == "sc.builds" else SKIP, why_not if i == "sc.builds" else "no vm.patch to grade")
                for i in ids}
    if res.status != "ran" and not (res.status == "run-failed" and res.summary.get("timings")):
        out = _failure_checks(res, ids, "sc.builds", ["sc.number"])
        lines = kernel_lines(res.summary, "l2")
        if lines and out.get("sc.kernel_clean", Check("", SKIP, "")).status == SKIP:
            out["sc.kernel_clean"] = clean_check("sc.kernel_clean", lines, "")
        return out
    s = res.summary
    out = {"sc.builds": Check("sc.builds", PASS, "guest kernel built",
                              [f"guest build {s.get('builds', {}).get('guest', {}).get('seconds')} s"])}
    allrets = [r for sc in res.rets.values() for rets in sc.values() for r in rets]
    samples = len(allrets)
    nsys = sum(1 for r in allrets if signed(r) == ENOSYS)
    declared = (static_guest.get("syscall") or {}).get("nr")
    if not samples:
        out["sc.number"] = Check("sc.number", FAIL, res.why or "the workload recorded nothing", [res.why])
    elif nsys == samples:
        extra = f"; vm.patch defines {static_guest['syscall'].get('name')} {declared}" if declared is not None and \
            declared != syscall_nr else ""
        out["sc.number"] = Check("sc.number", FAIL, f"syscall {syscall_nr} returns -ENOSYS on every call{extra}",
                                 [describe_values(allrets)])
    else:
        out["sc.number"] = Check("sc.number", PASS, f"syscall {syscall_nr} exists ({samples - nsys} of {samples} "
                                 "calls did not return -ENOSYS)")
    if out["sc.number"].status == FAIL:
        out["sc.one_hvc"] = Check("sc.one_hvc", SKIP, "prerequisite sc.number failed")
        out["sc.value"] = Check("sc.value", SKIP, "prerequisite sc.number failed")
    else:
        out["sc.one_hvc"] = one_hvc_check(s, cid)
        out["sc.value"] = value_check(res, pin)
    out["sc.kernel_clean"] = clean_check("sc.kernel_clean", kernel_lines(s, "l2"), "no kernel error lines in L2")
    if samples and nsys == samples:
        gate(out, "syscall", f"no syscall was added: syscall {syscall_nr} returned -ENOSYS on all {samples} calls, "
                             "as on an unpatched kernel", "no-syscall")
    return out


def one_hvc_check(s: dict, cid: Optional[CallId]) -> Check:
    """Exactly one HVC with the student's call per syscall, per vCPU and scenario, counted
    in L1's trace (grading host x student guest: the host is the grading one)."""
    i = "sc.one_hvc"
    scen = [sc for sc in s.get("scenarios", []) or [] if any(st.get("ground_truth") for st in sc["per_vcpu"].values())]
    if not scen:
        return Check(i, SKIP, "L1's HVC trace was not recorded (no ground_truth in summary.json)", inconclusive=True)
    ev, bad, lost = [], [], 0
    key = (cid.to_dict() if cid else {})
    for sc in scen:
        for v, st in sorted(sc["per_vcpu"].items()):
            gt = st.get("ground_truth") or {}
            n, m = gt.get("hvc_events"), gt.get("samples")
            others = ", ".join(f"{f} x{k}" for f, k in (gt.get("other_hvcs") or {}).items())
            line = f"{sc['name']} vCPU{v}: {n} HVCs with {gt.get('call_key')} for {m} calls" + \
                (f"; other HVCs: {others}" if others else "")
            ev.append(line)
            if not gt.get("aligned"):
                bad.append((n, m))
                lost += _lost(sc)
    if not bad:
        calls = sum(st["ground_truth"]["samples"] for sc in scen for st in sc["per_vcpu"].values()
                    if st.get("ground_truth"))
        return Check(i, PASS, f"one HVC per call on every vCPU ({calls} calls; learned ID: func "
                     f"{key.get('func_id')}, imm {key.get('imm')}, from {key.get('source') or '?'})", ev)
    if lost:
        return Check(i, SKIP, f"L1's ring buffer lost {lost} events: HVCs cannot be counted (the machine's fault)",
                     ev, inconclusive=True)
    n, m = sum(x or 0 for x, _ in bad), sum(y or 0 for _, y in bad)
    what = "the syscall never issues the hypercall" if n == 0 else f"{n / m:.2f} HVCs per call" if m else "no calls"
    return Check(i, FAIL, f"{n} HVCs for {m} calls where one per call is due: {what}", ev)


def value_check(res: PairingResult, pin: Dict[int, int]) -> Check:
    """The grading host answers (HI_TAG << 32) | pCPU: the guest must hand it over as is."""
    pinned = res.rets.get("pinned", {})
    if not pinned:
        return Check("sc.value", SKIP, "the pinned scenario has no trace")
    ev, fails = [], []
    for v, p in sorted(pin.items()):
        want = (HI_TAG << 32) | p
        rets = [r & 0xFFFFFFFFFFFFFFFF for r in pinned.get(str(v), [])]
        ev.append(f"vCPU{v} pinned to pCPU{p}: host answered {hex(want)}; user space got {describe_values(rets)}")
        if not rets or any(r != want for r in rets):
            hint = ""
            if rets and all(r == p for r in rets):
                hint = ": the upper 32 bits were lost (truncated to 32 bits)"
            elif rets and all(signed(r) == -1 for r in rets):
                hint = ": the host did not recognise the call (function ID/immediate differ from the one used)"
            fails.append(f"vCPU{v}{hint or f': user space got {describe_values(rets, 2)}, not the host answer {hex(want)}'}")
    return Check("sc.value", FAIL if fails else PASS, "; ".join(fails) if fails else
                 "the host's 64-bit answer reached user space unchanged on every call", ev)


def e2e_check(res: Optional[PairingResult], l1_cpus: int, why_not: str = "") -> Check:
    """Informational: the student's own pair, judged as the main job judges a run (pinned
    vCPUs answer their pCPU, values agree with L1's trace, no kernel errors)."""
    if res is None:
        return Check("e2e.works", SKIP, why_not or "not run")
    if res.status != "ran":
        return Check("e2e.works", FAIL, f"{res.status}: {res.why}")
    allrets = [r for sc in res.rets.values() for rets in sc.values() for r in rets]
    verdict = res.summary.get("verdict")
    ok = bool(allrets) and verdict == "ok"
    return Check("e2e.works", PASS if ok else FAIL, f"verdict {verdict}: {res.summary.get('verdict_text') or ''}".strip(),
                 [describe_values(allrets)] if allrets else [])


def report_check(info) -> Check:
    if not info.present:
        return Check("rp.valid", FAIL, info.why)
    if not info.valid:
        return Check("rp.valid", FAIL, info.why)
    return Check("rp.valid", PASS, f"a valid PDF of {info.pages} page(s); graded by a human",
                 info.thumbnails[:6])


def score(checks: Dict[str, Check], rubric: Rubric) -> Dict[str, dict]:
    """Points per category; the manual share is reserved (None until a human grades it).
    A check of a part that does not exist (``gated``) earns nothing; a serious finding the
    rubric caps (``caps``) limits its part's points."""
    out = {}
    for name, cat in rubric.categories.items():
        got = 0.0
        reason = ""
        for cid in cat.checks:
            c = checks.get(cid)
            if c is None:
                continue
            c.max_points = cat.checks[cid]
            c.points = c.max_points if c.status == PASS and not c.gated else 0.0
            got += c.points
            reason = reason or c.gated
        capped = None
        for cid in cat.checks:
            c = checks.get(cid)
            if c is not None and c.status == FAIL and c.finding in cat.caps and got > cat.caps[c.finding] and \
                    (capped is None or cat.caps[c.finding] < capped["at"]):
                capped = {"at": cat.caps[c.finding], "by": c.finding, "check": cid, "before": got}
        if capped:
            got = capped["at"]
            reason = reason or (f"capped at {capped['at']:g} of {cat.total:g} ({capped['check']}: "
                                f"{flags.WORDS.get(capped['by'], capped['by'])}; the checks alone give "
                                f"{capped['before']:g})")
        skipped = sum(cat.checks[c] for c in cat.checks if checks.get(c) and checks[c].status == SKIP)
        # (a part that does not exist has nothing to regrade)
        withheld = [c for c in cat.checks if checks.get(c) and checks[c].status == SKIP and checks[c].inconclusive
                    and not any(checks[g].gated for g in cat.checks if g in checks)]
        out[name] = {"points": got, "max": cat.total, "manual_reserved": cat.manual, "skipped_points": skipped,
                     "inconclusive_points": sum(cat.checks[c] for c in withheld), "inconclusive": withheld,
                     **({"reason": reason} if reason else {}), **({"capped": capped} if capped else {})}
    return out
