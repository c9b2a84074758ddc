"""L2: the multi-vCPU KVM guest that L1 runs.  Its QEMU is started inside L1 over SSH
(``-daemonize``, so a failed start reports synchronously); its QMP and SSH are
forwarded out to the harness through L1's own user-mode network and L0's forwards.

KVM must really be in use: ``-accel kvm`` without a TCG fallback, then QMP
``query-kvm`` must say enabled."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from . import console
from ..core import interrupts
from ..core.deadline import Deadline
from ..core.errors import BootError, GuestCommandError, HarnessError, InfraError, StageTimeout
from .images import READY_L2
from .qmp import Monitor
from .ssh import Session

# ports inside L1 (an isolated machine: fixed numbers are fine there)
L2_SSH_PORT = 2222
L2_QMP_PORT = 4444
# L2's QMP is not forwarded: it listens on L1's loopback only and the harness reaches it
# through its authenticated SSH session (no unauthenticated QMP for other local users)
L1_FORWARDS = {"ssh": 22, "l2-ssh": L2_SSH_PORT}
RUN = "/run/l2"
QEMU_EXITED = "L2's QEMU exited inside L1"
QUIT_TIMEOUT_S = 3   # a QEMU whose vCPU thread spins inside L1's kernel never answers quit
KILL_TIMEOUT_S = 10  # each command of the teardown in L1 (kill -9, the console copy)


@dataclass
class GuestSpec:
    cpus: int = 2
    memory_mb: int = 384
    kernel: str = "/payload/Image"
    initrd: str = "/payload/initramfs.cpio.gz"
    append: str = ""

    def argv(self) -> List[str]:
        append = " ".join(x for x in ("console=ttyAMA0 quiet panic=-1 nokaslr", self.append) if x)
        return [
            "qemu-system-aarch64", "-machine", "virt,gic-version=3", "-cpu", "host", "-accel", "kvm",
            # vCPU threads named "CPU <k>/KVM" in L1: ps/top -H and kernel BUG lines say which vCPU
            "-name", "l2,debug-threads=on",
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nodefaults", "-no-reboot", "-display", "none", "-daemonize",
            "-pidfile", f"{RUN}/qemu.pid", "-serial", f"file:{RUN}/console.log", "-monitor", "none",
            "-qmp", f"tcp:127.0.0.1:{L2_QMP_PORT},server=on,wait=off",
            "-kernel", self.kernel, "-initrd", self.initrd, "-append", append,
            "-netdev", f"user,id=n0,hostfwd=tcp::{L2_SSH_PORT}-:22",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-rng-pci",  # entropy at once: sshd does not wait for crng init
        ]


class Guest:
    def __init__(self, spec: GuestSpec, l1, l1_ssh: Session, run_dir: Path):
        self.spec = spec
        self.l1 = l1  # machine.Machine
        self.l1_ssh = l1_ssh
        self.run_dir = Path(run_dir)
        self.qmp: Optional[Monitor] = None
        self.launched_at = 0.0
        self.pid: Optional[int] = None
        self._sessions: List[Session] = []
        self.timings: Dict[str, float] = {}  # seconds after launch: qemu_started_s, qmp_s
        self.teardown: List[str] = []  # what shutdown had to do beyond a quit (evidence of a hang)

    def launch(self, deadline: Deadline) -> None:
        argv = self.spec.argv()
        (self.run_dir / "l2-qemu.cmdline").write_text(" ".join(argv) + "\n")
        self.l1_ssh.run(["mkdir", "-p", RUN])
        self.launched_at = time.monotonic()
        res = self.l1_ssh.run(argv, timeout=max(5, deadline.remaining()), check=False, stage=deadline.stage)
        if res.rc != 0:
            raise BootError(f"{deadline.stage}: L2's QEMU did not start in L1 (exit {res.rc}): "
                            f"{(res.err or res.out).strip().splitlines()[-1:] or ''}", stage=deadline.stage,
                            tail=res.out + res.err, reproduce=" ".join(argv), kind="subject")
        self.timings["qemu_started_s"] = round(time.monotonic() - self.launched_at, 2)  # -daemonize returned
        self.pid = int(self.l1_ssh.run(["cat", f"{RUN}/qemu.pid"]).out.strip())
        self._connect_qmp(deadline)
        self.timings["qmp_s"] = round(time.monotonic() - self.launched_at, 2)
        kvm = self.qmp.cmd("query-kvm")
        if not (kvm.get("enabled") and kvm.get("present")):
            raise InfraError(f"{deadline.stage}: L2 is not running with KVM (query-kvm: {kvm})", stage=deadline.stage)

    def _connect_qmp(self, deadline: Deadline) -> None:
        last = None
        while not deadline.expired():
            qmp = None
            try:
                qmp = Monitor(self.l1_ssh.open_socket("127.0.0.1", L2_QMP_PORT), "l2", stage=deadline.stage)
                qmp.connect(timeout=max(1.0, min(5.0, deadline.remaining())))
                self.qmp = qmp
                return
            except HarnessError as e:  # not listening yet, or not answering yet: retry
                last = e.message
                if qmp is not None:
                    qmp.close(timeout=1)
                time.sleep(0.3)
        raise StageTimeout(f"{deadline.stage}: L2's QMP did not answer ({last})", stage=deadline.stage)

    def exit_reason(self) -> Optional[str]:
        reason = self.l1.exit_reason()
        if reason:
            return reason
        if self.pid is not None:
            res = self.l1_ssh.run(["kill", "-0", str(self.pid)], check=False, timeout=KILL_TIMEOUT_S)
            if res.rc != 0:
                return QEMU_EXITED
        return None

    def console_text(self) -> str:
        res = self.l1_ssh.run(["cat", f"{RUN}/console.log"], check=False, timeout=KILL_TIMEOUT_S)
        return res.out

    def wait_ready(self, deadline: Deadline, poll: float = 0.2) -> None:
        """Wait for L2's init to print the ready line (dropbear listens) on its console file.
        Connecting earlier costs seconds: L1's slirp holds a connection to a guest that is
        not up yet and retransmits its SYN with growing back-off."""
        while True:
            # one round trip per poll: the console so far, and whether L2's QEMU still runs
            res = self.l1_ssh.run(["sh", "-c", f"cat {RUN}/console.log; kill -0 {self.pid}"], check=False,
                                  timeout=max(1.0, min(KILL_TIMEOUT_S, deadline.remaining())), stage=deadline.stage)
            text = res.out
            if READY_L2 in text:
                self.timings["ready_s"] = round(time.monotonic() - self.launched_at, 2)
                return
            fatal = [f for f in console.scan(text) if f.fatal]
            if fatal:
                raise BootError(f"{deadline.stage}: L2's kernel crashed: {fatal[0].line}", stage=deadline.stage,
                                tail=text[-4000:], kind="subject")
            if "HARNESS-ERROR" in text:
                line = next(ln for ln in text.splitlines() if "HARNESS-ERROR" in ln)
                raise BootError(f"{deadline.stage}: {line.strip()}", stage=deadline.stage, tail=text[-4000:])
            reason = self.l1.exit_reason() or (None if res.rc == 0 else QEMU_EXITED)
            if reason:
                raise BootError(f"{deadline.stage}: {reason}", stage=deadline.stage, tail=text[-4000:])
            if deadline.expired():
                raise StageTimeout(f"{deadline.stage}: L2 did not print {READY_L2!r} within "
                                   f"{deadline.elapsed():.0f} s", stage=deadline.stage, tail=text[-4000:],
                                   kind="subject")  # L2's kernel or init did not come up
            time.sleep(poll)

    def ssh(self, deadline: Deadline) -> Session:
        self.wait_ready(deadline)
        s = Session.wait("l2", "127.0.0.1", self.l1.ports["l2-ssh"], self.l1.identity.client_key,
                         self.l1.identity.host_pub, deadline, abort=self.exit_reason,
                         tail=lambda: self.console_text()[-4000:], log=self.run_dir / "ssh.log")
        self._sessions.append(s)
        return s

    def vcpu_threads(self) -> Dict[int, int]:
        """vCPU index -> host (L1) thread id, from QMP query-cpus-fast."""
        cpus = self.qmp.cmd("query-cpus-fast")
        return {c["cpu-index"]: c["thread-id"] for c in cpus}

    def pin(self, pins: Dict[int, int]) -> Dict[int, int]:
        """Pin vCPU threads to L1 CPUs (taskset in L1); unlisted vCPUs may run anywhere."""
        threads = self.vcpu_threads()
        ncpu = int(self.l1_ssh.run(["nproc"]).out.strip())
        for v, tid in threads.items():
            cpus = str(pins[v]) if v in pins else f"0-{ncpu - 1}"
            self.l1_ssh.run(["taskset", "-pc", cpus, str(tid)], stage="pin")
        for v, p in pins.items():
            got = self.l1_ssh.run(["taskset", "-pc", str(threads[v])], stage="pin").out
            if not got.strip().endswith(f": {p}"):
                raise GuestCommandError(f"pinning vCPU {v} (thread {threads[v]}) to pCPU {p} did not hold: {got}",
                                        stage="pin")
        return threads

    def _gone(self, seconds: float) -> bool:
        """Whether L2's QEMU ends within ``seconds`` (polled in L1; L1 not answering: False)."""
        end = time.monotonic() + seconds
        while True:
            res = self.l1_ssh.run(["kill", "-0", str(self.pid)], check=False, timeout=KILL_TIMEOUT_S,
                                  stage="l2-shutdown")
            if res.rc != 0:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.2)

    def shutdown(self, timeout: float = 5) -> None:
        """QMP quit (bounded); when L2's QEMU does not go within ``timeout`` s, kill -9 by
        pid from L1 (bounded).  Every step is bounded; when L1 itself stops answering,
        L1's shutdown kills L1's QEMU from L0, and L2 with it.  Interrupted: nothing is
        asked of L1 (its QEMU is killed next)."""
        for s in self._sessions:
            s.close()
        self._sessions.clear()
        quit_answered = False
        if self.qmp is not None:
            try:
                if not interrupts.requested():
                    self.qmp.cmd("quit", timeout=QUIT_TIMEOUT_S)
                    quit_answered = True
            except HarnessError as e:
                self.teardown.append(f"L2's QEMU did not answer QMP quit ({e.message})")
            finally:
                self.qmp.close(timeout=1)
                self.qmp = None
        if interrupts.requested():
            return
        try:
            if self.pid is not None and not self._gone(timeout if quit_answered else 1):
                self.l1_ssh.run(["kill", "-9", str(self.pid)], check=False, timeout=KILL_TIMEOUT_S,
                                stage="l2-shutdown")
                if self._gone(3):
                    self.teardown.append(f"L2's QEMU (pid {self.pid}) was killed from L1 (kill -9)")
                else:
                    self.teardown.append(f"L2's QEMU (pid {self.pid}) survived kill -9 in L1 (a vCPU thread "
                                         "stuck in L1's kernel): L1's QEMU is killed from L0")
            log = self.console_text()
            (self.run_dir / "l2-console.log").write_text(log)
        except (HarnessError, OSError) as e:  # L1 does not answer: its shutdown kills it from L0
            self.teardown.append(f"L1 did not answer during L2's shutdown ({getattr(e, 'message', e)})")
