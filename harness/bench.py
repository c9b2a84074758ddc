"""Performance figures of the harness (``make bench``), printed and saved as JSON.

    python -m harness.bench [--cold] [--repeat N] [--calls N] [--kernel-tree PATH]
    python -m harness.bench soak N        (robustness: N warm runs, random SIGINT/SIGKILL)

Measures, on this machine: the warm default run (everything cached), a kernel rebuild
after a one-line change of kvm.patch, L1 boot-to-SSH and L2 launch-to-SSH, host_cpuid
and getppid calls/s in L2 in the same run, and the workload's recording overhead
(recorded vs bare blocks interleaved within each run, medians over runs).  ``--cold`` first does the whole default
run with an empty cache (a temporary KVM_HARNESS_CACHE): the cold time."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import config, kbuild, profiles, run, sources
from .patches import Patch


def _quiet(msg: str) -> None:
    print(f"  | {msg}", flush=True)


def timed_default_run(cfg: config.Config, name: str) -> dict:
    t0 = time.monotonic()
    summary = run.main_job(cfg, run.new_run_dir(cfg, name), progress=_quiet)
    return {"seconds": round(time.monotonic() - t0, 1), "verdict": summary["verdict"],
            "timings": summary.get("timings"), "builds": summary.get("builds")}


def _rebuild_with(cfg: config.Config, log_dir: Path, role: str, marker: str, edit, name: str) -> dict:
    """The role's reference patch built (cached: the worktree holds it first), then timed:
    the same patch with its first line starting ``marker`` changed by ``edit``."""
    src = sources.resolve(cfg, log_dir, _quiet)
    prof = profiles.select(src.version, cfg.kernel.profile)
    path = prof.reference_kvm_patch if role == "host" else prof.reference_vm_patch
    text = path.read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith(marker)), None)
    if line is None:
        return {"skipped": f"{path} has no line starting {marker!r} to change"}
    b = kbuild.Builder(src, prof, jobs=cfg.kernel.jobs, use_ccache=cfg.kernel.ccache, progress=_quiet)
    ref = b.build(role, Patch.from_file(path, "reference"), log_dir)
    t0 = time.monotonic()
    kb = b.build(role, Patch.parse(text.replace(line, edit(line), 1).encode(), name), log_dir)
    return {"seconds": round(time.monotonic() - t0, 1), "cpu_seconds": kb.meta.get("cpu_seconds"),
            "compiled_files": kb.meta.get("compiled_files"), "ccache": kb.meta.get("ccache"), "cached": kb.cached,
            "same_image": kb.meta["image_sha256"] == ref.meta["image_sha256"]}


def rebuild_after_patch_change(cfg: config.Config, log_dir: Path) -> dict:
    """The host rebuilt after a one-line change of kvm.patch (a comment, new each run)."""
    return _rebuild_with(cfg, log_dir, "host", "+ * host_cpuid: a vendor-specific",
                         lambda line: line.replace("host_cpuid:", f"host_cpuid ({time.time_ns()}):", 1),
                         "kvm.patch with one changed line")


def guest_after_header_reformat(cfg: config.Config, log_dir: Path) -> dict:
    """The guest rebuilt for a vm.patch whose unistd.h edit differs from the reference's
    in bytes only (a tab for a space, a comment that is new each time), as students'
    do: ccache's cpp key should serve nearly every object, and the Image must come out
    the same."""
    marker = "+#define __NR_host_cpuid "
    return _rebuild_with(cfg, log_dir, "guest", marker,
                         lambda line: line.replace(marker, marker.rstrip() + "\t", 1) + f" /* bench {time.time_ns()} */",
                         "vm.patch with a tab and a comment")


def call_rates(cfg: config.Config, repeat: int, calls: int) -> dict:
    """host_cpuid and getppid rates on vCPU 0 (pinned to pCPU 3 in L1).  Each run
    interleaves bare blocks with its recorded blocks (``--interleave-bare``), so the
    recording overhead is measured within one run; medians over ``repeat`` runs."""
    art = run.prepare(cfg, Path(tempfile.mkdtemp(prefix="bench-")), _quiet)
    run_dir = run.new_run_dir(cfg, "bench-rates")
    keys = ("calls_per_s", "bare_calls_per_s", "overhead_pct")
    samples = {m: {k: [] for k in keys} for m in ("hostcpuid", "getppid")}
    with run.Stack(cfg, art, run_dir, _quiet) as stack:
        boots = dict(stack.timings)
        stack.l2.pin({0: 3 % cfg.l1.cpus})
        for _ in range(repeat):
            for mode, s in run.call_rates(stack, 0, calls, art.profile.syscall_nr).items():
                for k in keys:
                    samples[mode][k].append(s[k])
    med = {f"{m}_{'bare' if k.startswith('bare') else 'recorded'}": round(statistics.median(samples[m][k]), 1)
           for m in samples for k in keys[:2]}
    over = {m: round(statistics.median(samples[m]["overhead_pct"]), 2) for m in samples}
    return {"boot": boots, "median_calls_per_s": med, "recording_overhead_pct": over, "samples": samples}


def experiment_figures(cfg_path: Optional[str], kernel_tree: Optional[str]) -> dict:
    """The six-scenario experiment on the warm default: its wall time, the L1 tracer's
    overhead (tracing on/off interleaved, in its pinned scenario) and the time to
    re-render the report from the stored run directory."""
    from . import experiment, report

    cfg = config.load(cfg_path or experiment.DEFAULT_EXPERIMENT)
    if kernel_tree:
        cfg = config.override(cfg, config.tree_assignments(kernel_tree))
    t0 = time.monotonic()
    exp = experiment.run_experiment(cfg, out=run.new_run_dir(cfg, "bench-experiment"), progress=_quiet)
    seconds = time.monotonic() - t0
    t0 = time.monotonic()
    report.render(Path(exp["run_dir"]))
    render_s = time.monotonic() - t0
    over = next((sc["trace_overhead"] for sc in exp["scenarios"] if sc.get("trace_overhead")), {})
    return {"seconds": round(seconds, 1), "report_render_s": round(render_s, 2), "trace_overhead": over,
            "verdicts": {sc["name"]: sc["verdict"] for sc in exp["scenarios"]}, "run_dir": exp["run_dir"]}


def grading_one(zip_path: Path, out: Path, cfg_path: Optional[str] = None) -> dict:
    """One submission graded on the real stack (``make bench-grading ZIP=...``; run it
    twice: the second run has every kernel cached): the batch's wall time (preflight and
    the reference pairing included) and the submission's own (intake, report, builds,
    pairings), its status and total."""
    from .grade import batch, outputs, rubric

    cfg = config.load(cfg_path or str(config.CONFIGS / "grade.yaml"))
    t0 = time.monotonic()
    ctx = batch.make_context(cfg, rubric.load(), out, True, _quiet)
    r = batch.grade_batch([zip_path], ctx, jobs=1)[0]
    return {"batch_seconds": round(time.monotonic() - t0, 1), "submission_seconds": r.get("seconds"),
            "status": r["status"], "total": outputs.row(r)["total"], "out": str(out)}


def sandbox_overhead(pdf: Path, repeat: int = 10) -> dict:
    """What the sandbox adds to grading one submission when its kernels are cached (no make
    runs then): poppler on its PDF (pdfinfo + pdftoppm) confined against bare, the batch's
    refresh of the shared ccache, and QEMU started and quit with and without its seccomp
    filter (medians of ``repeat``; ``python -m harness.bench sandbox PDF``)."""
    import subprocess

    from . import machine, sandbox

    thumbs = Path(tempfile.mkdtemp(prefix="bench-thumbs-"))

    def poppler(confined: bool) -> float:
        info = ["pdfinfo", str(pdf)]
        ppm = ["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "6", str(pdf), str(thumbs / "page")]
        if confined:
            info = sandbox.confine(info, readable=[pdf.parent], limits=sandbox.PDF)
            ppm = sandbox.confine(ppm, readable=[pdf.parent], writable=[thumbs], limits=sandbox.PDF)
        t0 = time.monotonic()
        for argv in (info, ppm):
            subprocess.run(argv, capture_output=True, check=True)
        return time.monotonic() - t0

    def qemu(extra: list) -> float:
        t0 = time.monotonic()
        subprocess.run([machine.QEMU, *extra, "-machine", "virt", "-display", "none", "-nodefaults", "-qmp", "stdio"],
                       input=b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n', capture_output=True, check=True)
        return time.monotonic() - t0

    med = lambda f, *a: round(statistics.median(f(*a) for _ in range(repeat)), 3)  # noqa: E731
    t0 = time.monotonic()
    shared = kbuild.share_ccache()
    share_s = time.monotonic() - t0
    fig = {"poppler_bare_s": med(poppler, False), "poppler_confined_s": med(poppler, True),
           "share_ccache_s": round(share_s, 3), "shared_entries": shared,
           "qemu_start_quit_s": med(qemu, []), "qemu_start_quit_seccomp_s": med(qemu, machine.SECCOMP)}
    fig["added_per_submission_s"] = round(fig["poppler_confined_s"] - fig["poppler_bare_s"] + share_s
                                          + 3 * max(0.0, fig["qemu_start_quit_seccomp_s"] - fig["qemu_start_quit_s"]), 3)
    return fig


def main() -> int:
    import sys
    if sys.argv[1:2] == ["soak"]:  # python -m harness.bench soak N: see harness/soak.py
        from . import soak
        return soak.main(sys.argv[2:])
    if sys.argv[1:2] == ["sandbox"]:  # python -m harness.bench sandbox PDF
        print(json.dumps(sandbox_overhead(Path(sys.argv[2]).resolve()), indent=1))
        return 0
    if sys.argv[1:2] == ["grading"]:  # python -m harness.bench grading ZIP [OUT]
        fig = grading_one(Path(sys.argv[2]), Path(sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="bench-grade-")))
        print(json.dumps(fig, indent=1))
        return 0 if fig["status"] == "graded" else 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="config (default: configs/default.yaml)")
    p.add_argument("--cold", action="store_true", help="also time a run with an empty cache (~12 min)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--kernel-tree", metavar="PATH", help="measure on this kernel tree (e.g. a v5.4 checkout)")
    p.add_argument("--experiment-config", help="experiment config (default: configs/experiments.yaml)")
    p.add_argument("--out", default="runs/bench.json")
    args = p.parse_args()
    cfg = config.load(args.config)
    if args.kernel_tree:
        cfg = config.override(cfg, config.tree_assignments(args.kernel_tree))
    fig: dict = {"machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
                 "kernel": cfg.kernel.path if cfg.kernel.source == "path" else cfg.kernel.source}
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="cold-cache-") as d:
            old = os.environ.get("KVM_HARNESS_CACHE")
            os.environ["KVM_HARNESS_CACHE"] = d
            try:
                print("cold default run (empty cache) ...", flush=True)
                fig["cold_run"] = timed_default_run(cfg, "bench-cold")
            finally:
                if old is None:
                    os.environ.pop("KVM_HARNESS_CACHE")
                else:
                    os.environ["KVM_HARNESS_CACHE"] = old
    print("warm default run ...", flush=True)
    timed_default_run(cfg, "bench-warmup")  # make sure everything is cached
    fig["warm_run"] = timed_default_run(cfg, "bench-warm")
    print("kernel rebuild after a one-line kvm.patch change ...", flush=True)
    fig["rebuild_one_line"] = rebuild_after_patch_change(cfg, Path(tempfile.mkdtemp(prefix="bench-kb-")))
    print("guest rebuild for a vm.patch that differs in bytes only ...", flush=True)
    fig["guest_reformatted"] = guest_after_header_reformat(cfg, Path(tempfile.mkdtemp(prefix="bench-kb-")))
    print("call rates in L2 ...", flush=True)
    fig["rates"] = call_rates(cfg, args.repeat, args.calls)
    print("migration experiments (six scenarios) ...", flush=True)
    fig["experiment"] = experiment_figures(args.experiment_config, args.kernel_tree)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(fig, indent=1))
    r = fig["rates"]
    print("\n=== figures ===")
    if "cold_run" in fig:
        print(f"cold default run (empty cache):   {fig['cold_run']['seconds']} s")
        k = fig["cold_run"].get("builds") or {}
        h, g = k.get("host") or {}, k.get("guest") or {}
        if h.get("cpu_seconds") and g.get("cpu_seconds"):
            print(f"  host kernel:                    {h['seconds']} s ({h['cpu_seconds']} CPU-s, {h['files']} files)")
            print(f"  guest kernel after the host:    {g['seconds']} s ({g['cpu_seconds']} CPU-s, "
                  f"ccache compiled {(g.get('ccache') or {}).get('compiled')} files): "
                  f"{g['cpu_seconds'] / h['cpu_seconds']:.2f}x the host's CPU")
    print(f"warm default run:                 {fig['warm_run']['seconds']} s (verdict {fig['warm_run']['verdict']})")
    rb = fig["rebuild_one_line"]
    print(f"rebuild after one-line patch:     {rb.get('seconds')} s ({rb.get('compiled_files')} files)")
    gr = fig["guest_reformatted"]
    cc = gr.get("ccache") or {}
    print(f"guest for a byte-different header: {gr.get('seconds')} s ({gr.get('cpu_seconds')} CPU-s, "
          f"{gr.get('compiled_files')} files through make; ccache compiled {cc.get('compiled')}, "
          f"served {cc.get('cached')}; "
          f"same Image: {gr.get('same_image')}){' ' + gr['skipped'] if 'skipped' in gr else ''}")
    print(f"L1 boot to SSH:                   {r['boot'].get('l1_ssh_s')} s")
    b = r["boot"]
    print(f"L2 launch to SSH:                 {b.get('l2_ssh_s')} s (QEMU up {b.get('l2_qemu_started_s')} s, "
          f"QMP {b.get('l2_qmp_s')} s, ready line {b.get('l2_ready_s')} s)")
    m = r["median_calls_per_s"]
    print(f"host_cpuid calls/s (recorded):    {m['hostcpuid_recorded']}  (bare {m['hostcpuid_bare']})")
    print(f"getppid calls/s (recorded):       {m['getppid_recorded']}  (bare {m['getppid_bare']})")
    print(f"recording overhead:               host_cpuid {r['recording_overhead_pct']['hostcpuid']} %, "
          f"getppid {r['recording_overhead_pct']['getppid']} %")
    e = fig["experiment"]
    to = e["trace_overhead"]
    print(f"six-scenario experiment (warm):   {e['seconds']} s  ({', '.join(f'{k} {v}' for k, v in e['verdicts'].items())})")
    low, high = to.get("overhead_pct_range") or ("?", "?")
    print(f"L1 tracing overhead:              {to.get('overhead_pct')} % (median of {to.get('rounds')} on/off pairs, "
          f"pairs from {low} to {high} %; "
          f"host_cpuid calls/s on {to.get('calls_per_s_tracing_on')}, off {to.get('calls_per_s_tracing_off')})")
    print(f"report rendering (stored run):    {e['report_render_s']} s")
    print(f"saved: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
