"""The main job: build what the configuration names, boot L1 and L2, run the
scenarios, fetch and analyse the traces, write the run directory.

    prepare()  -> Artefacts   (sources, patches, kernels, images, workload: all cached)
    Stack(...)                (context manager: L1 booted, L2 launched, SSH sessions)
    run_scenario()            (pins, host load, workload processes, traces)
    main_job()                (all of it, plus summary.json and the human summary)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..observe import analysis, groundtruth, hosttrace, kernelrefs, workload
from ..core import cache, errors, interrupts
from ..stack import images
from ..build import kbuild, profiles, sources
from . import scenarios
from ..core.config import Config, Scenario
from ..stack.console import scan
from ..core import deadline
from ..core.deadline import Deadline
from ..core.errors import BootError, ConfigError, HarnessError, KernelBugError, StageTimeout, TraceError, WorkloadError
from ..build.kbuild import KernelBuild
from ..stack.machine import Machine, MachineSpec
from ..stack.nested import L1_FORWARDS, Guest, GuestSpec
from ..build.patches import Patch
from ..observe.trace import read_trace

Progress = Callable[[str], None]

# Stage budgets in seconds (measured under TCG on a 2-core x86 machine, with headroom).
L1_BOOT_S = 90
L1_SSH_S = 60
L2_LAUNCH_S = 60
L2_SSH_S = 120
# below this fraction of calls agreeing with L1's trace, the values are not the pCPU (a
# correct handler can lose a race with a migration between the HVC and reading vcpu->cpu)
AGREEMENT_MIN = 0.99


@dataclass
class Artefacts:
    source: sources.SourceTree
    profile: profiles.Profile
    host: KernelBuild
    guest: KernelBuild
    l1_rootfs: Path
    l2_initramfs: Path
    workload: Path
    identity: images.SshIdentity
    seconds: Dict[str, float] = field(default_factory=dict)


def load_patch(spec: str, role: str, profile: profiles.Profile, cfg: Config) -> Optional[Patch]:
    """'reference' -> the profile's patch, 'none' -> unpatched, else a path."""
    if spec == "none":
        return None
    if spec == "reference":
        path = profile.reference_kvm_patch if role == "host" else profile.reference_vm_patch
        return Patch.from_file(path, f"reference {profile.name} {path.name}")
    return Patch.from_file(cfg.resolve_path(spec))


def prepare(cfg: Config, log_dir: Path, progress: Progress = print) -> Artefacts:
    t: Dict[str, float] = {}
    t0 = time.monotonic()
    progress(deadline.calibrate().describe())  # before the first budget: the build estimates scale too
    src = sources.resolve(cfg, log_dir, progress)
    profile = profiles.select(src.version, cfg.kernel.profile)
    progress(f"kernel: Linux {src.version_str} from {src.origin}; profile {profile.name} "
             f"(host_cpuid is syscall {profile.syscall_nr})")
    for note in profile.notes:  # workarounds for this kernel version, also at the top of build.log
        progress(f"  profile {profile.name}: {note}")
    host_patch = load_patch(cfg.patches.host, "host", profile, cfg)
    guest_patch = load_patch(cfg.patches.guest, "guest", profile, cfg)
    t["source"] = time.monotonic() - t0
    builder = kbuild.Builder(src, profile, jobs=cfg.kernel.jobs, use_ccache=cfg.kernel.ccache, progress=progress,
                             sandboxed=cfg.kernel.sandbox, sandbox_ccache=cfg.kernel.sandbox_ccache)
    t0 = time.monotonic()
    host = builder.build("host", host_patch, log_dir)
    t["host_kernel"] = time.monotonic() - t0
    t0 = time.monotonic()
    guest = builder.build("guest", guest_patch, log_dir)
    t["guest_kernel"] = time.monotonic() - t0
    t0 = time.monotonic()
    identity = images.ssh_identity()
    wl = workload.build_workload(log_dir)
    l1 = images.l1_rootfs(log_dir)
    l2 = images.l2_initramfs(wl, log_dir)
    t["images"] = time.monotonic() - t0
    return Artefacts(src, profile, host, guest, l1, l2, wl, identity, {k: round(v, 1) for k, v in t.items()})


