"""The shape of a handed-in patch, before anything is built from it.

Detects and names: not a unified diff, CRLF line endings, missing a/ b/ prefixes,
a wrong strip level (made one directory above the tree), a reversed patch (made with
the old and new trees swapped), a patch made on another 5.4.y (the ``index`` blob ids
do not match the tree's files, or it applies only with offsets or fuzz), and patches
that touch the other role's files.  ``normalize`` gives the bytes that are built (CRLF
and strip level fixed, a reversed patch turned round); every fix is a flag.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..core.errors import PatchError
from ..build.patches import Patch

TOP_DIRS = {"arch", "block", "certs", "crypto", "Documentation", "drivers", "fs", "include", "init", "ipc",
            "kernel", "lib", "mm", "net", "samples", "scripts", "security", "sound", "tools", "usr", "virt",
            "Makefile", "Kconfig"}
GUEST_FILES = re.compile(r"^(include/uapi/asm-generic/unistd\.h|include/linux/syscalls\.h|"
                         r"arch/arm64/include/asm/unistd(32)?\.h|arch/arm64/kernel/sys(call)?\.c|kernel/sys\.c|"
                         r"arch/arm64/kernel/host_cpuid[^/]*|kernel/host_cpuid[^/]*|scripts/syscall\.tbl)$")
HOST_FILES = re.compile(r"^(virt/kvm/|arch/arm64/kvm/|include/kvm/|arch/arm64/include/asm/kvm_)")
_HDR = re.compile(r"^(---|\+\+\+) (\S+)")
_INDEX = re.compile(r"^index ([0-9a-f]{7,40})\.\.([0-9a-f]{7,40})")


@dataclass
class DiffReport:
    role: str                                   # "host" (kvm.patch) or "guest" (vm.patch)
    ok: bool = True                             # parseable as a unified diff
    empty: bool = False                         # no bytes but white space: no change to the kernel
    why: str = ""
    flags: List[str] = field(default_factory=list)
    strip: int = 1
    reversed: bool = False
    files: List[str] = field(default_factory=list)
    functions: List[str] = field(default_factory=list)   # from hunk headers and added definitions
    added_lines: int = 0
    removed_lines: int = 0
    apply: Optional[str] = None                 # exact | offset | fuzz | fails (against the tree)
    apply_detail: str = ""
    normalized: Optional[bytes] = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("normalized")
        return d


def _paths(text: str) -> List[str]:
    out = []
    for line in text.splitlines():
        m = _HDR.match(line)
        if m and m.group(2) != "/dev/null":
            out.append(m.group(2))
    return out


def guess_strip(paths: List[str], tree: Optional[Path]) -> int:
    """The -p level that makes the paths land in a kernel tree."""
    def lands(p: str, n: int) -> bool:
        parts = p.split("/")
        if len(parts) <= n:
            return False
        rest = "/".join(parts[n:])
        if tree is not None and (tree / rest).exists():
            return True
        return parts[n] in TOP_DIRS
    for n in (1, 0, 2, 3):
        if paths and all(lands(p, n) for p in paths):
            return n
    return 1


def restrip(text: str, strip: int) -> str:
    """Rewrite file headers to the a/ b/ form from strip level ``strip``."""
    def fix(p: str, side: str) -> str:
        if p == "/dev/null":
            return p
        return side + "/".join(p.split("/")[strip:])
    out = []
    for line in text.split("\n"):
        m = re.match(r"^(---|\+\+\+) (\S+)(.*)$", line)
        if m:
            side = "a/" if m.group(1) == "---" else "b/"
            line = f"{m.group(1)} {fix(m.group(2), side)}{m.group(3)}"
        elif line.startswith("diff --git "):
            parts = line.split(" ")
            if len(parts) == 4:
                line = f"diff --git {fix(parts[2], 'a/')} {fix(parts[3], 'b/')}"
        out.append(line)
    return "\n".join(out)


def reverse(text: str) -> str:
    """The patch turned round (what ``patch -R`` would apply)."""
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = line[4:], lines[i + 1][4:]
            swap = lambda p, s: "/dev/null" if p.startswith("/dev/null") else s + p.split("/", 1)[1] if "/" in p else p
            out += [f"--- {swap(new, 'a/')}", f"+++ {swap(old, 'b/')}"]
            i += 2
            continue
        m = re.match(r"^@@ -(\d+(?:,\d+)?) \+(\d+(?:,\d+)?) @@(.*)$", line)
        if m:
            out.append(f"@@ -{m.group(2)} +{m.group(1)} @@{m.group(3)}")
        elif line.startswith("new file mode"):
            out.append("deleted file mode" + line[len("new file mode"):])
        elif line.startswith("deleted file mode"):
            out.append("new file mode" + line[len("deleted file mode"):])
        elif line.startswith("index "):
            m2 = _INDEX.match(line)
            out.append(f"index {m2.group(2)}..{m2.group(1)}{line[m2.end():]}" if m2 else line)
        elif line.startswith("+") and not line.startswith("+++"):
            out.append("-" + line[1:])
        elif line.startswith("-") and not line.startswith("---"):
            out.append("+" + line[1:])
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def looks_reversed(text: str) -> bool:
    """Only removals of things a solution adds, and files deleted that a solution creates."""
    plus = sum(1 for ln in text.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    minus = [ln for ln in text.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    hints = ("host_cpuid", "hvc", "__NR_", "vcpu->cpu", "SYSCALL_DEFINE", "smp_processor_id")
    removes_solution = any(h in ln for ln in minus for h in hints)
    if "deleted file mode" in text and "new file mode" not in text:
        return removes_solution
    return plus <= 2 and len(minus) > plus and removes_solution


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def index_mismatches(text: str, tree: Path) -> List[str]:
    """Files whose pre-image blob id in the patch differs from the tree's file."""
    out = []
    current = None
    for line in text.splitlines():
        m = re.match(r"^diff --git a/(\S+) b/", line)
        if m:
            current = m.group(1)
            continue
        m = _INDEX.match(line)
        if m and current and set(m.group(1)) != {"0"}:
            p = tree / current
            if p.is_file() and not blob_id(p.read_bytes()).startswith(m.group(1)):
                out.append(current)
    return out


