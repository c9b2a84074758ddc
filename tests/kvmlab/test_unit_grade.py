"""Verdict and score rules, value matching (no KVM needed)."""
from __future__ import annotations

from harness.kvmlab.grade import FAIL, PASS, SKIP, Check, Grader, _shows


def checks(**st):
    return [Check(cid, s, "") for cid, s in st.items()]


def test_verdicts():
    v = Grader._verdict
    assert v(checks(build=PASS, oracle=PASS, printval=PASS), None) == ("PASS", 100.0)
    assert v(checks(build=PASS, oracle=PASS, printval=PASS, getnumexits=FAIL), None) == ("FAIL", 33.3)
    assert v(checks(build=PASS, oracle=PASS, printval=PASS, getnumexits=SKIP), None)[0] == "INCOMPLETE"
    assert v(checks(build=FAIL, oracle=SKIP), None) == ("FAIL", 0.0)
    assert v(checks(build=PASS, oracle=FAIL, printval=SKIP), None)[0] == "ORACLE_UNAVAILABLE"
    assert v(checks(build=PASS), {"kind": "infra"})[0] == "ERROR"


def test_shows_value_as_a_whole_number():
    assert _shows(b"Value: 1263271937\n", 1263271937)
    assert _shows(b"0x4b4c0001", 0x4B4C0001)
    assert _shows(b"-1\n", 0xFFFFFFFF)
    assert not _shows(b"12632719370", 1263271937)
    assert not _shows(b"nothing", 5)
