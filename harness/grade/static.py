"""Static evidence for the human, read from a patch's added lines (nothing is run).

Host (kvm.patch): where the hypercall is recognised (file, function, the line), which
function IDs / HVC immediates it compares against, what the handler answers
(vcpu->cpu, smp_processor_id(), get_cpu(), the vCPU id, a constant ...), preemption
calls that do not pair up, a new ``case`` without ``break`` before the next label.
Guest (vm.patch): how the guest issues the call (hvc/svc/smc, inline assembly or the
SMCCC helpers), the x0 value and immediate, the syscall number and table entry, and
whether the table names a function the patch defines.

These are readings, not verdicts: the checks judge behaviour; these explain it, and
give the fallback function ID when no trace shows what the guest issues.
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Dict, List, Optional, Tuple

SMCCC_NAMES = {
    "ARM_SMCCC_FAST_CALL": 1, "ARM_SMCCC_STD_CALL": 0, "ARM_SMCCC_YIELDING_CALL": 0,
    "ARM_SMCCC_SMC_64": 1, "ARM_SMCCC_SMC_32": 0,
    "ARM_SMCCC_OWNER_ARCH": 0, "ARM_SMCCC_OWNER_CPU": 1, "ARM_SMCCC_OWNER_SIP": 2, "ARM_SMCCC_OWNER_OEM": 3,
    "ARM_SMCCC_OWNER_STANDARD": 4, "ARM_SMCCC_OWNER_STANDARD_HYP": 5, "ARM_SMCCC_OWNER_VENDOR_HYP": 6,
    "ARM_SMCCC_OWNER_TRUSTED_APP": 48, "ARM_SMCCC_OWNER_TRUSTED_OS": 50,
}
_OPS = {ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.LShift: operator.lshift,
        ast.RShift: operator.rshift, ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.BitXor: operator.xor}


def evaluate(expr: str, defines: Dict[str, str], depth: int = 0) -> Optional[int]:
    """An integer constant expression of C (numbers, macros defined in the patch,
    ARM_SMCCC_CALL_VAL, | & << >> + - *), or None."""
    if depth > 8:
        return None
    expr = expr.strip().rstrip(";").strip()
    m = re.match(r"^ARM_SMCCC_CALL_VAL\s*\((.*)\)$", expr, re.S)
    if m:
        args = [a.strip() for a in m.group(1).split(",")]
        vals = [evaluate(a, defines, depth + 1) for a in args]
        if len(vals) != 4 or any(v is None for v in vals):
            return None
        t, c, o, f = vals
        return (t << 31) | (c << 30) | ((o & 0x3F) << 24) | (f & 0xFFFF)
    if re.fullmatch(r"[A-Za-z_]\w*", expr):
        if expr in SMCCC_NAMES:
            return SMCCC_NAMES[expr]
        if expr in defines:
            return evaluate(defines[expr], defines, depth + 1)
        return None
    text = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr)
    text = re.sub(r"\((?:unsigned\s+)?(?:long|int|u32|u64|unsigned)\s*(?:long)?\)", "", text)
    text = re.sub(r"\b[A-Za-z_]\w*\b", lambda n: str(evaluate(n.group(0), defines, depth + 1))
                  if evaluate(n.group(0), defines, depth + 1) is not None else n.group(0), text)
    try:
        return _eval(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, KeyError):
        return None


def _eval(node) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
        return ~_eval(node.operand) & 0xFFFFFFFFFFFFFFFF
    raise ValueError("not a constant")


def added(text: str) -> List[Tuple[str, str, str]]:
    """(file, hunk function context, line) for every added line."""
    out = []
    file, ctx = "", ""
    for line in text.splitlines():
        if line.startswith("+++ "):
            p = line[4:].split("\t")[0]
            file = p[2:] if p.startswith("b/") else p
            continue
        m = re.match(r"^@@ [^@]+ @@\s*(.*)$", line)
        if m:
            f = re.search(r"([A-Za-z_]\w*)\s*\(", m.group(1))
            ctx = f.group(1) if f else ""
            continue
        if line.startswith("+"):
            body = line[1:]
            d = re.match(r"^(?:static\s+|inline\s+)*[\w\s\*]+?\b([A-Za-z_]\w*)\s*\([^;]*\)?\s*\{?\s*$", body)
            s = re.match(r"^\s*SYSCALL_DEFINE\d\((\w+)", body)
            if s:
                ctx = f"sys_{s.group(1)}"
            elif d and not body.startswith((" ", "\t")) and d.group(1) not in ("if", "while", "for", "switch"):
                ctx = d.group(1)
            out.append((file, ctx, body))
    return out


def defines_of(lines: List[Tuple[str, str, str]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    joined = "\n".join(b for _, _, b in lines).replace("\\\n", " ")
    for m in re.finditer(r"^\s*#\s*define\s+([A-Za-z_]\w*)\s+(.+)$", joined, re.M):
        out[m.group(1)] = re.sub(r"/\*.*?\*/|//.*$", "", m.group(2)).strip()
    return out


def classify_value(expr: str) -> str:
    e = expr.replace(" ", "")
    if "smp_processor_id()" in e and "raw_" not in e:
        return "smp_processor_id()"
    if "raw_smp_processor_id()" in e:
        return "raw_smp_processor_id()"
    if "get_cpu()" in e:
        return "get_cpu()"
    if "vcpu->cpu" in e or "vcpu->arch.cpu" in e:
        return "vcpu->cpu"
    if re.search(r"vcpu_id|vcpu_idx|vcpu->vcpu_id|kvm_vcpu_get_idx", e):
        return "the vCPU id"
    if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)[uUlL]*", e):
        return f"the constant {e}"
    if re.search(r"NOT_SUPPORTED|~0", e):
        return "NOT_SUPPORTED"
    return e


def host_evidence(text: Optional[str]) -> dict:
    if not text:
        return {}
    lines = added(text)
    defs = defines_of(lines)
    ev: dict = {"sites": [], "returns": [], "func_ids": [], "imms": [], "notes": []}
    body = [b for _, _, b in lines]
    for f, ctx, b in lines:
        s = b.strip()
        m = re.match(r"^case\s+([^:]+):", s)
        cmp_ = re.search(r"(?:func_id|function|smccc_get_function\(vcpu\)|vcpu_get_reg\(vcpu,\s*0\)|x0|fn|id)\s*==\s*"
                         r"([A-Za-z_]\w*|0[xX][0-9a-fA-F]+|\d+)", s)
        imm = re.search(r"(?:hvc_get_imm\(vcpu\)|imm)\s*==\s*([A-Za-z_]\w*|0[xX][0-9a-fA-F]+|\d+)", s)
        if imm:
            v = evaluate(imm.group(1), defs)
            if v is not None and v not in ev["imms"]:
                ev["imms"].append(v)
            ev["sites"].append({"file": f, "function": ctx, "line": s})
        elif m or cmp_:
            v = evaluate((m or cmp_).group(1), defs)
            if v is not None and v not in ev["func_ids"]:
                ev["func_ids"].append(v)
            ev["sites"].append({"file": f, "function": ctx, "line": s})
        if "hvc_get_imm" in s and not imm:
            ev["sites"].append({"file": f, "function": ctx, "line": s})
        for pat in (r"smccc_set_retval\(\s*vcpu\s*,\s*(.+?)\s*,", r"vcpu_set_reg\(\s*vcpu\s*,\s*0\s*,\s*(.+)\)\s*;",
                    r"^\s*val(?:\[0\])?\s*=\s*(.+);", r"^\s*(?:ret|res|result|cpu|pcpu)\s*=\s*(.+);",
                    r"^\s*return\s+(.+);"):
            r = re.search(pat, s)
            trivial = r"\s*(?:1|0|ret|val|-?E\w+|kvm_psci_call\(vcpu\))\s*" if "return" in pat else r"\s*(?:ret|val)\s*"
            if r and not re.fullmatch(trivial, r.group(1)):
                ev["returns"].append({"file": f, "function": ctx, "line": s, "value": classify_value(r.group(1))})
                break
    counts = {k: sum(b.count(k + "(") for b in body) for k in ("preempt_disable", "preempt_enable",
                                                                 "get_cpu", "put_cpu", "printk", "pr_info", "kvm_info")}
    ev["calls"] = {k: v for k, v in counts.items() if v}
    if counts["preempt_disable"] > counts["preempt_enable"]:
        ev["notes"].append("preempt_disable() without a matching preempt_enable()")
    if counts["get_cpu"] > counts["put_cpu"]:
        ev["notes"].append("get_cpu() without a matching put_cpu()")
    if counts["printk"] + counts["pr_info"] + counts["kvm_info"]:
        ev["notes"].append("prints on the hypercall path (a line per call?)")
    ev["notes"] += fallthrough_notes(added_runs(text))
    ev["defines"] = {k: v for k, v in defs.items()}
    return ev


def added_runs(text: str) -> List[List[str]]:
    """Runs of consecutive added lines (a case's body is judged within its run)."""
    runs: List[List[str]] = []
    cur: List[str] = []
    for line in text.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            cur.append(line[1:])
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def fallthrough_notes(runs: List[List[str]]) -> List[str]:
    """A new ``case X:`` with statements of its own that reach the next label, or the end
    of the added lines, without break/return (stacked labels are not a fall-through)."""
    notes = []
    for run in runs:
        code = [re.sub(r"/\*.*?\*/|//.*$", "", b).strip() for b in run]
        code = [c for c in code if c and not c.startswith(("*", "/*"))]
        for i, s in enumerate(code):
            m = re.match(r"^case\s+([^:]+):", s)
            if not m:
                continue
            stmts = False
            for nxt in code[i + 1:]:
                if re.match(r"^(break|return\b|goto\b)", nxt) or "fallthrough" in nxt:
                    break
                if re.match(r"^(case\s|default\s*:)", nxt):
                    if stmts:
                        notes.append(f"case {m.group(1).strip()}: falls through to '{nxt}'")
                    break
                stmts = True
            else:
                if stmts:
                    notes.append(f"case {m.group(1).strip()}: no break/return after its statements "
                                 "(it runs into the code after it)")
    return notes


def guest_evidence(text: Optional[str]) -> dict:
    if not text:
        return {}
    lines = added(text)
    defs = defines_of(lines)
    ev: dict = {"issues": [], "hvc_imms": [], "func_ids": [], "syscall": {}, "notes": []}
    joined = "\n".join(b for _, _, b in lines)
    for f, ctx, b in lines:
        s = b.strip()
        for insn in ("hvc", "svc", "smc"):
            for m in re.finditer(rf"\b{insn}\s+#?\s*(0[xX][0-9a-fA-F]+|\d+)", s):
                ev["issues"].append({"how": f"{insn} #{m.group(1)} (inline assembly)", "file": f, "function": ctx,
                                     "line": s})
                if insn == "hvc":
                    v = int(m.group(1), 0)
                    if v not in ev["hvc_imms"]:
                        ev["hvc_imms"].append(v)
        m = re.search(r"\b(arm_smccc_1_1_hvc|arm_smccc_hvc|__arm_smccc_hvc|arm_smccc_1_1_invoke)\s*\(\s*([^,)]+)", s)
        if m:
            ev["issues"].append({"how": m.group(1) + "()", "file": f, "function": ctx, "line": s})
            if 0 not in ev["hvc_imms"]:
                ev["hvc_imms"].append(0)
            v = evaluate(m.group(2), defs)
            if v is not None and v not in ev["func_ids"]:
                ev["func_ids"].append(v)
        for pat in (r"\bmov\s+[xw]0\s*,\s*#?\s*(0[xX][0-9a-fA-F]+|\d+)",
                    r"register\s+[\w\s]+asm\s*\(\s*\"[xw]0\"\s*\)\s*=\s*([^;]+);",
                    r"\bldr\s+[xw]0\s*,\s*=\s*(0[xX][0-9a-fA-F]+|\d+)"):
            m = re.search(pat, s)
            if m:
                v = evaluate(m.group(1), defs)
                if v is not None and v not in ev["func_ids"]:
                    ev["func_ids"].append(v)
        if re.search(r"\"[^\"]*\b(?:mov|ldr|str)\s+r\d+\b", s):
            ev["notes"].append(f"arm32 register names in arm64 assembly: {s}")
    nr = re.search(r"#\s*define\s+(__NR_\w+)\s+(\d+)", joined)
    entry = re.search(r"__SYSCALL\(\s*(__NR_\w+|\d+)\s*,\s*(\w+)\s*\)", joined)
    # from 6.11 arm64's numbers and table come from scripts/syscall.tbl: "463 common name sys_name"
    tbl = next((m for f, _, b in lines if f.endswith("syscall.tbl")
                for m in [re.match(r"^\s*(\d+)\s+\w+\s+(\w+)\s+(\w+)", b)] if m), None)
    defined = re.findall(r"SYSCALL_DEFINE\d\(\s*(\w+)", joined)
    sc = ev["syscall"]
    if nr:
        sc["name"], sc["nr"] = nr.group(1), int(nr.group(2))
    elif tbl:
        sc["name"], sc["nr"] = f"__NR_{tbl.group(2)}", int(tbl.group(1))
    table_fn = entry.group(2) if entry else tbl.group(3) if tbl else None
    if table_fn:
        sc["table_entry"] = table_fn
    sc["defines"] = [f"sys_{d}" for d in defined]
    if table_fn and defined and table_fn not in sc["defines"] and not re.search(
            rf"\b{re.escape(table_fn)}\s*\(", joined.replace("SYSCALL_DEFINE", "")):
        ev["notes"].append(f"the syscall table names {table_fn} but the patch defines "
                           f"{', '.join(sc['defines'])} (link error: undefined __arm64_{table_fn})")
    if nr and not table_fn:
        ev["notes"].append(f"{nr.group(1)} is defined but no __SYSCALL() table entry is added (-ENOSYS)")
    if not any(i["how"].startswith(("hvc", "arm_smccc", "__arm_smccc")) for i in ev["issues"]):
        if any(i["how"].startswith("svc") for i in ev["issues"]):
            ev["notes"].append("issues svc, not hvc (from guest EL1 that does not reach the hypervisor)")
        else:
            ev["notes"].append("no hvc instruction or SMCCC HVC helper on the added lines")
    return ev
