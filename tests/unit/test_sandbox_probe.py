"""sandbox.unusable(): whether a sandbox can really be made here, in bubblewrap's words.
Under qemu-user (tools/arm64-check.sh's arm64 roots) bubblewrap exists but cannot create
user namespaces; the grading tests that need a sandbox then skip with that reason and
grading's preflight refuses with it, instead of failing later."""
from __future__ import annotations

import pytest

from harness.build import sandbox
from harness.grade import batch
from harness.grade.errors import GradeInfraError

REFUSAL = "bwrap: Creating new namespace failed, likely because the kernel does not support user namespaces."


def test_bubblewraps_refusal_is_the_reason(monkeypatch):
    monkeypatch.setattr(sandbox, "available", lambda: "")
    monkeypatch.setattr(sandbox, "confine", lambda argv, **kw: ["sh", "-c", f"echo '{REFUSAL}' >&2; exit 1"])
    assert sandbox.unusable() == f"bubblewrap cannot create a sandbox here: {REFUSAL}"


def test_a_sandbox_that_starts_is_usable(monkeypatch):
    monkeypatch.setattr(sandbox, "available", lambda: "")
    monkeypatch.setattr(sandbox, "confine", lambda argv, **kw: list(argv))  # runs `true`
    assert sandbox.unusable() == ""


def test_missing_tools_are_named_first(monkeypatch):
    monkeypatch.setattr(sandbox, "available", lambda: "bwrap not found (apt-get install bubblewrap ...)")
    assert sandbox.unusable().startswith("bwrap not found")


def test_grading_preflight_refuses_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "unusable", lambda: "bubblewrap cannot create a sandbox here: " + REFUSAL)
    with pytest.raises(GradeInfraError, match="sandbox: bubblewrap cannot create a sandbox here: bwrap: Creating"):
        batch.preflight(None, tmp_path, full=False, progress=lambda m: None)
