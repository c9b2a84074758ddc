"""Performance figures of the harness (``make bench``), printed and saved as JSON.

    python -m harness.jobs.bench [--cold] [--repeat N] [--calls N] [--kernel-tree PATH]
    python -m harness.jobs.bench soak N        (robustness: N warm runs, random SIGINT/SIGKILL)

Measures, on this machine: the warm default run (everything cached), a kernel rebuild
after a one-line change of kvm.patch, L1 boot-to-SSH and L2 launch-to-SSH, host_cpuid
and getppid calls/s in L2 in the same run, and the workload's recording overhead
(recorded vs bare blocks interleaved within each run, medians over runs).  ``--cold`` first does the whole default
run with an empty cache (a temporary KVM_HARNESS_CACHE): the cold time.  ``--only`` picks
parts (warm, rebuild, guest-rebuild, rates, experiment).

Every figure measured also becomes a row of ``docs/performance.md`` (what, figure, date,
machine, load average, commit): rows of the parts measured now are replaced, the others
keep theirs, so a partial bench updates only what it measured.  Commit the file when you
re-measure."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..core import cache, config, distro
from ..build import kbuild, profiles, sources
from . import run
from ..build.patches import Patch

PERFORMANCE_MD = config.REPO / "docs" / "performance.md"
PARTS = ("warm", "rebuild", "guest-rebuild", "rates", "experiment")


def _quiet(msg: str) -> None:
    print(f"  | {msg}", flush=True)


def timed_default_run(cfg: config.Config, name: str) -> dict:
    t0 = time.monotonic()
    summary = run.main_job(cfg, run.new_run_dir(cfg, name), progress=_quiet)
    return {"seconds": round(time.monotonic() - t0, 1), "verdict": summary["verdict"],
            "timings": summary.get("timings"), "builds": summary.get("builds"),
            "l1_accel": (summary.get("l1_accel") or {}).get("accel")}


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
    from . import experiment

    cfg = config.load(cfg_path or experiment.DEFAULT_EXPERIMENT)
    if kernel_tree:
        cfg = config.override(cfg, config.tree_assignments(kernel_tree))
    t0 = time.monotonic()
    exp = experiment.run_experiment(cfg, out=run.new_run_dir(cfg, "bench-experiment"), progress=_quiet)
    seconds = time.monotonic() - t0
    t0 = time.monotonic()
    experiment.render_report(Path(exp["run_dir"]))
    render_s = time.monotonic() - t0
    over = next((sc["trace_overhead"] for sc in exp["scenarios"] if sc.get("trace_overhead")), {})
    return {"seconds": round(seconds, 1), "report_render_s": round(render_s, 2), "trace_overhead": over,
            "verdicts": {sc["name"]: sc["verdict"] for sc in exp["scenarios"]}, "run_dir": exp["run_dir"]}


def _fmt(v, unit: str = "") -> str:
    return "?" if v is None else f"{v}{unit}"


def rows(fig: dict) -> List[Tuple[str, str, str]]:
    """(part, what, figure) for every figure in ``fig`` (the parts that were measured)."""
    out: List[Tuple[str, str, str]] = []
    if "cold_run" in fig:
        c = fig["cold_run"]
        k = c.get("builds") or {}
        h, g = k.get("host") or {}, k.get("guest") or {}
        kernels = f" (host kernel {_fmt(h.get('seconds'), ' s')}, guest {_fmt(g.get('seconds'), ' s')})" if h else ""
        out.append(("cold", "default run, cold (empty cache: both kernels, images, boots, scenarios)",
                    f"{c['seconds']} s{kernels}, verdict {c['verdict']}"))
    if "warm_run" in fig:
        w = fig["warm_run"]
        out.append(("warm", "default run, warm (everything cached)", f"{w['seconds']} s, verdict {w['verdict']}"))
    if "rebuild_one_line" in fig:
        rb = fig["rebuild_one_line"]
        out.append(("rebuild", "host kernel rebuild after a one-line kvm.patch change",
                    rb["skipped"] if "skipped" in rb else
                    f"{rb.get('seconds')} s ({_fmt(rb.get('compiled_files'))} files through make)"))
    if "guest_reformatted" in fig:
        gr = fig["guest_reformatted"]
        cc = gr.get("ccache") or {}
        out.append(("guest-rebuild", "guest kernel rebuild for a vm.patch whose unistd.h edit differs in bytes only",
                    gr["skipped"] if "skipped" in gr else
                    f"{gr.get('seconds')} s, {_fmt(gr.get('cpu_seconds'))} CPU-s; ccache compiled "
                    f"{_fmt(cc.get('compiled'))} of {_fmt(gr.get('compiled_files'))} files; "
                    f"same Image: {gr.get('same_image')}"))
    if "rates" in fig:
        r = fig["rates"]
        b, m, o = r["boot"], r["median_calls_per_s"], r["recording_overhead_pct"]
        out += [("rates", "L1 boot to SSH", _fmt(b.get("l1_ssh_s"), " s")),
                ("rates", "L2 launch to SSH", _fmt(b.get("l2_ssh_s"), " s")),
                ("rates", "host_cpuid calls/s in L2 (recorded; bare)",
                 f"{m['hostcpuid_recorded']}; {m['hostcpuid_bare']} (recording overhead {o['hostcpuid']} %)"),
                ("rates", "getppid calls/s in L2 (recorded; bare)",
                 f"{m['getppid_recorded']}; {m['getppid_bare']} (recording overhead {o['getppid']} %)")]
    if "experiment" in fig:
        e = fig["experiment"]
        to = e["trace_overhead"]
        low, high = to.get("overhead_pct_range") or ("?", "?")
        met = sum(1 for v in e["verdicts"].values() if v == "met")
        out += [("experiment", "migration experiments, six scenarios, warm",
                 f"{e['seconds']} s ({met} of {len(e['verdicts'])} expectations met)"),
                ("experiment", "L1 tracing overhead on host_cpuid",
                 f"{_fmt(to.get('overhead_pct'), ' %')} (median of {_fmt(to.get('rounds'))} on/off pairs, "
                 f"pairs {low} to {high} %)"),
                ("experiment", "report re-rendered from a stored run", f"{e['report_render_s']} s")]
    return out


def machine(accel: Optional[str] = None) -> str:
    """This machine in a few words: architecture, CPUs, memory, distribution, how L0 runs L1."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError):
        mem = None
    words = [platform.machine(), f"{os.cpu_count()} CPUs"] + ([f"{mem:.0f} GiB"] if mem else [])
    words.append(distro.release_name(distro.os_release()))
    if accel:
        words.append(f"L1 on {accel.upper()}")
    return ", ".join(words)


