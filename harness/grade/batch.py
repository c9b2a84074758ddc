"""A batch: preflight, the deterministic shard, resumable parallel grading, the batch
outputs (grades.csv, index.html, similarity), and merging shard outputs."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..build import kbuild, sandbox, sources
from ..stack import machine
from ..core import procs
from ..core.config import Config, override
from ..core.errors import HarnessError
from ..stack.machine import QEMU
from ..build.profiles import select
from . import intake, outputs, similarity
from .errors import GradeInfraError
from .grader import Context, grade
from .pairing import Pairing, run_pairing
from .rubric import Rubric

Progress = Callable[[str], None]
MIN_FREE_GB = 6


def shard_of(name: str, n: int) -> int:
    """0-based shard of a submission: stable across machines and batch sizes."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % n


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    if not text:
        return 1, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise GradeInfraError(f"--shard {text!r}: expected I/N, e.g. 2/4", stage="cli", kind="input") from None
    if not 1 <= i <= n:
        raise GradeInfraError(f"--shard {text!r}: I must be in 1..N", stage="cli", kind="input")
    return i, n


def assign_ids(paths: List[Path]) -> List[Tuple[Path, str]]:
    """A unique, filesystem-safe id per input (the group id when the name is right)."""
    seen: Dict[str, int] = {}
    out = []
    for p in paths:
        name = p.name
        gid, _ = intake.check_name(name) if p.is_file() else (None, None)
        base = intake.safe_id(gid or (name[:-4] if name.lower().endswith(".zip") else name))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append((p, base if n == 0 else f"{base}-{n + 1}"))
    return out


def preflight(cfg: Config, out: Path, full: bool, progress: Progress) -> List[str]:
    """Raise GradeInfraError when this machine cannot grade; returns what was checked."""
    done = []
    why = sandbox.unusable()
    if why:
        raise GradeInfraError(f"sandbox: {why}")
    done.append("bubblewrap sandbox works")
    done.append(sandbox.limits_mechanism())
    for tool in ("pdfinfo", "pdftoppm", "git", "patch"):
        if not shutil.which(tool):
            raise GradeInfraError(f"{tool} not found (apt-get install poppler-utils git patch)")
    done.append("poppler, git, patch present")
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free / 2**30
    if full and free < MIN_FREE_GB:
        raise GradeInfraError(f"only {free:.1f} GiB free under {out} (need {MIN_FREE_GB})")
    done.append(f"{free:.0f} GiB free")
    if full:
        if not shutil.which(QEMU):
            raise GradeInfraError(f"{QEMU} not found: run `make setup`")
        refused = machine.seccomp_refused()
        done.append(f"{QEMU} present, " + (f"WITHOUT its seccomp sandbox for L1 ({refused})" if refused
                                           else "L1 runs under its seccomp sandbox"))
        done.append("L1's QEMU runs confined: as an unprivileged uid, seeing its images and its QMP socket's "
                    "directory only" if cfg.l1.confine else
                    "L1's QEMU runs UNCONFINED (l1.confine is off in this configuration)")
    return done


REFERENCE_ATTEMPTS = 2  # a loaded machine may lose one run (seen: L2's QEMU gone mid-scenario); not two


def reference_run(ctx: Context, name: str = "reference") -> dict:
    """Grading host x grading guest: L1 must boot with KVM in nVHE mode and answer.  The
    pairing is known good, so one failure may be the machine's passing trouble: it runs
    once more, and only a second failure says the machine cannot grade."""
    failures = []
    for attempt in range(1, REFERENCE_ATTEMPTS + 1):
        tag = name if attempt == 1 else f"{name}-attempt{attempt}"
        res = run_pairing(ctx.base, Pairing(tag, "grading", "grading", ()), ctx.profile.name,
                          ctx.out / "preflight", ctx.progress)
        if res.status == "ran" and res.summary.get("verdict") == "ok":
            out = {"verdict": "ok", "timings": res.summary.get("timings")}
            if failures:
                out["earlier_failures"] = failures
            return out
        failures.append(f"{tag}: {res.status}: {res.why or res.summary.get('verdict')}")
        if attempt < REFERENCE_ATTEMPTS:
            ctx.progress(f"the reference pairing failed ({failures[-1]}): running it once more")
    raise GradeInfraError(f"the reference pairing does not work on this machine ({'; '.join(failures)}); "
                          "nobody is graded", log=ctx.out / "preflight" / tag / "summary.json")


