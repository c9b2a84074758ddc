"""Part B judged from the own run's exit record (no KVM)."""
from __future__ import annotations

import json

from harness.kvmlab import ownrun
from harness.kvmlab.oracle import parse_lines


def trace_of(exits, stdout_marks):
    """exits: (reason, dir, port, data_hex, in_reply); stdout_marks[i]: stdout offset before run i+1."""
    lines = [json.dumps({"rec": "start", "pid": 1}), json.dumps({"rec": "vcpu", "pid": 1})]
    for i, (reason, d, port, data, reply) in enumerate(exits, 1):
        lines.append(json.dumps({"rec": "enter", "pid": 1, "n": i, "stdout": stdout_marks[i - 1],
                                 "in_reply": reply}))
        rec = {"rec": "exit", "pid": 1, "n": i, "reason": reason}
        if reason == 2:
            rec.update({"dir": d, "size": 4, "port": port, "count": 1, "data": data})
        lines.append(json.dumps(rec))
    lines.append(json.dumps({"rec": "end", "pid": 1, "stdout": stdout_marks[-1]}))
    return parse_lines(lines)


def le(v):
    return v.to_bytes(4, "little").hex()


def test_printval_getnumexits_display_from_the_demo():
    image = bytearray(0x300)
    image[0x280:0x28b] = b"hello demo\n"
    out = b"2\nhello demo\n"
    t = trace_of([(2, "in", 0x11, "", le(1)),            # getNumExits: IN replied 1
                  (2, "out", 0x10, le(2), None),          # printVal(n) prints "2"?  (count 1 or 2)
                  (2, "out", 0x12, le(0x280), None),      # display
                  (5, None, None, "", None)],
                 [0, 0, 2, len(out), len(out)])
    f = ownrun.judge(t, out, bytes(image))
    assert f["printval"].status == "PASS" and f["printval"].exercised["max_value"] == 2
    # printed 2 at the exit after the IN, whose count is 1: neither 1 nor 0 -> no match
    assert f["getnumexits"].status == "NONE"
    assert f["display_one_exit"].status == "PASS" and f["display_one_exit"].exercised["max_address"] == 0x280


def test_getnumexits_from_an_in_or_through_memory():
    out = b"1\n"
    t = trace_of([(2, "in", 0x11, "", le(1)), (2, "out", 0x10, le(1), None), (5, None, None, "", None)],
                 [0, 0, 2, 2])
    assert ownrun.getnumexits(t, out).status == "PASS"
    t = trace_of([(2, "out", 0x11, le(0x5000), None), (2, "out", 0x10, le(1), None), (5, None, None, "", None)],
                 [0, 0, 2, 2])
    g = ownrun.getnumexits(t, out)
    assert g.status == "PASS" and "guest memory" in g.evidence[0]


def test_a_string_printed_one_char_per_exit_is_not_display_in_one_exit():
    image = b"\0" * 0x40 + b"abc\0"
    out = b"abc"
    t = trace_of([(2, "out", 0xE9, le(ord(c)), None) for c in "abc"] + [(5, None, None, "", None)],
                 [0, 1, 2, 3, 3])
    assert ownrun.display(t, out, image).status == "NONE"
    assert ownrun.printval(t, out).status == "NONE"   # 'a' is not "97"


def test_display_after_an_opcode_on_the_same_port_is_not_one_exit():
    image = bytearray(0x100)
    image[0x80:0x8b] = b"hello demo\n"
    out = b"hello demo\n"
    t = trace_of([(2, "out", 0x30, le(3), None), (2, "out", 0x30, le(0x80), None), (5, None, None, "", None)],
                 [0, 0, len(out), len(out)])
    assert ownrun.display(t, out, bytes(image)).status == "NONE"
    t = trace_of([(2, "out", 0x31, le(0x80), None), (5, None, None, "", None)], [0, len(out), len(out)])
    assert ownrun.display(t, out, bytes(image)).status == "PASS"
