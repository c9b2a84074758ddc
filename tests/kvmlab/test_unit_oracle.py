"""Parsing the shim's exit record (no KVM needed)."""
from __future__ import annotations

import json

import pytest

from harness.kvmlab import oracle


def recs(*objs) -> list:
    return [json.dumps(o) for o in objs]


START = {"rec": "start", "pid": 7, "exe": "/x"}
VCPU = {"rec": "vcpu", "pid": 7, "fd": 5, "mapped": 1, "size": 12288}


def enter(n, out, reply=None):
    return {"rec": "enter", "pid": 7, "n": n, "fd": 5, "stdout": out, "stderr": 0, "in_reply": reply}


def io_exit(n, port, direction="out", size=4, data=""):
    return {"rec": "exit", "pid": 7, "n": n, "fd": 5, "ret": 0, "errno": 0, "reason": 2,
            "dir": direction, "size": size, "port": port, "count": 1, "data": data}


def test_exits_outputs_and_in_reply():
    lines = recs(START, VCPU,
                 enter(1, 0), io_exit(1, 0x10, data="2a000000"),
                 enter(2, 3), io_exit(2, 0x11, direction="in"),
                 enter(3, 3, reply="05000000"), {"rec": "exit", "pid": 7, "n": 3, "fd": 5, "ret": 0,
                                                 "errno": 0, "reason": 5},
                 {"rec": "end", "pid": 7, "stdout": 9, "stderr": 0})
    t = oracle.parse_lines(lines)
    assert [e.n for e in t.exits] == [1, 2, 3]
    assert t.exits[0].value == 42 and t.exits[0].port == 0x10
    assert t.exits[1].reply_value == 5
    assert t.exits[2].reason_name == "HLT"
    stdout = b"42\nhalted"
    assert t.output_of(t.exits[0], stdout) == b"42\n"
    assert t.output_of(t.exits[2], stdout) == b"halted"
    assert t.find_out_value(42) == 0 and t.find_out_value(43) is None
    assert t.ended and t.started and t.vcpus == 1


def test_truncated_last_line_tolerated_but_not_in_the_middle():
    good = recs(START, VCPU, enter(1, 0), io_exit(1, 0x10, data="01000000"))
    t = oracle.parse_lines(good + ['{"rec":"enter","pid":7,"n'])
    assert len(t.exits) == 1 and not t.ended
    with pytest.raises(oracle.RecordError, match="line 3"):
        oracle.parse_lines(good[:2] + ["{garbage"] + good[2:])
    with pytest.raises(oracle.RecordError, match="unknown record kind"):
        oracle.parse_lines(recs(START, {"rec": "bogus", "pid": 7}))


def test_records_of_forked_children_are_ignored():
    lines = recs(START, VCPU, {"rec": "start", "pid": 8, "exe": "/x"},
                 {**io_exit(1, 0x99), "pid": 8}, enter(1, 0), io_exit(1, 0x10, data="01000000"))
    t = oracle.parse_lines(lines)
    assert [e.port for e in t.exits] == [0x10]


def test_unavailable_reasons(tmp_path):
    assert "no record file" in oracle.load(tmp_path / "missing").unavailable
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(recs(START)) + "\n")
    assert "KVM_CREATE_VCPU" in oracle.load(p).unavailable
    p.write_text("\n".join(recs(START, VCPU)) + "\n")
    assert "KVM_RUN" in oracle.load(p).unavailable
    p.write_text("\n".join(recs(START, VCPU, enter(1, 0), io_exit(1, 1, data="00"))) + "\n")
    assert oracle.load(p).unavailable is None


def test_brief_names_port_and_value():
    t = oracle.parse_lines(recs(START, VCPU, enter(1, 0), io_exit(1, 0xEA, data="e8030000")))
    assert t.exits[0].brief() == "#1 IO out port 0xea size 4 data e8030000 (=1000)"


def test_file_calls_and_deliveries():
    lines = recs(START, VCPU, {"rec": "mem", "pid": 7, "slot": 0, "gpa": 0, "size": 2097152},
                 enter(1, 0), io_exit(1, 0x30, data="00100000"),
                 {"rec": "fs", "pid": 7, "n": 1, "op": "open", "call": "fopen", "path": "a.txt", "flags": -1,
                  "mode": "r", "ret": 5, "errno": 0},
                 {"rec": "fs", "pid": 7, "n": 1, "op": "read", "call": "fread", "fd": 5, "count": 4, "ret": 4,
                  "errno": 0, "gpa": -1, "found": 0, "id": 1, "data": "61626364"},
                 {"rec": "deliv", "pid": 7, "n": 2, "id": 1, "gpa": 4096},
                 {"rec": "fs", "pid": 9, "n": 1, "op": "close", "fd": 5, "ret": 0})  # another process
    t = oracle.parse_lines(lines)
    assert t.guest_memory == 2097152
    assert [o.op for o in t.fs] == ["open", "read"]
    rd = t.fs[1]
    assert rd.data == b"abcd" and rd.delivered == 4096 and rd.in_guest
    assert "fread(fd 5, host buffer, 4) = 4 (bytes reached guest 0x1000)" in rd.brief()
    assert t.fs[0].brief() == "exit #1: fopen('a.txt', 'r') = 5"
