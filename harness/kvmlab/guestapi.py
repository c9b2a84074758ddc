"""Reading the submission's guest.c: which of the assignment's guest-side functions
it defines, and how the harness test guest should call them.

Ports are the student's choice, so the harness never guesses them: its test guest
is compiled *together with* guest.c (textually included) and calls the student's
own ``printVal``, ``getNumExits``, ``display`` and file functions.  This module only
finds those definitions (a small C scanner: comments and literals are blanked, then
top-level ``name(params) {`` at brace depth 0) and writes ``kvmlab_cfg.h`` with
adapters for the file functions' parameter shapes.

File functions are recognised by name (``open``/``read``/``write``/``close``
exactly, else names containing them, e.g. ``fileOpen``, ``hc_read``) and shape:
open(path[, flags-or-mode-string[, mode]]), read/write(fd, buf, n) in any order
(pointer = buffer; the integer named like fd/file/handle/desc, else the first, is
the descriptor), close(fd).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

ASSIGNMENT_NAMES = ("printVal", "getNumExits", "display")
IGNORE = {"outb", "inb", "outl", "inl", "outw", "inw", "_start", "main", "printVal",
          "getNumExits", "display"}
C_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "do", "else"}


@dataclass
class Param:
    text: str
    name: str
    is_pointer: bool


@dataclass
class Function:
    name: str
    ret: str
    params: List[Param]


@dataclass
class GuestApi:
    functions: Dict[str, Function]
    fs: Dict[str, Function] = field(default_factory=dict)
    fs_problem: Optional[str] = None

    def has(self, name: str) -> bool:
        return name in self.functions

    def summary(self) -> dict:
        return {
            "assignment_functions": {n: self.has(n) for n in ASSIGNMENT_NAMES},
            "fs_functions": {k: f"{f.ret} {f.name}({', '.join(p.text for p in f.params)})"
                             for k, f in self.fs.items()},
            "fs_problem": self.fs_problem,
        }


def strip_c(src: str) -> str:
    """Blank comments, string/char literals and preprocessor lines; keep offsets."""
    out = []
    i, n = 0, len(src)
    at_line_start = True
    while i < n:
        c = src[i]
        if at_line_start and c == "#":
            # a directive, with backslash continuations
            j = i
            while j < n:
                if src[j] == "\n" and src[j - 1] != "\\":
                    break
                j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
            continue
        if c in " \t":
            out.append(c)
            i += 1
            continue
        at_line_start = c == "\n"
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * max(0, j - i - 2) + (c if j - i >= 2 else ""))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


_DEF = re.compile(r"([A-Za-z_][\w\s\*]*?)\b([A-Za-z_]\w*)\s*\(([^()]*)\)\s*$")


def parse_params(text: str) -> List[Param]:
    text = text.strip()
    if text in ("", "void"):
        return []
    params = []
    for part in text.split(","):
        part = " ".join(part.split())
        m = re.search(r"([A-Za-z_]\w*)\s*(\[\s*\])?$", part)
        name = m.group(1) if m else ""
        is_ptr = "*" in part or "[" in part
        params.append(Param(text=part, name=name, is_pointer=is_ptr))
    return params


def find_functions(src: str) -> Dict[str, Function]:
    """Top-level function definitions in C source ``src``."""
    clean = strip_c(src)
    funcs: Dict[str, Function] = {}
    depth = 0
    seg_start = 0
    for i, c in enumerate(clean):
        if c == "{":
            if depth == 0:
                head = clean[seg_start:i]
                head = re.sub(r"__attribute__\s*\(\((?:[^()]|\([^()]*\))*\)\)", " ", head)
                m = _DEF.search(head.strip())
                if m and m.group(2) not in C_KEYWORDS and "=" not in head.split(")")[-1]:
                    ret = " ".join(m.group(1).split())
                    ret = re.sub(r"\b(static|inline|extern|__inline__|__inline)\b", "", ret)
                    funcs[m.group(2)] = Function(m.group(2), " ".join(ret.split()),
                                                 parse_params(m.group(3)))
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
            if depth == 0:
                seg_start = i + 1
        elif c == ";" and depth == 0:
            seg_start = i + 1
    return funcs


def _pick(funcs: Dict[str, Function], word: str, exclude: tuple = ()) -> Optional[Function]:
    if word in funcs:
        return funcs[word]
    cands = [f for n, f in funcs.items()
             if word in n.lower() and n not in IGNORE
             and not any(x in n.lower() for x in exclude)]
    if not cands:
        return None
    cands.sort(key=lambda f: (len(f.name), f.name))
    return cands[0]


def analyse(src: str) -> GuestApi:
    funcs = find_functions(src)
    api = GuestApi(functions=funcs)
    fs = {
        "open": _pick(funcs, "open", ("close",)),
        "read": _pick(funcs, "read", ("thread", "ready")),
        "write": _pick(funcs, "write"),
        "close": _pick(funcs, "close"),
    }
    missing = [k for k, f in fs.items() if f is None]
    if missing:
        api.fs_problem = "guest.c defines no function recognisable as " + "/".join(missing)
        return api
    api.fs = {k: f for k, f in fs.items() if f is not None}
    problem = _shape_problem(api.fs)
    if problem:
        api.fs_problem = problem
        api.fs = {}
    return api


def _shape_problem(fs: Dict[str, Function]) -> Optional[str]:
    o = fs["open"]
    if not o.params or not o.params[0].is_pointer or len(o.params) > 3:
        return f"{o.name}() does not take a path first (open(path[, flags[, mode]]))"
    for k in ("read", "write"):
        f = fs[k]
        ptrs = [p for p in f.params if p.is_pointer]
        if len(ptrs) != 1 or len(f.params) not in (2, 3):
            return f"{f.name}() is not shaped like {k}(fd, buf, count)"
    if len(fs["close"].params) > 1:
        return f"{fs['close'].name}() takes more than a descriptor"
    return None


def _rw_call(f: Function) -> str:
    """A macro body calling ``f`` with (fd, buf, n) placed by shape."""
    ints = [i for i, p in enumerate(f.params) if not p.is_pointer]
    fd_idx = None
    if len(ints) == 2:
        named = [i for i in ints
                 if re.search(r"fd|file|handle|desc|^f$|^id$", f.params[i].name, re.I)]
        fd_idx = named[0] if named else ints[0]
    args = []
    for i, p in enumerate(f.params):
        if p.is_pointer:
            args.append("(void *)(b)")
        elif i == fd_idx:
            args.append("(fd)")
        else:
            args.append("(n)")
    call = f"{f.name}({', '.join(args)})"
    if f.ret.strip() == "void":
        return f"(({call}), (long)(n))"
    return f"((long)({call}))"


def config_header(api: GuestApi, *, mode: int, nonce: str, abs_path: str) -> str:
    lines = [
        "/* generated by harness/kvmlab/guestapi.py for this submission */",
        "#pragma once",
        f"#define KVMLAB_MODE {int(mode)}",
        f'#define KVMLAB_NONCE "{nonce}"',
        f'#define KVMLAB_ABS_PATH "{abs_path}"',
    ]
    for name in ASSIGNMENT_NAMES:
        if api.has(name):
            lines.append(f"#define KVMLAB_HAVE_{name.upper()} 1")
    if api.fs:
        o, r, w, c = api.fs["open"], api.fs["read"], api.fs["write"], api.fs["close"]
        flags_w = "KVMLAB_OW"
        if len(o.params) == 1:
            ow = or_ = f"{o.name}((void *)(p))"
        elif o.params[1].is_pointer:  # fopen-like mode string
            ow, or_ = f'{o.name}((void *)(p), "w")', f'{o.name}((void *)(p), "r")'
        elif len(o.params) == 2:
            ow, or_ = f"{o.name}((void *)(p), {flags_w})", f"{o.name}((void *)(p), KVMLAB_OR)"
        else:
            ow = f"{o.name}((void *)(p), {flags_w}, 0644)"
            or_ = f"{o.name}((void *)(p), KVMLAB_OR, 0)"
        if o.ret.strip() == "void":
            ow, or_ = f"(({ow}), 0L)", f"(({or_}), 0L)"
        close = f"{c.name}((fd))" if c.params else f"{c.name}()"
        lines += [
            "#define KVMLAB_HAVE_FS 1",
            f"#define KVMLAB_OPEN_W(p) ((long)({ow}))",
            f"#define KVMLAB_OPEN_R(p) ((long)({or_}))",
            f"#define KVMLAB_READ(fd, b, n) {_rw_call(r)}",
            f"#define KVMLAB_WRITE(fd, b, n) {_rw_call(w)}",
            f"#define KVMLAB_CLOSE(fd) ((void)({close}))",
            "/* the student's O_* macros when guest.c defines them, else Linux x86 values */",
            "#define KVMLAB_OW (KVMLAB_O(O_WRONLY, 01) | KVMLAB_O(O_CREAT, 0100) | KVMLAB_O(O_TRUNC, 01000))",
            "#define KVMLAB_OR (KVMLAB_O(O_RDONLY, 0))",
        ]
    return "\n".join(lines) + "\n"

