"""What L1 saw, checked against what the guest was told.

Parses the tracefs text that ``harness.observe.hosttrace`` fetched, then, per vCPU:

- aligns calls to hypercalls: the k-th HVC with the workload's call key (function ID in
  x0, or an HVC immediate) issued by that vCPU's thread is the k-th sample of the
  workload on that vCPU.  ``hvc_events`` must equal ``samples``: a guest that issues no
  HVC per call, or two, is caught here;
- ``agreement``: the fraction of calls whose returned pCPU equals the CPU that handled
  that HVC in L1 (the trace event's CPU).  The handler runs preemptible, so L1 may move
  the thread between the HVC's event and the read of ``vcpu->cpu``: a disagreement is
  *explained* when L1 shows the thread moving to the returned CPU before the next HVC
  (``disagreements_explained``);
- explains every change of the returned pCPU: between the HVC before the change and the
  HVC after it (the value is read after its own HVC), L1 must show the vCPU thread
  migrated to the new CPU (``sched_migrate_task``) or switched in on it
  (``sched_switch``).  A change with no such event is listed as unexplained.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .trace import pcpu_of

# "<comm>-<pid> [(<tgid>)] [<cpu>] <flags> <seconds>: <event>: <body>"; comm may hold spaces ("CPU 0/KVM")
LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:(?P<flags>\S{4,5})\s+)?"
                  r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<body>.*)$")
HVC = re.compile(r"HVC at (0x[0-9a-fA-F]+) \(r0: (0x[0-9a-fA-F]+), imm: (0x[0-9a-fA-F]+)\)")
SWITCH = re.compile(r"prev_pid=(\d+) .*?prev_state=(\S+) ==> next_comm=.*? next_pid=(\d+)")
MIGRATE = re.compile(r"pid=(\d+) prio=-?\d+ orig_cpu=(\d+) dest_cpu=(\d+)")
MARK = re.compile(r"harness: (?P<what>\w+)(?P<args>(?: \w+=\S+)*)")
MAX_LISTED = 5


@dataclass
class Hvc:
    ts: float
    cpu: int
    pid: int
    func_id: int  # x0, low 32 bits (an SMCCC function ID is 32 bits wide)
    imm: int
    pc: int


@dataclass
class HostTrace:
    hvcs: List[Hvc] = field(default_factory=list)
    # (ts, cpu, prev_pid, prev_state, next_pid)
    switches: List[Tuple[float, int, int, str, int]] = field(default_factory=list)
    # (ts, cpu, pid, orig_cpu, dest_cpu)
    migrations: List[Tuple[float, int, int, int, int]] = field(default_factory=list)
    # (ts, what, {key: value}) from the harness's trace_marker lines
    marks: List[Tuple[float, str, Dict[str, str]]] = field(default_factory=list)
    unparsed: int = 0

    def marks_of(self, what: str) -> List[Tuple[float, Dict[str, str]]]:
        return [(ts, args) for ts, w, args in self.marks if w == what]


def parse(text_or_path: Union[str, Path]) -> HostTrace:
    text = Path(text_or_path).read_text(errors="replace") if isinstance(text_or_path, Path) else text_or_path
    out = HostTrace()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            out.unparsed += 1
            continue
        ts, cpu, pid, event, body = float(m["ts"]), int(m["cpu"]), int(m["pid"]), m["event"], m["body"]
        if event == "kvm_hvc_arm64":
            h = HVC.search(body)
            if h:
                out.hvcs.append(Hvc(ts, cpu, pid, int(h[2], 16) & 0xFFFFFFFF, int(h[3], 16), int(h[1], 16)))
                continue
        elif event == "sched_switch":
            s = SWITCH.search(body)
            if s:
                out.switches.append((ts, cpu, int(s[1]), s[2], int(s[3])))
                continue
        elif event == "sched_migrate_task":
            s = MIGRATE.search(body)
            if s:
                out.migrations.append((ts, cpu, int(s[1]), int(s[2]), int(s[3])))
                continue
        elif event in ("tracing_mark_write", "print"):
            s = MARK.search(body)
            if s:
                args = dict(a.split("=", 1) for a in s["args"].split())
                out.marks.append((ts, s["what"], args))
                continue
        out.unparsed += 1
    return out


@dataclass(frozen=True)
class CallKey:
    """Which HVCs are the workload's calls: by function ID (x0), or by HVC immediate."""
    func_id: Optional[int] = None
    imm: Optional[int] = None

    def matches(self, h: Hvc) -> bool:
        if self.func_id is not None and h.func_id != (self.func_id & 0xFFFFFFFF):
            return False
        if self.imm is not None and h.imm != self.imm:
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.func_id is not None:
            parts.append(f"x0 = {self.func_id:#x}")
        if self.imm is not None:
            parts.append(f"hvc #{self.imm}")
        return " and ".join(parts) or "any HVC"