class Stack:
    """L1 booted with the host kernel, L2 running inside it with KVM; both reachable."""

    def __init__(self, cfg: Config, art: Artefacts, run_dir: Path, progress: Progress = print):
        self.cfg = cfg
        self.art = art
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.l1: Optional[Machine] = None
        self.l2: Optional[Guest] = None
        self.l1_ssh = None
        self.l2_ssh = None
        self.timings: Dict[str, float] = {}
        self.accel: dict = {}
        self.teardown: List[str] = []  # what stopping L2 took (QMP unanswered, kill -9 from L1, ...)
        self.slowdown: dict = {}

    def __enter__(self) -> "Stack":
        try:
            self._boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _boot(self) -> None:
        cfg, art = self.cfg, self.art
        payload = images.payload_disk(self.run_dir / "payload.ext4",
                                      {"Image": art.guest.image, "initramfs.cpio.gz": art.l2_initramfs},
                                      log_dir=self.run_dir / "logs")
        spec = MachineSpec(name="l1", kernel=art.host.image, rootfs=art.l1_rootfs, payload=payload,
                           cpus=cfg.l1.cpus, memory_mb=cfg.l1.memory_mb, cpu_model=cfg.l1.cpu_model,
                           accel=cfg.l1.accel, append=cfg.l1.append, forwards=dict(L1_FORWARDS),
                           restrict_net=cfg.l1.restrict_net, confine=cfg.l1.confine)
        slow = deadline.calibrate()  # once per process (prepare() did it for main_job)
        self.slowdown = slow.to_dict()
        decision = spec.accel_decision()
        self.accel = decision.to_dict()
        self.progress(f"booting L1 ({decision.accel}: {decision.reason}; {spec.cpus} CPUs, {spec.cpu_model}; "
                      f"budgets x{slow.factor:g}, {slow.source})")
        self.l1 = Machine(spec, self.run_dir, art.identity, self.progress)
        boot = Deadline(L1_BOOT_S, "l1-boot")
        self.l1.launch(boot)
        self.timings["l1_ready_s"] = round(self.l1.wait_ready(boot), 2)
        self.l1_ssh = self.l1.ssh(Deadline(L1_SSH_S, "l1-ssh"))
        self.timings["l1_ssh_s"] = round(time.monotonic() - self.l1.launched_at, 2)
        banner = re.search(art.profile.nvhe_banner, self.l1.console.text())
        if not banner:
            # 6.12 says "Hyp nVHE mode initialized", which contains "VHE mode initialized"
            vhe = re.search(r"(?<!n)VHE mode initialized", self.l1.console.text()) is not None
            raise BootError("L1's KVM did not initialise in split (nVHE) mode"
                            + (" (it chose VHE)" if vhe else " (no 'Hyp mode initialized' line; is EL2 there?)"),
                            stage="l1-kvm", tail=self.l1.console.tail(60), log=self.l1.console_log)
        self.progress(f"L1 up: SSH after {self.timings['l1_ssh_s']} s; KVM: {banner.group(0)}")
        self.l2 = Guest(GuestSpec(cpus=cfg.l2.cpus, memory_mb=cfg.l2.memory_mb, append=cfg.l2.append),
                        self.l1, self.l1_ssh, self.run_dir)
        self.progress(f"launching L2 inside L1 (KVM, {cfg.l2.cpus} vCPUs)")
        try:
            self.l2.launch(Deadline(L2_LAUNCH_S, "l2-launch"))
            self.l2_ssh = self.l2.ssh(Deadline(L2_SSH_S, "l2-ssh"))
        except HarnessError as e:
            l2_console = None
            try:
                l2_console = self.l2.console_text()
                (self.run_dir / "l2-console.log").write_text(l2_console)
            except (HarnessError, OSError):
                pass  # L1 is gone too: its console says why
            annotate_l2_failure(e, self.l1.console.text(), self.l1.console_log, " ".join(self.l2.spec.argv()),
                                l2_console=l2_console, l2_console_log=self.run_dir / "l2-console.log")
            raise
        self.timings["l2_ssh_s"] = round(time.monotonic() - self.l2.launched_at, 2)
        self.timings.update({f"l2_{k}": v for k, v in self.l2.timings.items()})
        self.progress(f"L2 up: SSH {self.timings['l2_ssh_s']} s after launch")

    def kernel_findings(self) -> List[dict]:
        """BUG:/WARNING:/Oops lines from L1's console and dmesg and L2's console."""
        found = []
        seen = set()
        texts = []
        if self.l1 and self.l1.console:
            texts.append(("l1-console", self.l1.console.text()))
        if self.l1_ssh:
            try:
                texts.append(("l1-dmesg", self.l1_ssh.run(["dmesg"], check=False).out))
            except HarnessError:
                pass
        if self.l2:
            try:
                texts.append(("l2-console", self.l2.console_text()))
            except HarnessError:
                pass
        for where, text in texts:
            for f in scan(text):
                key = re.sub(r"^\[[ \d.]+\]\s*", "", f.line)
                if key not in seen:
                    seen.add(key)
                    found.append({"where": where, "signature": f.signature, "line": f.line})
        return found

    def close(self) -> None:
        """L2 then L1, each bounded; L1's QEMU is stopped whatever happened to L2's."""
        try:
            if self.l2 is not None:
                try:
                    self.l2.shutdown()
                    for note in self.l2.teardown:
                        self.progress(f"teardown: {note}")
                    self.teardown += self.l2.teardown
                finally:
                    self.l2 = None
        finally:
            if self.l1 is not None:
                try:
                    self.l1.shutdown()
                finally:
                    self.l1 = None


