"""Issue 18 on the real stack: one batch of every hostile runtime fixture
(tests/grade/hostile_runtime.py) and a good submission after them.  Each hostile one is
graded as the submission's (its runtime checks 0, the consoles' crash lines or the
timeout in its evidence), the batch finishes in bounded time and does not stop, the
good submission after them is graded normally, and no QEMU is left running."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness.core import config, procs
from harness.grade import batch, rubric
from tests.grade.conftest import grading_source
from tests.grade.fixtures import fixtures, make_zip
from tests.grade.hostile_runtime import hostile
from tests.grade.test_e2e_grading import assert_expected

# the runtime checks of each part (everything after the build and the boot)
RUNTIME = {"hypercall": ["hc.range", "hc.pinned", "hc.ground_truth"],
           "syscall": ["sc.number", "sc.one_hvc", "sc.value"]}
BUDGET_S = 45 * 60  # 5 hostile + 1 good submission on a shared 2-core machine, builds included


@pytest.mark.e2e
@pytest.mark.parametrize("kernel", ["default", "5.4"])
def test_hostile_runtime_batch(tmp_path, kernel):
    tree = None
    if kernel == "5.4":
        tree = os.environ.get("KVM_HARNESS_KERNEL_TREE")
        if not tree:
            pytest.skip("set KVM_HARNESS_KERNEL_TREE to a v5.4 tree to run the hostile fixtures on 5.4")
        tarball, profile = None, "5.4"
    else:
        tarball, profile = grading_source()
    good = fixtures(profile)[0]
    assert good.name == "good-id8"
    d = tmp_path / "in"
    d.mkdir()
    cases = hostile(profile)
    for h in cases:
        make_zip(d / f"{h.fixture.name}_hw2.zip", h.fixture.files())
    make_zip(d / "z-good_hw2.zip", good.files())  # graded last: after every hostile one
    cfg = config.load(config.CONFIGS / "grade.yaml")
    if tree:
        cfg = config.override(cfg, config.tree_assignments(Path(tree)))
    elif tarball:
        cfg = config.override(cfg, [f"kernel.tarball={json.dumps(str(tarball))}"])
    out = tmp_path / "out"
    lines = []
    t0 = time.monotonic()
    ctx = batch.make_context(cfg, rubric.load(), out, True, lambda m: (lines.append(m), print(m, flush=True)))
    res = {r["id"]: r for r in batch.grade_batch([d], ctx, jobs=1)}  # raises if the batch stopped
    took = time.monotonic() - t0
    print(f"hostile batch: {took:.0f} s for {len(res)} submissions")
    (tmp_path / "batch-seconds.txt").write_text(f"{took:.1f}\n")
    assert took < BUDGET_S
    assert sorted(res) == sorted([h.fixture.name for h in cases] + ["z-good"])

    for h in cases:
        r = res[h.fixture.name]
        assert r["status"] == "graded", r
        checks = {c["id"]: c for c in r["checks"]}
        pairing = r["pairings"][h.part]
        why = json.dumps({k: (c["status"], c["reason"]) for k, c in checks.items()}, indent=1)
        assert pairing["status"] == h.status, (h.fixture.name, pairing["status"], pairing["why"])
        assert (pairing["error"] or {}).get("kind") == "subject", pairing["error"]
        for cid in RUNTIME[h.part]:
            assert checks[cid]["status"] != "PASS", f"{h.fixture.name}: {cid}\n{why}"
            assert checks[cid]["points"] == 0
        # the evidence is visible: the crash lines of the consoles, or a timeout the machine was cleared of
        failing = [c for c in checks.values() if c["status"] == "FAIL" and c.get("category") == h.part]
        text = " ".join(c["reason"] + " " + " ".join(c.get("evidence") or []) for c in failing)
        assert failing, why
        if h.evidence:
            assert h.evidence in text, f"{h.fixture.name}: {h.evidence!r} not in the evidence\n{why}"
        else:
            assert ("crashed or stalled" in text) or ("the reference pairing, run right after" in text), why

    assert_expected(good, res["z-good"])
    assert procs.processes_mentioning(str(tmp_path)) == {}
