"""Reading the workload's binary trace (format: guest_tests/README.md).

Columns are kept as ``array`` objects sliced out of the file in C, so a 10-million
record trace loads in well under a second; ``Trace.records()`` yields ``Record``s
lazily when per-record objects are wanted.
"""
from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional, Tuple, Union

from ..core.errors import TraceError

MAGIC = b"HCPUTRC\0"
VERSION = 1
HEADER = struct.Struct("<8sHHHHIiiIQQQQQQ16x")
RECORD = struct.Struct("<IiQqQ")
assert HEADER.size == 96 and RECORD.size == 32

MODES = {0: "hostcpuid", 1: "getppid"}
FLAG_BARE = 1
FLAG_COUNT_LIMIT = 2
FLAG_DURATION_LIMIT = 4
FLAG_STOPPED_BY_TIME = 8
FLAG_VCPU_RSEQ = 16
FLAG_INTERLEAVED = 32  # bare blocks ran between the recorded ones (--interleave-bare)

MAX_PCPU = 4096
ENOSYS = 38
RET_PCPU = "pcpu"
RET_NOT_SUPPORTED = "not_supported"
RET_ENOSYS = "enosys"
RET_ERROR = "error"


class Record(NamedTuple):
    seq: int
    t_ns: int
    vcpu: int
    ret: int
    lat_ns: int


def classify_ret(ret: int) -> Tuple[str, Optional[int]]:
    """(kind, value): ('pcpu', id) for 0 <= ret < 4096; ('not_supported', None) for SMCCC
    NOT_SUPPORTED (-1 as 64 bits, or 0xFFFFFFFF: the 32-bit -1 zero-extended);
    ('enosys', None) for -ENOSYS; ('error', ret) for anything else."""
    if 0 <= ret < MAX_PCPU:
        return RET_PCPU, ret
    if ret == -1 or ret == 0xFFFFFFFF:
        return RET_NOT_SUPPORTED, None
    if ret == -ENOSYS:
        return RET_ENOSYS, None
    return RET_ERROR, ret


def describe_ret(ret: int) -> str:
    kind, value = classify_ret(ret)
    if kind == RET_PCPU:
        return f"pCPU {value}"
    if kind == RET_NOT_SUPPORTED:
        return "not supported"
    if kind == RET_ENOSYS:
        return "no such syscall"
    return f"error {value}"


def pcpu_of(ret: int) -> Optional[int]:
    kind, value = classify_ret(ret)
    return value if kind == RET_PCPU else None


@dataclass
class Trace:
    path: Path
    version: int
    flags: int
    mode: str
    syscall_nr: int
    pinned_vcpu: Optional[int]
    requested_count: Optional[int]
    requested_duration_ns: Optional[int]
    calls: int
    start_ns: int
    end_ns: int
    seq: array
    t_ns: array
    vcpu: array
    ret: array
    lat_ns: array

    @property
    def bare(self) -> bool:
        return bool(self.flags & FLAG_BARE)

    @property
    def stopped_by_time(self) -> bool:
        return bool(self.flags & FLAG_STOPPED_BY_TIME)

    @property
    def vcpu_source(self) -> str:
        """'rseq' (the kernel's rseq cpu_id), 'getcpu' (the syscall), or 'none' (bare)."""
        if self.bare:
            return "none"
        return "rseq" if self.flags & FLAG_VCPU_RSEQ else "getcpu"

    @property
    def elapsed_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def calls_per_s(self) -> float:
        return self.calls * 1e9 / self.elapsed_ns if self.elapsed_ns > 0 else 0.0

    def __len__(self) -> int:
        return len(self.seq)

    def __getitem__(self, i: int) -> Record:
        return Record(self.seq[i], self.t_ns[i], self.vcpu[i], self.ret[i], self.lat_ns[i])

    def records(self) -> Iterator[Record]:
        return map(Record, self.seq, self.t_ns, self.vcpu, self.ret, self.lat_ns)

    def ret_counts(self) -> Dict[int, int]:
        """How often each raw return value occurred."""
        counts: Dict[int, int] = {}
        for r in self.ret:
            counts[r] = counts.get(r, 0) + 1
        return counts

    def outcome_counts(self) -> Dict[str, int]:
        """Counts by describe_ret(), e.g. {'pCPU 1': 990, 'not supported': 10}."""
        out: Dict[str, int] = {}
        for r, n in self.ret_counts().items():
            d = describe_ret(r)
            out[d] = out.get(d, 0) + n
        return out

    def header_dict(self) -> dict:
        return {
            "path": str(self.path), "version": self.version, "flags": self.flags, "mode": self.mode,
            "syscall_nr": self.syscall_nr, "pinned_vcpu": self.pinned_vcpu,
            "requested_count": self.requested_count, "requested_duration_ns": self.requested_duration_ns,
            "calls": self.calls, "records": len(self), "start_ns": self.start_ns, "end_ns": self.end_ns,
            "bare": self.bare, "stopped_by_time": self.stopped_by_time, "vcpu_source": self.vcpu_source,
        }

    def to_csv(self, path: Union[str, Path]) -> Path:
        """seq,t_ns,vcpu,ret,lat_ns — one line per record, ret as a signed integer."""
        path = Path(path)
        with open(path, "w", newline="") as f:
            f.write("seq,t_ns,vcpu,ret,lat_ns\n")
            chunk = 65536
            for start in range(0, len(self), chunk):
                stop = min(start + chunk, len(self))
                f.write("".join(
                    f"{a},{b},{c},{d},{e}\n" for a, b, c, d, e in zip(
                        self.seq[start:stop], self.t_ns[start:stop], self.vcpu[start:stop],
                        self.ret[start:stop], self.lat_ns[start:stop])))
        return path


