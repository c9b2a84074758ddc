"""L0: the arm64 KVM host (L1) as a QEMU process, with bounded shutdown and guaranteed
cleanup, in the spirit of QEMU's python/qemu/machine:

    with Machine(spec, run_dir) as l1:      # launch: QEMU on a pty, QMP handshake
        l1.wait_ready(deadline)             # console marker, crash/exit stop the wait
        ssh = l1.ssh(deadline)
    # shutdown: QMP quit -> bounded wait -> kill; console closed first; logs kept
"""
from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from . import accel
from ..build import sandbox
from ..core import interrupts, procs
from .console import Console
from ..core.deadline import Deadline, scaled
from ..core.errors import BootError, HarnessError, InfraError
from .qmp import Monitor
from .ssh import Session

READY_MARKER = "HARNESS-READY {name}"
QUIT_TIMEOUT_S = 3  # QMP quit is answered in milliseconds by a QEMU whose main loop runs
QEMU = "qemu-system-aarch64"
# QEMU's own seccomp filter: L1 runs a student's kernel, so a QEMU bug it finds meets a
# process that cannot exec, fork, raise its privileges or change its scheduling/limits
SECCOMP = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
SECCOMP_PROBE_S = 20


@functools.lru_cache(maxsize=None)
def seccomp_refused(qemu: str = QEMU) -> str:
    """'' when ``qemu`` starts under SECCOMP, else why not, in QEMU's words.  QEMU offers
    -sandbox only when it is built with libseccomp *and* the kernel below takes seccomp
    filters; measured: in an arm64 Debian 12 or 13 root under qemu-user (tools/arm64-check.sh),
    whose emulator has no seccomp, QEMU 7.2 and 10.0 say "There is no option group
    'sandbox'".  Asked once per process: a start stopped at once by QMP quit on stdin."""
    argv = [qemu, *SECCOMP, "-machine", "none", "-display", "none", "-nodefaults", "-qmp", "stdio"]
    try:
        # PDEATHSIG: a probe whose asker is killed must not wait on its stdin forever (one was
        # found left running after a fault test SIGKILLed the harness during the probe)
        r = subprocess.run(argv, input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
                           capture_output=True, text=True, timeout=scaled(SECCOMP_PROBE_S),
                           preexec_fn=procs._die_with_parent)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{qemu} could not be asked: {e}"
    if r.returncode == 0:
        return ""
    return (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1][-300:]


def seccomp_argv() -> List[str]:
    """QEMU's own seccomp options where this QEMU has them, else none (said at launch and
    in a grading batch's preflight)."""
    return [] if seccomp_refused() else list(SECCOMP)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# sun_path holds 108 bytes with its NUL: a deep run directory cannot hold the QMP socket
UNIX_PATH_MAX = 107


def qmp_socket_path(run_dir: Path, name: str) -> Path:
    """L1's QMP socket: in the run directory (0700), or, when that path is too long for a
    unix socket, in a private temporary directory removed at shutdown."""
    path = Path(run_dir) / f".{name}-qmp.sock"
    if len(os.fsencode(str(path))) <= UNIX_PATH_MAX:
        return path
    return Path(tempfile.mkdtemp(prefix="kvmh-")) / f"{name}-qmp.sock"


