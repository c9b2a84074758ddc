"""Judging file hypercalls by their effect at the hypervisor's system-call boundary.

The oracle records every open/read/write/lseek/close the hypervisor makes (and the
stdio and openat2 forms) with the exit during which it happened (:class:`FsOp`).
Whatever the guest-side API - flags as booleans, fopen-style modes, creat, an init
call, argument structs, one port or many - these are the facts a TA looks for:

  several files   two files the guest asked for were open at the same time
  read            a read during an exit returned data, and the bytes reached guest
                  memory (read straight into it, or found there when the guest ran next)
  write           a write during an exit took its bytes from guest memory, and the file
                  on disk holds them
  multi-argument  a read/write during one exit used a descriptor from the guest's
                  table, a buffer in guest memory and a count, as the guest asked
  seek            an lseek/fseek during an exit (optional in the assignment)

Only calls made while handling an exit (n >= 1) count: files the hypervisor opens
for itself before the guest runs are not hypercalls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .oracle import FsOp

PASS, PARTIAL, FAIL, NONE = "PASS", "PARTIAL", "FAIL", "NONE"   # NONE: no file activity seen


@dataclass
class Finding:
    status: str
    message: str
    evidence: List[str] = field(default_factory=list)


def _guest_ops(ops: List[FsOp]) -> List[FsOp]:
    return [o for o in ops if o.n >= 1]


def several_files(ops: List[FsOp]) -> Finding:
    open_now: Dict[int, FsOp] = {}
    for o in _guest_ops(ops):
        if o.op == "open" and o.ret >= 0:
            open_now[o.ret] = o
            if len(open_now) >= 2:
                a, b = list(open_now.values())[-2:]
                return Finding(PASS, f"{a.path!r} and {b.path!r} were open at once "
                                     f"(opened at exits #{a.n} and #{b.n})", [a.brief(), b.brief()])
        elif o.op == "close":
            open_now.pop(o.fd, None)
    opens = [o for o in _guest_ops(ops) if o.op == "open"]
    if not opens:
        return Finding(NONE, "the hypervisor opened no file during an exit")
    return Finding(FAIL, "never two files open at once", [o.brief() for o in opens[:4]])


def read(ops: List[FsOp]) -> Finding:
    reads = [o for o in _guest_ops(ops) if o.op == "read"]
    good = [o for o in reads if o.ret > 0 and o.in_guest]
    if good:
        return Finding(PASS, f"{good[0].call} at exit #{good[0].n} returned {good[0].ret} bytes and "
                             "they reached guest memory", [good[0].brief()])
    got = [o for o in reads if o.ret > 0]
    if got:
        return Finding(PARTIAL, f"{got[0].call} at exit #{got[0].n} returned {got[0].ret} bytes, but they "
                                "never reached guest memory", [got[0].brief()])
    if reads:
        return Finding(FAIL, "no read during an exit returned data", [o.brief() for o in reads[:3]])
    return Finding(NONE, "the hypervisor read no file during an exit")


def write(ops: List[FsOp], root: Path) -> Finding:
    paths = _paths(ops)
    writes = [o for o in _guest_ops(ops) if o.op == "write"]
    for o in writes:
        if o.ret > 0 and o.in_guest:
            disk = _on_disk(root, paths.get((o.fd, o.id_open)))
            if disk is not None and o.data[:o.ret] in disk:
                return Finding(PASS, f"{o.call} at exit #{o.n} wrote {o.ret} bytes from guest memory to "
                                     f"{paths.get((o.fd, o.id_open))!r}, and the file holds them", [o.brief()])
    done = [o for o in writes if o.ret > 0]
    if done:
        o = done[0]
        return Finding(PARTIAL, f"{o.call} at exit #{o.n} wrote {o.ret} bytes, but they are not both "
                                "from guest memory and on disk", [o.brief()])
    if writes:
        return Finding(FAIL, "no write during an exit wrote anything", [o.brief() for o in writes[:3]])
    return Finding(NONE, "the hypervisor wrote no file during an exit")


def multi_arg(ops: List[FsOp]) -> Finding:
    guest_fds = {o.ret for o in _guest_ops(ops) if o.op == "open" and o.ret >= 0}
    rw = [o for o in _guest_ops(ops) if o.op in ("read", "write")]
    for o in rw:
        if o.ret > 0 and o.in_guest and o.fd in guest_fds and o.count > 0:
            return Finding(PASS, f"exit #{o.n}: fd, a guest buffer and a count of {o.count} reached "
                                 f"{o.call}", [o.brief()])
    if rw:
        return Finding(FAIL, "no read/write combined a descriptor, a guest buffer and a count",
                       [o.brief() for o in rw[:3]])
    return Finding(NONE, "no read/write during an exit")


def seek(ops: List[FsOp]) -> Finding:
    s = [o for o in _guest_ops(ops) if o.op == "lseek"]
    ok = [o for o in s if o.ret >= 0]
    if ok:
        return Finding(PASS, f"{ok[0].call} at exit #{ok[0].n}", [ok[0].brief()])
    if s:
        return Finding(FAIL, "every seek failed", [o.brief() for o in s[:3]])
    return Finding(NONE, "not used (optional)")


def judge(ops: List[FsOp], root: Path) -> Dict[str, Finding]:
    return {"several_files": several_files(ops), "read": read(ops), "write": write(ops, root),
            "multi_arg": multi_arg(ops), "seek": seek(ops)}


def _paths(ops: List[FsOp]) -> Dict[tuple, str]:
    """(fd, index of the open that made it) -> path; stamps each op with ``id_open``."""
    current: Dict[int, int] = {}
    paths: Dict[tuple, str] = {}
    for i, o in enumerate(ops):
        if o.op == "open" and o.ret >= 0:
            current[o.ret] = i
            paths[(o.ret, i)] = o.path or ""
        o.id_open = current.get(o.fd if o.op != "open" else o.ret, -1)
    return paths


def _on_disk(root: Path, path: Optional[str]) -> Optional[bytes]:
    if not path or path.startswith("/"):
        return None
    p = (root / path)
    try:
        if root.resolve() not in p.resolve().parents:
            return None
        return p.read_bytes()[:1 << 20]
    except OSError:
        return None
