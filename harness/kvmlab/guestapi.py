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
class Binding:
    """How the test guest calls one of the assignment's functions: the student's
    function, and a C call with the role's argument as ``{arg}`` (the other
    arguments as the student's own calls pass them, e.g. a port)."""
    role: str                 # printVal, getNumExits, display
    function: Function
    call: str                 # e.g. "printVal(0xE9, (uint32_t)({arg}))"
    how: str                  # for the evidence: "printVal(port, value): port as in guest.c's own calls"


@dataclass
class GuestApi:
    functions: Dict[str, Function]
    fs: Dict[str, Function] = field(default_factory=dict)
    fs_problem: Optional[str] = None
    bindings: Dict[str, Binding] = field(default_factory=dict)
    unbound: Dict[str, str] = field(default_factory=dict)   # role -> why the test guest cannot call it

    def has(self, name: str) -> bool:
        """guest.c defines the role (under its name or another one the binding found)."""
        return name in self.functions or name in self.bindings or name in self.unbound

    def bound(self, name: str) -> bool:
        return name in self.bindings

    def summary(self) -> dict:
        return {
            "assignment_functions": {n: self.has(n) for n in ASSIGNMENT_NAMES},
            "bindings": {r: b.how for r, b in self.bindings.items()},
            "unbound": dict(self.unbound),
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


# Other names students give the same calls (compared lower-case, without '_').
ALIASES = {
    "printVal": ("printval", "printvalue", "printint", "printnum", "printnumber", "putval", "printu32",
                 "hcprintval", "hypercallprintval"),
    "getNumExits": ("getnumexits", "numexits", "getexits", "getexitcount", "exitcount", "getnumberofexits",
                    "hcgetnumexits"),
    "display": ("display", "displaystring", "displaystr", "printstr", "printstring", "putstr", "hcdisplay"),
}
_VALUE_NAME = re.compile(r"^(val|value|v|num|n|x|data|number|arg)$", re.I)


def _role_function(funcs: Dict[str, Function], role: str) -> Optional[Function]:
    if role in funcs:
        return funcs[role]
    for alias in ALIASES[role]:
        for name, f in funcs.items():
            if name.lower().replace("_", "") == alias:
                return f
    return None


def _split_args(text: str) -> List[str]:
    out, depth, cur = [], 0, ""
    for c in text:
        if c == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += c in "(["
        depth -= c in ")]"
        cur += c
    if cur.strip():
        out.append(cur.strip())
    return out


def calls_of(src: str, name: str) -> List[List[str]]:
    """The argument lists (as text) of the calls of ``name`` in ``src`` (not its definition)."""
    clean = strip_c(src)
    out = []
    for m in re.finditer(r"\b" + re.escape(name) + r"\s*\(", clean):
        depth, j = 1, m.end()
        while j < len(clean) and depth:
            depth += clean[j] == "("
            depth -= clean[j] == ")"
            j += 1
        after = clean[j:j + 40].lstrip()
        if after.startswith("{") or re.match(r"^(__attribute__|;\s*$)", after) and "(" in clean[:m.start()][-1:]:
            continue  # the definition
        before = clean[max(0, m.start() - 40):m.start()]
        if re.search(r"(void|int|char|uint\w*|long|unsigned|static|inline|\*)\s*$", before):
            continue  # a definition or a declaration
        out.append(_split_args(src[m.end():j - 1]))
    return out


def _constant(expr: str, macros: set) -> bool:
    """An argument the test guest can repeat outside the student's function: literals
    and macros (a port number), not the caller's variables."""
    words = re.findall(r"[A-Za-z_]\w*", re.sub(r"0[xX][0-9a-fA-F]+|\d+[uUlL]*", " ", expr))
    casts = {"uint8_t", "uint16_t", "uint32_t", "int", "unsigned", "short", "char", "long", "uintptr_t"}
    return bool(expr) and all(w in macros or w in casts for w in words)


def _bind(src: str, funcs: Dict[str, Function], role: str, macros: set) -> tuple:
    """(Binding or None, why not) for one role."""
    f = _role_function(funcs, role)
    if f is None:
        return None, None
    ints = [i for i, p in enumerate(f.params) if not p.is_pointer]
    ptrs = [i for i, p in enumerate(f.params) if p.is_pointer]
    if role == "display":
        if not ptrs:
            return None, f"{f.name}() takes no string pointer"
        arg_i = ptrs[-1]
    elif role == "printVal":
        named = [i for i in ints if _VALUE_NAME.match(f.params[i].name)]
        if not ints:
            return None, f"{f.name}() takes no integer value"
        arg_i = named[-1] if named else ints[-1]
    else:
        arg_i = None
        if ptrs:
            return None, f"{f.name}() takes a pointer (an out parameter the test guest cannot supply)"
    others = [i for i in range(len(f.params)) if i != arg_i]
    args = [""] * len(f.params)
    if arg_i is not None:
        cast = "(const char *)" if role == "display" else "(unsigned int)"
        args[arg_i] = cast + "({arg})"
    how = f"{f.ret} {f.name}({', '.join(p.text for p in f.params)})"
    if others:
        calls = [c for c in calls_of(src, f.name) if len(c) == len(f.params)]
        usable = [c for c in calls if all(_constant(c[i], macros) for i in others)]
        if not usable:
            return None, (f"{f.name}() takes {len(others)} argument(s) besides the "
                          f"{'value' if arg_i is not None else 'call'} and guest.c never calls it with "
                          "constants (a port) the test guest could repeat")
        for i in others:
            args[i] = usable[0][i]
        how += f": {', '.join(f.params[i].name or str(i) for i in others)} as guest.c's own calls pass them"
    return Binding(role, f, f"{f.name}({', '.join(args)})", how), None


_WIDTH = (("8", 1), ("char", 1), ("16", 2), ("short", 2), ("32", 4), ("int", 4), ("long", 4))


def _width(type_text: str) -> int:
    for word, n in _WIDTH:
        if word in type_text:
            return n
    return 4


def bind_wrappers(api: GuestApi, ports: Dict[str, tuple]) -> None:
    """Roles guest.c has no function for, bound to its own ``outb``/``inb``-style
    wrappers at the port its own run used for them.  ``ports``: role -> (port, size,
    direction) read from the own run's exit record (ownrun).  A wrapper is a function
    of (port, value) returning void (an OUT) or of (port) returning a value (an IN)
    with the record's width."""
    funcs = api.functions
    outs = [f for f in funcs.values() if len(f.params) == 2 and not any(p.is_pointer for p in f.params)
            and f.ret == "void" and re.search(r"port|^p$", f.params[0].name, re.I)]
    ins = [f for f in funcs.values() if len(f.params) == 1 and not f.params[0].is_pointer
           and f.ret != "void" and re.search(r"port|^p$", f.params[0].name, re.I)]
    for role, (port, size, direction) in ports.items():
        if api.bound(role) or role in api.functions:
            continue
        if role == "getNumExits":
            cands = [f for f in ins if _width(f.ret) >= size] if direction == "in" else []
            if cands:
                f = sorted(cands, key=lambda f: _width(f.ret))[0]
                api.bindings[role] = Binding(role, f, f"{f.name}({port:#x})",
                                             f"{f.name}({port:#x}): guest.c's IN wrapper at the port its own "
                                             "run used for getNumExits")
                api.unbound.pop(role, None)
            continue
        cands = [f for f in outs if _width(f.params[1].text) >= size]
        if not cands:
            continue
        f = sorted(cands, key=lambda f: _width(f.params[1].text))[0]
        cast = "(unsigned int)(unsigned long)" if role == "display" else "(unsigned int)"
        api.bindings[role] = Binding(role, f, f"{f.name}({port:#x}, {cast}({{arg}}))",
                                     f"{f.name}({port:#x}, value): guest.c's OUT wrapper at the port its own "
                                     f"run used for {role}")
        api.unbound.pop(role, None)


def analyse(src: str) -> GuestApi:
    funcs = find_functions(src)
    api = GuestApi(functions=funcs)
    macros = set(re.findall(r"^\s*#\s*define\s+([A-Za-z_]\w*)", src, re.M))
    macros |= set(re.findall(r"\b([A-Z][A-Z0-9_]{2,})\b", strip_c(src)))  # enum constants and the like
    for role in ASSIGNMENT_NAMES:
        b, why = _bind(src, funcs, role, macros)
        if b is not None:
            api.bindings[role] = b
        elif why:
            api.unbound[role] = why
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
        f'#define KVMLAB_MODE_DIGIT "{int(mode)}"',
        f'#define KVMLAB_NONCE "{nonce}"',
        f'#define KVMLAB_ABS_PATH "{abs_path}"',
    ]
    for name in ASSIGNMENT_NAMES:
        b = api.bindings.get(name)
        if b is not None:
            lines.append(f"#define KVMLAB_HAVE_{name.upper()} 1")
            param = "" if name == "getNumExits" else "arg"
            lines.append(f"#define KVMLAB_{name.upper()}({param}) ({b.call.replace('{arg}', 'arg')})")
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