def commit(repo: Path = config.REPO) -> str:
    """The checkout measured: short commit id, ``+changes`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


HEADER = ["| what | figure | date | machine | load average | commit |", "|---|---|---|---|---|---|"]
INTRO = """# Performance

Written by `make bench` (`python -m harness.jobs.bench`, see its `--help`); do not edit by hand.
Each row is one measurement: when, on which machine, at which load average (1-minute, at
the start and the end of that measurement) and at which commit.  A bench run replaces the
rows of the parts it measured and keeps the others, so rows can come from different days.
Commit this file when you re-measure.

`make bench` measures the warm parts; `make bench COLD=1` adds a run with an empty cache.
Figures on a shared or loaded machine are slower: compare the load average column.
"""


def read_rows(path: Path) -> Dict[str, List[str]]:
    """what -> the row's cells, from an existing performance.md (empty when there is none)."""
    out: Dict[str, List[str]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.startswith("| ") and line not in HEADER:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if len(cells) == len(HEADER[0].strip("|").split("|")):
                out[cells[0]] = cells
    return out


def write_performance(path: Path, measured: List[Tuple[str, str, str]], when: Dict[str, dict], host: str,
                      rev: str) -> Path:
    """Merge this run's rows (``measured``: part, what, figure; ``when``: part -> date and
    load) into ``path``: a row measured now replaces the row of the same ``what``."""
    merged = read_rows(path)  # in the file's order; a new row goes at the end
    for part, what, figure in measured:
        w = when[part]
        merged[what] = [what, figure.replace("|", "/"), w["date"], host, w["load"], rev]
    lines = [INTRO, *HEADER] + ["| " + " | ".join(cells) + " |" for cells in merged.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def timed_part(when: Dict[str, dict], part: str, fn: Callable, *args):
    """Run one part, noting its date and the load average before and after it."""
    start = _load()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = fn(*args)
    when[part] = {"date": date, "load": f"{start}-{_load()}"}
    return result


def grading_one(zip_path: Path, out: Path, cfg_path: Optional[str] = None) -> dict:
    """One submission graded on the real stack (``make bench-grading ZIP=...``; run it
    twice: the second run has every kernel cached): the batch's wall time (preflight and
    the reference pairing included) and the submission's own (intake, report, builds,
    pairings), its status and total."""
    from ..grade import batch, outputs, rubric

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
    filter (medians of ``repeat``; ``python -m harness.jobs.bench sandbox PDF``)."""
    import subprocess

    from ..stack import machine
    from ..build import guard, sandbox

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

    def qemu(extra: list, confined: bool = False) -> float:
        argv = [machine.QEMU, *extra, "-machine", "virt", "-display", "none", "-nodefaults", "-qmp", "stdio"]
        if confined:
            argv = sandbox.confine_emulator(argv, images=[], socket_dir=thumbs, memory_mb=128,
                                            uid=sandbox.uid_for("bench qemu"))
        t0 = time.monotonic()
        subprocess.run(argv, input=b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n', capture_output=True,
                       check=True)
        return time.monotonic() - t0

    def walk() -> float:  # the guard's measurement of a build directory's bytes (every 2 s of a build)
        t0 = time.monotonic()
        guard.allocated([str(d) for d in build_dirs])
        return time.monotonic() - t0

    med = lambda f, *a: round(statistics.median(f(*a) for _ in range(repeat)), 3)  # noqa: E731
    t0 = time.monotonic()
    shared = kbuild.share_ccache()
    share_s = time.monotonic() - t0
    fig = {"poppler_bare_s": med(poppler, False), "poppler_confined_s": med(poppler, True),
           "share_ccache_s": round(share_s, 3), "shared_entries": shared,
           "qemu_start_quit_s": med(qemu, []), "qemu_start_quit_seccomp_s": med(qemu, machine.SECCOMP),
           "qemu_start_quit_seccomp_confined_s": med(qemu, machine.SECCOMP, True)}
    build_dirs = sorted((cache.cache_root() / "work").glob("*/build"))[:1]
    if build_dirs:
        fig["guard_walk_s"] = med(walk)
        fig["guard_walk_of"] = f"{build_dirs[0]} ({guard.allocated([str(build_dirs[0])]) >> 20} MiB)"
        fig["guard_walk_share_of_a_core"] = round(fig["guard_walk_s"] / guard.INTERVAL_S, 4)
    fig["added_per_submission_s"] = round(fig["poppler_confined_s"] - fig["poppler_bare_s"] + share_s
                                          + 3 * max(0.0, fig["qemu_start_quit_seccomp_confined_s"]
                                                    - fig["qemu_start_quit_s"]), 3)
    return fig


def main() -> int:
    import sys
    if sys.argv[1:2] == ["soak"]:  # python -m harness.jobs.bench soak N: see harness/jobs/soak.py
        from . import soak
        return soak.main(sys.argv[2:])
    if sys.argv[1:2] == ["sandbox"]:  # python -m harness.jobs.bench sandbox PDF
        print(json.dumps(sandbox_overhead(Path(sys.argv[2]).resolve()), indent=1))
        return 0
    if sys.argv[1:2] == ["grading"]:  # python -m harness.jobs.bench grading ZIP [OUT]
        fig = grading_one(Path(sys.argv[2]), Path(sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="bench-grade-")))
        print(json.dumps(fig, indent=1))
        return 0 if fig["status"] == "graded" else 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="config (default: configs/default.yaml)")
    p.add_argument("--cold", action="store_true", help="also time a run with an empty cache (~12 min)")
    p.add_argument("--only", metavar="PART,...", help=f"measure only these parts: {', '.join(PARTS)}")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--kernel-tree", metavar="PATH", help="measure on this kernel tree (e.g. a v5.4 checkout)")
    p.add_argument("--experiment-config", help="experiment config (default: configs/experiments.yaml)")
    p.add_argument("--out", default="runs/bench.json")
    p.add_argument("--doc", default=str(PERFORMANCE_MD),
                   help="the table to update (default: docs/performance.md; '' for none)")
    args = p.parse_args()
    parts = [x.strip() for x in args.only.split(",")] if args.only else list(PARTS)
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    cfg = config.load(args.config)
    if args.kernel_tree:
        cfg = config.override(cfg, config.tree_assignments(args.kernel_tree))
    fig: dict = {"machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
                 "kernel": cfg.kernel.path if cfg.kernel.source == "path" else cfg.kernel.source}
    when: Dict[str, dict] = {}
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="cold-cache-") as d:
            old = os.environ.get("KVM_HARNESS_CACHE")
            os.environ["KVM_HARNESS_CACHE"] = d
            try:
                print("cold default run (empty cache) ...", flush=True)
                fig["cold_run"] = timed_part(when, "cold", timed_default_run, cfg, "bench-cold")
            finally:
                if old is None:
                    os.environ.pop("KVM_HARNESS_CACHE")
                else:
                    os.environ["KVM_HARNESS_CACHE"] = old
    if "warm" in parts:
        print("warm default run ...", flush=True)
        timed_default_run(cfg, "bench-warmup")  # make sure everything is cached
        fig["warm_run"] = timed_part(when, "warm", timed_default_run, cfg, "bench-warm")
    if "rebuild" in parts:
        print("kernel rebuild after a one-line kvm.patch change ...", flush=True)
        fig["rebuild_one_line"] = timed_part(when, "rebuild", rebuild_after_patch_change, cfg,
                                             Path(tempfile.mkdtemp(prefix="bench-kb-")))
    if "guest-rebuild" in parts:
        print("guest rebuild for a vm.patch that differs in bytes only ...", flush=True)
        fig["guest_reformatted"] = timed_part(when, "guest-rebuild", guest_after_header_reformat, cfg,
                                              Path(tempfile.mkdtemp(prefix="bench-kb-")))
    if "rates" in parts:
        print("call rates in L2 ...", flush=True)
        fig["rates"] = timed_part(when, "rates", call_rates, cfg, args.repeat, args.calls)
    if "experiment" in parts:
        print("migration experiments (six scenarios) ...", flush=True)
        fig["experiment"] = timed_part(when, "experiment", experiment_figures, args.experiment_config,
                                       args.kernel_tree)
    fig["measured"] = when
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(fig, indent=1))
    print("\n=== figures ===")
    print_figures(fig)
    print(f"saved: {args.out}")
    if args.doc:
        accel = next((fig[k].get("l1_accel") for k in ("warm_run", "cold_run") if k in fig), None)
        print(f"table: {write_performance(Path(args.doc), rows(fig), when, machine(accel), commit())}")
    return 0


def print_figures(fig: dict) -> None:
    if "cold_run" in fig:
        print(f"cold default run (empty cache):   {fig['cold_run']['seconds']} s")
        k = fig["cold_run"].get("builds") or {}
        h, g = k.get("host") or {}, k.get("guest") or {}
        if h.get("cpu_seconds") and g.get("cpu_seconds"):
            print(f"  host kernel:                    {h['seconds']} s ({h['cpu_seconds']} CPU-s, {h['files']} files)")
            print(f"  guest kernel after the host:    {g['seconds']} s ({g['cpu_seconds']} CPU-s, "
                  f"ccache compiled {(g.get('ccache') or {}).get('compiled')} files): "
                  f"{g['cpu_seconds'] / h['cpu_seconds']:.2f}x the host's CPU")
    if "warm_run" in fig:
        print(f"warm default run:                 {fig['warm_run']['seconds']} s "
              f"(verdict {fig['warm_run']['verdict']})")
    if "rebuild_one_line" in fig:
        rb = fig["rebuild_one_line"]
        print(f"rebuild after one-line patch:     {rb.get('seconds')} s ({rb.get('compiled_files')} files)")
    if "guest_reformatted" in fig:
        gr = fig["guest_reformatted"]
        cc = gr.get("ccache") or {}
        print(f"guest for a byte-different header: {gr.get('seconds')} s ({gr.get('cpu_seconds')} CPU-s, "
              f"{gr.get('compiled_files')} files through make; ccache compiled {cc.get('compiled')}, "
              f"served {cc.get('cached')}; "
              f"same Image: {gr.get('same_image')}){' ' + gr['skipped'] if 'skipped' in gr else ''}")
    if "rates" in fig:
        r = fig["rates"]
        print(f"L1 boot to SSH:                   {r['boot'].get('l1_ssh_s')} s")
        b = r["boot"]
        print(f"L2 launch to SSH:                 {b.get('l2_ssh_s')} s (QEMU up {b.get('l2_qemu_started_s')} s, "
              f"QMP {b.get('l2_qmp_s')} s, ready line {b.get('l2_ready_s')} s)")
        m = r["median_calls_per_s"]
        print(f"host_cpuid calls/s (recorded):    {m['hostcpuid_recorded']}  (bare {m['hostcpuid_bare']})")
        print(f"getppid calls/s (recorded):       {m['getppid_recorded']}  (bare {m['getppid_bare']})")
        print(f"recording overhead:               host_cpuid {r['recording_overhead_pct']['hostcpuid']} %, "
              f"getppid {r['recording_overhead_pct']['getppid']} %")
    if "experiment" in fig:
        e = fig["experiment"]
        to = e["trace_overhead"]
        print(f"six-scenario experiment (warm):   {e['seconds']} s  "
              f"({', '.join(f'{k} {v}' for k, v in e['verdicts'].items())})")
        low, high = to.get("overhead_pct_range") or ("?", "?")
        print(f"L1 tracing overhead:              {to.get('overhead_pct')} % (median of {to.get('rounds')} on/off "
              f"pairs, pairs from {low} to {high} %; "
              f"host_cpuid calls/s on {to.get('calls_per_s_tracing_on')}, off {to.get('calls_per_s_tracing_off')})")
        print(f"report rendering (stored run):    {e['report_render_s']} s")


if __name__ == "__main__":
    raise SystemExit(main())
