"""Running host commands: argv lists only, a reproducer line first in every log, output
kept in a file, and children that die with the harness (own process group +
PR_SET_PDEATHSIG=SIGKILL), so even a SIGKILLed harness leaves no QEMU behind."""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable, Dict, Mapping, Optional, Sequence, Type, Union

from ..build import buildlog
from .deadline import scaled
from .errors import INFRA, HarnessError, InfraError, tail_of

PR_SET_PDEATHSIG = 1
_libc = None

# every child this process started and has not yet seen gone (QEMU on its console, make, ...)
_started: dict = {}  # pid -> what


def track(pid: int, what: str) -> None:
    _started[pid] = what


def untrack(pid: int) -> None:
    _started.pop(pid, None)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def processes_mentioning(text: str) -> Dict[int, str]:
    """Live processes (not this one) whose command line contains ``text``: pid -> command
    line.  Tests and the soak benchmark use it to prove nothing was left running."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found[int(pid)] = cmd
    return found


def survivors(grace: float = 5.0) -> Dict[int, str]:
    """Children started by this process that are still running after ``grace`` seconds
    (SIGKILLed, process group included, once the grace is over).  Returns those that
    survived even that: the check behind "every QEMU of this run was stopped"."""
    end = time.monotonic() + grace
    while time.monotonic() < end and not all(_gone(p) for p in _started):
        time.sleep(0.05)
    alive = {p: w for p, w in _started.items() if not _gone(p)}
    for pid in alive:
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
            except OSError:
                pass
    end = time.monotonic() + 5
    while time.monotonic() < end and not all(_gone(p) for p in alive):
        time.sleep(0.05)
    for pid in [p for p in _started if _gone(p)]:
        untrack(pid)
    return {p: w for p, w in alive.items() if not _gone(p)}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # pragma: no cover - non-Linux
        pass


def reproducer(argv: Sequence[Union[str, os.PathLike]], cwd=None, env: Optional[Mapping[str, str]] = None) -> str:
    """A shell line that re-runs ``argv`` by hand (only the env vars we set are shown)."""
    parts = []
    if cwd:
        parts.append(f"cd {shlex.quote(str(cwd))} &&")
    if env:
        parts.append("env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())))
    parts.append(shlex.join(str(a) for a in argv))
    return " ".join(parts)


def run(
    argv: Sequence[Union[str, os.PathLike]],
    *,
    stage: str,
    log: Union[str, Path, None] = None,
    cwd: Union[str, Path, None] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
    error: Type[HarnessError] = InfraError,
    what: Optional[str] = None,
    check: bool = True,
    input: Optional[bytes] = None,
    on_line: Optional[Callable[[str], None]] = None,
) -> subprocess.CompletedProcess:
    """Run a command to completion.

    Output goes to ``log`` (appended, after a ``$ reproducer`` line) or is captured.
    ``env`` holds only the variables added to the harness's environment.
    A non-zero exit raises ``error`` naming ``stage``, with the output tail and the
    reproducer.  ``on_line`` sees each output line (for progress) when logging.
    ``timeout`` is a budget on the reference machine: the slowdown factor scales it
    (harness/core/deadline.py), so a caller names the figure measured, not this runner's.
    """
    argv = [str(a) for a in argv]
    timeout = scaled(timeout) if timeout else timeout
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    repro = reproducer(argv, cwd, env)
    what = what or Path(argv[0]).name
    logf: Optional[IO[bytes]] = None
    if log is not None:
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            logf = open(log, "ab", buffering=0)  # a failed write shows at the line it happens
            logf.write(f"$ {repro}\n".encode())
            logf.flush()
        except OSError as e:
            raise error(f"{what}: cannot write its log {log}: {e.strerror}", stage=stage, kind=INFRA,
                        reproduce=repro) from None
    try:
        proc = subprocess.Popen(
            argv,
            cwd=str(cwd) if cwd else None,
            env=full_env,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        if logf:
            logf.close()
        raise error(f"{what}: command not found: {argv[0]} (run `make setup`)", stage=stage, reproduce=repro) from e
    chunks = []
    track(proc.pid, what)

    def failure(message: str) -> HarnessError:
        out = b"".join(chunks).decode("utf-8", "replace")
        # the machine running out of something is the machine's failure, whatever the tool
        exhausted = buildlog.exhaustion(tail_of(log, 400) if log else out)
        if exhausted:
            message += f" ({exhausted}: the machine's fault, not the input's)"
        return error(f"{what}: {message}", stage=stage, log=log, tail=None if log else tail_of(out),
                     reproduce=repro, kind=INFRA if exhausted else None)

    log_error: Optional[str] = None  # why the log stopped being writable
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        kill_group(proc)  # its output ends: the reading loop below returns

    timer = threading.Timer(timeout, expire) if timeout else None
    if timer:
        timer.daemon = True

    def log_write(data: bytes) -> bool:
        """Write to the log; when its file system fails (e.g. full), keep the output in
        memory instead, so the tool's own words (ld: No space left on device) still reach
        the report."""
        nonlocal logf, log_error
        try:
            logf.write(data)
            return True
        except OSError as e:
            log_error = e.strerror or str(e)
            try:
                logf.close()
            except OSError:
                pass
            logf = None
            return False

    try:
        if input is not None:
            assert proc.stdin is not None
            proc.stdin.write(input)
            proc.stdin.close()
        assert proc.stdout is not None
        if timer:  # a silent command too: reading its output would block past the deadline
            timer.start()
        for raw in iter(proc.stdout.readline, b""):
            if not (logf and log_write(raw)):
                chunks.append(raw)
            if on_line and log is not None:
                on_line(raw.decode("utf-8", "replace").rstrip("\n"))
        rc = proc.wait()
        if timed_out.is_set():
            raise subprocess.TimeoutExpired(argv, timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise failure(f"timed out after {timeout:.0f} s")
    except BaseException:
        kill_group(proc)
        raise
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is not None:
            untrack(proc.pid)
        if logf:
            try:
                logf.close()
            except OSError:
                pass
    if log_error:  # the output after the failed write is in memory: show it
        out = b"".join(chunks).decode("utf-8", "replace")
        raise error(f"{what}: cannot write its log {log}: {log_error}"
                    + (f"; the command then failed with exit code {rc}" if rc else ""),
                    stage=stage, kind=INFRA, tail=tail_of(out) or None, log=log, reproduce=repro)
    if check and rc < 0:
        # a signal the harness did not send (its own kills raise above): the OOM killer, a
        # person, a runner's job limit -- the machine's doing, whatever the input
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else f"signal {-rc}"
        e = failure(f"was killed by {name}, which the harness did not send (the OOM killer? "
                    "another process? see dmesg)")
        e.kind = INFRA
        raise e
    if check and rc != 0:
        raise failure(f"failed with exit code {rc}")
    return subprocess.CompletedProcess(argv, rc, b"".join(chunks).decode("utf-8", "replace"), "")


def kill_group(proc: subprocess.Popen, grace: float = 0.0) -> None:
    """SIGTERM (if grace) then SIGKILL the child's process group; reap it."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    if grace > 0:
        try:
            os.killpg(pgid, signal.SIGTERM)
            proc.wait(timeout=grace)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
        print(f"warning: pid {proc.pid} did not exit after SIGKILL", file=sys.stderr)


def tool_version(argv: Sequence[str]) -> str:
    """First line of ``argv``'s output, or '' when it cannot run (used in cache keys)."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=scaled(30))
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""
