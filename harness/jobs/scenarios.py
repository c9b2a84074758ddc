"""The scenario library: what each kind of scenario does in L1 while the workload runs,
and the expectation the harness checks afterwards against L1's ground truth.

| kind       | the harness                                   | expectation                                       |
|------------|-----------------------------------------------|---------------------------------------------------|
| pinned     | pins vCPU k's thread to pCPU p                 | every call on vCPU k returns p                    |
| unpinned   | leaves every vCPU thread on all CPUs (shown)  | every change explained                            |
| loaded     | busy loops in L1                              | at least one change; every change explained       |
| overcommit | two busy vCPUs pinned to one pCPU             | they take turns there; all calls return it        |
| repin      | moves one vCPU thread from pCPU a to b mid-run | exactly one change a -> b, right after the re-pin |
| hotplug    | takes a pCPU offline mid-run, then online     | the offline pCPU never returned; moves explained  |

Each kind also needs the ground truth to hold (every call matched to one HVC, the
returned pCPU equal to the CPU that handled it).  A scenario whose premise did not
happen (no migration under load, the offlined CPU ran no vCPU) is ``inconclusive``,
not failed: that is the machine's scheduling, not the patch.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

from ..core.config import Action
from ..core.deadline import scaled
from ..observe.groundtruth import HostTrace, call_times
from ..observe.hosttrace import HostTracer
from ..observe.trace import describe_ret, pcpu_of

MET, NOT_MET, INCONCLUSIVE = "met", "not-met", "inconclusive"
REPIN_TOLERANCE_S = 0.5  # TCG: the first call after taskset may take a tick or two

EXPECTATIONS = {
    "pinned": "every call on a pinned vCPU returns the pCPU its thread is pinned to",
    "unpinned": "vCPU threads may run on every L1 CPU (affinity shown); every pCPU change is explained by L1",
    "loaded": "L1's load moves the vCPUs: at least one pCPU change, every change explained by L1",
    "overcommit": "vCPUs pinned to one pCPU take turns on it, and every call returns that pCPU",
    "repin": "exactly one change a -> b, right after the harness re-pins the vCPU thread",
    "hotplug": "the offline pCPU is never returned while offline; the vCPU's move off it is explained",
}


def action_argv(tracer: HostTracer, a: Action, tids: Dict[int, int], pins: Dict[int, int]) -> List[str]:
    """One L1 command: mark the trace, act, mark again (so the action has a time in L1's clock)."""
    if a.do == "repin":
        tid = tids[a.vcpu]
        tag = f"vcpu={a.vcpu} from={pins.get(a.vcpu, 'any')} to={a.cpu} tid={tid}"
        act = f"taskset -pc {a.cpu} {tid} >/dev/null"
    else:
        tag = f"cpu={a.cpu}"
        act = f"echo {0 if a.do == 'offline' else 1} > /sys/devices/system/cpu/cpu{a.cpu}/online"
    marker = f"{tracer.tracefs}/trace_marker"
    script = f'echo "harness: {a.do} {tag}" > {marker}; {act}; rc=$?; echo "harness: {a.do}_done {tag} rc=$rc" > {marker}; exit $rc'
    return ["sh", "-c", script]


def run_actions(l1_ssh, tracer: HostTracer, actions: List[Action], tids: Dict[int, int], pins: Dict[int, int],
                started: float, log: Callable[[str], None]) -> List[dict]:
    """Carry out the actions at their times (seconds after ``started``, a monotonic time)."""
    done = []
    for a in actions:
        delay = started + a.at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        res = l1_ssh.run(action_argv(tracer, a, tids, pins), check=False, stage="scenario-action")
        what = f"{a.do} vCPU {a.vcpu} -> pCPU {a.cpu}" if a.do == "repin" else f"CPU {a.cpu} {a.do}"
        log(f"  at {time.monotonic() - started:.2f} s: {what}" + ("" if res.rc == 0 else f" FAILED: {res.err.strip()}"))
        done.append({"at_s": a.at_s, "do": a.do, "cpu": a.cpu, "vcpu": a.vcpu, "rc": res.rc,
                     "error": res.err.strip() if res.rc else None})
    return done


# ---------------------------------------------------------------------------- expectations

def _result(verdict: str, reason: str) -> dict:
    return {"verdict": verdict, "met": verdict == MET, "reason": reason}


def _ground_truth_problems(per_vcpu: Dict[str, dict]) -> List[str]:
    out = []
    for v, s in sorted(per_vcpu.items()):
        gt = s.get("ground_truth") or {}
        if not gt:
            out.append(f"vCPU {v}: no L1 trace")
        elif not gt.get("aligned"):
            out.append(f"vCPU {v}: {gt.get('reason')}")
        elif gt.get("agreement") != 1.0:
            done, total = map(int, gt.get("disagreements_explained", "0/1").split("/"))
            if done == total:
                continue  # each one a preemption between the HVC and the read, shown by L1
            d = next((x for x in gt.get("disagreements") or [] if not x.get("moved_there_before_reply")), {})
            out.append(f"vCPU {v}: {total - done} of {gt['samples']} calls returned a pCPU other than the one "
                       f"that handled the HVC, with no move there in L1 (agreement {gt['agreement']:.4%})"
                       + (f"; call {d['call']}: returned {d['returned']}, handled on CPU {d['handled_on']}" if d else ""))
    return out


def _unexplained(per_vcpu: Dict[str, dict]) -> List[str]:
    out = []
    for v, s in sorted(per_vcpu.items()):
        gt = s.get("ground_truth") or {}
        if gt.get("changes") and gt.get("changes_explained") != gt.get("changes"):
            u = (gt.get("unexplained") or [{}])[0]
            out.append(f"vCPU {v}: {gt['changes'] - gt['changes_explained']} of {gt['changes']} changes unexplained"
                       + (f" (first: call {u.get('call')}, {u.get('change')})" if u else ""))
    return out


def check(kind: str, sc: dict, host: Optional[HostTrace], rets: Dict[str, List[int]], tids: Dict[int, int],
          key) -> dict:
    """Is the scenario's expectation met?  ``sc`` is the scenario's result (per_vcpu with
    ground_truth, pin, affinity, actions); ``rets`` the returned values per vCPU."""
    per_vcpu = sc["per_vcpu"]
    problems = _ground_truth_problems(per_vcpu)
    if problems:
        # the expectation's own finding first (it needs no trace): what the pinned vCPUs answered
        own = _pinned(sc, host, rets, tids, key) if sc.get("pin") and kind in ("pinned", "overcommit") else None
        lead = own["reason"] + "; " if own and not own["met"] else ""
        return _result(NOT_MET, lead + "ground truth: " + "; ".join(problems))
    fn = _CHECKS[kind]
    res = fn(sc, host, rets, tids, key)
    if res["verdict"] != NOT_MET and kind != "pinned":
        unexplained = _unexplained(per_vcpu)
        if unexplained:
            return _result(NOT_MET, "; ".join(unexplained))
    return res


def _pinned(sc, host, rets, tids, key) -> dict:
    bad = []
    for v, p in sorted(sc["pin"].items()):
        r = rets.get(str(v))
        if r is None:
            continue
        wrong = [x for x in r if pcpu_of(x) != p]
        if wrong:
            got = sorted({pcpu_of(x) for x in wrong}, key=str)
            if len(set(wrong)) == 1:
                x = wrong[0]
                what = (f"{x}, its vCPU id," if pcpu_of(x) == int(v) else str(x) if pcpu_of(x) is not None
                        else f"{describe_ret(x)} ({x & 0xFFFFFFFFFFFFFFFF:#x}),")
                bad.append(f"pinned vCPU {v} answered {what} not pCPU {p} ({len(wrong)} of {len(r)} calls)")
            else:
                bad.append(f"vCPU {v} pinned to pCPU {p}: {len(wrong)} of {len(r)} calls returned {got}")
    if bad:
        return _result(NOT_MET, "; ".join(bad))
    pins = ", ".join(f"vCPU {v} -> {p}" for v, p in sorted(sc["pin"].items()) if str(v) in rets)
    return _result(MET, f"every call returned the pinned pCPU ({pins})")


def _unpinned(sc, host, rets, tids, key) -> dict:
    ncpu = sc.get("l1_cpus")
    everything = f"0-{ncpu - 1}" if ncpu and ncpu > 1 else "0"
    aff = sc.get("affinity", {})
    narrowed = [f"vCPU {v}: {when} {a}" for when in ("start", "end") for v, a in aff.get(when, {}).items()
                if a != everything and v in rets]
    if narrowed:
        return _result(NOT_MET, f"not unpinned (affinity should be {everything}): " + "; ".join(narrowed))
    changes = sum((per.get("ground_truth") or {}).get("changes") or 0 for per in sc["per_vcpu"].values())
    return _result(MET, f"affinity {everything} at start and end; {changes} pCPU changes, all explained by L1")


def _loaded(sc, host, rets, tids, key) -> dict:
    changes = sum((per.get("ground_truth") or {}).get("changes") or 0 for per in sc["per_vcpu"].values())
    if changes == 0:
        return _result(INCONCLUSIVE, f"{sc.get('host_load')} busy loops in L1 moved no vCPU this time "
                                     "(no pCPU change to explain)")
    return _result(MET, f"{changes} pCPU changes under load, every one explained by an L1 migration or switch-in")


def _overcommit(sc, host, rets, tids, key) -> dict:
    shared: Dict[int, List[int]] = {}
    for v, p in sc["pin"].items():
        shared.setdefault(p, []).append(v)
    groups = {p: vs for p, vs in shared.items() if len(vs) > 1}
    if not groups:
        return _unpinned(sc, host, rets, tids, key) if not sc["pin"] else _pinned(sc, host, rets, tids, key)
    pinned = _pinned(sc, host, rets, tids, key)
    if not pinned["met"]:
        return pinned
    turns = sc.get("time_sharing", {})
    parts = []
    for p, vs in sorted(groups.items()):
        n = int(turns.get(str(p), 0))
        if n == 0:
            return _result(INCONCLUSIVE, f"vCPUs {vs} pinned to pCPU {p} never took turns there (no switch "
                                         "between their threads in L1's trace)")
        parts.append(f"vCPUs {vs} took turns on pCPU {p} {n} times")
    return _result(MET, "; ".join(parts) + "; every call returned the shared pCPU")


def _mark_time(host: HostTrace, what: str, **match) -> Optional[float]:
    for ts, args in host.marks_of(what):
        if all(args.get(k) == str(v) for k, v in match.items()):
            return ts
    return None


def _repin(sc, host, rets, tids, key) -> dict:
    a = next(x for x in sc["actions"] if x["do"] == "repin")
    v, b = a["vcpu"], a["cpu"]
    frm = sc["pin"].get(v)
    r = [pcpu_of(x) for x in rets.get(str(v), [])]
    if host is None:
        return _result(NOT_MET, "no L1 trace")
    t_mark = _mark_time(host, "repin", vcpu=v)
    if t_mark is None or a.get("rc"):
        return _result(NOT_MET, f"the re-pin of vCPU {v} did not happen ({a.get('error') or 'no marker in trace'})")
    times = call_times(host, tids[v], key)
    changes = [(k, r[k - 1], r[k]) for k in range(1, len(r)) if r[k] != r[k - 1]]
    if [(x, y) for _, x, y in changes] != [(frm, b)]:
        shown = ", ".join(f"{x}->{y}" for _, x, y in changes[:5]) or "none"
        return _result(NOT_MET, f"vCPU {v}: expected exactly one change {frm}->{b}, saw {len(changes)} ({shown})")
    k = changes[0][0]
    delay = times[k][0] - t_mark
    if delay < 0:
        return _result(NOT_MET, f"vCPU {v} returned {b} at call {k}, {-delay * 1e3:.1f} ms BEFORE the re-pin")
    if delay > scaled(REPIN_TOLERANCE_S):
        return _result(NOT_MET, f"vCPU {v} returned {b} only {delay * 1e3:.0f} ms after the re-pin")
    return _result(MET, f"vCPU {v}: one change {frm}->{b} at call {k}, {delay * 1e3:.1f} ms after the re-pin")


def _hotplug(sc, host, rets, tids, key) -> dict:
    off = next(x for x in sc["actions"] if x["do"] == "offline")
    c = off["cpu"]
    if host is None:
        return _result(NOT_MET, "no L1 trace")
    if off.get("rc"):
        return _result(INCONCLUSIVE, f"L1 could not take CPU {c} offline: {off.get('error')}")
    t_off = _mark_time(host, "offline_done", cpu=c)
    t_on = _mark_time(host, "online", cpu=c)
    if t_off is None:
        return _result(NOT_MET, f"no 'offline_done cpu={c}' marker in L1's trace")
    t_on = t_on if t_on is not None else float("inf")
    ran_there = 0
    while_off = []
    for v, tid in tids.items():
        r = [pcpu_of(x) for x in rets.get(str(v), [])]
        times = call_times(host, tid, key)
        for (ts, _cpu), p in zip(times, r):
            if ts < t_off and p == c:
                ran_there += 1
            if t_off < ts < t_on and p == c:
                while_off.append((v, ts))
    if while_off:
        v, ts = while_off[0]
        return _result(NOT_MET, f"{len(while_off)} calls returned pCPU {c} while it was offline "
                                f"(first: vCPU {v}, {ts - t_off:.3f} s after it went offline)")
    window = "until the end" if t_on == float("inf") else f"for {t_on - t_off:.2f} s"
    if ran_there == 0:
        return _result(INCONCLUSIVE, f"no vCPU ran on CPU {c} before it went offline; CPU {c} was never "
                                     f"returned while offline ({window})")
    return _result(MET, f"{ran_there} calls ran on CPU {c} before it went offline; none returned it while "
                        f"offline ({window}); the move off it is explained by L1")


_CHECKS = {"pinned": _pinned, "unpinned": _unpinned, "loaded": _loaded, "overcommit": _overcommit,
           "repin": _repin, "hotplug": _hotplug}
