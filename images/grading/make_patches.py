"""Derive the grading-mode patches from each profile's reference patches:
    python images/grading/make_patches.py
host: the reference kvm.patch with host_hook.c (its kvm_hvc_call_handler renamed to the
reference's handler, kvm_smccc_call_handler from 6.4) inserted just before the reference's
handler (new lines inside the reference's first hunk: no new context to match); where
handle_smc() calls that handler too (from 6.4) the hook answers HVCs only, as it does up to 6.3;
guest: the reference vm.patch with host_cpuid.c replaced by guest_host_cpuid.c.
The outputs are committed (images/profiles/<v>/grading/)."""
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILES = HERE.parent / "profiles"


def bump_hunk(header: str, added: int) -> str:
    m = re.match(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@(.*)", header)
    a, b, c, d, rest = m.groups()
    return f"@@ -{a},{b} +{c},{int(d) + added} @@{rest}"


def shift_later_hunks(lines, start, file_end, added):
    for i in range(start, file_end):
        m = re.match(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@(.*)", lines[i])
        if m:
            a, b, c, d, rest = m.groups()
            lines[i] = f"@@ -{a},{b} +{int(c) + added},{d} @@{rest}"


def handler_name(ref: str) -> str:
    """The SMCCC handler the reference answers in: the function named in the header of
    the hunk that adds the answer (kvm_hvc_call_handler up to 6.3, kvm_smccc_call_handler
    from 6.4)."""
    header = ""
    for line in ref.split("\n"):
        if line.startswith("@@"):
            header = line
        elif line.startswith("+") and "vcpu->cpu" in line:
            m = re.search(r"\b(kvm_\w+_call_handler)\(", header)
            if m:
                return m.group(1)
    raise SystemExit("make_patches.py: cannot tell the SMCCC handler of a reference kvm.patch "
                     "(no hunk header names kvm_*_call_handler before the line reading vcpu->cpu)")


# Handlers that handle_smc() calls as well: kvm_smccc_call_handler() serves the SMC conduit from
# 6.4 on, while up to 6.3 an SMC never reaches kvm_hvc_call_handler() (the guest gets ~0).  There
# the hook must not answer an SMC, or the grading host would accept a guest the older ones refuse.
SERVES_SMC = ("kvm_smccc_call_handler",)
IMM_OK = "\tbool imm_ok = grade_imm < 0 || kvm_vcpu_hvc_get_imm(vcpu) == grade_imm;\n"
HVC_ONLY = ("\t/* handle_smc() calls this handler too: only an HVC is host_cpuid */\n"
            "\tu8 ec = kvm_vcpu_trap_get_class(vcpu);\n"
            "\tbool hvc = ec == ESR_ELx_EC_HVC64 || ec == ESR_ELx_EC_HVC32;\n")


def hook_source(handler: str) -> str:
    src = (HERE / "host_hook.c").read_text().replace("kvm_hvc_call_handler", handler)
    if handler in SERVES_SMC:
        assert IMM_OK in src and "\tif (func_ok && imm_ok) {" in src, "host_hook.c changed: update HVC_ONLY"
        src = src.replace(IMM_OK, IMM_OK + HVC_ONLY).replace("\tif (func_ok && imm_ok) {", "\tif (hvc && func_ok && imm_ok) {")
    return src


def host(ref: str) -> str:
    lines = ref.split("\n")
    hook_src = hook_source(handler_name(ref))
    hook = ["+" + x if x else "+" for x in hook_src.rstrip("\n").split("\n")]
    # insert after the reference's '#define KVM_HOST_CPUID_FUNC_ID' block (ends at the first '+' line
    # followed by a non-'+' line after the define)
    i = next(k for k, x in enumerate(lines) if x.startswith("+#define KVM_HOST_CPUID_FUNC_ID"))
    while lines[i + 1].startswith("+"):
        i += 1
    hunk = max(k for k in range(i) if lines[k].startswith("@@"))
    lines[hunk] = bump_hunk(lines[hunk], len(hook))
    nxt = next((k for k in range(i, len(lines)) if lines[k].startswith("diff --git")), len(lines))
    shift_later_hunks(lines, i + 1, nxt, len(hook))
    lines[i + 1:i + 1] = hook
    head = "KVM: arm64: host_cpuid, GRADING MODE (reference patch + harness/grade's hook)\n\n"
    return head + "\n".join(lines[lines.index(next(x for x in lines if x.startswith("diff --git"))):])


def guest(ref: str) -> str:
    src = (HERE / "guest_host_cpuid.c").read_text().rstrip("\n").split("\n")
    out, skip = [], False
    for line in ref.split("\n"):
        if line.startswith("diff --git"):
            skip = False
        if skip:
            continue
        out.append(line)
        if line == "+++ b/arch/arm64/kernel/host_cpuid.c":
            out.append(f"@@ -0,0 +1,{len(src)} @@")
            out += ["+" + x if x else "+" for x in src]
            skip = True
    text = "\n".join(out)
    text = text[text.index("diff --git"):]
    return "arm64: sys_host_cpuid, GRADING MODE (function ID and HVC immediate from the command line)\n\n" + text


for prof in sorted(PROFILES.iterdir()):
    if not (prof / "kvm.patch").exists():
        continue
    d = prof / "grading"
    d.mkdir(exist_ok=True)
    (d / "kvm.patch").write_text(host((prof / "kvm.patch").read_text()))
    (d / "vm.patch").write_text(guest((prof / "vm.patch").read_text()))
    print("wrote", d)
