"""A build that looks around (issue 18, section 2 and 3), graded on the real stack.

Three submissions in one batch: the reference (a), the reference whose kvm.patch also
adds ``$(info ... $(shell ...))`` lines to arch/arm64/kvm/Makefile probing the machine
(b), the reference again (c).  b's probes meet the sandbox: no /etc/shadow, no batch
output, no other group's patch, no cached kernels, no network, no write to the shared
ccache, an unprivileged uid; b is flagged for a human with the hunk (no points taken)
and c is graded normally after it.

Three full gradings, so it runs in ``make grade-test-full``
(``-m grade_full``), not in ``make test``.  The same probes meet the same sandbox in a
real sandboxed kernel build in seconds in test_unit_isolation.py, which ``make test`` runs."""
import difflib
import json
import os
from pathlib import Path

import pytest

from harness.core import cache, config
from harness.build import kbuild, sandbox
from harness.grade import batch, rubric
from tests.grade.conftest import grading_source
from tests.grade.fixtures import make_zip, pdf

PROBES = {
    "shadow": "cat /etc/shadow 2>&1 | head -c 60",
    "batch": "ls {out}/submissions 2>&1",
    "other": "head -c 40 {out}/submissions/a/*/kvm.patch 2>&1",
    "kernels": "ls {cache}/kernels 2>&1 | head -c 300",
    "net": "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 80), 2)' 2>&1 | tail -n 1",
    "poison": "touch {store}/poison 2>&1",
    "uid": "id -u",
}


def hostile_kvm_patch(tree, reference: str, out, store) -> str:
    rel = "arch/arm64/kvm/Makefile"
    old = (tree / rel).read_text().splitlines(keepends=True)
    lines = [f"$(info H18PROBE {k}: $(shell {cmd.format(out=out, cache=cache.cache_root(), store=store)}))\n"
             for k, cmd in PROBES.items()]
    hunk = "".join(difflib.unified_diff(old, old + lines, f"a/{rel}", f"b/{rel}"))
    return reference + f"diff --git a/{rel} b/{rel}\n" + hunk


@pytest.mark.grade_full
@pytest.mark.parametrize("kernel", ["default", "5.4"])
def test_a_build_that_looks_around_sees_nothing_and_is_flagged(tmp_path, kernel):
    cfg = config.load(config.CONFIGS / "grade.yaml")
    if kernel == "5.4":
        tree = os.environ.get("KVM_HARNESS_KERNEL_TREE")
        if not tree:
            pytest.skip("set KVM_HARNESS_KERNEL_TREE to a v5.4 tree to run the hostile build on 5.4")
        cfg = config.override(cfg, config.tree_assignments(Path(tree)))
    else:
        tarball, _ = grading_source()
        if tarball:
            cfg = config.override(cfg, [f"kernel.tarball={json.dumps(str(tarball))}"])
    out = tmp_path / "out"
    ctx = batch.make_context(cfg, rubric.load(), out, True, print)
    prof = ctx.profile
    ref_kvm, ref_vm = prof.reference_kvm_patch.read_text(), prof.reference_vm_patch.read_bytes()
    d = tmp_path / "in"
    d.mkdir()
    bad = hostile_kvm_patch(ctx.tree, ref_kvm, out, kbuild.shared_store())
    for name, kvm in (("a", ref_kvm), ("b", bad), ("c", ref_kvm)):
        make_zip(d / f"{name}_hw2.zip", {"kvm.patch": kvm.encode(), "vm.patch": ref_vm, "report.pdf": pdf(1)})
    res = {r["id"]: r for r in batch.grade_batch([d], ctx, jobs=1)}
    assert sorted(res) == ["a", "b", "c"]
    for sid in ("a", "b", "c"):
        r = res[sid]
        assert r["status"] == "graded", r
        assert r["scores"]["hypercall"]["points"] == 40 and r["scores"]["syscall"]["points"] == 40, \
            json.dumps(r["scores"], indent=1)
    # b is flagged for a human, with the hunk, in grades.csv and index.html; a and c are not
    review = res["b"]["review"]
    assert [f["file"] for f in review] == ["arch/arm64/kvm/Makefile"] and "$(shell" in review[0]["hunk"]
    assert not res["a"]["review"] and not res["c"]["review"]
    csv = (out / "grades.csv").read_text()
    assert "for a human to read: kvm.patch runs a shell command at build time" in csv
    assert "H18PROBE shadow" in (out / "index.html").read_text()
    # what the probes printed inside the sandboxed build (its build log)
    said = {}
    for log in (out / "submissions" / "b").rglob("kbuild-host.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("H18PROBE "):
                key, _, value = line[len("H18PROBE "):].partition(": ")
                said[key] = value
    assert set(said) == set(PROBES), said
    assert "No such file or directory" in said["shadow"] and "root:" not in said["shadow"]
    assert "No such file or directory" in said["batch"] and "No such file or directory" in said["other"]
    assert "No such file or directory" in said["kernels"]
    assert "Error" in said["net"] or "unreachable" in said["net"]
    assert "Read-only file system" in said["poison"] or "Permission denied" in said["poison"]
    assert int(said["uid"]) != 0
    assert not (kbuild.shared_store() / "poison").exists()
    pre = (out / "preflight.json").read_text()
    assert sandbox.limits_mechanism() in pre and "L1's QEMU runs confined" in pre
