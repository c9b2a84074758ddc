"""The guest workload ``hostcpuid-trace`` (guest_tests/hostcpuid_trace.c): cross-build
(cached by source hash + compiler version), command-line construction, summary parsing."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

from ..build import buildlog
from ..core import cache, hostarch, procs
from ..core.errors import INFRA, INPUT, WorkloadError

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "guest_tests" / "hostcpuid_trace.c"
CC = hostarch.gcc()  # aarch64-linux-gnu-gcc, or gcc on an arm64 host
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")
GUEST_PATH = "/usr/bin/hostcpuid-trace"
MODES = ("hostcpuid", "getppid")
NR_GETPPID = 173
MAX_COUNT = 2**32 - 1
SUMMARY_KEYS = {"calls": int, "elapsed_ns": int, "calls_per_s": (int, float), "mode": str, "bare": bool}


def build_workload(log_dir: Path, source: Path = SOURCE) -> Path:
    """Cross-compile the workload (static aarch64); returns the cached binary."""
    stage = "workload-build"
    source = Path(source)
    if not source.is_file():
        raise WorkloadError(f"workload source {source} is missing", stage=stage, kind=INPUT)
    cc_version = procs.tool_version([CC, "--version"])
    if not cc_version:
        raise WorkloadError(f"{CC} not found (run `make setup`)",
                            stage=stage, kind=INFRA)
    key = cache.key_of(source=source.read_bytes(), cc=cc_version, cflags=list(CFLAGS))

    def build(d: Path) -> None:
        log = Path(log_dir) / "workload-build.log"
        out = d / "hostcpuid-trace"
        try:
            procs.run([CC, *CFLAGS, "-o", out, source], stage=stage, log=log, error=WorkloadError, timeout=300,
                      what=CC)
        except WorkloadError as e:
            # the harness's own program: its failing to build is the harness's (or the machine's) fault
            found = buildlog.first_error(log.read_text(errors="replace") if log.exists() else e.tail)
            if found:
                e.message = f"the harness's workload does not build: {found.headline()}"
                e.tail = found.context
            e.kind = INFRA
            raise
        (d / "build.log").write_bytes(log.read_bytes())

    return cache.Entry("workload", key).ensure(build) / "hostcpuid-trace"


def workload_argv(
    count: Optional[int] = None,
    duration: Optional[float] = None,
    vcpu: Optional[int] = None,
    syscall_nr: Optional[int] = None,
    mode: str = "hostcpuid",
    bare: bool = False,
    out: Optional[str] = "/tmp/trace.bin",
    binary: str = GUEST_PATH,
    getcpu_syscall: bool = False,
    interleave_bare: Optional[int] = None,
) -> List[str]:
    """argv to run the workload in the guest.  ``syscall_nr`` is required in hostcpuid mode
    (the kernel profile's number: 436 on v5.4, 451 on 6.1).  ``getcpu_syscall`` reads the
    vCPU with the getcpu syscall after each call instead of from glibc's rseq area.
    ``interleave_bare=B`` runs B bare calls after every B recorded ones and reports both
    rates and the recording overhead from that one run (needs ``count``, no ``duration``)."""
    stage = "workload-args"

    def bad(msg: str) -> WorkloadError:
        return WorkloadError(msg, stage=stage, kind=INPUT)

    if mode not in MODES:
        raise bad(f"mode must be one of {MODES}, not {mode!r}")
    if count is None and duration is None:
        raise bad("give a count and/or a duration")
    argv = [binary, "-m", mode]
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise bad(f"count must be an integer in 1..{MAX_COUNT}, not {count!r}")
        argv += ["-n", str(count)]
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
                or not 0 < duration <= 1e6:
            raise bad(f"duration must be a positive number of seconds, not {duration!r}")
        argv += ["-d", repr(float(duration))]
    if vcpu is not None:
        if isinstance(vcpu, bool) or not isinstance(vcpu, int) or not 0 <= vcpu < 1024:
            raise bad(f"vcpu must be an integer in 0..1023, not {vcpu!r}")
        argv += ["-c", str(vcpu)]
    if mode == "hostcpuid":
        if syscall_nr is None:
            raise bad("hostcpuid mode needs syscall_nr (from the kernel profile)")
        if isinstance(syscall_nr, bool) or not isinstance(syscall_nr, int) or not 0 <= syscall_nr <= 4095:
            raise bad(f"syscall_nr must be an integer in 0..4095, not {syscall_nr!r}")
        argv += ["-s", str(syscall_nr)]
    elif syscall_nr is not None and syscall_nr != NR_GETPPID:
        raise bad(f"getppid mode calls syscall {NR_GETPPID}; syscall_nr={syscall_nr} contradicts it")
    if bare:
        argv.append("--bare")
    if getcpu_syscall:
        argv.append("--getcpu")
    if interleave_bare is not None:
        if isinstance(interleave_bare, bool) or not isinstance(interleave_bare, int) \
                or not 1 <= interleave_bare <= MAX_COUNT:
            raise bad(f"interleave_bare must be an integer in 1..{MAX_COUNT}, not {interleave_bare!r}")
        if bare or count is None or duration is not None:
            raise bad("interleave_bare needs a count, and neither a duration nor bare")
        argv += ["--interleave-bare", str(interleave_bare)]
    if out is not None:
        if not isinstance(out, str) or not out:
            raise bad(f"out must be a non-empty path, not {out!r}")
        argv += ["-o", out]
    elif not bare:
        raise bad("out is required unless bare")
    return argv


def parse_summary_line(stdout: str) -> dict:
    """The JSON summary the workload prints last on stdout, checked for its fields."""
    lines = [line.strip() for line in (stdout or "").splitlines() if line.strip().startswith("{")]
    if not lines:
        raise WorkloadError("the workload printed no JSON summary line", stage="workload",
                            tail=(stdout or "")[-2000:])
    try:
        summary = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise WorkloadError(f"bad workload summary line: {e}", stage="workload", tail=lines[-1]) from e
    if not isinstance(summary, dict):
        raise WorkloadError("workload summary is not a JSON object", stage="workload", tail=lines[-1])
    for key, typ in SUMMARY_KEYS.items():
        if key not in summary:
            raise WorkloadError(f"workload summary lacks {key!r}", stage="workload", tail=lines[-1])
        if not isinstance(summary[key], typ) or (typ is int and isinstance(summary[key], bool)):
            raise WorkloadError(f"workload summary field {key!r} has the wrong type", stage="workload",
                                tail=lines[-1])
    if summary["mode"] not in MODES:
        raise WorkloadError(f"workload summary has unknown mode {summary['mode']!r}", stage="workload",
                            tail=lines[-1])
    return summary
