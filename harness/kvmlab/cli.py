"""python -m harness.kvmlab grade SUBMISSION... --out DIR | explain | run-reference"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Optional

from ..build import sandbox as confinement
from . import build as buildmod
from . import oracle
from .errors import KvmLabError
from .sandbox import KVM_DEVICE, base_env, preflight, probe_kvm, run_untrusted


def _grade_one(args):
    from .grade import grade
    from .report import write_one
    path, out, timeout, keep = args
    from .submission import safe_name
    sub_out = Path(out) / safe_name(Path(path))
    r = grade(Path(path), sub_out, timeout=timeout, keep_work=keep)
    write_one(r, sub_out)
    return r


def cmd_grade(ns) -> int:
    from .report import write_summary
    probe_kvm()
    print(preflight(), file=sys.stderr)
    buildmod.build_oracle()  # once, before the workers race for the cache
    jobs = [(p, ns.out, ns.timeout, ns.keep_work) for p in ns.submissions]
    results = []
    if ns.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=ns.jobs) as ex:
            results = list(ex.map(_grade_one, jobs))
    else:
        results = [_grade_one(j) for j in jobs]
    write_summary(results, Path(ns.out))
    for r in results:
        marks = " ".join(f"{c.id}={c.status}" for c in r.checks if c.kind != "robustness")
        extra = f" build={r.build}" if r.build and r.build != "upstream" else ""
        extra += f" REVIEW: {'; '.join(r.review)}" if r.review else ""
        extra += f" HAND-IN: {r.handin}" if r.handin else ""
        print(f"{r.submission}: {r.verdict} score={r.score}  {marks}  robustness: {r.robustness}{extra}")
    print(f"results: {Path(ns.out).resolve()}/<submission>/{{results.json,junit.xml,evidence.txt}}")
    return 0 if all(r.verdict == "PASS" for r in results) else 1


def _run_reference(extra: List[str], show_oracle: bool) -> int:
    probe_kvm()
    ref = buildmod.build_reference()
    shim = buildmod.build_oracle()
    work = Path(tempfile.mkdtemp(prefix="kvmlab-ref-"))
    uid = confinement.uid_for(str(work.resolve()))
    try:
        root = work / "root"
        root.mkdir()
        rec = work / "oracle.jsonl"
        env = base_env({"LD_PRELOAD": str(shim), "KVMLAB_ORACLE_OUT": str(rec)})
        res = run_untrusted([str(ref.binary), "-l"] + extra, cwd=root, stdout_path=work / "stdout",
                            stderr_path=work / "stderr", timeout=20, env=env, writable=[work],
                            readable=[ref.binary.parent, shim], devices=[KVM_DEVICE], uid=uid)
        sys.stdout.write(res.stdout().decode(errors="replace"))
        sys.stderr.write(res.stderr().decode(errors="replace"))
        if show_oracle:
            trace = oracle.load(rec)
            print(f"== oracle: {len(trace.exits)} exits ({trace.unavailable or 'record ok'}) ==")
            for e in trace.exits:
                print("  " + e.brief())
            files = sorted(p.name for p in root.iterdir())
            print(f"== files the guest left in its directory: {', '.join(files) or 'none'} ==")
        print(f"== reference {res.describe()} ==")
        return res.returncode if res.returncode is not None else 1
    finally:
        confinement.drop_device_nodes(uid)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.kvmlab",
                                 description="KVM-API hypercall lab: reference, oracle, grader")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade submissions (folders or .tar.gz)")
    g.add_argument("submissions", nargs="+")
    g.add_argument("--out", required=True, help="results directory")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per hypervisor run")
    g.add_argument("-j", "--jobs", type=int, default=1, help="submissions graded in parallel")
    g.add_argument("--keep-work", action="store_true", help="keep the scratch build/run dirs")
    sub.add_parser("explain", help="print the Part A answers from the running reference")
    r = sub.add_parser("run-reference", help="build and run the reference with the oracle")
    r.add_argument("--quiet-oracle", action="store_true")
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "grade":
            return cmd_grade(ns)
        if ns.cmd == "explain":
            return _run_reference(["--explain"], show_oracle=False)
        return _run_reference([], show_oracle=not ns.quiet_oracle)
    except KvmLabError as e:
        render = getattr(e, "render", None)
        print(render() if render else str(e), file=sys.stderr)
        return 2