def annotate_l2_failure(e: HarnessError, l1_console: str, l1_console_log: Path, l2_cmdline: Optional[str],
                        l2_console: Optional[str] = None, l2_console_log: Optional[Path] = None) -> None:
    """L2 failing to start: show what L2 itself did (its console), and what L1's console
    shows (a hypervisor that crashes at EL2 on the first KVM_RUN leaves L1 stalled)."""
    findings = scan(l1_console)
    if findings:
        e.message += "; L1's console: " + " | ".join(f.line for f in findings[:2])
    l1_tail = "\n".join(l1_console.splitlines()[-20 if l2_console is not None else -60:])
    if l2_console is not None:
        lines = [ln for ln in l2_console.replace("\r", "").splitlines() if ln.strip()]
        e.message += (f"; L2's console ends with: {lines[-1].strip()!r}" if lines
                      else "; L2's console is empty (it printed nothing, not even its kernel's boot lines)")
        e.tail = ("--- L2's console (last lines) ---\n" + "\n".join(lines[-40:])
                  + "\n--- L1's console (last lines) ---\n" + l1_tail)
        e.log = l2_console_log or e.log
    elif not e.tail:
        e.tail = l1_tail
        e.log = e.log or l1_console_log
    if not e.reproduce and l2_cmdline:
        e.reproduce = f"in L1 (ssh -p <l1-ssh port> root@127.0.0.1): {l2_cmdline}"


# console findings that say a kernel stopped working (a WARNING alone does not)
CRASHES = ("hyp-panic", "panic", "oops", "bug", "rcu-stall", "lockup")


def console_findings(run_dir: Path) -> List[dict]:
    """Crash-signature lines of L1's and L2's consoles as the run left them on disk
    (read after a failure: the stack is down, its consoles are in the run directory)."""
    found, seen = [], set()
    for where, name in (("l1-console", "l1-console.log"), ("l2-console", "l2-console.log")):
        try:
            text = (Path(run_dir) / name).read_text(errors="replace")
        except OSError:
            continue
        for f in scan(text):
            key = (where, re.sub(r"^\[[ \d.]+\]\s*", "", f.line))
            if key not in seen:
                seen.add(key)
                found.append({"where": where, "signature": f.signature, "line": f.line})
    return found


def console_tails(run_dir: Path, lines: int = 15) -> str:
    """The last lines of L2's and L1's consoles, for a failure's evidence."""
    out = []
    for who, name in (("L2", "l2-console.log"), ("L1", "l1-console.log")):
        text = errors.tail_of(Path(run_dir) / name, lines)
        if text:
            out.append(f"--- {who}'s console (last lines) ---\n{text}")
    return "\n".join(out)


def judge_stuck_stage(e: HarnessError, findings: List[dict], run_dir: Path) -> HarnessError:
    """A stage that timed out or lost its guest is judged by the consoles first (as
    syzkaller's monitor does): a BUG:/Oops/panic/RCU stall/soft lockup in L1 or L2 means
    the kernel under test stopped working, a KernelBugError with those lines as its
    evidence.  Otherwise ``e`` as it was (a timeout with clean consoles may be the
    machine's: the grader checks that with the reference pairing)."""
    crashes = [f for f in findings if f["signature"] in CRASHES]
    if not (isinstance(e, StageTimeout) or e.kind == errors.INFRA):
        return e
    if not crashes:
        if isinstance(e, StageTimeout) and not e.tail:  # what the guests showed when it hung
            e.tail = console_tails(run_dir)
        return e
    name = {"l1-console": "L1's console", "l2-console": "L2's console"}
    said = " | ".join(f"{name[f['where']]}: {f['line']}" for f in crashes[:3])
    evidence = ["--- crash lines of the consoles ---"] + [f"{name[f['where']]}: {f['line']}" for f in crashes[:12]]
    where = crashes[0]["where"]
    log = Path(run_dir) / f"{where[:2]}-console.log"
    err = KernelBugError(f"{e.message}; the kernel under test crashed or stalled: {said}", stage=e.stage,
                         tail="\n".join(evidence) + "\n" + (e.tail or console_tails(run_dir)), log=log,
                         reproduce=e.reproduce)
    return err


