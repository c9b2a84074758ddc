"""Student-style hw2 submissions, generated (never committed as binaries).

Each fixture is a (kvm.patch, vm.patch, report) triple written the way students
write them (see the field notes on student submissions): a plain small
function ID, the HVC immediate, get_cpu()/put_cpu(), and the usual bugs.  Patches are
derived from the profile's reference patches by replacing added lines only (so their
context still applies), and the hunk headers are recounted.  ``expect`` is the class
and the points a careful human would give the automatic part."""
from __future__ import annotations

import io
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]


def recount(text: str) -> str:
    """Recompute every hunk header's line counts from its body."""
    lines = text.split("\n")
    out: List[str] = []
    i = 0
    delta = 0
    while i < len(lines):
        m = re.match(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$", lines[i])
        if not m:
            if lines[i].startswith("diff --git"):
                delta = 0
            out.append(lines[i])
            i += 1
            continue
        j = i + 1
        old = new = 0
        while j < len(lines) and not lines[j].startswith(("@@", "diff --git")) and not (
                lines[j] == "" and j == len(lines) - 1):
            c = lines[j][:1]
            if c in (" ", ""):
                old += 1
                new += 1
            elif c == "-":
                old += 1
            elif c == "+":
                new += 1
            j += 1
        a = int(m.group(1))
        b = 1 if a == 0 else a + delta
        delta += new - old
        out.append(f"@@ -{a},{old} +{b},{new} @@{m.group(3)}")
        out += lines[i + 1:j]
        i = j
    return "\n".join(out)


def plus(code: str) -> str:
    return "\n".join("+" + ln if ln else "+" for ln in code.strip("\n").split("\n"))


def new_file(path: str, code: str) -> str:
    body = plus(code)
    n = body.count("\n") + 1
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n--- /dev/null\n"
            f"+++ b/{path}\n@@ -0,0 +1,{n} @@\n{body}\n")


def ref(profile: str, name: str) -> str:
    text = (REPO / "images" / "profiles" / profile / name).read_text()
    return text[text.index("diff --git"):]


def replace_file(patch: str, path: str, section: str) -> str:
    """The patch with the section for ``path`` replaced (or appended)."""
    parts = re.split(r"(?m)^(?=diff --git )", patch)
    out = [p for p in parts if p and not p.startswith(f"diff --git a/{path} ")]
    return "".join(out + [section])


def edit(patch: str, old: str, new: str) -> str:
    assert old in patch, old
    return recount(patch.replace(old, new, 1))


def pdf(pages: int = 2, text: str = "host_cpuid report") -> bytes:
    """A minimal valid PDF (correct xref) with ``pages`` pages of one text line."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * k} 0 R" for k in range(pages))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>")
    font = 3 + 2 * pages
    for k in range(pages):
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents {4 + 2 * k} 0 R "
                    f"/Resources << /Font << /F1 {font} 0 R >> >> >>")
        stream = f"BT /F1 14 Tf 20 150 Td ({text} p{k + 1}) Tj ET"
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objs.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n{o}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


# -- guests ----------------------------------------------------------------------------------
def guest_asm(profile: str, func: str = "8", insn: str = "hvc #0", x0_in: bool = True, where: str = "file",
              body: Optional[str] = None) -> str:
    """A student's vm.patch: the reference's table edits, their own host_cpuid.c."""
    code = body or f"""
#include <linux/syscalls.h>

