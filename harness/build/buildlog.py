"""Reading build logs: the FIRST error of a failed build, in one line a student and a TA
understand (source file, line where the tool gives one, the tool, its message), the
lines around it, and whether the machine ran out of something (disk, memory) rather
than the code being wrong.

Works on the output of kernel builds (kbuild, gcc, gas, ld, kconfig, make), of the
harness's own workload build and of the KVM-API lab's builds:

    failure = first_error(log_text)        # None when no error line is recognised
    failure.headline()                     # "kernel/sys.c: assembler: undefined symbol r0 ..."
    failure.context                        # the log lines around it
    exhaustion(log_text)                   # "no space left on device" or None

Parallel make interleaves the output of several jobs: an error line is recognised on its
own, wherever it sits, and the assembler's "{standard input}:77" is tied to its object
through make's "*** [...: kernel/sys.o] Error 1" line.  ``failed_objects`` lists those
objects so a caller can re-run just one of them with -j1 for a clean log.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional

COMPILER, ASSEMBLER, LINKER, KCONFIG, MAKE = "compiler", "assembler", "linker", "kconfig", "make"

READ_ONLY = "the file system is read-only"
# resource exhaustion: whatever tool says it, the machine ran out of something
_EXHAUSTION = [
    (re.compile(r"No space left on device|Disk quota exceeded|ENOSPC"), "no space left on device"),
    # kbuild's fixdep when its output file cannot be written (seen with a full disk)
    (re.compile(r"fixdep: not all data was written to the output"), "a write failed (the disk is full or failing)"),
    (re.compile(r"Killed signal terminated program|internal compiler error: Killed|"
                r"virtual memory exhausted|Cannot allocate memory|[Oo]ut of memory|"
                r"memory exhausted"), "out of memory (a tool was killed or could not allocate)"),
    (re.compile(r"Input/output error|EIO\b"), "input/output error (the disk failed)"),
    (re.compile(r"Read-only file system"), READ_ONLY),
    (re.compile(r"Too many open files"), "too many open files"),
]

_CC = re.compile(r"^(?P<file>[^\s:][^:]*?\.(?:c|h|S|s|lds|dts|dtsi|y|l|cc|cpp)):(?P<line>\d+):(?:(?P<col>\d+):)?"
                 r"\s+(?:fatal )?error:\s*(?P<msg>.*)$")
_AS = re.compile(r"^(?P<file>\{standard input\}|[^\s:]+\.s|[^\s:]+\.S):(?P<line>\d+):\s+Error:\s*(?P<msg>.*)$")
_LD_PREFIX = re.compile(r"^(?:\S*-)?ld(?:\.bfd|\.gold|\.lld)?:\s*")
_LD_UNDEF = re.compile(r"undefined reference to [`'‘]?(?P<sym>[^'’`\s]+)[`'’]?")
_LD_LOC = re.compile(r"^(?P<obj>[^\s:]+\.o)(?::\((?P<sect>[^)]*)\))?:")
_LD_FUNC = re.compile(r"^(?:\S*-)?ld(?:\.bfd)?:\s*(?P<obj>[^\s:]+\.o): in function [`'‘](?P<fn>[^'’`]+)")
_LD_SRCLOC = re.compile(r"^(?P<file>[^\s:]+\.c):\(?[^:]*\)?:?\s*undefined reference to")
_KCONFIG = re.compile(r"^(?P<file>(?:[^\s:]*/)?Kconfig[^\s:]*):(?P<line>\d+):\s*(?P<msg>.*(?:error|can't open|invalid|unknown).*)$")
_MAKE_STAR = re.compile(r"^make(?:\[\d+\])?: \*\*\* \[(?P<mk>[^\]:]+):\d+: (?P<target>[^\]]+)\] (?:Error \d+|Killed)")
_MAKE_NORULE = re.compile(r"^make(?:\[\d+\])?: \*\*\* (?P<msg>No rule to make target .*)$")
_MODPOST = re.compile(r"^ERROR: (?:modpost: )?(?P<msg>.*)$")
_GCC_FATAL = re.compile(r"^(?:\S*-)?(?:gcc|cc1|cc|as|collect2)(?:-\d+)?: (?:fatal )?error: (?P<msg>.*)$")

CONTEXT_BEFORE = 8
CONTEXT_AFTER = 12


@dataclass
class BuildFailure:
    tool: str                      # compiler, assembler, linker, kconfig, make
    message: str
    file: Optional[str] = None     # source file (kernel tree relative when the log is)
    line: Optional[int] = None     # line in that file, when the tool gives one
    index: int = 0                 # 0-based line number in the log
    context: str = ""              # log lines around the error
    resource: Optional[str] = None  # what the machine ran out of, when that is the cause
    others: List[str] = field(default_factory=list)  # further distinct error headlines

    def headline(self) -> str:
        where = self.file or ""
        if where and self.line:
            where += f":{self.line}"
        return f"{where}: {self.tool}: {self.message}" if where else f"{self.tool}: {self.message}"


def exhaustion(text: str) -> Optional[str]:
    """What the machine ran out of, when the log says so (first match), else None."""
    for rx, what in _EXHAUSTION:
        if rx.search(text):
            return what
    return None


def failed_objects(text: str) -> List[str]:
    """Object files make reports as failed ("*** [scripts/Makefile.build:250: kernel/sys.o] Error 1"),
    in order, without duplicates."""
    out: List[str] = []
    for line in text.splitlines():
        m = _MAKE_STAR.match(line.strip())
        if m and m.group("target").endswith(".o") and m.group("target") not in out:
            out.append(m.group("target"))
    return out


def _source_of(obj: str, exists: Optional[Callable[[str], bool]]) -> str:
    stem = obj[:-2]
    for ext in (".c", ".S"):
        if exists is None or exists(stem + ext):
            return stem + ext
    return stem + ".c"


def _object_after(lines: List[str], i: int) -> Optional[str]:
    for line in lines[i + 1:]:
        m = _MAKE_STAR.match(line.strip())
        if m and m.group("target").endswith(".o"):
            return m.group("target")
    return None


def _match(lines: List[str], i: int, exists) -> Optional[BuildFailure]:
    line = lines[i].rstrip()
    s = line.strip()
    m = _CC.match(s)
    if m:
        return BuildFailure(COMPILER, m.group("msg").strip(), m.group("file"), int(m.group("line")), i)
    m = _AS.match(s)
    if m:
        f = m.group("file")
        if f == "{standard input}" or f.startswith("/tmp/"):
            obj = _object_after(lines, i)  # gas on gcc's output: the line is in the .s, not the source
            return BuildFailure(ASSEMBLER, m.group("msg").strip(), _source_of(obj, exists) if obj else None, None, i)
        return BuildFailure(ASSEMBLER, m.group("msg").strip(), f, int(m.group("line")), i)
    if _LD_PREFIX.match(s) or _LD_SRCLOC.match(s):
        body = _LD_PREFIX.sub("", s)
        if " in function " in body and not _LD_UNDEF.search(body):
            return None  # context line; the error is on the next line
        u = _LD_UNDEF.search(body)
        if u:
            msg = f"undefined reference to {u.group('sym')}"
            obj = None
            loc = _LD_LOC.match(body)
            if loc:
                obj = loc.group("obj")
            elif i > 0:
                fm = _LD_FUNC.match(lines[i - 1].strip())
                obj = fm.group("obj") if fm else None
            src = _LD_SRCLOC.match(s)
            if obj and not obj.startswith("/tmp/"):
                msg += f" (in {obj})"
            return BuildFailure(LINKER, msg, src.group("file") if src else None, None, i)
        if re.search(r"error|cannot|failed|multiple definition|No space|not found", body, re.I):
            return BuildFailure(LINKER, body, None, None, i)
    m = _KCONFIG.match(s)
    if m:
        return BuildFailure(KCONFIG, m.group("msg").strip(), m.group("file"), int(m.group("line")), i)
    if s.startswith("*** Error during") or s.startswith("*** Can't find default configuration"):
        return BuildFailure(KCONFIG, s.strip("* "), None, None, i)
    m = _MODPOST.match(s)
    if m:
        return BuildFailure(LINKER, "modpost: " + m.group("msg"), None, None, i)
    m = _MAKE_NORULE.match(s)
    if m:
        return BuildFailure(MAKE, m.group("msg").rstrip(". ").rstrip(" Stop"), None, None, i)
    m = _GCC_FATAL.match(s)
    if m and "ld returned" not in m.group("msg"):
        tool = ASSEMBLER if s.startswith("as") else COMPILER
        return BuildFailure(tool, m.group("msg").strip(), None, None, i)
    return None


def first_error(text: str, exists: Optional[Callable[[str], bool]] = None) -> Optional[BuildFailure]:
    """The first error the log shows, or None.  ``exists(rel)`` tells whether a source file
    exists (to map kernel/sys.o to .c or .S); without it, .c is assumed."""
    # gcc quotes with ‘’ in a UTF-8 locale and with '' in C: the same message either way
    lines = text.replace("\u2018", "'").replace("\u2019", "'").splitlines()
    found: List[BuildFailure] = []
    for i in range(len(lines)):
        f = _match(lines, i, exists)
        if f is not None:
            found.append(f)
    resource = exhaustion(text)
    if not found:
        if resource:
            idx = next(i for i, ln in enumerate(lines) if exhaustion(ln))
            first = BuildFailure(MAKE, lines[idx].strip(), None, None, idx)
        else:
            return None
    else:
        first = found[0]
        if resource:  # the machine's failure wins: report the line that says so
            hit = [f for f in found if exhaustion(lines[f.index])]
            if hit:
                first = hit[0]
    first.resource = resource
    lo, hi = max(0, first.index - CONTEXT_BEFORE), min(len(lines), first.index + CONTEXT_AFTER + 1)
    first.context = "\n".join(lines[lo:hi])
    seen = {first.headline()}
    for f in found:
        h = f.headline()
        if h not in seen:
            seen.add(h)
            first.others.append(h)
    return first