def functions_touched(text: str) -> List[str]:
    """Function names from hunk headers and from definitions on added lines."""
    names: List[str] = []
    for line in text.splitlines():
        m = re.match(r"^@@ [^@]+ @@\s*(.*)$", line)
        cand = None
        if m and m.group(1):
            f = re.search(r"([A-Za-z_]\w*)\s*\(", m.group(1))
            cand = f.group(1) if f else None
        elif line.startswith("+") and not line.startswith("+++"):
            f = re.match(r"^\+(?:static\s+|inline\s+|notrace\s+)*[A-Za-z_][\w\s\*]*?\b([A-Za-z_]\w*)\s*\([^;]*$", line)
            d = re.match(r"^\+\s*(SYSCALL_DEFINE\d)\((\w+)", line)
            if d:
                cand = f"{d.group(1)}({d.group(2)})"
            elif f and f.group(1) not in ("if", "for", "while", "switch", "return", "sizeof"):
                cand = f.group(1)
        if cand and cand not in names:
            names.append(cand)
    return names


def check(data: Optional[bytes], role: str, tree: Optional[Path] = None) -> DiffReport:
    rep = DiffReport(role=role)
    if data is None:
        rep.ok, rep.why = False, "missing"
        return rep
    if b"\r\n" in data:
        rep.flags.append("CRLF line endings (converted to LF)")
        data = data.replace(b"\r\n", b"\n")
    text = data.decode("utf-8", "replace")
    if not text.strip():
        rep.ok, rep.empty, rep.why = False, True, "empty (no change to the kernel)"
        return rep
    paths = _paths(text)
    if not paths and "diff --git" not in text:
        rep.ok, rep.why = False, "not a unified diff (no ---/+++ file headers); make it with `git diff > file.patch`"
        return rep
    if paths and not all(p.startswith(("a/", "b/")) for p in paths):
        rep.flags.append("no a/ b/ prefixes (not made by git diff)")
    rep.strip = guess_strip(paths, tree)
    if rep.strip != 1:
        rep.flags.append(f"strip level {rep.strip} (paths like {paths[0]!r}): rewritten to the tree's paths")
        text = restrip(text, rep.strip)
    if looks_reversed(text):
        rep.reversed = True
        rep.flags.append("reversed patch (old and new swapped: it removes the solution): graded turned round")
        text = reverse(text)
    try:
        parsed = Patch.parse(text.encode(), f"{role} patch")
    except PatchError as e:
        rep.ok, rep.why = False, e.message
        return rep
    rep.files = parsed.files
    rep.functions = functions_touched(text)
    rep.added_lines = sum(1 for ln in text.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    rep.removed_lines = sum(1 for ln in text.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    for f in parsed.files:
        if role == "host" and GUEST_FILES.match(f):
            rep.flags.append(f"kvm.patch touches the guest's syscall file {f}")
        if role == "guest" and HOST_FILES.match(f):
            rep.flags.append(f"vm.patch touches KVM: {f}")
    rep.normalized = text.encode()
    if tree is not None:
        mism = index_mismatches(text, tree)
        if mism:
            rep.flags.append("made on another tree version (index blob ids differ): " + ", ".join(mism))
        rep.apply, rep.apply_detail = apply_mode(rep.normalized, tree)
        if rep.apply in ("offset", "fuzz"):
            rep.flags.append(f"applies only with {rep.apply} ({rep.apply_detail}): made on another kernel version?")
    return rep


def apply_mode(data: bytes, tree: Path) -> Tuple[str, str]:
    """exact | offset | fuzz | fails, checked read-only against ``tree``."""
    git = subprocess.run(["git", "apply", "--check", "-v", "-"], cwd=tree, input=data, capture_output=True,
                         env={"GIT_CEILING_DIRECTORIES": str(Path(tree).resolve().parent), "PATH": "/usr/bin:/bin"})
    err = git.stderr.decode(errors="replace")
    if git.returncode == 0:
        offs = re.findall(r"Hunk #\d+ succeeded at \d+ \(offset -?\d+ lines?\)", err)
        return ("offset", "; ".join(offs[:3])) if offs else ("exact", "")
    gnu = subprocess.run(["patch", "-p1", "--dry-run", "--batch", "--forward", "--fuzz=2", "-d", str(tree)],
                         input=data, capture_output=True)
    out = gnu.stdout.decode(errors="replace")
    if gnu.returncode == 0:
        return "fuzz", "; ".join(re.findall(r"Hunk #\d+ succeeded at \d+ with fuzz \d+[^.\n]*", out)[:3])
    failed = re.findall(r"(?:error: patch failed: \S+|Hunk #\d+ FAILED at \d+|can't find file to patch[^\n]*)",
                        err + out)
    return "fails", "; ".join(failed[:3]) or (err + out).strip()[-300:]


def summary(reports: Dict[str, DiffReport]) -> Dict[str, dict]:
    return {k: v.to_dict() for k, v in reports.items()}