SYSCALL_DEFINE0(host_cpuid)
{{
	register unsigned long x0 asm("x0") = {func};

	asm volatile("{insn}" : "+r"(x0) : : "x1", "x2", "x3", "memory");
	return x0;
}}
"""
    p = ref(profile, "vm.patch")
    return replace_file(p, "arch/arm64/kernel/host_cpuid.c", new_file("arch/arm64/kernel/host_cpuid.c", code))


# -- hosts -----------------------------------------------------------------------------------
REF_RET = {"6.12": "+\t\tval[0] = READ_ONCE(vcpu->cpu);", "6.1": "+\t\tval[0] = READ_ONCE(vcpu->cpu);",
           "5.4": "+\t\tval = READ_ONCE(vcpu->cpu);"}
_DEFINE_6 = ("+#define KVM_HOST_CPUID_FUNC_ID\t\t\t\t\t\t\\\n+\tARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_64,\t\\\n"
             "+\t\t\t   ARM_SMCCC_OWNER_VENDOR_HYP, 0x40)")
REF_DEFINE = {
    "6.12": _DEFINE_6,
    "6.1": _DEFINE_6,
    "5.4": "+#define KVM_HOST_CPUID_FUNC_ID\t\t\t\t\t\t\\\n+\tARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_64, 6, 0x40)",
}
VAL = {"6.12": "val[0]", "6.1": "val[0]", "5.4": "val"}
# host_cpuid's syscall number (the profile's syscall_nr)
NR = {"6.12": 463, "6.1": 451, "5.4": 436}
# arm64 takes its syscall numbers from scripts/syscall.tbl since 6.11: the reference's table line
TBL = {"6.12": "+463\tcommon\thost_cpuid\t\t\tsys_host_cpuid"}
# handle_hvc() in arch/arm64/kvm/handle_exit.c: (first line, signature, context lines between
# '{' and the trace call); host_imm() adds its block after the HVC statistics
HANDLE_HVC = {
    "6.12": (37, "static int handle_hvc(struct kvm_vcpu *vcpu)", ""),
    "6.1": (36, "static int handle_hvc(struct kvm_vcpu *vcpu)", " \tint ret;\n \n"),
    "5.4": (39, "static int handle_hvc(struct kvm_vcpu *vcpu, struct kvm_run *run)", " \tint ret;\n \n"),
}


def host_returning(profile: str, expr: str, func: Optional[str] = None, pre: str = "", post: str = "",
                   brk: bool = True) -> str:
    p = ref(profile, "kvm.patch")
    if func is not None:
        p = edit(p, REF_DEFINE[profile], f"+#define KVM_HOST_CPUID_FUNC_ID {func}")
    lines = [f"+\t\t{x.strip()};" for x in pre.split(";") if x.strip()] + [f"+\t\t{VAL[profile]} = {expr};"] + \
            [f"+\t\t{x.strip()};" for x in post.split(";") if x.strip()]
    old = REF_RET[profile] + ("" if brk else "\n+\t\tbreak;")
    p = edit(p, old, "\n".join(lines))
    return p


def host_imm(profile: str, imm: int = 87, every_hvc: bool = False) -> str:
    """Keyed on the HVC immediate in handle_hvc() (arch/arm64/kvm/handle_exit.c)."""
    cond = "" if every_hvc else f"\tif (kvm_vcpu_hvc_get_imm(vcpu) == {imm}) {{\n"
    ind = "\t" if every_hvc else "\t\t"
    block = (cond + f"{ind}vcpu_set_reg(vcpu, 0, READ_ONCE(vcpu->cpu));\n{ind}return 1;\n"
             + ("" if every_hvc else "\t}\n"))
    start, sig, decl = HANDLE_HVC[profile]
    hunk = (f"diff --git a/arch/arm64/kvm/handle_exit.c b/arch/arm64/kvm/handle_exit.c\n"
            f"--- a/arch/arm64/kvm/handle_exit.c\n+++ b/arch/arm64/kvm/handle_exit.c\n"
            f"@@ -{start},7 +{start},7 @@ \n {sig}\n {{\n{decl}"
            " \ttrace_kvm_hvc_arm64(*vcpu_pc(vcpu), vcpu_get_reg(vcpu, 0),\n"
            " \t\t\t    kvm_vcpu_hvc_get_imm(vcpu));\n \tvcpu->stat.hvc_exit_stat++;\n"
            + plus(block) + "\n \n")
    return recount(hunk)


@dataclass
class Fixture:
    name: str
    profile: str
    kvm: Optional[str]
    vm: Optional[str]
    report: Optional[bytes] = field(default_factory=pdf)
    zip_name: Optional[str] = None                  # default <name>_hw2.zip
    expect: Dict[str, object] = field(default_factory=dict)   # class, hypercall, syscall, flags...
    extra: Dict[str, bytes] = field(default_factory=dict)     # more members
    e2e: bool = False                               # in the representative e2e subset

    def files(self) -> Dict[str, bytes]:
        out = {}
        if self.kvm is not None:
            out["kvm.patch"] = self.kvm.encode()
        if self.vm is not None:
            out["vm.patch"] = self.vm.encode()
        if self.report is not None:
            out["report.pdf"] = self.report
        out.update(self.extra)
        return out


def make_zip(path: Path, files: Dict[str, bytes], folder: str = "", symlinks: Dict[str, str] = None,
             bomb: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in files.items():
            z.writestr((folder + "/" if folder else "") + n, data)
        for n, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(n)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
        if bomb:
            z.writestr("padding.bin", b"\0" * (20 << 20))
    return path


def fixtures(profile: str) -> List[Fixture]:
    nr = NR[profile]
    good_vm = guest_asm(profile, "8")
    # a wrong number, and a table entry naming a function nobody defines: in every table the patch edits
    bad_nr = edit(edit(good_vm, f"+#define __NR_host_cpuid {nr}", f"+#define __NR_host_cpuid {nr + 1}"),
                  f"+#define __NR_syscalls {nr + 1}", f"+#define __NR_syscalls {nr + 2}")
    bad_link = edit(good_vm, "+__SYSCALL(__NR_host_cpuid, sys_host_cpuid)", "+__SYSCALL(__NR_host_cpuid, sys_get_cpuid)")
    if profile in TBL:
        bad_nr = edit(bad_nr, TBL[profile], TBL[profile].replace(f"+{nr}\t", f"+{nr + 1}\t", 1))
        bad_link = edit(bad_link, TBL[profile], TBL[profile].replace("\tsys_host_cpuid", "\tsys_get_cpuid"))
    full = {"hypercall": 40, "syscall": 40}
    f = [
        Fixture("good-id8", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8"), good_vm,
                expect={"class": "correct", **full}, e2e=True),
        Fixture("good-imm87", profile, host_imm(profile, 87), guest_asm(profile, "0", "hvc #87"),
                expect={"class": "correct", **full}),
        Fixture("good-getcpu", profile, host_returning(profile, "get_cpu()", post="put_cpu()"),
                ref(profile, "vm.patch"), expect={"class": "correct", **full}),
        Fixture("bad-vcpuid", profile, host_returning(profile, "vcpu->vcpu_id", func="8"), good_vm,
                expect={"class": "hypercall-wrong", "fails": ["hc.pinned", "hc.ground_truth"], "hypercall": 22,
                        "syscall": 40}, e2e=True),
        # the call exists, its value is wrong: it keeps its build points (builds, boots, clean, in range)
        Fixture("bad-const", profile, host_returning(profile, "1", func="8"), good_vm,
                expect={"class": "hypercall-wrong", "fails": ["hc.pinned", "hc.ground_truth"], "hypercall": 22,
                        "syscall": 40, "no_flag": "no hypercall"}),
        # the new case falls into the next one (TRNG on 6.1, PSCI on 5.4): NOT_SUPPORTED, as unpatched
        Fixture("bad-fallthrough", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", brk=False), ref(profile, "vm.patch"),
                expect={"class": "hypercall-wrong", "fails": ["hc.range", "hc.pinned"], "hypercall": 0, "syscall": 40,
                        "gated": ["hc.builds", "hc.l1_nvhe", "hc.l2_vcpus", "hc.kernel_clean"],
                        "flag": "no hypercall (answers like an unpatched kernel)"}),
        Fixture("bad-smp", profile, host_returning(profile, "smp_processor_id()", func="8"), good_vm,
                expect={"class": "hypercall-wrong", "fails": ["hc.kernel_clean"], "syscall": 40}),
        # the preempt count grows by one per call: a serious bug, capped well below full marks
        Fixture("bad-preempt", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8", pre="preempt_disable()"),
                good_vm, expect={"class": "hypercall-wrong", "fails": ["hc.kernel_clean"], "hypercall_at_most": 20,
                                 "syscall": 40, "flag": "preemption left disabled"}),
        Fixture("bad-psci", profile, host_imm(profile, every_hvc=True), good_vm,
                expect={"class": "hypercall-wrong", "fails": ["hc.l2_vcpus"]}),
        Fixture("bad-nohvc", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8"),
                guest_asm(profile, body="""