def workload_budget(sc: Scenario) -> float:
    """Seconds a scenario's workload may take: its duration or 5 ms a call, plus a minute
    (reference machine), through the slowdown factor."""
    return deadline.scaled((sc.duration_s or 0) + sc.calls * 0.005 + 60)


def calls_budget(calls: int) -> float:
    """Seconds for a measuring round of ``calls`` calls (10 ms each, plus a minute), scaled."""
    return deadline.scaled(calls * 0.01 + 60)


def _start_load(l1_ssh, n: int) -> List[int]:
    if n <= 0:
        return []
    script = ";".join(["(while :; do :; done) >/dev/null 2>&1 </dev/null & echo $!"] * n)
    out = l1_ssh.run(["sh", "-c", script]).out
    return [int(x) for x in out.split()]


def run_scenario(stack: Stack, sc: Scenario, out_dir: Path, progress: Progress = print) -> dict:
    """One scenario: pins, host load, the workload on each vCPU, mid-run actions, with
    L1's tracer recording the vCPU threads; then the traces, the per-call cross-check
    against L1 and the scenario's expectation."""
    cfg, art = stack.cfg, stack.art
    nr = art.profile.syscall_nr
    key = call_key(cfg, art.profile)
    vcpus = sc.vcpus or list(range(cfg.l2.cpus))
    kind = sc.resolved_kind
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = stack.l2.pin(sc.pin)
    tracer = hosttrace.HostTracer(stack.l1_ssh)
    affinity = {"start": hosttrace.affinity(stack.l1_ssh, threads)}
    loads = _start_load(stack.l1_ssh, sc.host_load)
    progress(f"scenario {sc.name} ({kind}): " + (f"{sc.duration_s:g} s" if sc.duration_s else f"{sc.calls} calls")
             + f" on vCPUs {vcpus}" + (f", pins {sc.pin}" if sc.pin else ", unpinned")
             + (f", {sc.host_load} busy loops in L1" if loads else "")
             + (f", {len(sc.actions)} actions" if sc.actions else ""))
    actions: List[dict] = []
    trace_stats: dict = {}
    try:
        tracer.start(threads)
        runs = []
        for v in vcpus:
            argv = workload.workload_argv(count=sc.calls, duration=sc.duration_s, vcpu=v, syscall_nr=nr,
                                          out=f"/tmp/trace-{sc.name}-{v}.bin")
            runs.append((v, argv, stack.l2_ssh.start(argv)))
        started = time.monotonic()
        if sc.actions:
            actions = scenarios.run_actions(stack.l1_ssh, tracer, sc.actions, threads, sc.pin, started, progress)
        budget = workload_budget(sc)
        for v, argv, chan in runs:
            res = stack.l2_ssh.finish(chan, argv, timeout=budget, stage=f"workload ({sc.name})")
            if res.rc != 0:
                raise WorkloadError(f"scenario {sc.name}: workload on vCPU {v} exited {res.rc}: "
                                    f"{res.err.strip()[-300:]}", stage=f"workload ({sc.name})",
                                    tail=res.out + res.err)
        trace_stats = tracer.stop(out_dir / "l1-trace.txt")
        affinity["end"] = hosttrace.affinity(stack.l1_ssh, threads)
        compare = _compare(stack, vcpus[0], sc, nr) if sc.compare else {}
        overhead = trace_overhead(stack, tracer, vcpus[0], threads, nr, key) if sc.trace_overhead else {}
    finally:
        if loads:
            stack.l1_ssh.run(["kill", *map(str, loads)], check=False)
        for a in sc.actions:  # a CPU taken offline comes back whatever happened
            if a.do == "offline":
                stack.l1_ssh.run(["sh", "-c", f"echo 1 > /sys/devices/system/cpu/cpu{a.cpu}/online"], check=False)
    host = groundtruth.parse(out_dir / "l1-trace.txt")
    t0 = groundtruth.first_ts(host)
    per_vcpu = {}
    rets = {}
    for v in vcpus:
        local = stack.l2_ssh.get(f"/tmp/trace-{sc.name}-{v}.bin", out_dir / f"vcpu{v}.bin")
        tr = read_trace(local)
        if sc.duration_s is None and len(tr) != sc.calls:
            raise TraceError(f"{local}: {len(tr)} samples, {sc.calls} requested", stage="trace")
        tr.to_csv(out_dir / f"vcpu{v}.csv")
        s = analysis.summarize_trace(tr)
        # a re-pin or hotplug moves the vCPU on purpose: there the scenario's expectation judges
        judge_vcpu(s, v, sc.pin.get(v) if not sc.actions else None, nr)
        rets[str(v)] = list(tr.ret)
        s["ground_truth"] = groundtruth.cross_check(host, threads[v], rets[str(v)], key, t0)
        judge_ground_truth(s, v)
        per_vcpu[str(v)] = s
    result = {"name": sc.name, "kind": kind, "expectation": scenarios.EXPECTATIONS[kind], "pin": sc.pin,
              "host_load": sc.host_load, "calls": sc.calls, "duration_s": sc.duration_s, "l1_cpus": cfg.l1.cpus,
              "vcpu_threads": {str(k): t for k, t in threads.items()}, "affinity": affinity, "actions": actions,
              "l1_trace": {"file": os.path.relpath(out_dir / "l1-trace.txt", stack.run_dir), "t0": t0, "hvc_events": len(host.hvcs), "switches": len(host.switches),
                           "migrations": len(host.migrations), "unparsed_lines": host.unparsed, **trace_stats},
              "hvc_calls": groundtruth.hvc_calls(host, threads),
              "time_sharing": groundtruth.time_sharing(host, {v: threads[v] for v in vcpus}),
              "per_vcpu": per_vcpu, "compare": compare, "trace_overhead": overhead}
    result.update(scenarios.check(kind, result, host, rets, {v: threads[v] for v in vcpus}, key))
    return result


