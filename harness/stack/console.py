"""Serial consoles: QEMU runs under pexpect on a pty; a drainer thread reads it
continuously into ``console.log`` (QEMU must never block on a full console) and
scans every line against crash signatures kept as data."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Pattern

import pexpect

from ..core.deadline import Deadline
from ..core import procs
from ..core.procs import _die_with_parent
from ..core.errors import SUBJECT, BootError, StageTimeout, tail_of


@dataclass(frozen=True)
class Signature:
    name: str
    pattern: Pattern
    fatal: bool  # the kernel cannot go on (panic, oops): stop waiting at once


SIGNATURES = [
    Signature("hyp-panic", re.compile(r"(?i)\bhyp panic\b|hyp_panic|nVHE hyp BUG|Bad mode in "), True),
    Signature("panic", re.compile(r"Kernel panic - not syncing"), True),
    Signature("oops", re.compile(r"Internal error: |Unable to handle kernel "), True),
    Signature("bug", re.compile(r"\bBUG: "), False),
    Signature("warning", re.compile(r"\bWARNING: CPU: \d+ PID: \d+|\bWARNING: .* at |\bWARNING: possible "), False),
    # a thread that ends with preemption still disabled (kernel/exit.c: do_exit)
    Signature("preempt-leak", re.compile(r"\bexited with preempt_count [1-9]"), False),
    Signature("rcu-stall", re.compile(r"rcu: INFO: rcu_\w+ detected stalls"), False),
    Signature("lockup", re.compile(r"soft lockup - CPU|hard LOCKUP"), False),
]


@dataclass
class Finding:
    signature: str
    fatal: bool
    line: str


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
_PRINTK_TIME = re.compile(r"\[\s*\d+\.\d+\]")


def clean_line(line: str) -> str:
    """A console line as the kernel printed it: terminal escapes dropped, and whatever a
    shell prompt left before the printk timestamp cut off."""
    line = _ESCAPES.sub("", line)
    m = _PRINTK_TIME.search(line)
    return (line[m.start():] if m else line).strip()


def scan(text: str) -> List[Finding]:
    """Crash-signature lines in a log."""
    out = []
    for line in text.splitlines():
        line = clean_line(line)
        for sig in SIGNATURES:
            if sig.pattern.search(line):
                out.append(Finding(sig.name, sig.fatal, line))
                break
    return out


class Console:
    """A QEMU process on a pty with its console logged and watched."""

    def __init__(self, argv: List[str], log_path: Path, name: str):
        self.name = name
        self.log_path = Path(log_path)
        self._logf = open(self.log_path, "ab")
        self._buf = ""
        self._lines_scanned = 0
        self.findings: List[Finding] = []
        self._cond = threading.Condition()
        self._closed = False
        # the pty's session makes QEMU a process-group leader; PDEATHSIG ties it to us
        self.child = pexpect.spawn(argv[0], argv[1:], echo=False, timeout=None, encoding=None,
                                   dimensions=(50, 200), preexec_fn=_die_with_parent)
        procs.track(self.child.pid, f"{name}'s QEMU")
        self._thread = threading.Thread(target=self._drain, name=f"console-{name}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.child.pid

    def _drain(self) -> None:
        pending = ""
        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError, ValueError):
                break
            self._logf.write(data)
            self._logf.flush()
            text = data.decode("utf-8", "replace").replace("\r", "")
            with self._cond:
                self._buf += text
                if len(self._buf) > 4 << 20:
                    self._buf = self._buf[-(2 << 20):]
                pending += text
                *lines, pending = pending.split("\n")
                for f in scan("\n".join(lines)):
                    self.findings.append(f)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return self._buf

    def tail(self, lines: int = 40) -> str:
        return tail_of(self.text(), lines)

    def alive(self) -> bool:
        return self.child.isalive()

    def send(self, data: str) -> None:
        self.child.send(data.encode())

    def wait_for(self, pattern: str, deadline: Deadline, what: str, start: int = 0,
                 abort: Optional[Callable[[], Optional[str]]] = None) -> re.Match:
        """Wait until ``pattern`` shows on the console after offset ``start``.

        Stops early, with a BootError naming the stage, when QEMU exits, the kernel
        panics or oopses, or ``abort()`` returns a reason."""
        rx = re.compile(pattern)
        with self._cond:
            while True:
                m = rx.search(self._buf, start)
                if m:
                    return m
                fatal = [f for f in self.findings if f.fatal]
                if fatal:
                    self._cond.wait(2.0)  # let the rest of the oops arrive
                    raise BootError(f"{deadline.stage}: {self.name} crashed ({fatal[0].signature}: {fatal[0].line})",
                                    stage=deadline.stage, tail=self.tail(60))
                if self._closed:
                    raise BootError(f"{deadline.stage}: {self.name} exited before {what}",
                                    stage=deadline.stage, tail=self.tail(60))
                if abort:
                    reason = abort()
                    if reason:
                        raise BootError(f"{deadline.stage}: {reason}", stage=deadline.stage, tail=self.tail(60))
                left = deadline.remaining()
                if left <= 0:
                    # the console of the kernel under test shows no progress: the kernel's failure
                    raise StageTimeout(f"{deadline.stage}: no {what} after {deadline.elapsed():.0f} s",
                                       stage=deadline.stage, tail=self.tail(60), kind=SUBJECT)
                self._cond.wait(min(left, 0.5))

    def mark(self) -> int:
        with self._cond:
            return len(self._buf)

    def close(self) -> None:
        """Close our end of the pty (QEMU may block writing to a console nobody reads)."""
        try:
            self.child.close(force=True)
        except Exception:  # noqa: BLE001 - best effort during teardown
            pass
        self._thread.join(timeout=2)
        if not self.child.isalive():
            procs.untrack(self.child.pid)
        try:
            self._logf.close()
        except OSError:
            pass