def machine_check(ctx: Context, tag: str) -> str:
    """The reference pairing again (after a student's pairing timed out)."""
    r = reference_run(ctx, f"recheck-{tag}")
    t = r.get("timings") or {}
    return f"verdict {r['verdict']}, L1 SSH {t.get('l1_ssh_s')} s, L2 SSH {t.get('l2_ssh_s')} s"


def batch_ccache(out: Path, progress: Progress = print) -> Path:
    """The batch's private ccache for sandboxed (students') builds, empty at first: they
    read the shared one as ccache remote storage, read-only (kbuild.shared_store, refreshed
    here from the trusted local cache with hard links), and write only this one.  No
    submission can poison the objects that reference builds and later batches use."""
    d = out / ".ccache"
    d.mkdir(parents=True, exist_ok=True)
    n = kbuild.share_ccache()
    progress(f"the shared ccache ({n} entries) is read-only for the batch's builds; they write {d}")
    return d


def make_context(cfg: Config, rubric: Rubric, out: Path, run_pairings: bool, progress: Progress) -> Context:
    if run_pairings and cfg.kernel.sandbox and not cfg.kernel.sandbox_ccache:
        out.mkdir(parents=True, exist_ok=True)
        cfg = override(cfg, [f"kernel.sandbox_ccache={json.dumps(str(batch_ccache(out, progress)))}"])
    try:
        src = sources.resolve(cfg, out / "logs", progress)
    except HarnessError as e:
        if e.kind == "input":
            raise
        raise GradeInfraError(f"kernel source: {e.message}") from None
    profile = select(src.version, cfg.kernel.profile)
    ctx = Context(base=cfg, profile=profile, tree=src.root, rubric=rubric, out=out, run_pairings=run_pairings,
                  progress=progress)
    ctx.machine_check = lambda tag: machine_check(ctx, tag)
    return ctx


def grade_batch(inputs: List[Path], ctx: Context, jobs: int = 1, shard: Tuple[int, int] = (1, 1),
                corpus: Optional[Path] = None, threshold: float = similarity.THRESHOLD) -> List[dict]:
    out = ctx.out
    items = assign_ids(intake.expand(inputs))
    i, n = shard
    mine = [(p, sid) for p, sid in items if shard_of(sid, n) == i - 1]
    ctx.progress(f"{len(items)} submissions, {len(mine)} in shard {i}/{n}")
    checked = preflight(ctx.base, out, ctx.run_pairings, ctx.progress)
    if ctx.run_pairings:
        checked.append(f"reference pairing: {reference_run(ctx)['verdict']}")
    (out / "preflight.json").write_text(json.dumps({"checked": checked}, indent=1))
    results: List[dict] = []
    lock = threading.Lock()
    stop = threading.Event()

    def one(item):
        p, sid = item
        if stop.is_set():
            return
        try:
            r = grade(p, sid, ctx)
        except GradeInfraError as e:
            if ctx.cancelled.is_set():
                ctx.progress(f"{sid}: not graded ({e.message})")
                return
            r = {"id": sid, "status": "infra-error", "error": e.message, "origin": str(p)}
            (out / "submissions" / sid).mkdir(parents=True, exist_ok=True)
            (out / "submissions" / sid / "results.json").write_text(json.dumps(r, indent=1))
            stop.set()  # the machine broke: grade nobody else as failing
        except Exception as e:  # a grader bug must not stop the batch: name it
            r = {"id": sid, "status": "grader-error", "error": f"{type(e).__name__}: {e}", "origin": str(p)}
            (out / "submissions" / sid).mkdir(parents=True, exist_ok=True)
            (out / "submissions" / sid / "results.json").write_text(json.dumps(r, indent=1))
        with lock:
            results.append(r)
            ctx.progress(f"{sid}: {outputs.row(r)}")

    def interrupted() -> None:
        # Ctrl-C/SIGTERM reach the main thread only: the workers must stop too, and what
        # they were running when the machine was taken away is not graded (a rerun resumes).
        # Their QEMUs and builds are killed first, so no worker waits on a peer any more.
        ctx.cancelled.set()
        stop.set()
        procs.survivors(grace=0)

    run_workers(one, mine, jobs, stop, interrupted)
    if ctx.base.kernel.sandbox and ctx.base.kernel.sandbox_ccache and not stop.is_set():
        # the batch's worktrees go with it, and what an interrupted submission left (the
        # batch's own ccache, of the grading kernels, stays)
        batch_cc = Path(ctx.base.kernel.sandbox_ccache)
        gone = kbuild.remove_sandboxed_worktrees(batch_cc)
        for d in sorted((batch_cc / "submissions").glob("*")):
            gone += kbuild.remove_sandboxed_builds(d)
        for wt in gone:
            ctx.progress(f"removed the batch's kernel worktree {wt.name}")
    finish(out, results, ctx.profile.directory, corpus, threshold)
    if stop.is_set():
        bad = next(r for r in results if r["status"] == "infra-error")
        raise GradeInfraError(f"{bad['id']}: {bad['error']} (batch stopped; rerun to resume)")
    return results


