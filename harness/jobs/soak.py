"""Soak: N back-to-back warm runs of `kvm-harness run`, some interrupted at a random moment
with SIGINT or SIGKILL.  Prints what matters for robustness:

    orphans                 QEMU processes of a run still alive afterwards   (goal 0)
    unexpected failures     runs that were not interrupted and did not exit 0 (goal 0)
    wrong exit on SIGINT    interrupted runs that did not exit 130            (goal 0)
    seconds per run

    python -m harness.jobs.bench soak N [--kill-fraction 0.5] [--calls 300] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from ..core import procs
from ..core.deadline import scaled

REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> List[int]:
    return [pid for pid, cmd in procs.processes_mentioning(text).items() if "qemu" in cmd]


def soak(n: int, kill_fraction: float, calls: int, seed: int, base: Path) -> dict:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        run_dir = base / f"soak-{i}"
        argv = [sys.executable, "-m", "harness", "run", "--run-dir", str(run_dir),
                "--set", f"scenarios=[{{name: soak, calls: {calls}}}]"]
        action = rng.choice(["SIGINT", "SIGKILL"]) if rng.random() < kill_fraction else None
        at = rng.uniform(1.0, 14.0) if action else None
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if action:
            try:
                p.wait(timeout=at)
                action = None  # finished before the signal
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGINT if action == "SIGINT" else signal.SIGKILL)
        try:
            _, err = p.communicate(timeout=scaled(600))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        seconds = time.monotonic() - t0
        time.sleep(1.0 if action == "SIGKILL" else 0.2)  # PDEATHSIG delivery
        orphans = _processes_mentioning(str(run_dir))
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        ok = (p.returncode == 0 if action is None else
              p.returncode == 130 if action == "SIGINT" else True)
        rows.append({"run": i, "signal": action, "at_s": round(at, 1) if at else None, "rc": p.returncode,
                     "seconds": round(seconds, 1), "orphans": len(orphans), "as_expected": ok,
                     "error": (err.strip().splitlines() or [""])[-1][:200] if not ok else ""})
        print(f"run {i}: {action or 'complete'}{f' at {at:.1f} s' if at else ''}: exit {p.returncode}, "
              f"{seconds:.1f} s, orphans {len(orphans)}" + ("" if ok else f"  UNEXPECTED: {rows[-1]['error']}"),
              flush=True)
    full = [r["seconds"] for r in rows if r["signal"] is None and r["rc"] == 0]
    return {
        "runs": n, "orphans": sum(r["orphans"] for r in rows),
        "unexpected_failures": sum(1 for r in rows if r["signal"] is None and r["rc"] != 0),
        "wrong_exit_on_sigint": sum(1 for r in rows if r["signal"] == "SIGINT" and r["rc"] != 130),
        "completed_runs": len(full),
        "seconds_per_completed_run": round(statistics.median(full), 1) if full else None,
        "rows": rows,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.jobs.bench soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("n", type=int)
    p.add_argument("--kill-fraction", type=float, default=0.5)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--out", default="runs/soak.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as d:
        res = soak(args.n, args.kill_fraction, args.calls, args.seed, Path(d))
    res["seed"] = args.seed
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"\nsoak: {res['runs']} runs (seed {args.seed}): orphans {res['orphans']} (goal 0), unexpected failures "
          f"{res['unexpected_failures']} (goal 0), SIGINT not exiting 130: {res['wrong_exit_on_sigint']}, "
          f"median {res['seconds_per_completed_run']} s per completed run")
    return 0 if res["orphans"] == 0 and res["unexpected_failures"] == 0 and res["wrong_exit_on_sigint"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
