"""kvm-harness: build patched arm64 kernels, boot nested KVM, trace host_cpuid.

Exit codes: 0 every scenario behaved; 1 the hypercall or kernel misbehaved (verdict in
summary.json); 2 bad input (config, patch, tree); 3 the harness or machine failed;
130 interrupted.  Every failure prints its stage, the log tail and a reproducer."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from .observe import analysis
from .core import cache, config, interrupts, procs
from .core.errors import HarnessError, exit_code, unexpected

def _common(p: argparse.ArgumentParser, patches: bool = True) -> None:
    """Options shared by the commands; ``patches=False`` for grade, whose patches come from
    the submissions (a --kvm-patch there would be silently ignored)."""
    p.add_argument("-c", "--config", help=f"YAML config (default: {config.DEFAULT_CONFIG.relative_to(config.REPO)})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set l1.cpus=4 --set scenarios[...]: repeatable")
    p.add_argument("--kernel-tree", metavar="PATH", help=f"use this kernel tree (or set ${config.ENV_TREE})")
    p.add_argument("--kernel-git", metavar="URL", help="use this git repository (with --kernel-ref)")
    p.add_argument("--kernel-ref", metavar="REF", help="tag, branch or commit of --kernel-git, e.g. v5.4")
    if patches:
        p.add_argument("--kvm-patch", metavar="FILE", help="host patch (default: the profile's reference)")
        p.add_argument("--vm-patch", metavar="FILE", help="guest patch (default: the profile's reference)")


def cmd_run(args) -> int:
    from .jobs import run

    cfg = config.from_args(args)
    summary = run.main_job(cfg, run_dir=Path(args.run_dir) if args.run_dir else None)
    print()
    print(analysis.human_summary(summary))
    print(f"\nverdict: {summary['verdict']} - {summary.get('verdict_text', '')}")
    for f in summary.get("kernel_log_findings", []):
        print(f"  {f['where']}: {f['line']}")
    print(f"run directory: {summary['run_dir']} (summary.json, traces/, *-console.log, logs/)")
    return 0 if summary["verdict"] == "ok" else 1


def cmd_experiment(args) -> int:
    from .jobs import experiment

    if not args.config:
        args.config = str(experiment.DEFAULT_EXPERIMENT)
    cfg = config.from_args(args)
    exp = experiment.run_experiment(cfg, names=args.scenarios or None, repeat=args.repeat,
                                    out=Path(args.out) if args.out else None)
    print()
    print(experiment_lines(exp))
    print(f"report: {Path(exp['run_dir']) / 'report.html'} (and report.md, plots/, experiments.json)")
    return 1 if exp.get("verdict") not in ("ok", None) or any(s["verdict"] == "not-met" for s in exp["scenarios"]) \
        else 0


def experiment_lines(exp: dict) -> str:
    lines = []
    for sc in exp["scenarios"]:
        st = sc["stats"]["changes_per_10k"]
        ci = f" ± {st['ci95']}" if st.get("ci95") is not None else ""
        gts = "; ".join(f"vCPU {v}: agreement {pv['ground_truth']['agreement']}, explained "
                        f"{pv['ground_truth']['changes_explained']}" for v, pv in sc["per_vcpu"].items())
        lines.append(f"{sc['name']:<11} {sc['verdict']:<12} {st['mean']}{ci} changes/10k calls; {gts}")
        lines.append(f"{'':<11} {sc['reason']}")
    return "\n".join(lines)


def cmd_report(args) -> int:
    from .jobs import experiment

    path = experiment.render_report(Path(args.run_dir))
    print(f"report: {path} (and report.md, plots/, experiments.json)")
    return 0


def cmd_build(args) -> int:
    from .jobs import run

    cfg = config.from_args(args)
    log_dir = Path(args.log_dir)
    art = run.prepare(cfg, log_dir)
    print(json.dumps({"host": str(art.host.image), "guest": str(art.guest.image), "l1_rootfs": str(art.l1_rootfs),
                      "l2_initramfs": str(art.l2_initramfs), "workload": str(art.workload),
                      "profile": art.profile.name, "syscall_nr": art.profile.syscall_nr}, indent=1))
    return 0


def cmd_clean(args) -> int:
    kinds = None if args.all else (args.kinds or ["kernels", "work"])
    for d in cache.clean(kinds):
        print(f"removed {d}")
    return 0


def cmd_cache(args) -> int:
    print(cache.cache_root())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvm-harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the main job: build (cached), boot L1+L2, run scenarios, write a run directory")
    _common(r)
    r.add_argument("--run-dir", help="write results here (default: <output>/<timestamp>-run)")
    r.add_argument("-o", "--output", help="parent directory of run directories (config key: output)")
    r.set_defaults(func=cmd_run)
    e = sub.add_parser("experiment", help="the migration experiments: scenarios with L1 ground truth, plots, report")
    _common(e)
    e.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="scenario names (default: all of the config)")
    e.add_argument("--repeat", type=int, default=1, metavar="N", help="run each scenario N times (95 %% intervals)")
    e.add_argument("--out", metavar="DIR", help="run directory (default: <output>/<timestamp>-experiment)")
    e.set_defaults(func=cmd_experiment)
    rp = sub.add_parser("report", help="re-render report.html/report.md/plots of a run directory (boots nothing)")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.set_defaults(func=cmd_report)
    b = sub.add_parser("build", help="build kernels, root filesystems and the workload only (cached)")
    _common(b)
    b.add_argument("--log-dir", default="build-logs", help="where build logs go (default: ./build-logs)")
    b.set_defaults(func=cmd_build)
    c = sub.add_parser("clean", help="remove cached builds (kernels and worktrees by default)")
    c.add_argument("kinds", nargs="*", help="cache kinds: kernels work sources rootfs ccache git ...")
    c.add_argument("--all", action="store_true", help="remove the whole cache")
    c.set_defaults(func=cmd_clean)
    k = sub.add_parser("cache-dir", help="print the cache directory")
    k.set_defaults(func=cmd_cache)
    from .grade import cli as grade_cli  # kvm-harness grade / grade-merge (hw2 submissions)

    grade_cli.add_parsers(sub, _common)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach CI logs as they happen
    interrupts.install()  # Ctrl-C and SIGTERM: the same cleanup path, never lost
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _interrupted()
    except HarnessError as e:
        if interrupts.requested():  # a failure that followed a swallowed Ctrl-C: the interrupt
            return _interrupted()
        print("\n" + e.render(), file=sys.stderr)
        return exit_code(e.kind)
    except Exception as exc:  # noqa: BLE001 - not a HarnessError: a harness bug, exit 3 in one line
        if interrupts.requested():
            return _interrupted()
        log = cache.cache_root() / "logs" / f"traceback-{os.getpid()}.log"
        print("\n" + unexpected(exc, log).render(), file=sys.stderr)
        return 3


def _interrupted() -> int:
    left = procs.survivors()
    if left:
        print("\ninterrupted: could not stop " + ", ".join(f"{w} (pid {p})" for p, w in left.items()),
              file=sys.stderr)
        return 3
    print("\ninterrupted: every QEMU and build process of this run was stopped (checked)", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