def hvc_calls(trace: HostTrace, tids: Dict[int, int]) -> List[dict]:
    """Every HVC issued by the vCPU threads, grouped by (vCPU, function ID, immediate)."""
    by_tid = {t: v for v, t in tids.items()}
    counts = Counter((by_tid[h.pid], h.func_id, h.imm) for h in trace.hvcs if h.pid in by_tid)
    return [{"vcpu": v, "func_id": hex(f), "imm": i, "count": n}
            for (v, f, i), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1]))]


# function IDs that are not host_cpuid: SMCCC arch calls, the standard secure services
# (PSCI, and TRNG: a 6.1 guest seeds its RNG with TRNG_RND64 = 0xc4000053), the standard
# hypervisor services (paravirtualised time), KVM's own vendor calls
STANDARD_RANGES = ((0x80000000, 0x8000FFFF), (0x84000000, 0x8400FFFF), (0xC4000000, 0xC400FFFF),
                   (0x85000000, 0x8500FFFF), (0xC5000000, 0xC500FFFF),
                   (0x86000000, 0x86000000), (0xC6000000, 0xC6000001))
LEARN_MIN = 0.5   # a call ID is learned from the trace only when issued at least this often per call


def is_standard(func: int) -> bool:
    return any(lo <= func <= hi for lo, hi in STANDARD_RANGES)


def issued_key(summary: dict) -> Optional[Tuple[CallKey, int]]:
    """The (function ID, immediate) a run's workload issued, from L1's trace of
    kvm_hvc_arm64 (scenario["hvc_calls"]), and how many times: the most frequent
    non-standard one, if it was issued about once per call or more (a guest that never
    issues its hypercall must not teach anyone some HVC the kernel made twice at boot)."""
    counts: Counter = Counter()
    seen = False
    samples = 0
    for sc in summary.get("scenarios", []) or []:
        if "hvc_calls" not in sc:
            continue
        seen = True
        samples += sum(int(st.get("samples") or 0) for st in (sc.get("per_vcpu") or {}).values())
        for c in sc["hvc_calls"]:
            f = int(str(c.get("func_id")), 0)
            if not is_standard(f):
                counts[(f, int(c.get("imm", 0)))] += int(c.get("count", 0))
    if not seen or not counts:
        return None
    (f, imm), n = counts.most_common(1)[0]
    if n < LEARN_MIN * samples:
        return None
    return CallKey(func_id=f, imm=imm), n


def learn_key(trace: HostTrace, tid: int, samples: int) -> Optional[CallKey]:
    """The (function ID, immediate) this vCPU issued about once per call (what a
    submission chose, read from what its guest did rather than from its patch)."""
    counts = Counter((h.func_id, h.imm) for h in trace.hvcs if h.pid == tid)
    if not counts:
        return None
    (func_id, imm), _ = min(counts.items(), key=lambda kv: (abs(kv[1] - samples), -kv[1]))
    return CallKey(func_id=func_id, imm=imm)


class _Timeline:
    """One thread's scheduler events, sorted by time, for interval queries."""

    def __init__(self, trace: HostTrace, tid: int):
        ev = [(ts, "migrate", orig, dest) for ts, _cpu, pid, orig, dest in trace.migrations if pid == tid]
        ev += [(ts, "switch-in", None, cpu) for ts, cpu, _p, _s, nxt in trace.switches if nxt == tid]
        ev.sort(key=lambda e: e[0])
        self.events = ev
        self.times = [e[0] for e in ev]

    def between(self, t0: float, t1: float) -> list:
        return self.events[bisect.bisect_right(self.times, t0):bisect.bisect_left(self.times, t1)]