def call_key(cfg: Config, profile: profiles.Profile) -> groundtruth.CallKey:
    """Which HVCs are host_cpuid calls: the profile's function ID unless the config names
    another (a submission's own ID or HVC immediate)."""
    t = cfg.trace
    if t.func_id is None and t.imm is not None:
        return groundtruth.CallKey(imm=t.imm)  # a design keyed on the HVC immediate alone
    return groundtruth.CallKey(func_id=profile.hvc_func_id if t.func_id is None else t.func_id, imm=t.imm)


def trace_overhead(stack: Stack, tracer: hosttrace.HostTracer, v: int, threads: Dict[int, int], nr: int,
                   key: groundtruth.CallKey, calls: int = 3000, pairs: int = 8) -> dict:
    """What recording the ground truth costs: host_cpuid calls/s on vCPU v with L1's
    events on and off, in ``pairs`` adjacent on/off pairs (order alternating, so a drift
    in the machine's load hits both sides).  Each pair gives one overhead; the median is
    the figure and the lowest and highest show the noise (a round is under a second: on
    a busy machine single pairs swing by tens of per cent).  The trace of the whole
    measurement must hold exactly the calls of the "on" rounds: "off" really is off."""
    rates: Dict[str, List[float]] = {"on": [], "off": []}
    per_pair: List[float] = []
    trace_file = stack.run_dir / "logs" / "trace-overhead-l1-trace.txt"
    tracer.start(threads)
    try:
        for i in range(pairs):
            got = {}
            for state in (("on", "off") if i % 2 == 0 else ("off", "on")):
                tracer.pause(state == "on")
                argv = workload.workload_argv(count=calls, vcpu=v, syscall_nr=nr, bare=True, out=None)
                res = stack.l2_ssh.run(argv, timeout=calls_budget(calls), stage="trace-overhead")
                got[state] = workload.parse_summary_line(res.out)["calls_per_s"]
                rates[state].append(got[state])
            if got["off"]:
                per_pair.append(100.0 * (got["off"] - got["on"]) / got["off"])
    finally:
        tracer.stop(trace_file)
    recorded = len(groundtruth.call_times(groundtruth.parse(trace_file), threads[v], key))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"calls_per_s_tracing_on": round(on, 1), "calls_per_s_tracing_off": round(off, 1),
            "overhead_pct": round(statistics.median(per_pair), 2) if per_pair else None,
            "overhead_pct_range": [round(min(per_pair), 1), round(max(per_pair), 1)] if per_pair else None,
            "rounds": pairs, "calls_per_round": calls,
            "calls_traced": recorded, "calls_made_traced": pairs * calls}


def judge_vcpu(s: dict, v: int, pinned_to: Optional[int], nr: int) -> dict:
    """Complete one vCPU's summary: its verdict says what is wrong with that vCPU (a pinned
    vCPU whose calls report another pCPU is not "ok")."""
    s["verdict_text"] = analysis.describe(s["verdict"], nr)
    if pinned_to is not None:
        s["pinned_to"] = pinned_to
        s["pin_respected"] = s["verdict"] == "ok" and set(s["pcpus"]) == {pinned_to}
        if s["verdict"] == "ok" and not s["pin_respected"]:
            s["verdict"] = "wrong-pcpu"
            s["verdict_text"] = (f"vCPU {v}'s thread was pinned to pCPU {pinned_to} but its calls reported "
                                 f"pCPUs {sorted(s['pcpus'])}")
    if s["observed_vcpus"] != [v]:
        s["vcpu_pinning_in_guest_failed"] = True
        if s["verdict"] == "ok":
            s["verdict"] = "wrong-vcpu"
            s["verdict_text"] = (f"the workload meant for vCPU {v} ran on vCPUs {s['observed_vcpus']}: "
                                 "its affinity in L2 did not hold")
    return s


