"""What a careful TA would want to read: hunks of a patch that change how the kernel is
built, or that reach beyond the patch's half (issue 18, section 3).

A patch may add a source file and the object line that builds it (``obj-y += x.o``)
without comment.  Anything else in the build machinery is shown to a human, hunk by
hunk: Makefile rules, recipes and variables (the toolchain's flags: ``ccflags-y``,
``KBUILD_CFLAGS``, ...), ``$(shell``, files under ``scripts/``, Kconfig defaults and
selects, defconfigs; so is a file outside the patch's half (kvm.patch: KVM; vm.patch:
the syscall's files and new files of its own) that diffcheck does not already name.
No points are taken: the flag is for trust, not for the score.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import List, Optional

from .diffcheck import GUEST_FILES, HOST_FILES

MAX_HUNK_LINES = 40
_FILE = re.compile(r"^\+\+\+ (?:b/)?(\S+)")
_AT = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
# an object added to (or removed from) a kbuild list: obj-y += a.o b.o, foo-objs := x.o, and
# continuation lines of such a list
_OBJECTS = re.compile(r"^\s*(?:[\w-]+-(?:y|m|objs|\$\([A-Z0-9_]+\))\s*[:+]?=\s*)?(?:[\w/.-]+\.o\s*)+\\?\s*$")
_FLAGS = re.compile(r"\b(?:(?:subdir-)?(?:cc|as|ld)flags-|CFLAGS|KBUILD_\w*FLAGS|AFLAGS|LDFLAGS|CPPFLAGS|"
                    r"CROSS_COMPILE|HOSTCC|\bCC\b|\bLD\b)")


@dataclass
class Finding:
    member: str        # kvm.patch | vm.patch
    file: str
    why: str
    hunk: str

    def flag(self) -> str:
        return f"for a human to read: {self.member} {self.why} in {self.file} (not scored; hunk in index.html)"

    def to_dict(self) -> dict:
        return asdict(self)


def _is_makefile(path: str) -> bool:
    base = path.rsplit("/", 1)[-1]
    return base in ("Makefile", "Kbuild", "GNUmakefile") or base.startswith("Makefile.") or base.endswith(".mk")


def _hunks(text: str):
    """(file, created, hunk lines) for each hunk of a unified diff (hunks are read by
    their line counts, so a removed line that starts with "--" is not a header)."""
    path, created, lines = None, False, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("--- "):
            created = line[4:].split("\t")[0].strip() == "/dev/null"
            continue
        m = _FILE.match(line)
        if m:
            path = m.group(1)
            continue
        h = _AT.match(line)
        if not (h and path):
            continue
        old_n, new_n = int(h.group(1) or 1), int(h.group(2) or 1)
        hunk = [line]
        while i < len(lines) and (old_n > 0 or new_n > 0):
            ln = lines[i]
            if ln.startswith(("diff ", "@@ ")):  # a hunk shorter than its header says
                break
            i += 1
            hunk.append(ln)
            if ln.startswith("\\"):
                continue
            if ln[:1] != "+":
                old_n -= 1
            if ln[:1] != "-":
                new_n -= 1
        yield path, created, hunk


def _why(path: str, created: bool, changed: List[str], role: str) -> Optional[str]:
    """What in this hunk's changed lines a human should read, or None."""
    body = [ln[1:] for ln in changed]
    if any("$(shell" in ln for ln in body):
        return "runs a shell command at build time ($(shell ...))"
    if path.startswith("scripts/") and not (role == "guest" and path == "scripts/syscall.tbl"):
        return "changes the kernel's build scripts (scripts/)"
    if re.search(r"(^|/)configs/[^/]*defconfig$", path) or path.endswith(".config"):
        return "changes a kernel configuration (defconfig)"
    if path.rsplit("/", 1)[-1].startswith("Kconfig"):
        if any(re.match(r"\s*(default|def_bool|def_tristate|select|imply)\b", ln) for ln in body):
            return "changes Kconfig defaults (default/select)"
        return None
    if _is_makefile(path):
        other = [ln for ln in body if ln.strip() and not ln.lstrip().startswith("#") and not _OBJECTS.match(ln)]
        if any(_FLAGS.search(ln) for ln in other):
            return "changes the toolchain's flags"
        if any(ln.startswith("\t") for ln in other):
            return "changes a Makefile recipe"
        if other:
            return "changes Makefile rules (beyond adding an object)"
        return None
    half = HOST_FILES if role == "host" else GUEST_FILES
    theirs = GUEST_FILES if role == "host" else HOST_FILES
    if not created and not half.match(path) and not theirs.match(path):  # theirs: diffcheck names it
        return "touches a file outside its half"
    return None


def review(text: Optional[str], role: str) -> List[Finding]:
    """The hunks of ``text`` (kvm.patch for role host, vm.patch for guest) a human should
    read, one finding per file and reason."""
    if not text:
        return []
    member = "kvm.patch" if role == "host" else "vm.patch"
    out: List[Finding] = []
    for path, created, hunk in _hunks(text):
        changed = [ln for ln in hunk[1:] if ln[:1] in "+-"]
        why = _why(path, created, changed, role)
        if why is None:
            continue
        shown = hunk if len(hunk) <= MAX_HUNK_LINES else hunk[:MAX_HUNK_LINES] + [
            f"... ({len(hunk) - MAX_HUNK_LINES} more lines)"]
        for f in out:
            if f.file == path and f.why == why:  # one finding per file and reason, hunks together
                f.hunk += "\n" + "\n".join(shown)
                break
        else:
            out.append(Finding(member, path, why, f"--- {path}\n" + "\n".join(shown)))
    return out