def cross_check(trace: HostTrace, tid: int, rets: Sequence[int], key: CallKey, t0: float = 0.0) -> dict:
    """Ground truth for one vCPU: ``rets`` are the workload's return values in order."""
    mine = [h for h in trace.hvcs if h.pid == tid]
    calls = [h for h in mine if key.matches(h)]
    others = Counter(h.func_id for h in mine if not key.matches(h))
    gt = {"call_key": key.describe(), "samples": len(rets), "hvc_events": len(calls),
          "other_hvcs": {hex(f): n for f, n in others.most_common(5)},
          "aligned": len(calls) == len(rets) and len(rets) > 0}
    if not gt["aligned"]:
        gt.update(agreement=None, changes=None, changes_explained=None, disagreements=[], unexplained=[],
                  reason=(f"{len(calls)} HVCs with {key.describe()} for {len(rets)} calls: calls cannot be "
                          "matched to hypercalls one to one"))
        return gt
    timeline = _Timeline(trace, tid)

    def until_next(k: int) -> float:
        """The value of call k is read after its HVC and before the next HVC of this vCPU."""
        return calls[k + 1].ts if k + 1 < len(calls) else float("inf")

    def moved_to(cpu: int, t0_: float, t1_: float) -> list:
        return [e for e in timeline.between(t0_, t1_) if e[3] == cpu]

    agree = raced = 0
    disagreements = []
    for k, (h, r) in enumerate(zip(calls, rets)):
        if pcpu_of(r) == h.cpu:
            agree += 1
            continue
        # the handler runs preemptible: L1 may move the thread between the HVC's trace
        # event and the read of vcpu->cpu; then the value is the new CPU, and L1 shows it
        race = bool(moved_to(pcpu_of(r), h.ts, until_next(k))) if pcpu_of(r) is not None else False
        raced += race
        if len(disagreements) < MAX_LISTED:
            disagreements.append({"call": k, "t_s": round(h.ts - t0, 6), "returned": r, "handled_on": h.cpu,
                                  "moved_there_before_reply": race})
    changes = explained = 0
    unexplained = []
    explanations = []
    for k in range(1, len(rets)):
        a, b = pcpu_of(rets[k - 1]), pcpu_of(rets[k])
        if a is None or b is None or a == b:
            continue
        changes += 1
        hits = moved_to(b, calls[k - 1].ts, until_next(k))
        if hits:
            explained += 1
            if len(explanations) < MAX_LISTED:
                e = hits[-1]
                how = f"migrated {e[2]}->{e[3]}" if e[1] == "migrate" else f"switched in on CPU {e[3]}"
                explanations.append({"call": k, "t_s": round(e[0] - t0, 6), "change": f"{a}->{b}", "by": how})
        elif len(unexplained) < MAX_LISTED:
            unexplained.append({"call": k, "t_s": round(calls[k].ts - t0, 6), "change": f"{a}->{b}",
                                "host_events_between": len(timeline.between(calls[k - 1].ts, calls[k].ts))})
    gt.update(agreement=round(agree / len(rets), 6), disagreements=disagreements,
              disagreements_explained=f"{raced}/{len(rets) - agree}", changes=changes,
              changes_explained=explained, explanations=explanations, unexplained=unexplained,
              migrations=sum(1 for e in timeline.events if e[1] == "migrate"),
              switch_ins=sum(1 for e in timeline.events if e[1] == "switch-in"))
    return gt


def call_times(trace: HostTrace, tid: int, key: CallKey) -> List[Tuple[float, int]]:
    """(L1 time, handling CPU) of each of the vCPU's calls, in order."""
    return [(h.ts, h.cpu) for h in trace.hvcs if h.pid == tid and key.matches(h)]


def time_sharing(trace: HostTrace, tids: Dict[int, int]) -> Dict[str, int]:
    """Per CPU, how many times the vCPU thread switched in differed from the vCPU thread
    switched in before it there: > 0 means vCPUs took turns on that pCPU."""
    by_tid = {t: v for v, t in tids.items()}
    last: Dict[int, int] = {}
    turns: Dict[int, int] = defaultdict(int)
    for ts, cpu, _prev, _state, nxt in sorted(trace.switches):
        if nxt not in by_tid:
            continue
        if cpu in last and last[cpu] != nxt:
            turns[cpu] += 1
        last[cpu] = nxt
    return {str(c): n for c, n in sorted(turns.items())}


def first_ts(trace: HostTrace) -> float:
    times = [h.ts for h in trace.hvcs[:1]] + [m[0] for m in trace.marks[:1]] + [s[0] for s in trace.switches[:1]]
    return min(times) if times else 0.0


def recheck_run(run_dir: Path, summary: dict, key: CallKey) -> dict:
    """Recompute every vCPU's ground truth of a stored run with another call key (e.g. the
    function ID a submission's guest was seen to issue): nothing is booted, the traces
    of the run directory are read again.  Returns the summary, updated in place."""
    from .trace import read_trace

    run_dir = Path(run_dir)
    for sc in summary.get("scenarios", []) or []:
        f = run_dir / (sc.get("l1_trace") or {}).get("file", "")
        if not f.is_file():
            continue
        host = parse(f)
        t0 = first_ts(host)
        for v, per in sc.get("per_vcpu", {}).items():
            b = f.parent / f"vcpu{v}.bin"
            tid = (sc.get("vcpu_threads") or {}).get(v)
            if b.is_file() and tid is not None:
                per["ground_truth"] = cross_check(host, int(tid), list(read_trace(b).ret), key, t0)
    return summary
