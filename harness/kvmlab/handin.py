"""What a hand-in holds beyond ``guest.c`` and ``kvm-hello-world.c``, and how its
own build would use it.

Students often hand in more than the two files the assignment names: a header of
port numbers or shared request structs, their own Makefile (``-w``, ``-Wno-error``,
an extra object), a linker script.  A TA builds what was handed in the way its
Makefile says.  The harness does that without ever running the student's Makefile:

* every file in the folder that holds ``guest.c`` (and its subfolders) is copied
  into the build directory, so ``#include "guest.h"`` finds the student's header;
* the Makefile is *read*: the flags added to ``CFLAGS`` (only compiler options that
  change warnings, macros, include paths, the language standard or the
  optimisation level; anything else is named and ignored), the extra objects the
  hypervisor or the guest image link (``fs.o`` for a handed-in ``fs.c``), and the
  linker script given with ``-T``;
* a linker script the guest image is linked with (the Makefile's ``-T`` file, else a
  handed-in ``guest.ld``) replaces the harness's own for the student's build.

The harness Makefile receives these as variables (``STUDENT_CFLAGS``,
``HV_EXTRA_SRC``, ``GUEST_EXTRA_SRC``, ``GUEST_LD``).  ``describe`` says, for the TA,
what the hand-in held and what was used.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .submission import GUEST, HYPERVISOR

MAX_FILES = 200
# Options a student's CFLAGS may contribute: warnings, macros, include paths within
# the hand-in, the standard, the optimisation level, a few code-generation switches.
_SAFE = re.compile(r"^(-w|-W[\w=,+-]*|-D[A-Za-z_]\w*(=[\w.+-]*)?|-U[A-Za-z_]\w*|-I[\w./-]+|"
                   r"-std=[\w+]+|-O[0-3sgz]?|-g[0-3]?|-f(no-)?(strict-aliasing|builtin|common|"
                   r"omit-frame-pointer|pic|PIC|pie|PIE)|-m(no-)?(sse|sse2|mmx|avx|80387))$")
UPSTREAM_CFLAGS = ("-Wall", "-Wextra", "-Werror", "-O2")   # the harness Makefile's own
_VAR = re.compile(r"^\s*(?:override\s+)?(CFLAGS|CPPFLAGS|EXTRA_CFLAGS)\s*(\+=|:=|\?=|=)\s*(.*)$")


@dataclass
class Handin:
    folder: Path                          # where guest.c is
    files: List[str] = field(default_factory=list)      # beyond the two sources (relative)
    headers: List[str] = field(default_factory=list)
    makefile: Optional[str] = None
    cflags: List[str] = field(default_factory=list)     # read from the Makefile, accepted
    ignored_flags: List[str] = field(default_factory=list)
    hv_extra: List[str] = field(default_factory=list)   # extra .c linked into the hypervisor
    guest_extra: List[str] = field(default_factory=list)  # extra .c linked into the guest image
    linker_script: Optional[str] = None

    @property
    def beyond_two(self) -> bool:
        return bool(self.files)

    def variables(self) -> Dict[str, str]:
        """Variables for the harness Makefile (the student's own build)."""
        v: Dict[str, str] = {}
        if self.cflags:
            v["STUDENT_CFLAGS"] = " ".join(self.cflags)
        if self.hv_extra:
            v["HV_EXTRA_SRC"] = " ".join(self.hv_extra)
        if self.guest_extra:
            v["GUEST_EXTRA_SRC"] = " ".join(self.guest_extra)
        if self.linker_script:
            v["GUEST_LD"] = _student_ld(self.linker_script)
        return v

    def describe(self) -> str:
        """One line for the TA: what came beyond the two files and what the build used."""
        if not self.files:
            return ""
        used = []
        if self.headers:
            used.append("headers " + ", ".join(self.headers))
        if self.makefile:
            what = []
            if self.cflags:
                what.append("flags " + " ".join(self.cflags))
            if self.hv_extra or self.guest_extra:
                what.append("extra sources " + ", ".join(self.hv_extra + self.guest_extra))
            if self.ignored_flags:
                what.append("ignored " + " ".join(self.ignored_flags))
            used.append(f"{self.makefile} (read, not run: {'; '.join(what) or 'nothing to take'})")
        if self.linker_script:
            used.append(f"linker script {self.linker_script}")
        return (f"the hand-in goes beyond guest.c and kvm-hello-world.c: {', '.join(self.files)}"
                + (f"; built with {'; '.join(used)}" if used else ""))


def _files(folder: Path) -> List[str]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") or part.startswith("__MACOSX") for part in rel.parts):
            continue
        if p.is_symlink() or not p.is_file() or str(rel) in (GUEST, HYPERVISOR):
            continue
        out.append(str(rel))
        if len(out) >= MAX_FILES:
            break
    return out


def _logical_lines(text: str) -> List[str]:
    text = re.sub(r"\\\n", " ", text)
    return [re.sub(r"(?<!\\)#.*", "", line) for line in text.splitlines()]


def read_makefile(text: str, files: List[str]) -> dict:
    """Flags, extra sources and the guest linker script a student's Makefile asks for."""
    cflags: List[str] = []
    ignored: List[str] = []
    hv_extra: List[str] = []
    guest_extra: List[str] = []
    ld: Optional[str] = None
    sources = {f for f in files if f.endswith(".c")}
    werror: Optional[bool] = None     # does the student's own CFLAGS make warnings errors?
    for line in _logical_lines(text):
        m = _VAR.match(line)
        if m:
            try:
                words = shlex.split(m.group(3))
            except ValueError:
                words = m.group(3).split()
            if m.group(1) == "CFLAGS" and m.group(2) in ("=", ":="):
                werror = "-Werror" in words
            elif "-Werror" in words:
                werror = True
            for w in words:
                if w.startswith("$(") or w in UPSTREAM_CFLAGS:
                    continue
                if _SAFE.match(w) and ".." not in w and not w.startswith("-I/"):
                    if w not in cflags:
                        cflags.append(w)
                elif w not in ignored:
                    ignored.append(w)
            continue
        t = re.search(r"-T\s*([\w./-]+\.ld[s]?)\b", line)
        if t and t.group(1) in files and ".." not in t.group(1):
            ld = t.group(1)
        rule = re.match(r"^([\w./ -]+):(?!=)(.*)$", line)
        if not rule:
            continue
        targets, prereqs = rule.group(1).split(), rule.group(2).split()
        for p in prereqs:
            src = re.sub(r"\.o$", ".c", p)
            if not p.endswith(".o") or src not in sources or src in (GUEST, HYPERVISOR):
                continue
            if any(t.startswith("kvm-hello-world") for t in targets):
                if src not in hv_extra:
                    hv_extra.append(src)
            elif any(t.startswith("guest") for t in targets):
                if src not in guest_extra:
                    guest_extra.append(src)
    if werror is False and "-Wno-error" not in cflags:
        cflags.append("-Wno-error")   # the student's build has no -Werror
    return {"cflags": cflags, "ignored": ignored, "hv_extra": hv_extra, "guest_extra": guest_extra,
            "ld": ld}


def read(guest_c: Path) -> Handin:
    """The hand-in around ``guest_c`` (the folder that holds it)."""
    folder = guest_c.parent
    h = Handin(folder=folder, files=_files(folder))
    h.headers = [f for f in h.files if f.endswith(".h")]
    mk = next((f for f in ("Makefile", "makefile", "GNUmakefile") if f in h.files), None)
    if mk:
        h.makefile = mk
        got = read_makefile((folder / mk).read_text(errors="replace"), h.files)
        h.cflags, h.ignored_flags = got["cflags"], got["ignored"]
        h.hv_extra, h.guest_extra = got["hv_extra"], got["guest_extra"]
        h.linker_script = got["ld"]
    if h.linker_script is None and "guest.ld" in h.files:
        h.linker_script = "guest.ld"
    return h


def copy_into(h: Handin, directory: Path) -> None:
    """The hand-in's files beside the sources in a build directory (before the
    harness's own build files, which take precedence: the student's Makefile is never
    run).  A handed-in linker script keeps a name of its own."""
    import shutil
    for rel in h.files:
        src = h.folder / rel
        if not src.is_file() or src.is_symlink() or _product(rel):
            continue
        dst = directory / (_student_ld(rel) if rel == h.linker_script else rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _product(rel: str) -> bool:
    """A build product handed in (a stale binary or object must not stand in for a build)."""
    name = rel.rsplit("/", 1)[-1]
    return name == "kvm-hello-world" or name.endswith((".o", ".img", ".a", ".so"))


def _student_ld(rel: str) -> str:
    return "student-" + rel.replace("/", "_")
