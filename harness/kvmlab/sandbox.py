"""Running untrusted programs: a student's build and a student's hypervisor.

Each runs confined by the harness's sandbox (harness/build/sandbox.py ``confine``): it sees
the system's programs and libraries read-only, a synthesized /etc (no shadow, no
keys), the directories it is given (``writable``: its build or run directory;
``readable``: the binary it runs, the oracle shim) and nothing else of the host - not
/root, /home, /var, other submissions' directories nor the batch's output - with no
network, its own pid namespace, and an unprivileged uid with no capability.

The hypervisor's run gets /dev/kvm (``devices``): the host's node is root's 0600, so
the sandbox gets a node of its own, the same device owned by its uid
(``harness.build.sandbox.device_node``); it never runs as root.

Limits: CPU seconds, address space, bytes per file, open files, processes of its uid,
no core; its own session/process group, PR_SET_PDEATHSIG=SIGKILL (killing the harness
takes it down, and with it the sandbox's pid namespace), a minimal environment and a
scratch working directory.  On timeout the whole process group is killed.  Nothing
here uses a shell.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..build import sandbox as confinement
from ..core.errors import InfraError
from .errors import KvmUnavailable, SandboxError

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
KVM_DEVICE = "/dev/kvm"


@dataclass
class Limits:
    cpu_seconds: int = 20
    address_space: int = 2 << 30   # 2 GiB
    file_size: int = 64 << 20      # 64 MiB per file written
    open_files: int = 256
    processes: int = 64            # tasks of the sandbox's uid (make -j2 and gcc: < 20)


@dataclass
class RunResult:
    argv: Sequence[str]
    cwd: Path
    returncode: Optional[int]      # None when killed on timeout
    signal: Optional[int]          # the signal that ended it, if any
    timed_out: bool
    duration: float
    stdout_path: Path
    stderr_path: Path
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def crashed(self) -> bool:
        """Ended by a signal it did not get from us (SIGSEGV, SIGBUS, SIGABRT, ...)."""
        return self.signal is not None and not self.timed_out

    def describe(self) -> str:
        if self.timed_out:
            return f"killed after the {self.duration:.1f} s timeout"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by signal {name}"
        return f"exit status {self.returncode}"

    def stdout(self, limit: int = 1 << 20) -> bytes:
        return _read(self.stdout_path, limit)

    def stderr(self, limit: int = 1 << 20) -> bytes:
        return _read(self.stderr_path, limit)


def _read(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def _preexec(limits: Limits):
    libc = ctypes.CDLL(None, use_errno=True)

    def fn():  # runs in the child between fork and exec
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.address_space, limits.address_space))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.umask(0o022)

    return fn


def base_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C", "HOME": "/nonexistent"}
    if extra:
        env.update(extra)
    return env


def confined_argv(argv: Sequence[str], *, cwd: Path, timeout: float, env: Dict[str, str], limits: Limits,
                  writable: Sequence[Path], readable: Sequence[Path] = (), devices: Sequence[str] = (),
                  uid: Optional[int] = None) -> list:
    """The argv that runs ``argv`` in the sandbox (module docstring).  LD_PRELOAD is set
    by ``env`` at the last step, so that only ``argv`` loads the shim, not the sandbox's
    own tools."""
    env = dict(env)
    inner = list(argv)
    if "LD_PRELOAD" in env:
        inner = ["/usr/bin/env", "--", f"LD_PRELOAD={env.pop('LD_PRELOAD')}"] + inner
    try:
        return confinement.confine(
            inner, writable=list(writable), readable=list(readable), cwd=cwd, env=env, uid=uid,
            devices=list(devices),
            limits=confinement.Limits(wall_s=int(timeout) + 30, address_space=limits.address_space,
                                      file_size=limits.file_size, processes=limits.processes))
    except (InfraError, OSError) as e:
        raise SandboxError(f"cannot confine {argv[0]}: {e}", reproduce=list(argv)) from e


def run_untrusted(argv: Sequence[str], *, cwd: Path, stdout_path: Path, stderr_path: Path,
                  timeout: float, env: Optional[Dict[str, str]] = None,
                  limits: Optional[Limits] = None, writable: Optional[Sequence[Path]] = None,
                  readable: Sequence[Path] = (), devices: Sequence[str] = (),
                  uid: Optional[int] = None) -> RunResult:
    """Run ``argv`` confined as described above (``writable`` defaults to ``cwd``); never
    raises for the child's own failure."""
    limits = limits or Limits()
    full = confined_argv(argv, cwd=Path(cwd), timeout=timeout, env=env if env is not None else base_env(),
                         limits=limits, writable=[Path(cwd)] if writable is None else writable,
                         readable=readable, devices=devices, uid=uid)
    start = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        try:
            proc = subprocess.Popen(
                full, cwd="/", stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env={"PATH": confinement.PATH}, start_new_session=True,
                close_fds=True, preexec_fn=_preexec(limits))
        except OSError as e:
            raise SandboxError(f"cannot start {argv[0]}: {e}", reproduce=full) from e
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # the whole group: forked helpers die too (the group may already be gone)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    rc = proc.returncode
    sig = -rc if rc is not None and rc < 0 else None
    if sig is None and rc is not None and rc > 128 and _signal_name(rc - 128):
        sig, rc = rc - 128, -(rc - 128)   # bubblewrap reports its command's death by signal as 128 + n
    return RunResult(argv=list(argv), cwd=Path(cwd), returncode=None if timed_out else rc,
                     signal=sig, timed_out=timed_out, duration=time.monotonic() - start,
                     stdout_path=Path(stdout_path), stderr_path=Path(stderr_path))


def preflight() -> str:
    """What confines the lab's untrusted steps here, for the batch's first line; raises
    SandboxError when no sandbox can be made here (nothing runs unconfined)."""
    why = confinement.unusable()
    if why:
        raise SandboxError(f"sandbox: {why}")
    return ("sandbox: student builds and hypervisors run under bubblewrap as an unprivileged uid with no "
            "capability, no network, seeing only the system's programs, a synthesized /etc and their own "
            f"build or run directory; the hypervisor opens a node of {KVM_DEVICE} owned by that uid; limits: "
            f"rlimits (CPU seconds, address space, bytes per file, open files, {Limits().processes} processes "
            f"of its uid), a timeout, and in all: "
            + (f"processes and memory in a {confinement.cgroups()} of its own, " if confinement.cgroups() else
               "no cgroup can be made here, so memory is bounded per process only, ")
            + "the bytes written into its directory")


def _signal_name(n: int) -> Optional[str]:
    try:
        return signal.Signals(n).name
    except ValueError:
        return None


def probe_kvm(path: Optional[str] = None) -> str:
    """Return the API version string if /dev/kvm is usable, else raise KvmUnavailable.
    ``KVMLAB_KVM_DEVICE`` overrides the path (to test the skip path on a KVM host)."""
    path = path or os.environ.get("KVMLAB_KVM_DEVICE") or "/dev/kvm"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise KvmUnavailable(f"cannot open {path}: {e.strerror}") from e
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
    except OSError as e:
        raise KvmUnavailable(f"KVM_GET_API_VERSION on {path} failed: {e.strerror}") from e
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        raise KvmUnavailable(f"{path} reports KVM API version {version}, need {KVM_API_VERSION}")
    return str(version)


def kvm_usable() -> Optional[str]:
    """None if /dev/kvm is usable, else the reason (for pytest skips)."""
    try:
        probe_kvm()
    except KvmUnavailable as e:
        return e.message
    return None
