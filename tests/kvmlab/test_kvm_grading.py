"""Grading end to end on this machine's KVM: the reference and every fixture get
the verdicts they deserve, judged against the exit oracle."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import variants
from harness.kvmlab.grade import CHECK_IDS, PASS, ROBUSTNESS
from harness.kvmlab.report import write_one, write_summary

pytestmark = pytest.mark.kvm


def statuses(result):
    return {c.id: c.status for c in result.checks}


@pytest.mark.parametrize("name", ["reference", "student_ok"])
def test_correct_submissions_pass_every_check(graded, name):
    r = graded[name]
    bad = {c.id: (c.status, c.message) for c in r.checks if c.status != PASS}
    assert bad == {}, bad
    assert set(statuses(r)) == set(CHECK_IDS)
    assert r.verdict == "PASS" and r.score == 100.0
    assert r.build == "upstream" and r.robustness == "ok" and not r.review


@pytest.mark.parametrize("name", sorted(variants.VARIANTS))
def test_broken_fixture_fails_exactly_its_checks(graded, name):
    r = graded[name]
    v = variants.VARIANTS[name]
    failed = {cid for cid, s in statuses(r).items() if s == "FAIL"}
    others = {cid: s for cid, s in statuses(r).items() if cid not in v["expect"] and s != PASS}
    assert failed == v["expect"], r.to_dict()
    assert others == {}
    assert r.verdict == v["verdict"]
    robust = set(v["expect"]) & set(ROBUSTNESS)
    if robust:  # robustness findings: their own column, not the score
        assert r.score == 100.0 and all(cid in r.robustness for cid in robust)
    else:
        assert 0 < r.score < 100 and r.robustness == "ok"


@pytest.mark.parametrize("name", sorted(variants.FAIR))
def test_legal_design_gets_a_careful_humans_verdict(graded, name):
    r = graded[name]
    v = variants.FAIR[name]
    failed = {cid for cid, s in statuses(r).items() if s == "FAIL"}
    assert failed == v["expect"], r.to_dict()
    assert r.verdict == v["verdict"], r.to_dict()
    for key, want in v["flags"].items():
        if key == "build":
            assert r.build == want
        elif key == "missing_header":
            assert any(f"includes {want}, which is not part of the submission" in x for x in r.review)
            assert "not part of the submission" in r.check("build").message


def test_getnumexits_through_guest_memory_is_judged_by_the_value(graded):
    c = graded["numexits_by_memory"].check("getnumexits")
    assert c.status == PASS and "no IN exit" in " ".join(c.evidence) and "#" in c.message


def test_build_profiles_are_recorded_with_the_rubric_deduction(graded):
    assert graded["strcpy_ubuntu"].build == "ubuntu-defaults" and graded["strcpy_ubuntu"].score == 100.0
    r = graded["warning_werror"]
    assert r.build == "warnings-not-fatal" and r.deduction > 0 and r.score == 100.0 - r.deduction
    assert "upstream: failed" in " ".join(r.check("build").evidence)


def test_stdio_file_api_gets_credit_from_the_hypervisors_file_calls(graded):
    r = graded["fs_stdio"]
    # the test guest cannot call hread(struct io *); the own guest's effects decide
    for cid in ("fs_several_files", "fs_read", "multi_arg"):
        c = r.check(cid)
        assert c.status == PASS and c.message.startswith("own guest:") and "exit #" in c.message, c.to_dict()
    assert r.extras["seek"].startswith("PASS")
    # robustness checks needing the test guest's file calls are SKIP, and not scored
    assert {c.id for c in r.checks if c.status == "SKIP"} <= set(ROBUSTNESS)
    assert r.verdict == "PASS" and r.score == 100.0


@pytest.mark.parametrize("name", sorted(variants.STDIO_TEXT))
def test_stdio_text_calls_get_the_same_credit_as_fread_and_fwrite(graded, name):
    r = graded[name]
    assert r.build == variants.STDIO_TEXT[name]["build"], r.to_dict()
    for cid in ("fs_several_files", "fs_read", "multi_arg"):
        c = r.check(cid)
        assert c.status == PASS and c.message.startswith("own guest:"), c.to_dict()
    calls = " ".join(" ".join(r.check(cid).evidence) for cid in ("fs_read", "multi_arg"))
    assert "fgets" in calls and "fprintf" in calls, calls
    assert r.verdict == "PASS" and r.score == 100.0 - r.deduction


def test_display_per_char_evidence_counts_exits(graded):
    c = graded["display_per_char"].check("display_one_exit")
    n = len(f"kvmlab-display-{graded['display_per_char'].nonce} one exit\n")
    assert f": {n} exit(s), printed whole" in c.evidence[0] and c.status == "FAIL"


def test_numexits_printed_evidence(graded):
    c = graded["numexits_printed"].check("getnumexits")
    assert "the guest printed 0 and 0" in c.message and "no IN exit" in c.message and c.records


def test_crash_is_reported_as_signal(graded):
    c = graded["crash_bad_address"].check("robust_bad_address")
    assert "SIGSEGV" in c.message


def test_raw_syscall_makes_oracle_unavailable(graded):
    r = graded["raw_syscall_kvm_run"]
    assert r.verdict == "ORACLE_UNAVAILABLE"
    assert "KVM_RUN" in r.check("oracle").message
    assert all(s == "SKIP" for cid, s in statuses(r).items() if cid not in ("build", "oracle"))


def test_build_error(graded):
    r = graded["build_error"]
    assert r.verdict == "FAIL" and r.check("build").status == "FAIL"
    assert "error" in r.check("build").output
    # the cause in the first line: the file and line, the tool, gcc's own words
    assert "guest.c:" in r.check("build").message and "compiler: expected ';'" in r.check("build").message


def test_reports(graded, tmp_path):
    r = graded["single_file"]
    write_one(r, tmp_path / "one")
    data = json.loads((tmp_path / "one" / "results.json").read_text())
    assert data["verdict"] == "FAIL"
    assert {c["id"]: c["status"] for c in data["checks"]}["fs_several_files"] == "FAIL"
    suite = ET.parse(tmp_path / "one" / "junit.xml").getroot()
    assert suite.get("failures") == "1"
    text = (tmp_path / "one" / "evidence.txt").read_text()
    assert "kvmlab_b.txt on disk" in text
    assert "Part C several files:" in text and "Part B getNumExits:" in text
    assert data["ta_note"] and data["robustness"] == "ok"
    write_summary(list(graded.values()), tmp_path / "all")
    rows = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert {row["submission"]: row["verdict"] for row in rows}["reference"] == "PASS"


def test_cli_grades_a_tarball(tmp_path, kvmlab_cache):
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    from harness.kvmlab import LAB_DIR

    arc = tmp_path / "190050042.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for f in ("guest.c", "kvm-hello-world.c"):
            tf.add(Path(variants.BASE) / f, arcname=f"190050042/{f}")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "harness.kvmlab", "grade", str(arc), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=str(LAB_DIR.parents[1]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "190050042: PASS score=100.0" in proc.stdout
    data = json.loads((out / "190050042" / "results.json").read_text())
    assert data["verdict"] == "PASS"
    assert (out / "summary.csv").read_text().startswith("submission,verdict,score")
    assert (out / "190050042" / "logs" / "own" / "oracle.jsonl").exists()


HANDINS = {**variants.HANDIN, **variants.HANDIN_DIRS}


@pytest.mark.parametrize("name", sorted(HANDINS))
def test_real_shaped_handin_gets_a_careful_readers_verdict(graded, name):
    r = graded[name]
    v = HANDINS[name]
    failed = {cid for cid, s in statuses(r).items() if s == "FAIL"}
    assert failed == v["expect"], r.to_dict()
    assert r.verdict == v["verdict"], r.to_dict()
    # Part B is never SKIP for a guest.c that has it: the own run is evidence
    for cid in ("printval", "getnumexits", "display_one_exit"):
        assert r.check(cid).status != "SKIP", r.check(cid).to_dict()


def test_own_header_and_makefile_flags_are_used_and_flagged(graded):
    r = graded["own_header_structs"]
    # hc.h is found, and the Makefile's -Wno-unused-parameter spares the -Werror fallback
    assert r.build == "upstream" and r.score == 100.0 and not r.review, r.to_dict()
    assert "hc.h" in r.handin and "Makefile (read, not run" in r.handin and "-Wno-unused-parameter" in r.handin
    from harness.kvmlab.report import ta_note
    assert any(line.startswith("HAND-IN:") for line in ta_note(r))


def test_port_first_api_is_bound_for_the_test_guest(graded):
    for name in ("printval_port_first", "sequential_outs"):
        r = graded[name]
        assert "port" in r.api["bindings"]["printVal"], r.api
        assert "harness test guest: PASS" in " ".join(r.check("printval").evidence), r.check("printval").to_dict()
        assert r.check("printval").message.startswith("own guest:")


def test_fixed_argument_blocks_judged_from_the_own_run(graded):
    r = graded["fixed_arg_blocks"]
    for cid in ("fs_several_files", "fs_read", "multi_arg"):
        assert r.check(cid).message.startswith("own guest:"), r.check(cid).to_dict()
    assert "guest memory" in " ".join(r.check("getnumexits").evidence)


def test_display_truncated_to_8_bits_is_caught_above_0xff(graded):
    c = graded["display_addr_8bit"].check("display_one_exit")
    assert c.status == "FAIL" and "above 0xFF" in c.message and "demo passes" in c.message, c.to_dict()
    assert any("GVA 0x" in e and "not printed" in e for e in c.evidence)


def test_a_build_failure_is_shown_once(graded):
    r = graded["build_error"]
    from harness.kvmlab.report import evidence_text
    text = evidence_text(r)
    assert text.count("expected ';'") <= 2, text   # the build check's message and its output
    assert all(c.message == "see build" for c in r.checks if c.id != "build")


def test_a_test_guest_that_does_not_build_is_said_once_and_the_own_run_judges(graded):
    r = graded["testguest_cannot_build"]
    build = r.check("build")
    assert build.status == PASS
    assert sum("harness test guest" in e and "did not build" in e for e in build.evidence) == 1, build.evidence
    for cid in ("printval", "getnumexits", "display_one_exit"):
        c = r.check(cid)
        assert c.status == PASS and c.message.startswith("own guest:") and "see build" in c.message, c.to_dict()
    assert r.verdict != "INCOMPLETE"
    assert all("kvmlab_main" not in c.message for c in r.checks)


def test_outb_wrappers_are_bound_at_the_ports_of_the_own_run(graded):
    r = graded["outb_wrappers_only"]
    assert r.api["bindings"]["printVal"].startswith("out32(0x10"), r.api
    assert r.api["bindings"]["getNumExits"].startswith("in32(0x11)"), r.api
    assert "harness test guest: PASS" in " ".join(r.check("display_one_exit").evidence)
