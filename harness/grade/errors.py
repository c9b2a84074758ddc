"""Typed failures of the grader, each naming its stage.  Whose fault it is decides
what happens: an IntakeError is the submission's (it is graded with what is there),
a GradeInfraError is the machine's (the batch stops, nobody is graded as failing)."""
from __future__ import annotations

from ..core.errors import INFRA, INPUT, HarnessError


class IntakeError(HarnessError):
    """The submission archive cannot be opened safely (refused as a whole)."""

    stage = "intake"
    kind = INPUT


class RubricError(HarnessError):
    stage = "rubric"
    kind = INPUT


class GradeInfraError(HarnessError):
    """The grading machine is not fit to grade (no QEMU, no space, no KVM in L1...)."""

    stage = "preflight"
    kind = INFRA