def judge_ground_truth(s: dict, v: int) -> dict:
    """A vCPU whose values L1 contradicts is not "ok": no one-to-one HVC per call
    (hvc-mismatch), or values that are not the CPU that handled the HVC (wrong-pcpu)."""
    gt = s.get("ground_truth") or {}
    if s["verdict"] != "ok" or not gt:
        return s
    if not gt.get("aligned") or gt["agreement"] < AGREEMENT_MIN:
        s["verdict_before_l1"] = [s["verdict"], s.get("verdict_text")]  # what rejudge() goes back to
    if not gt.get("aligned"):
        s["verdict"] = "hvc-mismatch"
        s["verdict_text"] = f"vCPU {v}: {gt.get('reason')}"
    elif gt["agreement"] < AGREEMENT_MIN:
        d = (gt.get("disagreements") or [{}])[0]
        s["verdict"] = "wrong-pcpu"
        s["verdict_text"] = (f"vCPU {v}: only {gt['agreement']:.2%} of its calls returned the CPU that handled the "
                             f"HVC in L1" + (f" (call {d['call']} returned {d['returned']}, handled on CPU "
                                             f"{d['handled_on']})" if d else ""))
    return s


def rejudge(summary: dict) -> dict:
    """Per-vCPU and run verdicts again, after the ground truth of a stored run was
    recomputed with another call key (groundtruth.recheck_run): a verdict that came from
    L1's trace is taken back first."""
    for sc in summary.get("scenarios", []) or []:
        for v, s in sc.get("per_vcpu", {}).items():
            before = s.pop("verdict_before_l1", None)
            if before:
                s["verdict"], s["verdict_text"] = before
            judge_ground_truth(s, int(v))
    if summary.get("scenarios"):
        summary["verdict"] = overall_verdict(summary["scenarios"], summary.get("kernel_log_findings") or [])
    return summary


def recheck(run_dir: Path, summary: dict, key: groundtruth.CallKey, note: str = "") -> dict:
    """Judge a stored run again with another call key (a patch pair's own function ID or
    immediate), nothing booted: every vCPU's ground truth from the run's L1 traces, each
    scenario's expectation, the verdicts.  ``note`` (how the key was found) ends each
    scenario's reason.  Returns the summary, updated in place."""
    run_dir = Path(run_dir)
    groundtruth.recheck_run(run_dir, summary, key)
    for sc in summary.get("scenarios", []) or []:
        f = run_dir / (sc.get("l1_trace") or {}).get("file", "")
        tids = {int(v): int(t) for v, t in (sc.get("vcpu_threads") or {}).items()}
        bins = {v: f.parent / f"vcpu{v}.bin" for v in sc.get("per_vcpu", {})}
        if not f.is_file() or sc.get("kind") not in scenarios.EXPECTATIONS or not all(b.is_file() for b in bins.values()):
            continue
        rets = {v: list(read_trace(b).ret) for v, b in bins.items()}
        sc.update(scenarios.check(sc["kind"], sc, groundtruth.parse(f), rets,
                                  {int(v): tids[int(v)] for v in bins if int(v) in tids}, key))
        sc["call_key"] = key.describe()
        if note:
            sc["reason"] += f" ({note})"
    return rejudge(summary)


def learn_call_key(run_dir: Path, summary: dict, key: groundtruth.CallKey,
                   progress: Progress = print) -> Optional[groundtruth.CallKey]:
    """A patch pair with its own function ID: when ``key`` (the configured one) matched no
    HVC of the workload in L1's trace and one other ID was issued about once per call
    (groundtruth.issued_key, as grading learns it), judge the run again with that ID and
    say so (summary["learned_call_key"]).  Returns the learned key, or None."""
    scen = summary.get("scenarios") or []
    if not scen or any((st.get("ground_truth") or {}).get("hvc_events") for sc in scen
                       for st in sc.get("per_vcpu", {}).values()):
        return None
    t = groundtruth.issued_key(summary)
    if t is None or (t[0].func_id, t[0].imm) == (key.func_id, key.imm):
        return None
    new, n = t
    what = f"func_id {new.func_id:#x}" + (f" with hvc #{new.imm}" if new.imm else "")
    note = f"learned {what} from L1's trace"
    samples = sum(int(st.get("samples") or 0) for sc in scen for st in sc.get("per_vcpu", {}).values())
    progress(f"{note}: {key.describe()} never appeared, {what} was issued {n} times for {samples} calls")
    summary["learned_call_key"] = {"func_id": hex(new.func_id), "imm": new.imm, "configured": key.describe(),
                                   "hvcs": n, "calls": samples, "note": note}
    recheck(run_dir, summary, new, note)
    return new


