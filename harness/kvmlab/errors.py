"""Typed failures of the KVM-API lab.  Each names its stage and whose fault it is.

They derive from ``harness.errors.HarnessError`` when that module is present so the
rest of the harness can render them; otherwise from a minimal local base.
"""
from __future__ import annotations

from typing import Optional

try:  # pragma: no cover - depends on the surrounding checkout
    from harness.errors import HarnessError as _Base, INFRA, INPUT, SUBJECT
except Exception:  # pragma: no cover
    INPUT, SUBJECT, INFRA = "input", "subject", "infra"

    class _Base(Exception):
        stage = "harness"
        kind = INFRA

        def __init__(self, message: str, *, stage: Optional[str] = None,
                     kind: Optional[str] = None, log=None, tail: Optional[str] = None,
                     reproduce=None):
            super().__init__(message)
            self.message = message
            if stage:
                self.stage = stage
            if kind:
                self.kind = kind
            self.log = log
            self.tail = tail or ""
            self.reproduce = reproduce

        def __str__(self) -> str:
            return f"[{self.stage}] {self.message}"

        def to_dict(self) -> dict:
            return {"error": type(self).__name__, "stage": self.stage, "kind": self.kind,
                    "message": self.message, "log": str(self.log) if self.log else None,
                    "tail": self.tail, "reproduce": self.reproduce}


class KvmLabError(_Base):
    """Base of every KVM-lab failure."""
    stage = "kvmlab"
    kind = INFRA


class SubmissionError(KvmLabError):
    """The submission archive/folder is unusable (bad member, missing file)."""
    stage = "kvmlab-submission"
    kind = INPUT


class LabBuildError(KvmLabError):
    """A build step failed.  ``kind`` is SUBJECT for the student's code, INFRA for ours."""
    stage = "kvmlab-build"
    kind = SUBJECT


class KvmUnavailable(KvmLabError):
    """/dev/kvm cannot be used on this machine."""
    stage = "kvmlab-kvm-probe"
    kind = INFRA


class OracleError(KvmLabError):
    """The exit record is missing or malformed: nothing can be judged."""
    stage = "kvmlab-oracle"
    kind = INFRA


class SandboxError(KvmLabError):
    """Starting or supervising an untrusted process failed (not its own misbehaviour)."""
    stage = "kvmlab-run"
    kind = INFRA
