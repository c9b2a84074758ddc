"""Verdict and score rules, the rubric, value matching (no KVM needed)."""
from __future__ import annotations

import json

import pytest

from harness.kvmlab import rubric as rubricmod
from harness.kvmlab.grade import FAIL, PARTIAL, PASS, SKIP, Check, Grader, _shows

RUB = rubricmod.load()


def checks(**st):
    return [Check(cid, s, "", weight=RUB.weight(cid), kind=RUB.kind(cid)) for cid, s in st.items()]


def test_verdicts():
    v = lambda cs, err=None, **kw: Grader._verdict(cs, err, RUB, **kw)  # noqa: E731
    assert v(checks(build=PASS, oracle=PASS, printval=PASS)) == ("PASS", 100.0)
    assert v(checks(build=PASS, oracle=PASS, printval=PASS, getnumexits=FAIL)) == ("FAIL", 33.3)
    assert v(checks(build=PASS, oracle=PASS, printval=PASS, getnumexits=SKIP))[0] == "INCOMPLETE"
    assert v(checks(build=PASS, oracle=PASS, printval=PASS, getnumexits=PARTIAL)) == ("PARTIAL", 66.7)
    assert v(checks(build=FAIL, oracle=SKIP)) == ("FAIL", 0.0)
    assert v(checks(build=FAIL, oracle=SKIP), review=["includes guest.h"]) == ("REVIEW", 0.0)
    assert v(checks(build=PASS, oracle=FAIL, printval=SKIP))[0] == "ORACLE_UNAVAILABLE"
    assert v(checks(build=PASS), {"kind": "infra"})[0] == "ERROR"
    assert v(checks(build=PASS, oracle=PASS, printval=PASS), deduction=5) == ("PASS", 95.0)


def test_robustness_findings_do_not_lower_the_score_by_default():
    cs = checks(build=PASS, oracle=PASS, printval=PASS, fs_confinement=FAIL, robust_bad_address=SKIP)
    assert Grader._verdict(cs, None, RUB) == ("PASS", 100.0)
    assert cs[3].kind == "robustness" and cs[3].weight == 0


def test_a_rubric_may_score_robustness(tmp_path, monkeypatch):
    data = json.loads((rubricmod.LAB_DIR / "rubric.json").read_text())
    data["robustness"]["fs_confinement"] = 1
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("KVMLAB_RUBRIC", str(path))
    rub = rubricmod.load()
    cs = [Check(c, s, "", weight=rub.weight(c), kind=rub.kind(c))
          for c, s in (("build", PASS), ("oracle", PASS), ("printval", PASS), ("fs_confinement", FAIL))]
    assert Grader._verdict(cs, None, rub) == ("FAIL", 50.0)


def test_a_broken_rubric_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(rubricmod.RubricError, match="bad.json"):
        rubricmod.load(bad)


def test_shows_value_as_a_whole_number():
    assert _shows(b"Value: 1263271937\n", 1263271937)
    assert _shows(b"0x4b4c0001", 0x4B4C0001)
    assert _shows(b"-1\n", 0xFFFFFFFF)
    assert not _shows(b"12632719370", 1263271937)
    assert not _shows(b"nothing", 5)


def _merged(tmp_path, own, test=None, src="void printVal(unsigned v) { }\n"):
    from harness.kvmlab import guestapi, ownrun
    g = Grader(tmp_path / "sub", tmp_path / "out", work=tmp_path / "work")
    g.own_findings = {"printval": own}
    if test is not None:
        g.checks["printval"] = test
    g.testguest_problem = "the harness test guest did not build with this guest.c (see build)"
    g._merge_own_partb(guestapi.analyse(src))
    return g.checks["printval"], g.review


def test_the_demo_stands_unless_the_test_guest_fails_a_case_it_did_not_exercise(tmp_path):
    from harness.kvmlab import ownrun
    demo = lambda top: ownrun.Finding("PASS", "own guest: printed", exercised={"max_value": top})  # noqa: E731
    c, _ = _merged(tmp_path, demo(7))
    assert c.status == PASS and "see build" in c.message          # no test guest: never a SKIP
    failed = Check("printval", FAIL, "value lost", case="value above 255")
    c, _ = _merged(tmp_path, demo(7), failed)
    assert c.status == FAIL and "demo passes" in c.message        # a case the demo did not try
    failed = Check("printval", FAIL, "value lost", case="value above 255")
    c, _ = _merged(tmp_path, demo(300), failed)
    assert c.status == PASS                                       # the demo already showed it
    none = ownrun.Finding("NONE", "nothing printed")
    c, review = _merged(tmp_path, none)
    assert c.status == FAIL and "not shown working" in c.message and review   # defined, not judged
    c, _ = _merged(tmp_path, none, src="int main(void) { return 0; }\n")
    assert c.status == SKIP                                       # not defined: incomplete