#include <linux/smp.h>
#include <linux/syscalls.h>

SYSCALL_DEFINE0(host_cpuid)
{
	return raw_smp_processor_id();
}
"""), expect={"class": "syscall-wrong", "fails": ["sc.one_hvc", "sc.value"], "hypercall": 40, "syscall": 18},
            e2e=True),
        Fixture("bad-nr", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8"), bad_nr,
                expect={"class": "syscall-wrong", "fails": ["sc.number"], "hypercall": 40, "syscall": 0,
                        "gated": ["sc.builds", "sc.kernel_clean"], "flag": "no syscall"}),
        # `git diff > kvm.patch` in an untouched tree: nothing to grade, nothing earned
        Fixture("empty-kvm", profile, "", good_vm,
                expect={"class": "hypercall-wrong", "fails": ["hc.builds"], "hypercall": 0, "syscall": 40,
                        "flag": "no hypercall (kvm.patch is empty)"}),
        Fixture("empty-vm", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8"), "",
                expect={"class": "syscall-wrong", "fails": ["sc.builds"], "hypercall": 40, "syscall": 0,
                        "flag": "no syscall (vm.patch is empty)"}),
        Fixture("bad-link", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8"), bad_link,
                expect={"class": "syscall-wrong", "fails": ["sc.builds"], "hypercall": 40}),
        Fixture("bad-asm", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8"),
                guest_asm(profile, body="""
