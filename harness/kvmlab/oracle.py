"""The exit record: what KVM_RUN actually returned, as the LD_PRELOAD shim saw it.

``labs/kvm_api/oracle/kvmlab_oracle.c`` appends JSON lines; this module turns them
into a :class:`Trace` and answers the questions the checks ask (which exit carried
this value, what the program printed while handling exit *n*).  Nothing here trusts
the hypervisor's own output about exits.

The shim also records the hypervisor's own file calls (open/read/write/lseek/close
and their stdio and openat2 forms) with the exit during which each happened:
:class:`FsOp`.  They are what the file checks judge, whatever the guest's API.

If the records cannot be had (a static binary, a program that issues the ioctl as
a raw syscall, a shim that did not load) the trace is *unavailable* and every
check that needs it is skipped with that reason - never guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

EXIT_REASONS = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 11: "SET_TPR",
    12: "TPR_ACCESS", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT",
}
REASON_IO, REASON_HLT, REASON_SHUTDOWN = 2, 5, 8


class RecordError(ValueError):
    """A line of the record file is not a record (names the line)."""


@dataclass
class Exit:
    n: int                   # 1-based KVM_RUN number within the process
    reason: int
    ret: int = 0
    errno: int = 0
    direction: Optional[str] = None
    size: int = 0
    port: Optional[int] = None
    count: int = 0
    data: bytes = b""
    in_reply: Optional[bytes] = None   # what the hypervisor gave an IN, seen at the next entry
    stdout_before: Optional[int] = None
    stdout_after: Optional[int] = None
    stderr_before: Optional[int] = None
    stderr_after: Optional[int] = None
    raw: dict = field(default_factory=dict)

    @property
    def reason_name(self) -> str:
        return EXIT_REASONS.get(self.reason, str(self.reason))

    @property
    def value(self) -> Optional[int]:
        """The OUT data as a little-endian integer (None for IN or no data)."""
        if self.direction != "out" or not self.data:
            return None
        return int.from_bytes(self.data[:8], "little")

    @property
    def reply_value(self) -> Optional[int]:
        if self.in_reply is None:
            return None
        return int.from_bytes(self.in_reply[: max(1, self.size)], "little")

    def brief(self) -> str:
        s = f"#{self.n} {self.reason_name}"
        if self.ret != 0:
            s += f" (KVM_RUN failed, errno {self.errno})"
        if self.reason == REASON_IO:
            s += f" {self.direction} port 0x{self.port:x} size {self.size}"
            if self.direction == "out":
                s += f" data {self.data.hex() or '-'}"
                if self.value is not None and self.size in (2, 4):
                    s += f" (={self.value})"
            elif self.in_reply is not None:
                s += f" reply {self.in_reply.hex()} (={self.reply_value})"
            if self.count != 1:
                s += f" count {self.count}"
        return s


@dataclass
class FsOp:
    """One file call the hypervisor made, during exit ``n`` (0: before the guest ran)."""
    n: int
    op: str                  # open, read, write, lseek, close
    call: str                # the libc function: fopen, creat, fwrite, pread, fseek, ...
    ret: int
    errno: int = 0
    path: Optional[str] = None
    flags: Optional[int] = None
    mode: str = ""
    fd: Optional[int] = None
    count: int = 0
    data: bytes = b""        # the first 32 bytes moved
    gpa: Optional[int] = None  # guest address of the buffer (or, for a write, of the bytes)
    found: bool = False      # a write whose bytes were found in guest memory (bounce buffer)
    off: int = 0
    whence: int = 0
    id: int = 0
    delivered: Optional[int] = None  # read into a host buffer: the GPA the bytes reached, -1 none
    id_open: int = -1        # which open made this descriptor (set by fileops)

    @property
    def in_guest(self) -> bool:
        """The bytes moved were in guest memory (read: reached the guest)."""
        if self.gpa is not None and self.gpa >= 0:
            return True
        return self.delivered is not None and self.delivered >= 0

    def brief(self) -> str:
        if self.op == "open":
            how = f"{self.mode!r}" if self.mode else f"flags 0{self.flags or 0:o}"
            return f"exit #{self.n}: {self.call}({self.path!r}, {how}) = {self.ret}"
        if self.op in ("read", "write"):
            where = (f"guest 0x{self.gpa:x}" if self.gpa is not None and self.gpa >= 0 and not self.found
                     else "host buffer")
            s = f"exit #{self.n}: {self.call}(fd {self.fd}, {where}, {self.count}) = {self.ret}"
            if self.found:
                s += f" (bytes from guest 0x{self.gpa:x})"
            if self.delivered is not None:
                s += (f" (bytes reached guest 0x{self.delivered:x})" if self.delivered >= 0
                      else " (bytes never reached the guest)")
            return s
        if self.op == "lseek":
            return f"exit #{self.n}: {self.call}(fd {self.fd}, {self.off}, {self.whence}) = {self.ret}"
        return f"exit #{self.n}: {self.call}(fd {self.fd}) = {self.ret}"


@dataclass
class Trace:
    exits: List[Exit]
    started: bool               # the shim loaded in the process
    vcpus: int
    ended: bool                 # the process reached exit()
    end_stdout: Optional[int]
    unavailable: Optional[str] = None
    fs: List[FsOp] = field(default_factory=list)
    guest_memory: int = 0       # bytes registered with KVM_SET_USER_MEMORY_REGION

    def output_of(self, ex: Exit, stdout: bytes) -> bytes:
        """What the program wrote to stdout while handling exit ``ex``."""
        if ex.stdout_before is None or ex.stdout_before < 0:
            return b""
        end = ex.stdout_after if ex.stdout_after is not None and ex.stdout_after >= 0 else len(stdout)
        return stdout[ex.stdout_before:end]

    def find_out_value(self, value: int, start: int = 0) -> Optional[int]:
        """Index (into ``exits``) of the first OUT exit at/after ``start`` carrying ``value``."""
        for i in range(start, len(self.exits)):
            e = self.exits[i]
            if e.reason == REASON_IO and e.direction == "out" and e.size >= 4 and e.value is not None \
                    and (e.value & 0xFFFFFFFF) == value:
                return i
        return None

    @property
    def last(self) -> Optional[Exit]:
        return self.exits[-1] if self.exits else None


def parse_lines(lines: List[str]) -> Trace:
    """Build a trace from record lines; raises RecordError on a malformed line."""
    exits: Dict[int, Exit] = {}
    enters: Dict[int, dict] = {}
    started = ended = False
    vcpus = 0
    end_stdout = None
    main_pid = None
    fs: List[FsOp] = []
    delivered: Dict[int, int] = {}
    memory = 0
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            # a process killed mid-write leaves a truncated last line: tolerate only that
            if lineno == len(lines):
                break
            raise RecordError(f"record line {lineno}: not JSON ({e.msg}): {line[:80]!r}") from e
        if not isinstance(rec, dict) or "rec" not in rec:
            raise RecordError(f"record line {lineno}: no 'rec' field")
        kind = rec["rec"]
        if kind == "start":
            if main_pid is None:
                main_pid = rec.get("pid")
                started = True
            continue
        if main_pid is not None and rec.get("pid") != main_pid:
            continue  # a forked child: not the hypervisor's vcpu loop
        try:
            if kind == "vcpu":
                vcpus += 1
            elif kind == "enter":
                enters[int(rec["n"])] = rec
            elif kind == "exit":
                n = int(rec["n"])
                exits[n] = Exit(
                    n=n, reason=int(rec["reason"]), ret=int(rec.get("ret", 0)),
                    errno=int(rec.get("errno", 0)), direction=rec.get("dir"),
                    size=int(rec.get("size", 0)),
                    port=int(rec["port"]) if "port" in rec else None,
                    count=int(rec.get("count", 0)),
                    data=bytes.fromhex(rec.get("data") or ""), raw=rec)
            elif kind == "fs":
                data = rec.get("data")
                fs.append(FsOp(
                    n=int(rec["n"]), op=str(rec["op"]), call=str(rec.get("call", rec["op"])),
                    ret=int(rec["ret"]), errno=int(rec.get("errno", 0)), path=rec.get("path"),
                    flags=int(rec["flags"]) if "flags" in rec else None, mode=str(rec.get("mode", "")),
                    fd=int(rec["fd"]) if "fd" in rec else None, count=int(rec.get("count", 0)),
                    data=bytes.fromhex(data) if data else b"",
                    gpa=int(rec["gpa"]) if "gpa" in rec else None, found=bool(rec.get("found")),
                    off=int(rec.get("off", 0)), whence=int(rec.get("whence", 0)), id=int(rec.get("id", 0))))
            elif kind == "deliv":
                delivered[int(rec["id"])] = int(rec["gpa"])
            elif kind == "mem":
                memory += int(rec["size"])
            elif kind == "end":
                ended = True
                end_stdout = int(rec.get("stdout", -1))
            else:
                raise RecordError(f"record line {lineno}: unknown record kind {kind!r}")
        except (KeyError, ValueError, TypeError) as e:
            if isinstance(e, RecordError):
                raise
            raise RecordError(f"record line {lineno}: bad field: {e}") from e
    ordered = [exits[n] for n in sorted(exits)]
    for ex in ordered:
        ent = enters.get(ex.n)
        if ent:
            ex.stdout_before = ent.get("stdout")
            ex.stderr_before = ent.get("stderr")
        nxt = enters.get(ex.n + 1)
        if nxt:
            ex.stdout_after = nxt.get("stdout")
            ex.stderr_after = nxt.get("stderr")
            if nxt.get("in_reply"):
                ex.in_reply = bytes.fromhex(nxt["in_reply"])
        elif ended:
            ex.stdout_after = end_stdout
    for op in fs:
        if op.id in delivered:
            op.delivered = delivered[op.id]
    return Trace(exits=ordered, started=started, vcpus=vcpus, ended=ended, end_stdout=end_stdout,
                 fs=fs, guest_memory=memory)


def load(path: Path, *, ran_guest: bool = True) -> Trace:
    """Read the record file written for one run, and decide whether it can be trusted."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return Trace([], False, 0, False, None,
                     unavailable="no record file: the oracle shim did not load (static binary, or "
                                 "LD_PRELOAD refused)")
    trace = parse_lines(text.splitlines())
    if not trace.started:
        trace.unavailable = "the oracle shim did not load in the hypervisor process"
    elif trace.vcpus == 0 and ran_guest:
        trace.unavailable = ("no KVM_CREATE_VCPU went through libc ioctl(): the program issues KVM "
                             "ioctls another way (raw syscall?), so its exits cannot be observed")
    elif not trace.exits and ran_guest:
        trace.unavailable = "no KVM_RUN went through libc ioctl(): exits cannot be observed"
    return trace
