"""Typed failures.  Every error names the stage that failed, says whose fault it is,
and carries what a person needs to act on it: a log path, the tail of the console or
build output, and a command line that reproduces the step.

The ``kind`` separates "the thing under test is broken" from "the harness or the
machine is broken", so a broken runner is never graded as a broken patch
(syzkaller's BootError vs InfraError, LAVA's job/infrastructure/test classes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

# Whose fault is it?
INPUT = "input"          # bad config, malformed patch, broken zip: the user's input
SUBJECT = "subject"      # the kernel/patch under test misbehaved (boot failure, BUG:, wrong answer)
INFRA = "infra"          # the machine, toolchain or harness failed
TEST = "test"            # an assertion about behaviour did not hold

# what each kind means to the person reading the failure (a student, a TA)
WHOSE_FAULT = {
    SUBJECT: "the kernel/patch under test",
    INPUT: "your input",
    INFRA: "the machine or harness",
    TEST: "the kernel/patch under test",
}
# exit status of `kvm-harness run` per kind
EXIT_CODES = {SUBJECT: 1, TEST: 1, INPUT: 2, INFRA: 3}


def exit_code(kind: str) -> int:
    return EXIT_CODES.get(kind, 3)

TAIL_LINES = 40


def tail_of(text_or_path: Union[str, Path, None], lines: int = TAIL_LINES) -> str:
    """Last ``lines`` lines of a string or of a file (missing file -> '')."""
    if text_or_path is None:
        return ""
    if isinstance(text_or_path, Path) or (
        isinstance(text_or_path, str) and "\n" not in text_or_path and os.path.isfile(text_or_path)
    ):
        try:
            with open(text_or_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
    else:
        text = str(text_or_path)
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class HarnessError(Exception):
    """Base of every failure the harness reports."""

    stage = "harness"
    kind = INFRA

    def __init__(
        self,
        message: str,
        *,
        stage: Optional[str] = None,
        kind: Optional[str] = None,
        log: Union[str, Path, None] = None,
        tail: Optional[str] = None,
        reproduce: Union[str, Sequence[str], None] = None,
    ):
        super().__init__(message)
        self.message = message
        if stage:
            self.stage = stage
        if kind:
            self.kind = kind
        self.log = Path(log) if log else None
        if tail is None and self.log is not None:
            tail = tail_of(self.log)
        self.tail = tail or ""
        if reproduce is not None and not isinstance(reproduce, str):
            import shlex

            reproduce = shlex.join(str(a) for a in reproduce)
        self.reproduce = reproduce

    @property
    def whose_fault(self) -> str:
        return WHOSE_FAULT.get(self.kind, self.kind)

    def __str__(self) -> str:
        return f"[{self.stage}] {self.message}"

    def render(self) -> str:
        """The multi-line report printed at the end of a failed run."""
        out = [f"FAILED at stage '{self.stage}' ({self.whose_fault}): {self.message}"]
        if self.log:
            out.append(f"  log: {self.log}")
        if self.tail:
            out.append("  --- last lines ---")
            out.extend("  | " + line for line in self.tail.splitlines())
            out.append("  ------------------")
        if self.reproduce:
            out.append(f"  reproduce: {self.reproduce}")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "stage": self.stage,
            "kind": self.kind,
            "whose_fault": self.whose_fault,
            "message": self.message,
            "log": str(self.log) if self.log else None,
            "tail": self.tail,
            "reproduce": self.reproduce,
        }


class ConfigError(HarnessError):
    stage = "config"
    kind = INPUT


class SourceError(HarnessError):
    stage = "source"
    kind = INPUT


class PatchError(HarnessError):
    stage = "patch"
    kind = INPUT


class BuildError(HarnessError):
    stage = "kernel-build"
    kind = SUBJECT


class ImageError(HarnessError):
    stage = "rootfs"
    kind = INFRA


class BootError(HarnessError):
    """The kernel under test did not come up (panic, hang, no shell)."""

    stage = "boot"
    kind = SUBJECT


class KernelBugError(HarnessError):
    """The kernel printed BUG:/WARNING:/Oops/panic lines while running."""

    stage = "kernel-log"
    kind = SUBJECT


class InfraError(HarnessError):
    """QEMU, SSH or the host failed: not the fault of the code under test."""

    stage = "infra"
    kind = INFRA


class StageTimeout(HarnessError):
    """A stage did not finish before its deadline.  The harness's by default (an SSH
    command that hangs, a slow machine); a boot stage that waits for the kernel under
    test says kind=SUBJECT where it raises."""

    stage = "timeout"
    kind = INFRA


class GuestCommandError(HarnessError):
    """A command run over SSH exited non-zero."""

    stage = "guest-command"
    kind = INFRA


class WorkloadError(HarnessError):
    stage = "workload"
    kind = INFRA


class TraceError(HarnessError):
    stage = "trace"
    kind = INFRA


def unexpected(exc: BaseException, log: Path, stage: str = "harness") -> InfraError:
    """An exception that is not a HarnessError (a bug in the harness, a library failing
    in a way nobody foresaw): one clear line, the traceback kept in ``log``."""
    import traceback

    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        log = None
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" (at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"
    err = InfraError(f"unexpected {type(exc).__name__}: {exc}{where}; the traceback is in {log}",
                     stage=stage, tail="")
    err.log = log
    return err