#include <linux/syscalls.h>

SYSCALL_DEFINE0(host_cpuid)
{
	unsigned long ret;

	asm volatile("mov r0, #8\\n\\thvc #0\\n\\tmov %0, r0" : "=r"(ret));
	return ret;
}
"""), expect={"class": "syscall-wrong", "fails": ["sc.builds"], "hypercall": 40}),
        Fixture("bad-apply", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", func="8"),
                good_vm.replace(" #undef __NR_syscalls", " #undef __NR_syscalls_typo", 1),
                expect={"class": "syscall-wrong", "fails": ["sc.builds"], "hypercall": 40}),
    ]
    return f


def bad_zips(profile: str, d: Path) -> Dict[str, dict]:
    """Hand-ins that are broken as archives: path -> expectation."""
    good = fixtures(profile)[0].files()
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    out[str(make_zip(d / "slip_hw2.zip", {**good, "../evil.txt": b"x"}))] = {"refused": "'..'"}
    out[str(make_zip(d / "bomb_hw2.zip", good, bomb=True))] = {"refused": "zip bomb"}
    out[str(make_zip(d / "symlink_hw2.zip", good, symlinks={"report.pdf": "/etc/passwd"}))] = {"refused": "symbolic link"}
    out[str(make_zip(d / "noreport_hw2.zip", {k: v for k, v in good.items() if k != "report.pdf"}))] = \
        {"problem": "missing report.pdf"}
    out[str(make_zip(d / "notpdf_hw2.zip", {**{k: v for k, v in good.items() if k != "report.pdf"},
                                            "report.pdf": b"My report\nwritten in a text editor\n"}))] = \
        {"report": "not a PDF"}
    out[str(make_zip(d / "Group7-HW2.zip", {k.upper() if k.endswith("patch") else k: v for k, v in good.items()},
                     folder="hw2"))] = {"flag": "is not <group_id>_hw2.zip"}
    return out
