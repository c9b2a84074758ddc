"""Derive the grading-mode patches from each profile's reference patches:
    python images/grading/make_patches.py
host: the reference kvm.patch with host_hook.c inserted just before the reference's
handler (new lines inside the reference's first hunk: no new context to match);
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


def host(ref: str) -> str:
    lines = ref.split("\n")
    hook = ["+" + x if x else "+" for x in (HERE / "host_hook.c").read_text().rstrip("\n").split("\n")]
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
