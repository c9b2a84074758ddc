"""Trace parsing: header checks, columns, ret interpretation, CSV."""
import struct

import pytest

from harness.core.errors import TraceError
from harness.observe import trace as tr


def recs(n, ret=3, vcpu=1):
    return [(i, 1000 + 10 * i, vcpu, ret, 5 + i) for i in range(n)]


def write(tmp_path, data, name="t.bin"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_roundtrip_fields_and_records(tmp_path):
    p = write(tmp_path, tr.make_trace_bytes(recs(5, ret=2), pinned_vcpu=1, start_ns=100, end_ns=600))
    t = tr.read_trace(p)
    assert (t.mode, t.syscall_nr, t.pinned_vcpu, t.requested_count, t.calls, len(t)) == ("hostcpuid", 451, 1, 5, 5, 5)
    assert t[4] == tr.Record(seq=4, t_ns=1040, vcpu=1, ret=2, lat_ns=9)
    assert list(t.lat_ns) == [5, 6, 7, 8, 9]
    assert t.elapsed_ns == 500 and t.calls_per_s == pytest.approx(1e7)
    assert t.outcome_counts() == {"pCPU 2": 5}


def test_negative_and_large_values_keep_sign(tmp_path):
    rows = [(0, 1, 0, -1, 1), (1, 2, 0, 0xFFFFFFFF, 1), (2, 3, 0, -38, 1), (3, 4, 0, -22, 1), (4, 5, -1, 7, 2**40)]
    t = tr.read_trace(write(tmp_path, tr.make_trace_bytes(rows)))
    assert list(t.ret) == [-1, 0xFFFFFFFF, -38, -22, 7]
    assert t.vcpu[4] == -1 and t.lat_ns[4] == 2**40
    assert [tr.describe_ret(r) for r in t.ret] == [
        "not supported", "not supported", "no such syscall", "error -22", "pCPU 7"]


@pytest.mark.parametrize("ret,kind,value", [
    (0, "pcpu", 0), (4095, "pcpu", 4095), (4096, "error", 4096), (-1, "not_supported", None),
    (0xFFFFFFFF, "not_supported", None), (-38, "enosys", None), (-2, "error", -2)])
def test_classify_ret(ret, kind, value):
    assert tr.classify_ret(ret) == (kind, value)
    assert tr.pcpu_of(ret) == (value if kind == "pcpu" else None)


def test_bad_magic_names_file(tmp_path):
    p = write(tmp_path, tr.make_trace_bytes(recs(2), magic=b"NOTTRACE"), "evil.bin")
    with pytest.raises(TraceError, match=r"evil\.bin.*magic"):
        tr.read_trace(p)


def test_bad_version(tmp_path):
    with pytest.raises(TraceError, match="version 9"):
        tr.read_trace(write(tmp_path, tr.make_trace_bytes(recs(2), version=9)))


def test_truncated_record(tmp_path):
    data = tr.make_trace_bytes(recs(3))
    with pytest.raises(TraceError, match="truncated"):
        tr.read_trace(write(tmp_path, data[:-5]))


def test_missing_whole_records(tmp_path):
    data = tr.make_trace_bytes(recs(3))
    with pytest.raises(TraceError, match="header says 3 records, file holds 2"):
        tr.read_trace(write(tmp_path, data[:-32]))


def test_short_header(tmp_path):
    with pytest.raises(TraceError, match="shorter than"):
        tr.read_trace(write(tmp_path, b"HCPUTRC\0" + b"\0" * 10))


def test_count_mismatch_requested(tmp_path):
    # 3 calls recorded, 5 requested, not stopped by time: the run lost samples
    with pytest.raises(TraceError, match="count mismatch"):
        tr.read_trace(write(tmp_path, tr.make_trace_bytes(recs(3), requested_count=5)))


def test_stopped_by_time_allows_fewer(tmp_path):
    flags = tr.FLAG_COUNT_LIMIT | tr.FLAG_DURATION_LIMIT | tr.FLAG_STOPPED_BY_TIME
    t = tr.read_trace(write(tmp_path, tr.make_trace_bytes(recs(3), requested_count=5, requested_duration_ns=10,
                                                           flags=flags)))
    assert t.stopped_by_time and len(t) == 3


def test_calls_vs_records_mismatch(tmp_path):
    with pytest.raises(TraceError, match="3 calls but 2 records"):
        # header: 3 calls, but only 2 records declared and present
        data = bytearray(tr.make_trace_bytes(recs(2), requested_count=0, flags=tr.FLAG_DURATION_LIMIT))
        struct.pack_into("<Q", data, 48, 3)
        tr.read_trace(write(tmp_path, bytes(data)))


def test_bad_sequence(tmp_path):
    rows = recs(3)
    rows[0] = (7,) + rows[0][1:]
    with pytest.raises(TraceError, match="sequence"):
        tr.read_trace(write(tmp_path, tr.make_trace_bytes(rows)))


def test_bare_header_only(tmp_path):
    t = tr.read_trace(write(tmp_path, tr.make_trace_bytes([], requested_count=100, calls=100,
                                                           flags=tr.FLAG_BARE | tr.FLAG_COUNT_LIMIT)))
    assert t.bare and t.calls == 100 and len(t) == 0


def test_missing_file_is_trace_error(tmp_path):
    with pytest.raises(TraceError, match="nope.bin"):
        tr.read_trace(tmp_path / "nope.bin")


def test_to_csv(tmp_path):
    t = tr.read_trace(write(tmp_path, tr.make_trace_bytes([(0, 10, 1, -1, 3), (1, 20, 0, 2, 4)])))
    lines = t.to_csv(tmp_path / "t.csv").read_text().splitlines()
    assert lines == ["seq,t_ns,vcpu,ret,lat_ns", "0,10,1,-1,3", "1,20,0,2,4"]


def test_large_trace_is_fast(tmp_path):
    import time
    n = 500_000
    rec = tr.RECORD.pack(0, 1, 2, 3, 4)
    data = bytearray(tr.make_trace_bytes([], requested_count=n, calls=n, flags=tr.FLAG_COUNT_LIMIT))
    struct.pack_into("<Q", data, 56, n)
    body = bytearray(rec * n)
    for i in (0, n - 1):
        struct.pack_into("<I", body, 32 * i, i)
    p = write(tmp_path, bytes(data + body))
    t0 = time.monotonic()
    t = tr.read_trace(p)
    assert len(t) == n and t.ret[n - 1] == 3 and t.vcpu[17] == 1
    assert time.monotonic() - t0 < 2.0