WORKER_JOIN_S = 5  # after an interrupt: how long the workers get to unwind (their peers are dead)


def run_workers(fn: Callable, items: list, jobs: int, stop: threading.Event,
                on_interrupt: Callable[[], None] = lambda: None) -> None:
    """``fn(item)`` for every item on ``jobs`` daemon threads, until done or ``stop``
    (``on_interrupt`` runs first when the main thread is interrupted).
    The main thread only waits, in short joins (a signal lands there at once); daemon
    threads never hold the process up at exit, so an interrupt ends it in seconds even
    with a worker stuck in a call."""
    todo: "queue.Queue" = queue.Queue()
    for it in items:
        todo.put(it)

    done = [threading.Event() for _ in range(max(1, jobs))]

    def worker(k: int) -> None:
        try:
            while not stop.is_set():
                try:
                    it = todo.get_nowait()
                except queue.Empty:
                    return
                fn(it)
        except KeyboardInterrupt:  # the stop the main thread asked for (interrupts.check)
            pass
        finally:
            done[k].set()

    # (the waits are on events: a Thread.join interrupted by a signal may later report a
    # live thread as finished)
    for k in range(len(done)):
        threading.Thread(target=worker, args=(k,), daemon=True, name=f"grade-{k}").start()
    try:
        for d in done:
            while not d.wait(0.5):
                pass
    except BaseException:
        stop.set()
        on_interrupt()
        end = time.monotonic() + WORKER_JOIN_S
        for d in done:
            d.wait(max(0.0, end - time.monotonic()))
        raise


def _texts(sdir: Path) -> str:
    parts = []
    for m in ("kvm.patch", "vm.patch"):
        f = sdir / "work" / m
        if f.exists():
            parts.append(f.read_text(errors="replace"))
    return "\n".join(parts)


def finish(out: Path, results: List[dict], profile_dir: Path, corpus: Optional[Path],
           threshold: float = similarity.THRESHOLD) -> List[dict]:
    texts = {r["id"]: _texts(out / "submissions" / r["id"]) for r in results}
    corpus_texts: Dict[str, str] = {}
    if corpus:
        for p in sorted(Path(corpus).rglob("*.patch")):
            corpus_texts[str(p.relative_to(corpus))] = p.read_text(errors="replace")
    boiler = [(profile_dir / n).read_text() for n in ("kvm.patch", "vm.patch") if (profile_dir / n).exists()]
    similar = similarity.run({k: v for k, v in texts.items() if v.strip()}, corpus_texts, boiler, out, threshold)
    (out / "similarity.json").write_text(json.dumps(similar, indent=1))
    outputs.write_csv(out / "grades.csv", results)
    outputs.write_index(out, results, similar)
    return similar


def merge(dirs: List[Path], out: Path, corpus: Optional[Path] = None) -> List[dict]:
    """Shard outputs -> one batch output (submissions copied, tables and similarity redone)."""
    results: Dict[str, dict] = {}
    profile_dir = None
    for d in dirs:
        for f in sorted(Path(d).glob("submissions/*/results.json")):
            r = json.loads(f.read_text())
            if r["id"] in results:
                raise GradeInfraError(f"{r['id']} is in two shard outputs ({d})", stage="merge", kind="input")
            results[r["id"]] = r
            if Path(d).resolve() != out.resolve():
                shutil.copytree(f.parent, out / "submissions" / r["id"], dirs_exist_ok=True)
            if r.get("profile") and profile_dir is None:
                from ..build.profiles import PROFILES
                profile_dir = PROFILES / r["profile"]
    out.mkdir(parents=True, exist_ok=True)
    from ..build.profiles import PROFILES
    finish(out, list(results.values()), profile_dir or PROFILES / "6.1", corpus)
    return list(results.values())
