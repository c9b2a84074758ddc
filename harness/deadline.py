"""Deadlines that nest: a child's time left is min(its own, its parent's), so a retry
never outlives the job.  One slowdown factor scales every budget for emulation."""
from __future__ import annotations

import os
import time
from typing import Optional

from . import interrupts
from .errors import StageTimeout


def slowdown() -> float:
    """Multiplier for every timeout.  ``KVM_HARNESS_SLOWDOWN`` overrides (e.g. 3 on a
    busy CI runner); the default is 1 because the budgets below were measured under TCG."""
    try:
        value = float(os.environ.get("KVM_HARNESS_SLOWDOWN", "1"))
    except ValueError:
        value = 1.0
    return max(value, 0.1)


class Deadline:
    def __init__(self, seconds: float, stage: str, parent: Optional["Deadline"] = None):
        self.stage = stage
        self.budget = seconds * slowdown()
        self.start = time.monotonic()
        own_end = self.start + self.budget
        self.end = min(own_end, parent.end) if parent else own_end

    def remaining(self) -> float:
        interrupts.check()  # every wait asks: a swallowed Ctrl-C is raised again here
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        interrupts.check()
        return time.monotonic() >= self.end

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def child(self, seconds: float, stage: str) -> "Deadline":
        return Deadline(seconds, stage, parent=self)

    def check(self, what: str = "", **kw) -> None:
        if self.expired():
            raise StageTimeout(
                f"{self.stage}: {what or 'no progress'} after {self.elapsed():.0f} s", stage=self.stage, **kw
            )
