"""Part B judged from the student's own run: what its own guest's printVal,
getNumExits and display calls did, as the exit record shows it.

The assignment asks the student to "invoke them suitably, and demonstrate their
correctness": the own guest prints ``getNumExits()`` with ``printVal`` and displays
strings.  Whatever the ports, the argument passing (one OUT, several OUTs, a
``KVM_RUN`` called again inside the handler) or the API's names, the record shows:

  printVal      an OUT exit carried a value V, and V was printed (as a whole number)
                while that exit, or the one right after it, was handled
  getNumExits   a value a printVal exit printed is the oracle's count of exits at an
                earlier exit of the same call (an IN, or an OUT whose handler wrote the
                count into guest memory) - that count or one less
  display       one OUT exit carried the address of a NUL-terminated string of the
                guest image, and the whole string was printed while handling it

Each finding also says which cases the demo exercised (the largest value printed,
the highest string address, the longest string), so the harness test guest's own
cases (a value above 255, an address above 0xFF, a long string) are known to add
something.  NONE means the own run shows nothing either way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .oracle import REASON_IO, Trace

PASS, PARTIAL, FAIL, NONE = "PASS", "PARTIAL", "FAIL", "NONE"
MIN_STRING = 3          # a displayed string shorter than this proves nothing
NEAR = 3                # getNumExits: the count may come from up to this many exits back


@dataclass
class Finding:
    status: str
    message: str
    evidence: List[str] = field(default_factory=list)
    exits: List[int] = field(default_factory=list)     # indexes into the trace
    exercised: Dict[str, int] = field(default_factory=dict)


def shows(out: bytes, value: int) -> bool:
    """Does ``out`` show ``value`` as a whole number: decimal (signed or unsigned) or hex?"""
    text = out.decode("latin-1").lower()
    value &= 0xFFFFFFFF
    forms = {str(value), f"{value:x}", f"{value:08x}"}
    if value >= 1 << 31:
        forms.add(str(value - (1 << 32)))
    for f in forms:
        if re.search(r"(?<![0-9a-f])" + re.escape(f) + r"(?![0-9a-f])", text):
            return True
    return False


def _outs(trace: Trace) -> List[int]:
    return [i for i, e in enumerate(trace.exits)
            if e.reason == REASON_IO and e.direction == "out" and e.value is not None]


def printed_values(trace: Trace, stdout: bytes) -> List[tuple]:
    """(index, value) of the OUT exits whose value was printed while handling them
    (or the exit right after: a handler that waits for a second OUT)."""
    found = []
    for i in _outs(trace):
        e = trace.exits[i]
        v = e.value & 0xFFFFFFFF
        out = trace.output_of(e, stdout)
        nxt = trace.output_of(trace.exits[i + 1], stdout) if i + 1 < len(trace.exits) else b""
        if not out.strip() and not nxt.strip():
            continue
        if shows(out, v) or (not out.strip() and shows(nxt, v)):
            found.append((i, v))
    return found


def printval(trace: Trace, stdout: bytes) -> Finding:
    pv = printed_values(trace, stdout)
    if not pv:
        return Finding(NONE, "no exit of the own run printed the value it carried")
    i, v = pv[0]
    e = trace.exits[i]
    top = max(v for _, v in pv)
    ev = [f"exit #{trace.exits[j].n}: OUT port 0x{trace.exits[j].port:x} carried {w}, printed "
          f"{trace.output_of(trace.exits[j], stdout)[:60]!r}" for j, w in pv[:4]]
    return Finding(PASS, f"own guest: {len(pv)} printVal exit(s), e.g. exit #{e.n} carried {v} and it was "
                         "printed while handling it", ev, [j for j, _ in pv], {"max_value": top})


def getnumexits(trace: Trace, stdout: bytes) -> Finding:
    """A printed value equal to the oracle's exit count at an earlier exit of the call."""
    pv = printed_values(trace, stdout)
    pv_idx = {i for i, _ in pv}
    good, ev = [], []
    for k, v in pv:
        for j in range(k - 1, max(-1, k - 1 - NEAR), -1):
            src = trace.exits[j]
            if j in pv_idx or src.reason != REASON_IO:
                break
            count = sum(1 for e in trace.exits[:j + 1] if e.ret == 0)
            via = (f"IN at exit #{src.n} replied {src.reply_value}" if src.direction == "in"
                   else f"OUT at exit #{src.n} (the value came back through guest memory)")
            if v in (count, count - 1) and (src.direction == "in" or src.value != v):
                good.append((j, k))
                ev.append(f"{via}; printVal at exit #{trace.exits[k].n} printed {v}; "
                          f"the oracle's count at exit #{src.n}: {count}")
                break
    if not good:
        return Finding(NONE, "no printed value of the own run matched the oracle's exit count")
    n = len(good)
    return Finding(PASS, f"own guest: getNumExits() returned the oracle's exit count {n} time(s) "
                         f"(first at exit #{trace.exits[good[0][0]].n})", ev[:4],
                   [j for j, _ in good], {"calls": n})


def _cstring(image: bytes, addr: int) -> Optional[bytes]:
    if addr >= len(image):
        return None
    end = image.find(b"\0", addr, addr + 4096)
    return image[addr:end] if end > addr else None


def display(trace: Trace, stdout: bytes, image: Optional[bytes]) -> Finding:
    """One exit carried a string's address and printed the whole string."""
    if not image:
        return Finding(NONE, "no guest image to read the own guest's strings from")
    good = []
    for i in _outs(trace):
        e = trace.exits[i]
        s = _cstring(image, e.value & 0xFFFFFFFF)
        if s is None or len(s.strip()) < MIN_STRING or not all(32 <= c < 127 or c in b"\n\t" for c in s):
            continue
        prev = trace.exits[i - 1] if i > 0 else None
        if prev is not None and prev.reason == REASON_IO and prev.port == e.port \
                and not trace.output_of(prev, stdout).strip():
            continue  # an opcode or a first argument came before: more than one exit
        if s.rstrip(b"\n") in trace.output_of(e, stdout):
            good.append((i, e.value & 0xFFFFFFFF, s))
    if not good:
        return Finding(NONE, "no exit of the own run printed a whole string of the guest image whose "
                             "address it carried")
    i, a, s = good[0]
    ev = [f"exit #{trace.exits[j].n}: OUT port 0x{trace.exits[j].port:x} carried GVA 0x{b:x}, "
          f"printed {t[:60]!r} whole" for j, b, t in good[:4]]
    return Finding(PASS, f"own guest: exit #{trace.exits[i].n} carried the address of {s[:40]!r} and "
                         "printed it whole in that one exit", ev, [j for j, _, _ in good],
                   {"max_address": max(b for _, b, _ in good), "max_length": max(len(t) for _, _, t in good)})


def ports(trace: Trace, found: Dict[str, Finding]) -> Dict[str, tuple]:
    """role -> (port, size, direction) of the exits that showed each call working."""
    roles = {"printval": "printVal", "getnumexits": "getNumExits", "display_one_exit": "display"}
    out = {}
    for cid, role in roles.items():
        f = found.get(cid)
        if f is not None and f.status == PASS and f.exits:
            e = trace.exits[f.exits[0]]
            out[role] = (e.port, e.size, e.direction)
    return out


def judge(trace: Trace, stdout: bytes, image: Optional[bytes]) -> Dict[str, Finding]:
    return {"printval": printval(trace, stdout), "getnumexits": getnumexits(trace, stdout),
            "display_one_exit": display(trace, stdout, image)}
