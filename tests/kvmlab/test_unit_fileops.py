"""Judging file hypercalls from the hypervisor's recorded file calls (no KVM needed)."""
from __future__ import annotations

from harness.kvmlab import fileops
from harness.kvmlab.oracle import FsOp


def op(n, kind, **kw):
    return FsOp(n=n, op=kind, call=kw.pop("call", kind), ret=kw.pop("ret", 0), **kw)


def test_any_api_two_files_read_delivered_write_on_disk(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello there\n")
    ops = [op(0, "open", path="config", ret=3),          # before the guest ran: not a hypercall
           op(5, "open", call="fopen", path="a.txt", mode="w+", ret=7),
           op(6, "open", call="creat", path="b.txt", ret=8),
           op(7, "write", call="fwrite", fd=7, count=12, ret=12, data=b"hello there\n", gpa=0x1000),
           op(8, "lseek", call="fseek", fd=7, off=0, ret=0),
           op(9, "read", fd=7, count=5, ret=5, data=b"hello", gpa=-1, delivered=0x1ff000),
           op(10, "close", fd=8)]
    f = fileops.judge(ops, tmp_path)
    assert f["several_files"].status == "PASS" and "#5" in f["several_files"].message
    assert f["read"].status == "PASS" and "exit #9" in f["read"].message
    assert f["write"].status == "PASS" and "the file holds them" in f["write"].message
    assert f["multi_arg"].status == "PASS"
    assert f["seek"].status == "PASS"


def test_one_file_at_a_time_and_undelivered_read(tmp_path):
    ops = [op(2, "open", path="a", ret=4), op(3, "close", fd=4), op(4, "open", path="b", ret=4),
           op(5, "read", fd=4, count=9, ret=9, data=b"123456789", gpa=-1, delivered=-1),
           op(6, "write", fd=4, count=4, ret=4, data=b"abcd", gpa=-1)]
    f = fileops.judge(ops, tmp_path)
    assert f["several_files"].status == "FAIL"
    assert f["read"].status == "PARTIAL" and "never reached" in f["read"].message
    assert f["write"].status == "PARTIAL"
    assert f["multi_arg"].status == "FAIL"


def test_no_file_activity_is_no_evidence(tmp_path):
    f = fileops.judge([op(0, "open", path="log", ret=3)], tmp_path)
    assert {k: v.status for k, v in f.items()} == {k: "NONE" for k in f}
