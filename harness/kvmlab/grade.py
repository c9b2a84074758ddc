"""Grading one submission: builds, runs, and checks judged against the exit record.

Runs (each a fresh scratch directory ``<work>/<run>/root`` as the working directory,
with ``outside/`` next to it and ``root/kvmlab_link -> ../outside``):

  own         the submission's guest.c in its own hypervisor
  func        the harness test guest (mode 1) in the submission's hypervisor
  badaddr     test guest mode 2: display() of an address outside guest memory
  hugelen     test guest mode 3: write() of 0x7FFFFFF0 bytes
  unknownport test guest mode 4: OUT to a port no hypercall uses

Every check ends PASS, PARTIAL, FAIL or SKIP with evidence (oracle records, output
excerpt, files on disk).  A check whose prerequisite is missing is SKIP with the
reason, never FAIL.  Checks judge effects - what reached the guest, what was
printed during which exit, what the hypervisor did to files - never the mechanism.
Weights, the robustness column and build deductions come from the rubric
(rubric.py).  See docs/kvm-api-lab.md.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..build import buildlog
from ..build import sandbox as confinement
from . import build as buildmod
from . import fileops, guestapi, handin as handinmod, oracle, ownrun
from . import rubric as rubricmod
from .errors import KvmLabError, SubmissionError
from .oracle import REASON_HLT, REASON_IO, Trace
from .sandbox import KVM_DEVICE, RunResult, base_env, probe_kvm, run_untrusted
from .submission import Submission, load

PASS, PARTIAL, FAIL, SKIP = "PASS", "PARTIAL", "FAIL", "SKIP"
RANK = {PASS: 3, PARTIAL: 2, FAIL: 1, SKIP: 0}
MARK = 0x4B4C0000
MARK_END = MARK + 0xFF
RUN_TIMEOUT = 10.0

CHECK_IDS = ("build", "oracle", "halts_cleanly", "printval", "getnumexits", "display_one_exit",
             "fs_several_files", "fs_read", "multi_arg", "fs_confinement", "robust_bad_address",
             "robust_huge_length", "robust_unknown_port")
ROBUSTNESS = CHECK_IDS[-4:]
TITLES = {
    "build": "builds with the harness-supplied Makefile",
    "oracle": "exit record available (LD_PRELOAD oracle)",
    "halts_cleanly": "own guest halts cleanly (KVM_EXIT_HLT, exit status 0)",
    "printval": "printVal(v) prints v in one exit",
    "getnumexits": "getNumExits() returns the oracle's exit count to the guest",
    "display_one_exit": "display(str) prints str in exactly one exit",
    "fs_several_files": "several files open at once, writes reach the disk",
    "fs_read": "read data reaches the guest",
    "multi_arg": "multi-argument hypercalls (fd, buffer, count) arrive intact",
    "fs_confinement": "file access stays in the run directory (.., absolute, symlink)",
    "robust_bad_address": "display() of an address outside guest memory: no crash",
    "robust_huge_length": "write() with a huge length: no crash",
    "robust_unknown_port": "OUT to an unknown port: no crash",
}


@dataclass
class Check:
    id: str
    status: str
    message: str
    evidence: List[str] = field(default_factory=list)
    records: List[str] = field(default_factory=list)
    output: str = ""
    weight: float = 0          # from the rubric; 0: not scored
    kind: str = "assignment"   # gate, assignment or robustness
    case: str = ""             # a case only the harness test guest tried (a value above 255, ...)

    @property
    def title(self) -> str:
        return TITLES.get(self.id, self.id)

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "status": self.status, "weight": self.weight,
                "kind": self.kind, "message": self.message, "evidence": self.evidence,
                "records": self.records, "output": self.output, "case": self.case}


@dataclass
class Result:
    submission: str
    origin: str
    verdict: str
    score: float
    checks: List[Check]
    duration: float
    api: dict = field(default_factory=dict)
    error: Optional[dict] = None
    runs: Dict[str, dict] = field(default_factory=dict)
    nonce: str = ""
    build: Optional[str] = None       # the build profile that was needed
    deduction: float = 0
    review: List[str] = field(default_factory=list)   # why a human should look
    extras: Dict[str, str] = field(default_factory=dict)  # optional features seen (seek)
    handin: str = ""          # what came beyond guest.c and kvm-hello-world.c (flag for the TA)

    @property
    def robustness(self) -> str:
        """The robustness column: ok, or the findings."""
        bad = [f"{c.id}={c.status}" for c in self.checks if c.kind == "robustness" and c.status != PASS]
        return "ok" if not bad else " ".join(bad)

    def check(self, cid: str) -> Check:
        for c in self.checks:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def to_dict(self) -> dict:
        return {"submission": self.submission, "origin": self.origin, "verdict": self.verdict,
                "score": self.score, "duration_s": round(self.duration, 3), "nonce": self.nonce,
                "build": self.build, "deduction": self.deduction, "review": self.review,
                "robustness": self.robustness, "extras": self.extras, "handin": self.handin,
                "guest_api": self.api, "runs": self.runs, "error": self.error,
                "checks": [c.to_dict() for c in self.checks]}


@dataclass
class Run:
    name: str
    dir: Path
    root: Path
    outside: Path
    result: RunResult
    trace: Trace
    stdout: bytes
    stderr: bytes
    notes: List[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"argv": list(self.result.argv), "cwd": str(self.root), "notes": self.notes,
                "status": self.result.describe(), "duration_s": round(self.result.duration, 3),
                "exits": len(self.trace.exits), "oracle": self.trace.unavailable or "ok"}


def _excerpt(data: bytes, limit: int = 600) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


def _tail(data: bytes, limit: int = 600) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else "..." + text[-limit:]


_shows = ownrun.shows


class Grader:
    def __init__(self, path: Path, out_dir: Path, *, work: Optional[Path] = None,
                 timeout: float = RUN_TIMEOUT, keep_work: bool = False):
        self.path = Path(path)
        self.out_dir = Path(out_dir)
        self.timeout = timeout
        self.keep_work = keep_work or work is not None
        self.work = Path(work) if work else Path(tempfile.mkdtemp(prefix="kvmlab-"))
        self.nonce = secrets.token_hex(4)
        self.checks: Dict[str, Check] = {}
        self.runs: Dict[str, Run] = {}
        self.logs = self.out_dir / "logs"
        self.rubric = rubricmod.load()
        self.profile: Optional[buildmod.Profile] = None
        self.review: List[str] = []
        self.extras: Dict[str, str] = {}
        self.handin: Optional[handinmod.Handin] = None
        self.testguest_problem = ""
        self.pv_port: Optional[int] = None    # the test guest's printVal port, once its mark printed
        self.own_findings: Dict[str, ownrun.Finding] = {}
        self.uid = confinement.uid_for(str(self.work.resolve()))   # of its hypervisor runs (sandbox.py)

    # -- helpers ---------------------------------------------------------------
    def _set(self, cid: str, status: str, message: str, **kw) -> Check:
        c = Check(cid, status, message, weight=self.rubric.weight(cid), kind=self.rubric.kind(cid), **kw)
        self.checks[cid] = c
        return c

    def _skip_rest(self, reason: str) -> None:
        for cid in CHECK_IDS:
            if cid not in self.checks:
                self._set(cid, SKIP, reason)

    def _run(self, name: str, binary: Path, shim: Path) -> Run:
        rdir = self.work / f"run-{name}"
        root, outside = rdir / "root", rdir / "outside"
        recdir = rdir / f"rec-{self.nonce}"
        for d in (root, outside, recdir):
            d.mkdir(parents=True, exist_ok=True)
        (root / "kvmlab_link").symlink_to("../outside")
        (root / "kvmlab_in.txt").write_text(self.input_text)
        rec = recdir / "oracle.jsonl"
        env = base_env({"LD_PRELOAD": str(shim), "KVMLAB_ORACLE_OUT": str(rec)})
        # confined: it writes its run directory (root, outside and the record beside them,
        # where the confinement check looks), reads its binary and the shim, opens /dev/kvm
        res = run_untrusted([str(binary), "-l"], cwd=root, stdout_path=recdir / "stdout",
                            stderr_path=recdir / "stderr", timeout=self.timeout, env=env,
                            writable=[rdir], readable=[binary.parent, shim], devices=[KVM_DEVICE],
                            uid=self.uid)
        try:
            trace = oracle.load(rec)
        except oracle.RecordError as e:
            trace = oracle.Trace([], False, 0, False, None, unavailable=f"malformed record: {e}")
        run = Run(name, rdir, root, outside, res, trace, res.stdout(), res.stderr())
        self.runs[name] = run
        logdir = self.logs / name
        logdir.mkdir(parents=True, exist_ok=True)
        for f in ("stdout", "stderr", "oracle.jsonl"):
            if (recdir / f).exists():
                shutil.copyfile(recdir / f, logdir / f)
        return run

    def _records(self, run: Run, lo: int, hi: int, limit: int = 12) -> List[str]:
        ex = run.trace.exits[max(0, lo):max(0, hi)]
        out = [e.brief() for e in ex[:limit]]
        if len(ex) > limit:
            out.append(f"... {len(ex) - limit} more exits")
        return out

    # -- the grading -----------------------------------------------------------
    def grade(self) -> Result:
        start = time.monotonic()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        error = None
        sub: Optional[Submission] = None
        api: Optional[guestapi.GuestApi] = None
        self.input_text = f"kvmlab-input-{self.nonce}:0123456789abcdefghijklmnopqrstuvwxyz\n"
        try:
            sub = load(self.path, self.work)
            api = guestapi.analyse(sub.guest_c.read_text(errors="replace"))
            self._grade(sub, api)
        except SubmissionError as e:
            error = e.to_dict()
            self._set("build", FAIL, f"submission unusable: {e.message}")
            self._skip_rest("the submission could not be opened")
        except KvmLabError as e:
            error = e.to_dict()
            self._skip_rest(f"harness error at stage {e.stage}: {e.message}")
        finally:
            confinement.drop_device_nodes(self.uid)
            if not self.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        checks = [self.checks[c] for c in CHECK_IDS if c in self.checks]
        deduction = self.rubric.build_deductions.get(self.profile.name, 0) if self.profile else 0
        if self.profile and self.handin and self.handin.beyond_two:
            deduction += self.rubric.extra_files_deduction
        verdict, score = self._verdict(checks, error, self.rubric, deduction, self.review)
        return Result(submission=sub.name if sub else self.path.name, origin=str(self.path),
                      verdict=verdict, score=score, checks=checks,
                      duration=time.monotonic() - start,
                      api=api.summary() if api else {}, error=error,
                      runs={k: r.summary() for k, r in self.runs.items()}, nonce=self.nonce,
                      build=self.profile.name if self.profile else None, deduction=deduction,
                      review=list(self.review), extras=dict(self.extras),
                      handin=self.handin.describe() if self.handin else "")

    @staticmethod
    def _verdict(checks: List[Check], error: Optional[dict], rubric: rubricmod.Rubric,
                 deduction: float = 0, review: Optional[List[str]] = None) -> tuple:
        """(verdict, score).  Only scored checks (the rubric's assignment checks, and
        robustness checks it gives a weight) count toward either."""
        scored = [c for c in checks if rubric.scored(c.id)]
        total = sum(c.weight for c in scored)
        earned = sum(c.weight * (1 if c.status == PASS else rubric.partial if c.status == PARTIAL else 0)
                     for c in scored)
        score = max(0.0, round(100.0 * earned / total - deduction, 1)) if total else 0.0
        by = {c.id: c for c in checks}
        if error and error.get("kind") == "infra":
            return "ERROR", score
        if by.get("build") and by["build"].status == FAIL:
            return ("REVIEW" if review else "FAIL"), 0.0
        if by.get("oracle") and by["oracle"].status != PASS:
            return "ORACLE_UNAVAILABLE", score
        if any(c.status == FAIL for c in scored):
            return "FAIL", score
        if any(c.status == SKIP for c in scored):
            return "INCOMPLETE", score
        if any(c.status == PARTIAL for c in scored):
            return "PARTIAL", score
        return "PASS", score

    def _grade(self, sub: Submission, api: guestapi.GuestApi) -> None:
        probe_kvm()
        shim = buildmod.build_oracle()
        self.handin = handinmod.read(sub.guest_c)
        own = buildmod.build_pair(self.work / "build-own", sub.hypervisor_c, sub.guest_c, self.handin)
        for a in own.attempts:
            name = a.split(":")[0]
            log = self.work / "build-own" / name / "build.log"
            if log.exists():
                self.logs.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, self.logs / f"build-own.{name}.log")
        tried = [a.split(" (")[0] for a in own.attempts]
        if own.missing_header:
            who = [f.name for f in (sub.guest_c, sub.hypervisor_c)
                   if own.missing_header in buildmod.includes_of(f)]
            msg = (f"{' and '.join(who) or 'the submission'} includes {own.missing_header}, which is not "
                   "part of the submission (only guest.c and kvm-hello-world.c are handed in)")
            self.review.append(msg + ": a human should decide whether to supply it")
            self._set("build", FAIL, msg, evidence=[f"builds tried: {', '.join(tried)}",
                                                    "marked for human review"] + own.notes,
                      output=_tail(own.log.read_bytes(), 2000))
            self._skip_rest("see build")
            return
        if not own.ok:
            # the first error of the most lenient build, in words (file:line: tool: message)
            found = buildlog.first_error(own.log.read_text(errors="replace"))
            self._set("build", FAIL, "the submission does not build with upstream's flags, with Ubuntu's "
                                     "compiler defaults, nor with warnings not fatal"
                                     + (f": {found.headline()}" if found else ""),
                      evidence=[f"builds tried: {', '.join(tried)}",
                                f"last command: {' '.join(own.argv)} (in a copy of the harness build dir)"]
                      + own.notes, output=found.context if found else _tail(own.log.read_bytes(), 2000))
            self._skip_rest("see build")
            return
        self.profile = own.profile
        deduction = self.rubric.build_deductions.get(own.profile.name, 0)
        needed = ("" if own.profile == buildmod.PROFILES[0] else
                  f"; needed: {own.profile.name}" + (f" (rubric: -{deduction:g} points)" if deduction else ""))
        handed = self.handin.describe()
        self._set("build", PASS, f"built {own.profile.description}{needed}",
                  evidence=[f"builds tried: {', '.join(tried)}",
                            f"command: {' '.join(own.argv)}",
                            f"guest64.img: {own.guest_image_size} bytes"] + own.notes
                  + ([f"hand-in: {handed}"] if handed else []))
        self.own_image = _file(own.directory / "guest64.img", 1 << 21)
        # the oracle needs libc's ioctl() in a dynamic binary
        dynamic = buildmod.is_dynamic(own.binary)
        imports = buildmod.imports_of(own.binary) or []
        if not dynamic or "ioctl" not in imports:
            why = ("the hypervisor is statically linked" if not dynamic else
                   "the hypervisor does not call libc ioctl() (raw syscalls?)")
            self._set("oracle", FAIL, f"oracle unavailable: {why}; nothing can be judged",
                      evidence=[f"dynamic: {dynamic}", f"imports ioctl: {'ioctl' in imports}"])
            self._skip_rest("oracle unavailable")
            return
        run = self._run("own", own.binary, shim)
        if run.trace.unavailable:
            self._set("oracle", FAIL, f"oracle unavailable: {run.trace.unavailable}",
                      evidence=[f"own run: {run.result.describe()}"], output=_excerpt(run.stdout))
            self._skip_rest("oracle unavailable")
            return
        self._set("oracle", PASS, f"{len(run.trace.exits)} exits recorded in the own run",
                  evidence=[f"vcpus: {run.trace.vcpus}", "hypervisor is dynamic and imports ioctl"])
        self._check_halts(run)
        self.own_findings = ownrun.judge(run.trace, run.stdout, self.own_image)
        guestapi.bind_wrappers(api, ownrun.ports(run.trace, self.own_findings))

        func = None
        if not api.bound("printVal"):
            why = api.unbound.get("printVal") or "guest.c defines no printVal() under a name the harness knows"
            self.testguest_problem = (f"the harness test guest cannot call printVal ({why}), which marks its "
                                      "steps: judged from the own run alone")
        else:
            func = self._testguest_run("func", 1, sub, api, shim)
        if func is not None:
            self._check_printval(func)
            self._check_getnumexits(func, api)
            self._check_display(func, api)
            self._check_fs(func, api)
        self._merge_own_partb(api)
        self._files_of_own_guest(run, api)
        self._robustness(sub, api, shim)
        self._skip_rest("not reached")

    def _save_log(self, name: str, built: buildmod.Built) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if built.log.exists():
            shutil.copyfile(built.log, self.logs / f"{name}.log")

    def _testguest_run(self, name: str, mode: int, sub: Submission, api: guestapi.GuestApi,
                       shim: Path) -> Optional[Run]:
        abs_path = str((self.work / f"run-{name}" / "outside" / "kvmlab_escape_abs.txt").resolve())
        cfg = guestapi.config_header(api, mode=mode, nonce=self.nonce, abs_path=abs_path)
        if self.testguest_problem and name != "func":
            return None  # it did not build (or bind) for the first run: said once, in build
        func = getattr(self, "func_build", None)
        if name != "func" and func is not None:  # one build, the mode patched in
            patched = func.binary.with_name(f"kvm-hello-world.{name}")
            if buildmod.with_mode(func.binary, self.nonce, mode, patched):
                run = self._run(name, patched, shim)
                run.notes = list(func.notes)
                return run
        built = buildmod.build_testguest(self.work / f"build-{name}", sub.hypervisor_c, sub.guest_c, cfg,
                                         self.profile or buildmod.PROFILES[0], self.handin)
        self._save_log(f"build-{name}", built)
        if not built.ok:
            found = buildlog.first_error(built.log.read_text(errors="replace"))
            self.testguest_problem = ("the harness test guest did not build with this guest.c "
                                      "(see build): judged from the own run alone")
            b = self.checks.get("build")
            if b is not None:
                b.evidence.append(f"harness test guest (not the student's build) did not build with this "
                                  f"guest.c (log: logs/build-{name}.log)"
                                  + (f": {found.headline()}" if found else ""))
                if not b.output:
                    b.output = found.context if found else _tail(built.log.read_bytes(), 800)
            return None
        if name == "func":
            self.func_build = built
        run = self._run(name, built.binary, shim)
        run.notes = list(built.notes)
        return run

    # -- checks on the own run ------------------------------------------------------
    def _check_halts(self, run: Run) -> None:
        last = run.trace.last
        ok = (last is not None and last.reason == REASON_HLT and run.result.returncode == 0)
        ev = [f"process: {run.result.describe()}",
              f"last exit: {last.brief() if last else 'none'}",
              f"exits: {len(run.trace.exits)}"]
        if run.stderr:
            ev.append("stderr: " + _tail(run.stderr, 300))
        n = len(run.trace.exits)
        self._set("halts_cleanly", PASS if ok else FAIL,
                  "halted with KVM_EXIT_HLT and exit status 0" if ok else
                  "did not end with KVM_EXIT_HLT and exit status 0",
                  evidence=ev, records=self._records(run, n - 3, n), output=_excerpt(run.stdout))

    # -- checks on the harness test guest ---------------------------------------------
    def _find_mark(self, run: Run, value: int, start: int = 0) -> Optional[int]:
        """The exit that carried ``value`` in its OUT data, or else the first whose
        handling printed it (a value that travels in pieces or through memory)."""
        i = run.trace.find_out_value(value, start)
        if i is not None:
            return i
        for j in range(start, len(run.trace.exits)):
            if _shows(run.trace.output_of(run.trace.exits[j], run.stdout), value):
                return j
        return None

    def _marks(self, run: Run, *values: int) -> List[Optional[int]]:
        out, start = [], 0
        for v in values:
            i = self._find_mark(run, v, start)
            out.append(i)
            if i is not None:
                start = i + 1
        return out

    def _reached_end(self, run: Run) -> str:
        return (f"the run ended ({run.result.describe()}) after {len(run.trace.exits)} exits; "
                f"last: {run.trace.last.brief() if run.trace.last else 'none'}")

    def _pv_after(self, run: Run, i: int, port: int, count: int = 1) -> List[Optional[int]]:
        """Values of the next ``count`` printVal exits (same port as the marks) after index i:
        OUTs whose value was printed while handling them (an OUT of a port number or
        an opcode that comes first in a printVal of several OUTs prints nothing)."""
        vals: List[Optional[int]] = []
        printed = {j: v for j, v in ownrun.printed_values(run.trace, run.stdout)}
        for j in range(i + 1, len(run.trace.exits)):
            e = run.trace.exits[j]
            if len(vals) == count:
                break
            if e.reason == REASON_IO and e.direction == "out" and e.port == port and j in printed:
                vals.append(printed[j])
        return vals + [None] * (count - len(vals))

    def _check_printval(self, run: Run) -> None:
        i = self._find_mark(run, MARK + 1)
        if i is None:
            ran_through = run.result.returncode == 0 and run.trace.last is not None \
                and run.trace.last.reason == REASON_HLT
            if ran_through:  # the guest ran to its end: the values above 255 were lost
                self._set("printval", FAIL, f"printVal(0x{MARK + 1:x}) (a value above 255): no exit carried "
                          "or printed it, though the test guest ran to a clean halt",
                          evidence=[self._reached_end(run)], records=self._records(run, 0, 8),
                          output=_excerpt(run.stdout))
                self.checks["printval"].case = "value above 255"
            else:
                self.testguest_problem = ("the harness test guest's printVal marks never showed "
                                          f"({self._reached_end(run)}): judged from the own run alone")
            return
        ex = run.trace.exits[i]
        printed = run.trace.output_of(ex, run.stdout)
        if i + 1 < len(run.trace.exits) and not printed.strip():
            printed = run.trace.output_of(run.trace.exits[i + 1], run.stdout)
        ok = _shows(printed, MARK + 1)
        if ok:
            self.pv_port = ex.port
        self._set("printval", PASS if ok else FAIL,
                  f"printVal({MARK + 1}) {'printed' if ok else 'did not print'} its argument during exit #{ex.n}",
                  evidence=[f"printVal port (from the record): 0x{ex.port:x}",
                            f"output during that exit: {printed[:200]!r}"],
                  records=self._records(run, i, i + 1))
        if not ok:
            self.checks["printval"].case = "value above 255"

    def _check_getnumexits(self, run: Run, api: guestapi.GuestApi) -> None:
        """The test guest does n = getNumExits(); printVal(n) twice, a mark between.
        Judged by what reached the guest (the value it printed) against the oracle's
        count at the last exit of each call - whatever the transport: IN data, a
        write into guest memory, a register."""
        if not api.bound("getNumExits"):
            return
        i1, im, i2 = self._marks(run, MARK + 1, MARK + 0x11, MARK + 2)
        if i1 is None or not getattr(self, "pv_port", None):
            return
        if im is None or i2 is None:
            self._set("getnumexits", FAIL, "the run did not get past getNumExits()",
                      evidence=[self._reached_end(run)],
                      records=self._records(run, i1, len(run.trace.exits)))
            return
        port = self.pv_port
        recs = self._records(run, i1, i2 + 1, 16)
        calls = []
        for lo, hi in ((i1, im), (im, i2)):
            printed_at = [j for j, _ in ownrun.printed_values(run.trace, run.stdout)
                          if lo < j < hi and run.trace.exits[j].port == port]
            pv = run.trace.exits[printed_at[-1]] if printed_at else run.trace.exits[hi - 1]
            hi = printed_at[-1] + 1 if printed_at else hi
            if hi - 1 <= lo or pv.direction != "out" or pv.port != port or pv.value is None:
                self._set("getnumexits", FAIL, "no printVal() of the returned value after getNumExits()",
                          records=recs)
                return
            spent = run.trace.exits[lo + 1:hi - 1]
            count = sum(1 for e in run.trace.exits[:hi - 1] if e.ret == 0) if spent else None
            ins = [e for e in spent if e.reason == REASON_IO and e.direction == "in"]
            printed = pv.value & 0xFFFFFFFF
            if not spent:
                how = "made no exit"
            elif ins:
                how = f"IN at exit #{ins[-1].n} replied {ins[-1].reply_value}"
            else:
                how = (f"no IN exit: any value came back through guest memory or a register during "
                       f"exit #{spent[0].n}" + (f"..#{spent[-1].n}" if len(spent) > 1 else ""))
            calls.append((spent, count, printed, how, pv.n))
        ev = [f"call {k + 1}: {len(sp)} exit(s), the guest printed {pr} (exit #{pn}); "
              f"oracle count at its last exit: {c if c is not None else '-'}; {how}"
              for k, (sp, c, pr, how, pn) in enumerate(calls)]
        ev.append("accepted: the oracle's count, or one less (whether the current exit counts)")
        (sp1, c1, p1, h1, _), (sp2, c2, p2, h2, _) = calls
        if not sp1 or not sp2:
            self._set("getnumexits", FAIL, "getNumExits() made no exit: the value cannot come from the "
                      f"hypervisor (the guest printed {p1} and {p2})", evidence=ev, records=recs)
            return
        off1, off2 = c1 - p1, c2 - p2
        if off1 == off2 and off1 in (0, 1):
            self._set("getnumexits", PASS,
                      f"returned {p1} and {p2} to the guest; the oracle counted {c1} and {c2} exits "
                      f"({h1})", evidence=ev, records=recs)
        elif p2 - p1 == c2 - c1 and p2 != p1:
            self._set("getnumexits", PARTIAL,
                      f"returned {p1} and {p2}: it counts exits, but from another baseline than the "
                      f"oracle's {c1} and {c2}", evidence=ev, records=recs)
        else:
            self._set("getnumexits", FAIL,
                      f"the guest printed {p1} and {p2}; the oracle counted {c1} and {c2} exits "
                      f"({h1})", evidence=ev, records=recs)

    def _check_display(self, run: Run, api: guestapi.GuestApi) -> None:
        """Two strings: the nonce line at a GVA above 0xFF whose low byte is 0, and a
        long line on the stack; each must be printed whole in exactly one exit."""
        if not api.bound("display") or not getattr(self, "pv_port", None):
            return
        port = self.pv_port
        i2, i3, i12, i13 = self._marks(run, MARK + 2, MARK + 3, MARK + 0x12, MARK + 0x13)
        if i2 is None:
            return
        if i3 is None:
            self._set("display_one_exit", FAIL, "the run did not get past display(): "
                      + self._reached_end(run),
                      records=self._records(run, i2, len(run.trace.exits)),
                      output=_tail(run.stderr, 400))
            return
        long_text = "".join(chr(ord("a") + k % 26) for k in range(240)) + self.nonce

        def one(lo: int, hi: int, text: bytes) -> tuple:
            between = run.trace.exits[lo + 1:hi]
            printed = b"".join(run.trace.output_of(e, run.stdout) for e in between)
            return between, printed, len(between) == 1 and text in printed

        text = f"kvmlab-display-{self.nonce} one exit".encode()
        between, printed, ok = one(i2, i3, text)
        addr = self._pv_after(run, i3, port)[0]
        ev = [f"short string at GVA {hex(addr) if addr is not None else '?'}: {len(between)} exit(s), "
              f"{'printed whole' if text in printed else 'not printed'}"]
        if len(between) == 1 and between[0].value is not None:
            ev.append(f"the exit carried 0x{between[0].value:x}")
        records = self._records(run, i2, i3 + 1)
        long_ok, case = None, ""
        if i12 is not None and i13 is not None:
            lb, lp, long_ok = one(i12, i13, long_text.encode())
            laddr = self._pv_after(run, i13, port)[0]
            ev.append(f"long string ({len(long_text)} chars) at GVA "
                      f"{hex(laddr) if laddr is not None else '?'}: {len(lb)} exit(s), "
                      f"{'printed whole' if long_text.encode() in lp else 'not printed whole'}")
            records += self._records(run, i12, i13 + 1)
        elif i12 is not None:
            long_ok = False
            ev.append("the run did not get past display() of the long string: " + self._reached_end(run))
        if not ok:
            case = "an address above 0xFF"
            msg = (f"{len(between)} exit(s), the string at {hex(addr) if addr is not None else '?'} "
                   f"{'printed' if text in printed else 'not printed'}")
        elif long_ok is False:
            case = "a long string"
            msg = f"the {len(long_text)}-char string was not printed whole in one exit"
        else:
            msg = "one exit printed the whole string" + (", and one the long one" if long_ok else "")
        c = self._set("display_one_exit", PASS if ok and long_ok is not False else FAIL, msg,
                      evidence=ev, records=records, output=_excerpt(printed))
        c.case = case

    def _check_fs(self, run: Run, api: guestapi.GuestApi) -> None:
        if not api.fs:
            for cid in ("fs_several_files", "fs_read", "multi_arg", "fs_confinement"):
                self._set(cid, SKIP, f"file functions not usable by the test guest: {api.fs_problem}")
            return
        i4, i5, i6, i7 = self._marks(run, MARK + 4, MARK + 5, MARK + 6, MARK + 7)
        port = getattr(self, "pv_port", None)  # set only when the test guest's printVal printed its mark
        a1 = f"alpha-{self.nonce}-1\n".encode()
        b1 = f"bravo-{self.nonce}-only\n".encode()
        a2 = f"alpha-{self.nonce}-2\n".encode()
        n_ex = len(run.trace.exits)
        fsig = ", ".join(f"{k}: {v}" for k, v in api.summary()["fs_functions"].items())
        # several files
        if i4 is None or not port:
            for cid in ("fs_several_files", "fs_read", "multi_arg", "fs_confinement"):
                self._set(cid, SKIP, "the run did not reach the file tests: " + self._reached_end(run))
            return
        fa, fb, w1, w2, w3 = self._pv_after(run, i4, port, 5)
        da = _file(run.root / "kvmlab_a.txt")
        db = _file(run.root / "kvmlab_b.txt")
        ok = da == a1 + a2 and db == b1
        self._set("fs_several_files", PASS if ok else FAIL,
                  "both files hold exactly what was written" if ok else
                  "the files on disk do not hold what the guest wrote",
                  evidence=[f"functions used: {fsig}",
                            f"open(kvmlab_a.txt) -> {_signed(fa)}, open(kvmlab_b.txt) -> {_signed(fb)}",
                            f"kvmlab_a.txt on disk: {_show(da)} (want {(a1 + a2)!r})",
                            f"kvmlab_b.txt on disk: {_show(db)} (want {b1!r})"],
                  records=self._records(run, i4, i5 if i5 is not None else n_ex, 16))
        # read
        want = self.input_text.encode()[:37]
        if i5 is None:
            for cid in ("fs_read", "multi_arg", "fs_confinement"):
                self._set(cid, SKIP, "the run did not reach the read test: " + self._reached_end(run))
            return
        fr, r, csum = self._pv_after(run, i5, port, 3)
        end = i6 if i6 is not None else n_ex
        shown = b"".join(run.trace.output_of(e, run.stdout) for e in run.trace.exits[i5 + 1:end])
        read_ok = r == 37 and csum == sum(want) and (not api.bound("display") or want in shown)
        self._set("fs_read", PASS if read_ok else FAIL,
                  f"read(fd, buf, 37) returned {_signed(r)}; checksum {csum} (want {sum(want)})",
                  evidence=[f"open(kvmlab_in.txt) -> {_signed(fr)}",
                            f"file starts {self.input_text.encode()[:40]!r}",
                            "displayed: " + ("yes" if want in shown else "no")],
                  records=self._records(run, i5, end, 16), output=_excerpt(shown))
        lens = (len(a1), len(b1), len(a2))
        multi_ok = (w1, w2, w3) == lens and r == 37 and ok and fa != fb
        self._set("multi_arg", PASS if multi_ok else FAIL,
                  "fd, buffer and count reached the hypervisor" if multi_ok else
                  "some argument did not arrive (see returns and file contents)",
                  evidence=[f"write returns {(_signed(w1), _signed(w2), _signed(w3))}, want {lens}",
                            f"distinct descriptors: {fa != fb}",
                            f"read of 37 from a {len(self.input_text)}-byte file returned {_signed(r)}",
                            f"file contents exact: {ok}"])
        # confinement
        if i6 is None:
            self._set("fs_confinement", SKIP, "the run did not reach the escape attempts: "
                      + self._reached_end(run))
            return
        e1, e2, e3 = self._pv_after(run, i6, port, 3)
        targets = {"../kvmlab_escape_dotdot.txt": run.dir / "kvmlab_escape_dotdot.txt",
                   "<absolute path outside>": run.outside / "kvmlab_escape_abs.txt",
                   "kvmlab_link/kvmlab_escape_link.txt (symlink out)": run.outside / "kvmlab_escape_link.txt"}
        escaped = [k for k, p in targets.items() if p.exists() or p.is_symlink()]
        ev = [f"open returns: dotdot {_signed(e1)}, absolute {_signed(e2)}, symlink {_signed(e3)}"]
        ev += [f"{k}: {'CREATED ' + str(p) if k in escaped else 'not created'}" for k, p in targets.items()]
        if i7 is None and not escaped:
            self._set("fs_confinement", SKIP,
                      "the run stopped during the escape attempts; nothing escaped before that: "
                      + self._reached_end(run), evidence=ev)
            return
        self._set("fs_confinement", FAIL if escaped else PASS,
                  f"the guest created files outside its directory via {', '.join(escaped)}" if escaped
                  else "no escape attempt reached a file outside the directory",
                  evidence=ev, records=self._records(run, i6, i7 if i7 is not None else n_ex, 16))

    # what the own run's demo exercised, per check, and whether the test guest's case is beyond it
    _ROLE = {"printval": "printVal", "getnumexits": "getNumExits", "display_one_exit": "display"}

    def _beyond_demo(self, cid: str, own: ownrun.Finding, case: str) -> bool:
        ex = own.exercised
        if case == "value above 255":
            return ex.get("max_value", 0) <= 255
        if case == "an address above 0xFF":
            return ex.get("max_address", 0) <= 0xFF
        if case == "a long string":
            return ex.get("max_length", 0) < 240
        return False

    def _merge_own_partb(self, api: guestapi.GuestApi) -> None:
        """printVal, getNumExits, display: the own run's demo first; the harness test
        guest adds the cases the demo does not exercise, and never turns a working demo
        into a SKIP.  A check nothing could judge is SKIP only when guest.c lacks the
        function (an incomplete hand-in)."""
        for cid, role in self._ROLE.items():
            own = self.own_findings.get(cid) or ownrun.Finding(ownrun.NONE, "not judged")
            test = self.checks.get(cid)
            tline = (f"harness test guest: {test.status}, {test.message}" if test is not None else
                     f"harness test guest: {self.testguest_problem or api.unbound.get(role) or 'not run'}")
            if own.status == ownrun.PASS:
                if test is not None and test.status in (FAIL, PARTIAL) and self._beyond_demo(cid, own, test.case):
                    c = self._set(cid, test.status, f"{test.message} ({test.case}; the own guest's demo "
                                                    f"passes: {own.message})",
                                  evidence=test.evidence + own.evidence, records=test.records,
                                  output=test.output)
                elif test is not None and test.status in (FAIL, PARTIAL) and cid == "getnumexits":
                    c = self._set(cid, PARTIAL, f"{own.message}; but {tline}",
                                  evidence=own.evidence + test.evidence, records=test.records)
                else:
                    c = self._set(cid, PASS, own.message + (f" ({tline})" if test is None else ""),
                                  evidence=own.evidence + [tline] + (test.evidence if test else []),
                                  records=test.records if test else [],
                                  output=test.output if test else "")
                continue
            if test is not None:
                test.evidence.append(f"own guest: {own.message}")
                continue
            if not api.has(role):
                self._set(cid, SKIP, f"guest.c defines no {role}() (nor another name for it); "
                                     f"own guest: {own.message}")
            else:
                self._set(cid, FAIL, f"not shown working: own guest: {own.message}; {tline}",
                          evidence=own.evidence)
                self.review.append(f"{role}: the harness test guest could not drive it and the own run "
                                   "does not show it working")

    def _files_of_own_guest(self, run: Run, api: guestapi.GuestApi) -> None:
        """The file checks, judged again on what the hypervisor did to files while the
        student's own guest ran (fileops).  The better-supported verdict stands: the test
        guest can only call an API it recognises, the own guest uses its own."""
        f = fileops.judge(run.trace.fs, run.root)
        self.extras["seek"] = f"{f['seek'].status}: {f['seek'].message}" if f["seek"].status != fileops.NONE \
            else "not used (optional)"
        several = f["several_files"]
        if several.status == fileops.PASS and f["write"].status != fileops.PASS:
            several = fileops.Finding(PARTIAL, several.message + "; but " + f["write"].message,
                                      several.evidence + f["write"].evidence)
        elif several.status == fileops.PASS:
            several = fileops.Finding(PASS, several.message + "; " + f["write"].message,
                                      several.evidence + f["write"].evidence)
        for cid, own in (("fs_several_files", several), ("fs_read", f["read"]), ("multi_arg", f["multi_arg"])):
            c = self.checks.get(cid)
            line = f"own guest: {own.message}"
            if c is None:  # the test guest did not get to the files: the own run alone
                why = self.testguest_problem or api.fs_problem or "the harness test guest did not reach the files"
                if own.status != fileops.NONE:
                    self._set(cid, own.status, f"{line} (harness test guest: {why})", evidence=own.evidence)
                elif api.fs:  # file functions the harness could not drive, and no demo of them
                    self._set(cid, FAIL, f"not shown working: {line}; harness test guest: {why}")
                    if not any(r.startswith("file calls:") for r in self.review):
                        self.review.append("file calls: the harness test guest could not drive them and the "
                                           "own run does not show them")
                else:
                    self._set(cid, SKIP, f"{line}; harness test guest: {why}")
                continue
            if own.status == fileops.NONE:
                c.evidence.append(line)
            elif RANK[own.status] > RANK[c.status]:
                self._set(cid, own.status, f"own guest: {own.message} (harness test guest: {c.status}, "
                                           f"{c.message})",
                          evidence=own.evidence + c.evidence, records=c.records, output=c.output)
            else:
                c.evidence += [line] + own.evidence

    def _robustness(self, sub: Submission, api: guestapi.GuestApi, shim: Path) -> None:
        cases = [("robust_bad_address", "badaddr", 2, api.bound("display"),
                  api.unbound.get("display", "guest.c defines no display()")),
                 ("robust_huge_length", "hugelen", 3, bool(api.fs),
                  f"file functions not usable: {api.fs_problem}"),
                 ("robust_unknown_port", "unknownport", 4, True, "")]
        for cid, name, mode, possible, why in cases:
            if not possible:
                self._set(cid, SKIP, why)
                continue
            run = self._testguest_run(name, mode, sub, api, shim)
            if run is None:
                self._set(cid, SKIP, getattr(self, "testguest_problem", "test guest did not build"))
                continue
            res = run.result
            crashed = res.crashed or res.timed_out
            n = len(run.trace.exits)
            self._set(cid, FAIL if crashed else PASS,
                      f"the hypervisor {res.describe()}" + (" (a crash)" if res.crashed else
                                                            " (hung)" if res.timed_out else ""),
                      evidence=[f"process: {res.describe()}",
                                "stderr: " + (_tail(run.stderr, 300) or "(empty)")],
                      records=self._records(run, n - 3, n), output=_tail(run.stdout, 300))


def _file(p: Path, limit: int = 4096) -> Optional[bytes]:
    try:
        return p.read_bytes()[:limit]
    except OSError:
        return None


def _show(data: Optional[bytes]) -> str:
    return "(missing)" if data is None else repr(data[:200])


def _signed(v: Optional[int]) -> str:
    if v is None:
        return "?"
    return str(v - (1 << 32) if v >= 1 << 31 else v)


def grade(path: Path, out_dir: Path, **kw) -> Result:
    return Grader(path, out_dir, **kw).grade()
