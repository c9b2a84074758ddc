"""The rubric: points per check, from YAML, validated strictly on load (as configs are):
every known check gets points, no unknown keys or check ids, and each category's
points plus its manual share add up to its total."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Union

import yaml

from ..core.config import REPO
from .errors import RubricError
from .flags import SERIOUS

DEFAULT = REPO / "configs" / "hw2-rubric.yaml"
CATEGORIES = ("hypercall", "syscall", "report")
# the checks the grader implements: id -> (category, what it checks)
CHECKS: Dict[str, tuple] = {
    "hc.builds": ("hypercall", "host kernel builds with kvm.patch"),
    "hc.l1_nvhe": ("hypercall", "L1 boots with KVM in nVHE mode"),
    "hc.l2_vcpus": ("hypercall", "L2 boots all its vCPUs"),
    "hc.range": ("hypercall", "every answer in [0, L1 CPUs)"),
    "hc.pinned": ("hypercall", "pinned vCPU k -> pCPU p != k answers p (two pairings)"),
    "hc.ground_truth": ("hypercall", "agrees with L1's trace under load, with a migration"),
    "hc.kernel_clean": ("hypercall", "no BUG:/WARNING: in L1"),
    "sc.builds": ("syscall", "guest kernel builds with vm.patch"),
    "sc.number": ("syscall", "the syscall number exists (not -ENOSYS)"),
    "sc.one_hvc": ("syscall", "exactly one HVC per call"),
    "sc.value": ("syscall", "the 64-bit answer reaches user space unchanged"),
    "sc.kernel_clean": ("syscall", "no kernel error lines in L2"),
    "rp.valid": ("report", "report.pdf present and a valid PDF"),
    "e2e.works": (None, "student host x student guest: every call returns a pCPU"),
}


@dataclass
class Category:
    name: str
    total: float
    manual: float = 0.0
    checks: Dict[str, float] = field(default_factory=dict)
    # finding (flags.SERIOUS) -> the most the category earns when one of its checks finds it
    caps: Dict[str, float] = field(default_factory=dict)


@dataclass
class Rubric:
    categories: Dict[str, Category]
    informational: List[str]
    source: str = ""

    def points(self, check_id: str) -> float:
        cat = CHECKS[check_id][0]
        return self.categories[cat].checks.get(check_id, 0.0) if cat else 0.0

    @property
    def total(self) -> float:
        return sum(c.total for c in self.categories.values())


def _num(v, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise RubricError(f"{key}: expected a number >= 0, got {v!r}")
    return float(v)


def from_dict(data, source: str = "") -> Rubric:
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise RubricError(f"{where}the top level must be a mapping")
    unknown = set(data) - {"categories", "informational"}
    if unknown:
        raise RubricError(f"{where}unknown key {sorted(unknown)[0]} (allowed: categories, informational)")
    cats = data.get("categories")
    if not isinstance(cats, dict) or set(cats) != set(CATEGORIES):
        raise RubricError(f"{where}categories: must name exactly {', '.join(CATEGORIES)}")
    out: Dict[str, Category] = {}
    for name in CATEGORIES:
        c = cats[name]
        key = f"categories.{name}"
        if not isinstance(c, dict):
            raise RubricError(f"{where}{key}: expected a mapping")
        bad = set(c) - {"total", "manual", "checks", "caps"}
        if bad:
            raise RubricError(f"{where}unknown key {key}.{sorted(bad)[0]} (allowed: caps, checks, manual, total)")
        if "total" not in c:
            raise RubricError(f"{where}{key}.total: required")
        checks = c.get("checks") or {}
        if not isinstance(checks, dict):
            raise RubricError(f"{where}{key}.checks: expected a mapping of check id -> points")
        cat = Category(name, _num(c["total"], f"{where}{key}.total"), _num(c.get("manual", 0), f"{where}{key}.manual"))
        for cid, pts in checks.items():
            if cid not in CHECKS or CHECKS[cid][0] != name:
                known = ", ".join(k for k, v in CHECKS.items() if v[0] == name)
                raise RubricError(f"{where}{key}.checks.{cid}: not a {name} check (known: {known})")
            cat.checks[cid] = _num(pts, f"{where}{key}.checks.{cid}")
        missing = [k for k, v in CHECKS.items() if v[0] == name and k not in cat.checks]
        if missing:
            raise RubricError(f"{where}{key}.checks: no points given for {', '.join(missing)} (0 is allowed)")
        got = sum(cat.checks.values()) + cat.manual
        if abs(got - cat.total) > 1e-9:
            raise RubricError(f"{where}{key}: checks ({sum(cat.checks.values()):g}) + manual ({cat.manual:g}) "
                              f"= {got:g}, not the total {cat.total:g}")
        caps = c.get("caps") or {}
        if not isinstance(caps, dict):
            raise RubricError(f"{where}{key}.caps: expected a mapping of finding -> most points")
        for finding, most in caps.items():
            if finding not in SERIOUS:
                raise RubricError(f"{where}{key}.caps.{finding}: not a finding that caps a part "
                                  f"(known: {', '.join(SERIOUS)})")
            cat.caps[finding] = _num(most, f"{where}{key}.caps.{finding}")
            if cat.caps[finding] > cat.total:
                raise RubricError(f"{where}{key}.caps.{finding}: {most} is more than the total {cat.total:g}")
        out[name] = cat
    info = data.get("informational") or []
    if not isinstance(info, list) or any(i not in CHECKS or CHECKS[i][0] is not None for i in info):
        raise RubricError(f"{where}informational: a list of informational check ids (known: e2e.works)")
    return Rubric(out, list(info), source)


def load(path: Union[str, Path, None] = None) -> Rubric:
    path = Path(path) if path else DEFAULT
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RubricError(f"cannot read rubric {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise RubricError(f"{path}: not valid YAML: {e}") from None
    return from_dict(data, str(path))