def _column(words: array, index: int, stride: int) -> array:
    return words[index::stride]


def parse_trace(data: bytes, path: Union[str, Path] = "<memory>") -> Trace:
    """Parse a trace already in memory (``read_trace`` reads the file)."""
    path = Path(path)

    def bad(msg: str) -> TraceError:
        return TraceError(f"{path}: {msg}", stage="trace")

    if len(data) < HEADER.size:
        raise bad(f"truncated: {len(data)} bytes, shorter than the {HEADER.size}-byte header")
    (magic, version, header_size, record_size, flags, mode, nr, pinned, _r0, req_count, req_dur, calls,
     n_records, start_ns, end_ns) = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise bad(f"bad magic {magic!r} (not a hostcpuid-trace file)")
    if version != VERSION:
        raise bad(f"unsupported format version {version} (this harness reads {VERSION})")
    if header_size != HEADER.size or record_size != RECORD.size:
        raise bad(f"unexpected header/record size {header_size}/{record_size}")
    if mode not in MODES:
        raise bad(f"unknown mode {mode}")
    body = len(data) - header_size
    if body % record_size:
        raise bad(f"truncated: {body} bytes of records is not a multiple of {record_size}")
    in_file = body // record_size
    if in_file != n_records:
        raise bad(f"truncated or padded: header says {n_records} records, file holds {in_file}")
    if flags & FLAG_BARE:
        if n_records:
            raise bad(f"a bare run must hold no records, holds {n_records}")
    elif n_records != calls:
        raise bad(f"count mismatch: {calls} calls but {n_records} records")
    if req_count and calls > req_count:
        raise bad(f"count mismatch: {calls} calls exceed the requested {req_count}")
    if req_count and not flags & FLAG_STOPPED_BY_TIME and calls != req_count:
        raise bad(f"count mismatch: {calls} calls, {req_count} requested and the time limit did not stop it")

    payload = memoryview(data)[header_size:]
    q = array("q")
    q.frombytes(payload)
    w = array("i")
    w.frombytes(payload)
    if sys.byteorder != "little":  # pragma: no cover
        q.byteswap()
        w.byteswap()
    seq_raw = _column(w, 0, 8)
    seq = array("I")
    seq.frombytes(seq_raw.tobytes())
    t_ns = _column(q, 1, 4)
    ret = _column(q, 2, 4)
    lat = _column(q, 3, 4)
    vcpu = _column(w, 1, 8)
    if n_records and (seq[0] != 0 or seq[-1] != n_records - 1):
        raise bad(f"sequence numbers run {seq[0]}..{seq[-1]}, expected 0..{n_records - 1}")
    return Trace(
        path=path, version=version, flags=flags, mode=MODES[mode], syscall_nr=nr,
        pinned_vcpu=None if pinned < 0 else pinned,
        requested_count=req_count or None, requested_duration_ns=req_dur or None,
        calls=calls, start_ns=start_ns, end_ns=end_ns,
        seq=seq, t_ns=t_ns, vcpu=vcpu, ret=ret, lat_ns=lat,
    )


def read_trace(path: Union[str, Path]) -> Trace:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TraceError(f"{path}: cannot read trace: {e.strerror or e}", stage="trace") from e
    return parse_trace(data, path)


def make_trace_bytes(records, *, mode: str = "hostcpuid", syscall_nr: int = 451, pinned_vcpu: int = -1,
                     requested_count: Optional[int] = None, requested_duration_ns: int = 0, flags: Optional[int] = None,
                     calls: Optional[int] = None, start_ns: int = 0, end_ns: int = 0, version: int = VERSION,
                     magic: bytes = MAGIC) -> bytes:
    """Build a trace file in memory (for tests and tools).  ``records``: iterable of
    (seq, t_ns, vcpu, ret, lat_ns)."""
    recs = [tuple(r) for r in records]
    n = len(recs)
    if requested_count is None:
        requested_count = n
    if flags is None:
        flags = (FLAG_COUNT_LIMIT if requested_count else 0) | (FLAG_DURATION_LIMIT if requested_duration_ns else 0)
    code = {v: k for k, v in MODES.items()}[mode]
    head = HEADER.pack(magic, version, HEADER.size, RECORD.size, flags, code, syscall_nr, pinned_vcpu, 0,
                       requested_count, requested_duration_ns, n if calls is None else calls,
                       0 if flags & FLAG_BARE else n, start_ns, end_ns)
    body = b"".join(RECORD.pack(s, v, t, r, l) for s, t, v, r, l in recs)
    return head + body