@dataclass
class MachineSpec:
    name: str
    kernel: Path
    rootfs: Path
    payload: Optional[Path] = None
    cpus: int = 4
    memory_mb: int = 2048
    cpu_model: str = "cortex-a57"
    accel: str = "auto"
    append: str = ""
    # name -> guest TCP port forwarded from a free 127.0.0.1 port of the host
    forwards: Dict[str, int] = field(default_factory=lambda: {"ssh": 22})
    # restrict=on: the guest reaches nothing outside (forwarded ports still work)
    restrict_net: bool = False
    # QEMU itself under bubblewrap as an unprivileged uid (harness/build/sandbox.py
    # confine_emulator): it boots an untrusted kernel (grading), so it sees its images and
    # its QMP socket's directory and nothing else of the machine
    confine: bool = False

    def accelerator(self) -> str:
        return self.accel_decision().accel

    def accel_decision(self) -> accel.Decision:
        """KVM (with EL2 for L1) or TCG, and why: harness/stack/accel.py probes QEMU once."""
        return accel.decide_once(self.accel)

    @staticmethod
    def sandbox_uid(qmp_path: Path) -> int:
        """The confined QEMU's uid: one per launch (its QMP directory is new each time)."""
        return sandbox.uid_for(f"l0-qemu {qmp_path}")

    def argv(self, ports: Dict[str, int], qmp_path: Path) -> List[str]:
        accel = self.accelerator()
        if accel == "kvm":
            # nested virtualization on an arm64 host: the host CPU with EL2 for the guest
            machine, cpu, accel_opt = "virt,virtualization=on,gic-version=3", "host", "kvm"
        else:
            # cortex-a57 has no VHE: L1's KVM runs split-mode (nVHE) as the assignment requires
            machine, cpu, accel_opt = "virt,virtualization=on,gic-version=3", self.cpu_model, "tcg,thread=multi"
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{ports[n]}-:{p}" for n, p in sorted(self.forwards.items()))
        append = " ".join(x for x in (
            "console=ttyAMA0 root=/dev/vda ro init=/sbin/harness-init panic=-1 nokaslr",
            self.append) if x)
        argv = [
            QEMU, "-machine", machine, "-cpu", cpu, "-accel", accel_opt,
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-monitor", "none",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-kernel", str(self.kernel), "-append", append,
            "-drive", f"file={self.rootfs},if=none,id=root,format=raw,snapshot=on,readonly=on",
            "-device", "virtio-blk-pci,drive=root",
            "-netdev", f"user,id=n0,{'restrict=on,' if self.restrict_net else ''}{fwd}", "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-rng-pci",
            *seccomp_argv(),
        ]
        if self.payload:
            argv += ["-drive", f"file={self.payload},if=none,id=payload,format=raw,readonly=on",
                     "-device", "virtio-blk-pci,drive=payload"]
        if self.confine:
            images = [p for p in (self.kernel, self.rootfs, self.payload) if p]
            argv = sandbox.confine_emulator(argv, images=images, socket_dir=qmp_path.parent,
                                            memory_mb=self.memory_mb, uid=self.sandbox_uid(qmp_path),
                                            devices=["/dev/kvm"] if accel == "kvm" else [])
        return argv


