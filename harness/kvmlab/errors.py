"""Typed failures of the KVM-API lab.  Each names its stage and whose fault it is.

They derive from ``harness.core.errors.HarnessError``, so the rest of the harness renders them.
"""
from __future__ import annotations

from harness.core.errors import HarnessError as _Base, INFRA, INPUT, SUBJECT


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