def call_rates(stack: Stack, v: int, calls: int, nr: int) -> Dict[str, dict]:
    """host_cpuid (``calls`` calls) next to getppid (20x as many: it is ~30x faster) on vCPU
    v, each run with bare blocks interleaved between its recorded blocks, so both rates and
    the recording overhead come from one run.  Per mode, the workload's summary line
    (calls_per_s, bare_calls_per_s, overhead_pct, ...)."""
    out = {}
    for mode, n in (("hostcpuid", calls), ("getppid", calls * 20)):
        argv = workload.workload_argv(count=n, vcpu=v, syscall_nr=nr if mode == "hostcpuid" else None,
                                      mode=mode, out=f"/tmp/rates-{mode}.bin", interleave_bare=max(1, n // 50))
        res = stack.l2_ssh.run(argv, timeout=calls_budget(n), stage="call-rates")
        out[mode] = workload.parse_summary_line(res.out)
    return out


def _compare(stack: Stack, v: int, sc: Scenario, nr: int) -> dict:
    """The scenario's `compare: true`: call_rates() flattened into the summary."""
    out = {}
    # long enough to rise above timer noise
    for mode, s in call_rates(stack, v, max(sc.calls, 5000), nr).items():
        out[f"{mode}_recorded_calls_per_s"] = round(s["calls_per_s"], 1)
        out[f"{mode}_bare_calls_per_s"] = round(s["bare_calls_per_s"], 1)
        out[f"{mode}_overhead_pct"] = round(s["overhead_pct"], 2)
    out["recording_overhead_pct"] = out["hostcpuid_overhead_pct"]
    return out


def new_run_dir(cfg: Config, name: str = "run") -> Path:
    base = Path(cfg.output)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = base / f"{stamp}-{name}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{stamp}-{name}-{n}"
    (run_dir / "logs").mkdir(parents=True)
    cache.private(run_dir)  # consoles, traces, L1's QMP socket: the invoking user's only
    latest = base / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_dir.name)
    except OSError:
        pass
    return run_dir


def overall_verdict(scenarios: List[dict], findings: List[dict]) -> str:
    if not scenarios:
        return "no-samples"
    words = {s["verdict"] for sc in scenarios for s in sc["per_vcpu"].values()}
    if any(f["signature"] in ("bug", "warning", "oops", "panic", "hyp-panic", "lockup", "rcu-stall", "preempt-leak")
           for f in findings):
        return "kernel-bug"
    if any(s.get("pin_respected") is False for sc in scenarios for s in sc["per_vcpu"].values()):
        return "wrong-pcpu"
    for word in ("wrong-pcpu", "wrong-vcpu", "hvc-mismatch"):
        if word in words:
            return word
    if words == {"ok"}:
        return "ok"
    return sorted(words - {"ok"})[0] if words - {"ok"} else "ok"


def _patch_text(cfg: Config, art: Artefacts) -> str:
    try:
        p = load_patch(cfg.patches.host, "host", art.profile, cfg)
        return p.data.decode("utf-8", "replace") if p is not None else ""
    except HarnessError:
        return ""


def select_scenarios(cfg: Config, names: Optional[List[str]] = None) -> List[Scenario]:
    """The config's scenarios, or the named ones in the given order (unknown name: error)."""
    have = {sc.name: sc for sc in cfg.scenarios}
    if not names:
        return cfg.scenarios or [Scenario(name="default")]
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ConfigError(f"{cfg.source_file or 'config'}: no scenario named {unknown[0]!r} "
                          f"(this config has: {', '.join(have) or 'none'})")
    return [have[n] for n in names]


def _stage_of(summary: dict) -> str:
    """Where main_job was when an unexpected exception struck (from what it wrote so far)."""
    if "scenarios" in summary or "timings" in summary:
        return "scenarios"
    return "boot" if "builds" in summary else "prepare"


def _blame_machine_for_known_good_inputs(e: HarnessError, cfg: Config) -> None:
    """Debian's pristine tree with the reference patches (or none) is known to work: if it
    fails as if the kernel were at fault, the machine or the harness is."""
    known_good = cfg.kernel.source == "debian" and {cfg.patches.host, cfg.patches.guest} <= {"reference", "none"}
    if known_good and e.kind == errors.SUBJECT:
        e.kind = errors.INFRA
        e.message += (" [Debian's pristine tree with the reference patches is known to work here, so the machine, "
                      "the harness or the run's settings (e.g. l1.append) are at fault]")


def main_job(cfg: Config, run_dir: Optional[Path] = None, progress: Progress = print,
             only: Optional[List[str]] = None, repeat: int = 1) -> dict:
    """Everything, end to end.  Returns the summary (also in run_dir/summary.json).
    ``only`` names the scenarios to run; ``repeat`` runs each of them that many times
    (traces in traces/<name>/rep<i>/).  Harness failures raise HarnessError after the
    partial summary and logs are written."""
    scenarios_to_run = select_scenarios(cfg, only)
    if repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, not {repeat}")
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    summary: dict = {"run_dir": str(run_dir), "config": cfg.source_file, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    stack: Optional[Stack] = None
    try:
        summary["slowdown"] = deadline.calibrate().to_dict()  # prepare() says it; kept even if prepare fails
        art = prepare(cfg, run_dir / "logs", progress)
        summary.update({
            "kernel": {"origin": art.source.origin, "identity": art.source.identity, "version": art.source.version_str},
            "profile": art.profile.name, "syscall_nr": art.profile.syscall_nr,
            "hvc_func_id": hex(art.profile.hvc_func_id),
            "patches": {"host": art.host.meta.get("patch"), "guest": art.guest.meta.get("patch")},
            "builds": {b.role: {"key": b.key, "cached": b.cached, "seconds": b.meta.get("seconds"),
                                "cpu_seconds": b.meta.get("cpu_seconds"), "files": b.meta.get("compiled_files"),
                                "ccache": b.meta.get("ccache")}
                       for b in (art.host, art.guest)},
            "prepare_s": art.seconds,
        })
        for b in (art.host, art.guest):
            shutil.copyfile(b.config, run_dir / "logs" / f"{b.role}-kernel.config")
        summary["kernel_refs"] = kernelrefs.find_refs(art.source.root, _patch_text(cfg, art))
        summary["repeat"] = repeat
        stack = Stack(cfg, art, run_dir, progress)
        with stack:
            summary["timings"] = stack.timings
            summary["l1_accel"] = stack.accel
            summary["slowdown"] = stack.slowdown
            results = []
            for rep in range(repeat):
                for sc in scenarios_to_run:
                    out = run_dir / "traces" / sc.name / (f"rep{rep}" if repeat > 1 else "")
                    res = run_scenario(stack, sc, out, progress)
                    res["repetition"] = rep
                    results.append(res)
                    summary["scenarios"] = results
            findings = stack.kernel_findings()
        summary["kernel_log_findings"] = findings
        learn_call_key(run_dir, summary, call_key(cfg, art.profile), progress)
        summary["verdict"] = overall_verdict(results, findings)
        summary["verdict_text"] = analysis.describe(summary["verdict"], art.profile.syscall_nr)
        if summary["verdict"] == "kernel-bug":
            summary["verdict_text"] = "the kernel logged: " + "; ".join(f["line"] for f in findings[:3])
        elif summary["verdict"] == "wrong-pcpu":
            summary["verdict_text"] = ("the returned values are not the pCPU running the vCPU: a pinned vCPU reported "
                                       "another pCPU, or the values disagree with the CPU that handled the HVC in L1")
        elif summary["verdict"] == "hvc-mismatch":
            summary["verdict_text"] = ("L1's trace does not show exactly one hypercall with the expected function ID "
                                       "per call (see ground_truth per vCPU)")
    except HarnessError as e:
        if stack is not None:  # L1 was launched: what do its and L2's consoles say?
            summary["teardown"] = stack.teardown
            summary.setdefault("kernel_log_findings", console_findings(run_dir))
            e = judge_stuck_stage(e, summary["kernel_log_findings"], run_dir)
        _blame_machine_for_known_good_inputs(e, cfg)
        summary["verdict"] = "error"
        summary["error"] = e.to_dict()
        raise e
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen library failure: exit 3, one line
        err = errors.unexpected(exc, run_dir / "logs" / "traceback.log", stage=_stage_of(summary))
        summary["verdict"] = "error"
        summary["error"] = err.to_dict()
        raise err from exc
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the summary says so, and where
        summary["verdict"] = "interrupted"
        summary["interrupted"] = {"signal": interrupts.requested() or "SIGINT", "stage": _stage_of(summary)}
        raise
    finally:
        summary["seconds"] = round(time.monotonic() - t_start, 1)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