class Machine:
    def __init__(self, spec: MachineSpec, run_dir: Path, identity, progress=print):
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.identity = identity  # images.SshIdentity
        self.progress = progress
        self.console: Optional[Console] = None
        self.qmp: Optional[Monitor] = None
        self.ports: Dict[str, int] = {}
        self.argv: List[str] = []
        self.console_log = self.run_dir / f"{spec.name}-console.log"
        # a confined QEMU writes only its socket's directory: one of its own, never the run directory
        self.qmp_path = (Path(tempfile.mkdtemp(prefix="kvmh-")) / f"{spec.name}-qmp.sock" if spec.confine
                         else qmp_socket_path(self.run_dir, spec.name))
        self._sessions: List[Session] = []
        self.launched_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def launch(self, deadline: Deadline) -> None:
        refused = seccomp_refused()
        if refused:
            self.progress(f"warning: {self.spec.name}'s QEMU runs without its seccomp sandbox: {QEMU} refuses "
                          f"-sandbox ({refused})")
        if self.spec.confine:
            why = sandbox.unusable()
            if why:
                raise InfraError(f"{self.spec.name}: its QEMU must run confined (l1.confine) and no sandbox can "
                                 f"be made here: {why}", stage="launch")
        for attempt in range(3):  # a forwarded port taken meanwhile is transient: retry
            self.ports = {n: free_port() for n in self.spec.forwards}
            self.argv = self.spec.argv(self.ports, self.qmp_path)
            (self.run_dir / f"{self.spec.name}-qemu.cmdline").write_text(procs.reproducer(self.argv) + "\n")
            if self.qmp_path.exists():
                self.qmp_path.unlink()
            self.launched_at = time.monotonic()
            self.console = Console(self.argv, self.console_log, self.spec.name)
            try:
                self._connect_qmp(deadline)
                return
            except InfraError:
                text = self.console.text()
                self.console.close()
                if "Could not set up host forwarding" in text or "Address already in use" in text:
                    continue
                raise
        raise InfraError(f"{self.spec.name}: could not find free ports for QEMU's forwards", stage="launch")

    def _connect_qmp(self, deadline: Deadline) -> None:
        end = time.monotonic() + min(scaled(30), max(1.0, deadline.remaining()))
        while not self.qmp_path.exists():
            if not self.console.alive():
                time.sleep(0.2)
                raise InfraError(f"{self.spec.name}: QEMU exited at start", stage="launch",
                                 tail=self.console.tail(), reproduce=self.argv)
            if time.monotonic() > end:
                raise InfraError(f"{self.spec.name}: QEMU created no QMP socket in time", stage="launch",
                                 tail=self.console.tail(), reproduce=self.argv)
            time.sleep(0.05)
        qmp = Monitor(str(self.qmp_path), self.spec.name, stage="launch")
        try:
            qmp.connect(timeout=min(10, max(1.0, deadline.remaining())))
        except HarnessError as e:  # no greeting in time, or a failed handshake: the machine's
            raise InfraError(f"{self.spec.name}: QMP handshake failed: {e.message}", stage="launch",
                             tail=self.console.tail(), reproduce=self.argv) from None
        self.qmp = qmp

    def exit_reason(self) -> Optional[str]:
        if self.console and not self.console.alive():
            return f"{self.spec.name}'s QEMU exited"
        return None

    def wait_ready(self, deadline: Deadline) -> float:
        """Wait for the init's ready marker; returns seconds since launch."""
        marker = READY_MARKER.format(name=self.spec.name)
        try:
            self.console.wait_for(rf"{marker}\b", deadline, f"'{marker}' on the console")
        except BootError as e:
            e.log = self.console_log
            e.reproduce = e.reproduce or procs.reproducer(self.argv)
            raise
        return time.monotonic() - self.launched_at

    def ssh(self, deadline: Deadline, port_name: str = "ssh", name: Optional[str] = None) -> Session:
        s = Session.wait(name or self.spec.name, "127.0.0.1", self.ports[port_name], self.identity.client_key,
                         self.identity.host_pub, deadline, abort=self.exit_reason,
                         tail=lambda: self.console.tail(), log=self.run_dir / "ssh.log")
        self._sessions.append(s)
        return s

    def shutdown(self, timeout: float = 10) -> None:
        """Polite quit (bounded), a bounded wait, then SIGKILL; cleanup runs whatever
        happened.  A QEMU that does not answer quit, or a run that was interrupted, is
        killed at once: L1 is never waited for."""
        for s in self._sessions:
            s.close()
        self._sessions.clear()
        quit_answered = False
        try:
            if self.qmp is not None and self.console is not None and self.console.alive() \
                    and not interrupts.requested():
                try:
                    self.qmp.cmd("quit", timeout=QUIT_TIMEOUT_S)
                    quit_answered = True
                except HarnessError:  # gone already, or not answering: killed below
                    pass
        finally:
            try:
                if self.qmp is not None:
                    self.qmp.close(timeout=1)
                    self.qmp = None
                if self.console is not None and quit_answered:
                    child = self.console.child
                    end = time.monotonic() + timeout
                    while child.isalive() and time.monotonic() < end:
                        time.sleep(0.05)
            finally:
                if self.console is not None:
                    self.console.close()  # closes the pty and SIGKILLs if still alive
                    self.console = None
                if self.spec.confine:
                    sandbox.drop_device_nodes(self.spec.sandbox_uid(self.qmp_path))
                if self.qmp_path.exists():
                    self.qmp_path.unlink()
                if self.qmp_path.parent != self.run_dir:
                    shutil.rmtree(self.qmp_path.parent, ignore_errors=True)

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
