"""The scoring rubric: labs/kvm_api/rubric.json (or ``$KVMLAB_RUBRIC``).

Assignment checks carry weights; robustness checks (what the assignment does not
ask for) carry weight 0 by default, so they are reported in their own column but
neither lower the score nor change the verdict; a build profile other than
upstream's may cost a deduction; PARTIAL earns a share of a check's weight.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from . import LAB_DIR
from .errors import KvmLabError

GATES = ("build", "oracle")


class RubricError(KvmLabError):
    """The rubric file is unreadable or malformed (names the file)."""
    stage = "kvmlab-rubric"


@dataclass(frozen=True)
class Rubric:
    weights: Dict[str, float]          # assignment checks
    robustness: Dict[str, float]       # robustness checks (0: not scored)
    build_deductions: Dict[str, float]
    partial: float
    source: str
    # points off for a hand-in beyond guest.c and kvm-hello-world.c; 0 (the default):
    # flagged for the TA, no points taken
    extra_files_deduction: float = 0

    def weight(self, cid: str) -> float:
        return self.weights.get(cid, self.robustness.get(cid, 0))

    def kind(self, cid: str) -> str:
        if cid in GATES:
            return "gate"
        return "robustness" if cid in self.robustness else "assignment"

    def scored(self, cid: str) -> bool:
        """Does this check count toward the score and the verdict?"""
        return cid in self.weights or self.robustness.get(cid, 0) > 0

    @property
    def check_ids(self):
        return list(GATES) + list(self.weights) + list(self.robustness)


def load(path: Optional[Path] = None) -> Rubric:
    path = Path(path or os.environ.get("KVMLAB_RUBRIC") or LAB_DIR / "rubric.json")
    try:
        data = json.loads(path.read_text())
        rub = Rubric(weights={k: float(v) for k, v in data["weights"].items()},
                     robustness={k: float(v) for k, v in data.get("robustness", {}).items()},
                     build_deductions={k: float(v) for k, v in data.get("build_deductions", {}).items()},
                     partial=float(data.get("partial", 0.5)), source=str(path),
                     extra_files_deduction=float(data.get("extra_files_deduction", 0)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RubricError(f"{path}: not a usable rubric: {e}") from e
    if not rub.weights or not 0 <= rub.partial <= 1:
        raise RubricError(f"{path}: needs assignment weights and 0 <= partial <= 1")
    return rub
