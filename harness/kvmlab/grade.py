"""Grading one submission: builds, runs, and checks judged against the exit record.

Runs (each a fresh scratch directory ``<work>/<run>/root`` as the working directory,
with ``outside/`` next to it and ``root/kvmlab_link -> ../outside``):

  own         the submission's guest.c in its own hypervisor
  func        the harness test guest (mode 1) in the submission's hypervisor
  badaddr     test guest mode 2: display() of an address outside guest memory
  hugelen     test guest mode 3: write() of 0x7FFFFFF0 bytes
  unknownport test guest mode 4: OUT to a port no hypercall uses

Every check ends PASS, FAIL or SKIP with evidence (oracle records, output
excerpt, files on disk).  A check whose prerequisite is missing is SKIP with the
reason, never FAIL.  See docs/kvm-api-lab.md.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from . import build as buildmod
from . import guestapi, oracle
from .errors import KvmLabError, SubmissionError
from .oracle import REASON_HLT, REASON_IO, Trace
from .sandbox import RunResult, base_env, probe_kvm, run_untrusted
from .submission import Submission, load

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MARK = 0x4B4C0000
MARK_END = MARK + 0xFF
RUN_TIMEOUT = 10.0

WEIGHTS = {
    "build": 0, "oracle": 0, "halts_cleanly": 1, "printval": 1, "getnumexits": 2,
    "display_one_exit": 2, "fs_several_files": 2, "fs_read": 1, "multi_arg": 2,
    "fs_confinement": 1, "robust_bad_address": 1, "robust_huge_length": 1,
    "robust_unknown_port": 1,
}
TITLES = {
    "build": "builds with the harness-supplied Makefile",
    "oracle": "exit record available (LD_PRELOAD oracle)",
    "halts_cleanly": "own guest halts cleanly (KVM_EXIT_HLT, exit status 0)",
    "printval": "printVal(v) prints v in one exit",
    "getnumexits": "getNumExits() returns the oracle's exit count to the guest",
    "display_one_exit": "display(str) prints str in exactly one exit",
    "fs_several_files": "two files open at once, interleaved writes, contents on disk",
    "fs_read": "read() returns file data to the guest",
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

    @property
    def title(self) -> str:
        return TITLES.get(self.id, self.id)

    @property
    def weight(self) -> int:
        return WEIGHTS.get(self.id, 1)

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "status": self.status, "weight": self.weight,
                "message": self.message, "evidence": self.evidence, "records": self.records,
                "output": self.output}


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

    def check(self, cid: str) -> Check:
        for c in self.checks:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def to_dict(self) -> dict:
        return {"submission": self.submission, "origin": self.origin, "verdict": self.verdict,
                "score": self.score, "duration_s": round(self.duration, 3), "nonce": self.nonce,
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


def _shows(out: bytes, value: int) -> bool:
    """Does ``out`` show ``value`` in decimal (signed or unsigned) or hex?"""
    text = out.decode("latin-1").lower()
    forms = {str(value), f"{value:x}", f"{value:08x}"}
    if value >= 1 << 31:
        forms.add(str(value - (1 << 32)))
    import re
    for f in forms:
        if re.search(r"(?<![0-9a-f])" + re.escape(f) + r"(?![0-9a-f])", text):
            return True
    return False


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

    # -- helpers ---------------------------------------------------------------
    def _set(self, cid: str, status: str, message: str, **kw) -> Check:
        c = Check(cid, status, message, **kw)
        self.checks[cid] = c
        return c

    def _skip_rest(self, reason: str) -> None:
        for cid in WEIGHTS:
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
        res = run_untrusted([str(binary), "-l"], cwd=root, stdout_path=recdir / "stdout",
                            stderr_path=recdir / "stderr", timeout=self.timeout, env=env)
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
            if not self.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        checks = [self.checks[c] for c in WEIGHTS if c in self.checks]
        verdict, score = self._verdict(checks, error)
        return Result(submission=sub.name if sub else self.path.name, origin=str(self.path),
                      verdict=verdict, score=score, checks=checks,
                      duration=time.monotonic() - start,
                      api=api.summary() if api else {}, error=error,
                      runs={k: r.summary() for k, r in self.runs.items()}, nonce=self.nonce)

    @staticmethod
    def _verdict(checks: List[Check], error: Optional[dict]) -> tuple:
        total = sum(c.weight for c in checks)
        earned = sum(c.weight for c in checks if c.status == PASS)
        score = round(100.0 * earned / total, 1) if total else 0.0
        by = {c.id: c for c in checks}
        if error and error.get("kind") == "infra":
            return "ERROR", score
        if by.get("build") and by["build"].status == FAIL:
            return "FAIL", 0.0
        if by.get("oracle") and by["oracle"].status != PASS:
            return "ORACLE_UNAVAILABLE", score
        if any(c.status == FAIL for c in checks):
            return "FAIL", score
        if any(c.status == SKIP for c in checks):
            return "INCOMPLETE", score
        return "PASS", score

    def _grade(self, sub: Submission, api: guestapi.GuestApi) -> None:
        probe_kvm()
        shim = buildmod.build_oracle()
        own = buildmod.build_pair(self.work / "build-own", sub.hypervisor_c, sub.guest_c)
        self._save_log("build-own", own)
        if not own.ok:
            self._set("build", FAIL, "the submission does not build",
                      evidence=[f"command: {' '.join(own.argv)} (in a copy of the harness build dir)"]
                      + own.notes, output=_tail(own.log.read_bytes(), 2000))
            self._skip_rest("the submission does not build")
            return
        self._set("build", PASS, "built kvm-hello-world with the harness Makefile",
                  evidence=[f"command: {' '.join(own.argv)}",
                            f"guest64.img: {own.guest_image_size} bytes"] + own.notes)
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

        if not api.has("printVal"):
            self._skip_rest("guest.c defines no printVal(); the harness test guest needs it to mark "
                            "its steps (functions must follow the assignment's names)")
            return
        func = self._testguest_run("func", 1, sub, api, shim)
        if func is None:
            for cid in ("printval", "getnumexits", "display_one_exit", "fs_several_files",
                        "fs_read", "multi_arg", "fs_confinement"):
                self._set(cid, SKIP, self.testguest_problem)
        else:
            self._check_printval(func)
            self._check_getnumexits(func, api)
            self._check_display(func, api)
            self._check_fs(func, api)
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
        built = buildmod.build_testguest(self.work / f"build-{name}", sub.hypervisor_c, sub.guest_c, cfg)
        self._save_log(f"build-{name}", built)
        if not built.ok:
            self.testguest_problem = (f"the harness test guest did not build with this guest.c "
                                      f"(log: logs/build-{name}.log): "
                                      + _tail(built.log.read_bytes(), 400))
            return None
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
    def _marks(self, run: Run, *values: int) -> List[Optional[int]]:
        out, start = [], 0
        for v in values:
            i = run.trace.find_out_value(v, start)
            out.append(i)
            if i is not None:
                start = i + 1
        return out

    def _reached_end(self, run: Run) -> str:
        return (f"the run ended ({run.result.describe()}) after {len(run.trace.exits)} exits; "
                f"last: {run.trace.last.brief() if run.trace.last else 'none'}")

    def _pv_after(self, run: Run, i: int, port: int, count: int = 1) -> List[Optional[int]]:
        """Values of the next ``count`` printVal exits (same port as the marks) after index i."""
        vals: List[Optional[int]] = []
        for e in run.trace.exits[i + 1:]:
            if len(vals) == count:
                break
            if e.reason == REASON_IO and e.direction == "out" and e.port == port:
                vals.append(e.value & 0xFFFFFFFF if e.value is not None else None)
        return vals + [None] * (count - len(vals))

    def _check_printval(self, run: Run) -> None:
        i = run.trace.find_out_value(MARK + 1)
        if i is None:
            self._set("printval", FAIL, f"no OUT exit carried the value 0x{MARK + 1:x} passed to printVal()",
                      evidence=[self._reached_end(run)], records=self._records(run, 0, 8),
                      output=_excerpt(run.stdout))
            return
        ex = run.trace.exits[i]
        printed = run.trace.output_of(ex, run.stdout)
        ok = _shows(printed, MARK + 1)
        self.pv_port = ex.port
        self._set("printval", PASS if ok else FAIL,
                  f"printVal({MARK + 1}) {'printed' if ok else 'did not print'} its argument during exit #{ex.n}",
                  evidence=[f"printVal port (from the record): 0x{ex.port:x}",
                            f"output during that exit: {printed[:200]!r}"],
                  records=self._records(run, i, i + 1))

    def _check_getnumexits(self, run: Run, api: guestapi.GuestApi) -> None:
        if not api.has("getNumExits"):
            self._set("getnumexits", SKIP, "guest.c defines no getNumExits()")
            return
        i1, i2 = self._marks(run, MARK + 1, MARK + 2)
        if i1 is None:
            self._set("getnumexits", SKIP, "printVal() marks not found in the record")
            return
        if i2 is None:
            self._set("getnumexits", FAIL, "the run did not get past getNumExits()",
                      evidence=[self._reached_end(run)],
                      records=self._records(run, i1, len(run.trace.exits)))
            return
        port = run.trace.exits[i1].port
        between = run.trace.exits[i1 + 1:i2]
        ins = [k for k in range(i1 + 1, i2) if run.trace.exits[k].reason == REASON_IO
               and run.trace.exits[k].direction == "in"]
        printed = self._pv_after(run, ins[-1] if ins else i1, port)[0]
        recs = self._records(run, i1, i2 + 1)
        if not ins:
            self._set("getnumexits", FAIL,
                      "getNumExits() made no IN exit, so no value came back from the hypervisor "
                      f"(the guest then printed {printed})",
                      evidence=[f"{len(between)} exits between the marks"], records=recs,
                      output=_excerpt(b"".join(run.trace.output_of(e, run.stdout) for e in between)))
            return
        j = ins[-1]
        ex = run.trace.exits[j]
        count = sum(1 for e in run.trace.exits[:j + 1] if e.ret == 0)
        reply = ex.reply_value
        ok = reply is not None and reply in (count, count - 1) and printed == reply
        self._set("getnumexits", PASS if ok else FAIL,
                  f"the IN at exit #{ex.n} returned {reply}; the oracle counted {count} exits "
                  f"(this one included); printVal then carried {printed}",
                  evidence=[f"accepted: {count - 1} or {count} (whether the current exit counts)",
                            f"IN exits between the marks: {len(ins)}"], records=recs)

    def _check_display(self, run: Run, api: guestapi.GuestApi) -> None:
        if not api.has("display"):
            self._set("display_one_exit", SKIP, "guest.c defines no display()")
            return
        i2, i3 = self._marks(run, MARK + 2, MARK + 3)
        if i2 is None:
            self._set("display_one_exit", SKIP, "the run did not reach display(): "
                      + self._reached_end(run))
            return
        if i3 is None:
            self._set("display_one_exit", FAIL, "the run did not get past display(): "
                      + self._reached_end(run),
                      records=self._records(run, i2, len(run.trace.exits)),
                      output=_tail(run.stderr, 400))
            return
        between = run.trace.exits[i2 + 1:i3]
        text = f"kvmlab-display-{self.nonce} one exit\n".encode()
        printed = b"".join(run.trace.output_of(e, run.stdout) for e in between)
        addr = self._pv_after(run, i3, run.trace.exits[i3].port)[0]
        ok = len(between) == 1 and text.rstrip(b"\n") in printed
        ev = [f"exits spent in display(): {len(between)}",
              f"string GVA (printed by the test guest): {hex(addr) if addr is not None else '?'}"]
        if len(between) == 1 and between[0].value is not None:
            ev.append(f"the exit carried 0x{between[0].value:x}")
        self._set("display_one_exit", PASS if ok else FAIL,
                  ("one exit printed the whole string" if ok else
                   f"{len(between)} exits, string {'printed' if text.rstrip() in printed else 'not printed'}"),
                  evidence=ev, records=self._records(run, i2, i3 + 1), output=_excerpt(printed))

    def _check_fs(self, run: Run, api: guestapi.GuestApi) -> None:
        if not api.fs:
            for cid in ("fs_several_files", "fs_read", "multi_arg", "fs_confinement"):
                self._set(cid, SKIP, f"file functions not usable by the test guest: {api.fs_problem}")
            return
        i4, i5, i6, i7 = self._marks(run, MARK + 4, MARK + 5, MARK + 6, MARK + 7)
        port = self.checks["printval"].status == PASS and getattr(self, "pv_port", None)
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
        read_ok = r == 37 and csum == sum(want) and (not api.has("display") or want in shown)
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

    def _robustness(self, sub: Submission, api: guestapi.GuestApi, shim: Path) -> None:
        cases = [("robust_bad_address", "badaddr", 2, api.has("display"), "guest.c defines no display()"),
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


def _file(p: Path) -> Optional[bytes]:
    try:
        return p.read_bytes()[:4096]
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
