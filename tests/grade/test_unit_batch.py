"""The whole batch path without builds or boots (--static-only): every fixture and
every bad zip gets a row, outputs exist, resume keeps finished work, shards partition."""
import csv
import json
from pathlib import Path

import pytest

from harness.core import config
from harness.grade import batch, outputs, rubric
from harness.grade.grader import Context
from harness.build.profiles import all_profiles
from tests.grade.conftest import tree_or_skip
from tests.grade.fixtures import bad_zips, fixtures, make_zip


@pytest.fixture
def inbox(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for f in fixtures("6.1"):
        make_zip(d / f"{f.name}_hw2.zip", f.files())
    bad_zips("6.1", d)
    return d


def ctx(out, tree=None, profile="6.1"):
    return Context(base=config.load(config.CONFIGS / "grade.yaml"), profile=all_profiles()[profile], tree=tree,
                   rubric=rubric.load(), out=out, run_pairings=False, progress=lambda m: None)


@pytest.mark.usefixtures("needs_sandbox")
def test_static_batch_outputs(inbox, tmp_path):
    out = tmp_path / "out"
    res = batch.grade_batch([inbox], ctx(out))
    rows = list(csv.DictReader(open(out / "grades.csv")))
    assert [r for r in rows[0]] == ["submission", "hypercall", "syscall", "report", "total", "flags"]
    ids = {r["submission"] for r in rows}
    assert {"good-id8", "bad-apply", "slip", "bomb", "Group7-HW2"} <= ids and len(rows) == len(res) == 22
    by = {r["submission"]: r for r in rows}
    # an empty patch is no part, known without building anything
    assert "no hypercall (kvm.patch is empty)" in by["empty-kvm"]["flags"]
    assert "no syscall (vm.patch is empty)" in by["empty-vm"]["flags"] and "no hypercall" not in by["empty-vm"]["flags"]
    assert "archive refused" in by["slip"]["flags"] and "zip bomb" in by["bomb"]["flags"]
    assert "is not <group_id>_hw2.zip" in by["Group7-HW2"]["flags"]
    r = json.loads((out / "submissions" / "notpdf" / "results.json").read_text())
    assert {c["id"]: c for c in r["checks"]}["rp.valid"]["reason"].startswith("not a PDF: the file is a text file")
    r = json.loads((out / "submissions" / "good-id8" / "results.json").read_text())
    rp = {c["id"]: c for c in r["checks"]}["rp.valid"]
    assert rp["status"] == "PASS" and "2 page" in rp["reason"] and r["report"]["thumbnails"]
    assert (out / "submissions" / "good-id8" / r["report"]["thumbnails"][0]).stat().st_size > 100
    assert (out / "submissions" / "good-id8" / "junit.xml").read_text().startswith("<testsuite")
    html = (out / "index.html").read_text()
    assert "good-id8" in html and "report/page-1.png" in html
    sims = json.loads((out / "similarity.json").read_text())
    assert all((out / s["view"]).exists() and s["score"] >= 0.6 for s in sims)
    # resume: unchanged bytes are not graded again; changed bytes are
    res2 = batch.grade_batch([inbox], ctx(out))
    assert all(r.get("resumed") for r in res2 if r["status"] == "graded")
    f = fixtures("6.1")[3]
    make_zip(inbox / "good-id8_hw2.zip", f.files())
    res3 = {r["id"]: r for r in batch.grade_batch([inbox], ctx(out))}
    assert not res3["good-id8"].get("resumed") and res3["bad-vcpuid"].get("resumed")


@pytest.mark.usefixtures("needs_sandbox")
def test_shards_partition_and_merge(inbox, tmp_path):
    outs = []
    for i in (1, 2, 3):
        o = tmp_path / f"s{i}"
        batch.grade_batch([inbox], ctx(o), shard=(i, 3))
        outs.append(o)
    per = [set(p.name for p in (o / "submissions").iterdir()) for o in outs]
    assert sum(map(len, per)) == 22 and not (per[0] & per[1]) and not (per[1] & per[2])
    merged = batch.merge(outs, tmp_path / "m")
    assert len(merged) == 22 and len(list(csv.DictReader(open(tmp_path / "m" / "grades.csv")))) == 22


@pytest.mark.parametrize("profile", ["6.12", "6.1"])
def test_static_with_tree_names_the_patch_that_does_not_apply(tmp_path, profile):
    tree = tree_or_skip(profile)
    d = tmp_path / "in"
    d.mkdir()
    for f in fixtures(profile):
        if f.name in ("bad-apply", "good-id8"):
            make_zip(d / f"{f.name}_hw2.zip", f.files())
    out = tmp_path / "out"
    batch.grade_batch([d], ctx(out, tree, profile))
    r = json.loads((out / "submissions" / "bad-apply" / "results.json").read_text())
    c = {c["id"]: c for c in r["checks"]}
    assert c["sc.builds"]["status"] == "FAIL" and "unistd.h" in c["sc.builds"]["reason"]
    r = json.loads((out / "submissions" / "good-id8" / "results.json").read_text())
    assert {c["id"]: c for c in r["checks"]}["sc.builds"]["status"] == "SKIP"


@pytest.mark.usefixtures("needs_sandbox")
def test_inconclusive_check_is_flagged_and_regraded(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    f = fixtures("6.1")[0]
    make_zip(d / f"{f.name}_hw2.zip", f.files())
    out = tmp_path / "out"
    batch.grade_batch([d], ctx(out))
    p = out / "submissions" / f.name / "results.json"
    r = json.loads(p.read_text())
    r["checks"][0]["inconclusive"] = True
    r["scores"]["hypercall"].update(inconclusive=["hc.ground_truth"], inconclusive_points=6)
    r["mode"] = "static"
    p.write_text(json.dumps(r))
    row = outputs.row({**r, "mode": "full"})
    assert row["flags"].startswith("INCONCLUSIVE (the machine's, not the student's): hc.ground_truth (6 points")
    again = batch.grade_batch([d], ctx(out))
    assert not again[0].get("resumed")      # the machine's gap is graded again, the rest resumes


def test_a_timeout_is_checked_against_the_machine(tmp_path, monkeypatch):
    """A pairing that timed out is the student's only if the reference pairing still comes
    up right after; if the reference times out too, the machine is at fault (infra)."""
    from harness.grade import grader
    from harness.grade.diffcheck import DiffReport
    from harness.grade.errors import GradeInfraError
    from harness.grade.pairing import PairingResult

    def timed_out(base, p, prof, out_dir, progress):
        return PairingResult(p.name, "boot-failed", why="l2-ssh: L2 did not print ready within 120 s",
                             error={"error": "StageTimeout", "stage": "l2-ssh"})

    monkeypatch.setattr(grader, "run_pairing", timed_out)
    c = ctx(tmp_path)
    seen = []
    c.machine_check = lambda tag: seen.append(tag) or "verdict ok, L1 SSH 7 s, L2 SSH 40 s"
    diffs = {r: DiffReport(r) for r in ("host", "guest")}
    ev = {"host": {}, "guest": {}}
    pairings, _ = grader.run_matrix(c, tmp_path, diffs, ev, tmp_path / "sub" / "pairings")
    assert len(seen) == 3 and "came up: verdict ok" in pairings["hypercall"].why

    def machine_broken(tag):
        raise GradeInfraError("the reference pairing does not work on this machine")

    c.machine_check = machine_broken
    with pytest.raises(GradeInfraError):
        grader.run_matrix(c, tmp_path, diffs, ev, tmp_path / "sub" / "pairings")


def test_failed_checks_are_readable_without_hovering(tmp_path):
    r = {"id": "g1", "status": "graded", "mode": "full", "flags": [], "problems": [],
         "scores": {"hypercall": {"points": 28}, "syscall": {"points": 40}, "report": {"points": 0}},
         "checks": [{"id": "hc.pinned", "category": "hypercall", "status": "FAIL", "reason": "vCPU0 answered 0"},
                    {"id": "hc.range", "category": "hypercall", "status": "PASS", "reason": "ok"},
                    {"id": "e2e.works", "category": None, "status": "FAIL", "reason": "wrong-pcpu"}]}
    assert outputs.row(r)["flags"] == "failed: hc.pinned"          # informational checks carry no blame
    outputs.write_index(tmp_path, [r], [])
    page = (tmp_path / "index.html").read_text()
    assert "<li>pinned: vCPU0 answered 0</li>" in page


def test_a_half_that_failed_to_build_is_not_built_again(tmp_path, monkeypatch):
    from harness.grade import grader
    from harness.grade.diffcheck import DiffReport
    from harness.grade.pairing import PairingResult

    ran = []

    def fake(base, p, prof, out_dir, progress):
        ran.append(p.name)
        if p.name == "e2e":
            return PairingResult("e2e", "build-failed", failed_role="guest", why="guest kernel does not build: x")
        return PairingResult(p.name, "ran", summary={"scenarios": []})

    monkeypatch.setattr(grader, "run_pairing", fake)
    pairings, _ = grader.run_matrix(ctx(tmp_path), tmp_path, {r: DiffReport(r) for r in ("host", "guest")},
                                    {"host": {}, "guest": {}}, tmp_path / "p")
    assert ran == ["e2e", "hypercall"]
    assert pairings["syscall"].status == "build-failed" and "not repeated" in pairings["syscall"].why


def test_an_interrupted_pairing_is_not_graded(tmp_path, monkeypatch):
    """Ctrl-C stops QEMU under a running pairing: what it reports then is not the student's."""
    from harness.grade import grader
    from harness.grade.diffcheck import DiffReport
    from harness.grade.errors import GradeInfraError
    from harness.grade.pairing import PairingResult

    c = ctx(tmp_path)

    def interrupted(base, p, prof, out_dir, progress):
        c.cancelled.set()           # what the main thread does on KeyboardInterrupt
        return PairingResult(p.name, "boot-failed", why="l1-boot: QEMU exited")

    monkeypatch.setattr(grader, "run_pairing", interrupted)
    with pytest.raises(GradeInfraError, match="interrupted"):
        grader.run_matrix(c, tmp_path, {r: DiffReport(r) for r in ("host", "guest")}, {"host": {}, "guest": {}},
                          tmp_path / "p")


@pytest.mark.usefixtures("needs_sandbox")
def test_each_submission_builds_with_a_ccache_of_its_own_removed_once_graded(tmp_path, monkeypatch):
    """grade() gives every submission's pairings a ccache directory of its own inside the
    batch's (it names their worktrees and private ccaches) and removes it, and the
    worktrees it names, once the submission is graded."""
    from harness.core import cache
    from harness.build import kbuild
    from harness.grade import grader
    from harness.grade.pairing import PairingResult

    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    batch_cc = tmp_path / "out" / ".ccache"
    c = ctx(tmp_path / "out")
    c.run_pairings = True
    c.base = config.override(c.base, [f'kernel.sandbox_ccache="{batch_cc}"'])
    seen = {}

    def fake(base, p, prof, out_dir, progress):   # what a build leaves: its worktree, its ccache
        own = Path(base.kernel.sandbox_ccache)
        (own / "host").mkdir(parents=True, exist_ok=True)
        (cache.cache_root() / "work" / f"k-host{kbuild.sandboxed_worktree_tag(own)}" / "build").mkdir(
            parents=True, exist_ok=True)
        seen.setdefault(out_dir.parent.name, set()).add(own)
        return PairingResult(p.name, "ran", summary={"scenarios": []})

    monkeypatch.setattr(grader, "run_pairing", fake)
    f = fixtures("6.1")[0]
    for sid in ("g01", "g02"):
        make_zip(tmp_path / f"{sid}_hw2.zip", f.files())
        grader.grade(tmp_path / f"{sid}_hw2.zip", sid, c)
    assert seen == {"g01": {batch_cc / "submissions" / "g01"}, "g02": {batch_cc / "submissions" / "g02"}}
    assert not list((batch_cc / "submissions").iterdir()) and not list((cache.cache_root() / "work").glob("k-*"))


def test_the_reference_pairing_gets_a_second_chance_not_a_third(tmp_path, monkeypatch):
    """One lost reference run (a loaded machine: L2's QEMU gone mid-scenario) does not stop
    a batch; two in a row say the machine cannot grade, naming both."""
    from harness.grade import pairing
    from harness.grade.errors import GradeInfraError

    outcomes = []

    def fake(base, p, prof, out_dir, progress):
        outcomes.append(p.name)
        if len(outcomes) in fails:
            return pairing.PairingResult(p.name, "infra", why="l2: SSH failed: Unable to open channel.")
        return pairing.PairingResult(p.name, "ran", summary={"verdict": "ok", "timings": {"l1_ssh_s": 3}})

    monkeypatch.setattr(batch, "run_pairing", fake)
    c = ctx(tmp_path / "out")
    fails = {1}
    r = batch.reference_run(c)
    assert outcomes == ["reference", "reference-attempt2"] and r["verdict"] == "ok"
    assert "Unable to open channel" in r["earlier_failures"][0]
    outcomes.clear()
    fails = {1, 2}
    with pytest.raises(GradeInfraError) as ei:
        batch.reference_run(c)
    assert len(outcomes) == 2 and ei.value.message.count("Unable to open channel") == 2
    outcomes.clear()
    fails = set()
    assert batch.reference_run(c) == {"verdict": "ok", "timings": {"l1_ssh_s": 3}} and len(outcomes) == 1
