"""harness/grade/machinery.py: hunks that change how the kernel is built, or reach beyond
the patch's half, are flagged for a human with the hunk; adding a source file and its
object line is not."""
from harness.grade import machinery, outputs
from harness.build.profiles import all_profiles


def diff(path, old, new, created=False):
    a = "/dev/null" if created else f"a/{path}"
    head = f"diff --git a/{path} b/{path}\n" + ("new file mode 100644\n" if created else "")
    o = old.splitlines()
    n = new.splitlines()
    body = "".join(f" {ln}\n" for ln in o if ln in n) + "".join(f"-{ln}\n" for ln in o if ln not in n) + \
        "".join(f"+{ln}\n" for ln in n if ln not in o)
    return head + f"--- {a}\n+++ b/{path}\n@@ -{0 if created else 1},{len(o)} +1,{len(n)} @@\n" + body


MK = "obj-$(CONFIG_KVM) += kvm.o\nkvm-y += arm.o mmu.o\n"


def whys(text, role="host"):
    return [(f.file, f.why) for f in machinery.review(text, role)]


def test_adding_a_source_file_and_its_object_is_not_flagged():
    text = diff("arch/arm64/kvm/Makefile", MK, MK + "kvm-y += hostcpuid.o \\\n\tother.o\n") + \
        diff("arch/arm64/kvm/hostcpuid.c", "", "int x;\n", created=True)
    assert whys(text) == []
    guest = diff("kernel/Makefile", "obj-y = fork.o\n", "obj-y = fork.o\nobj-y += my_cpuid.o\n") + \
        diff("kernel/my_cpuid.c", "", "long f(void);\n", created=True)
    assert whys(guest, "guest") == []


def test_the_reference_patches_are_not_flagged():
    for prof in all_profiles().values():
        for path, role in ((prof.reference_kvm_patch, "host"), (prof.reference_vm_patch, "guest")):
            assert whys(path.read_text(), role) == [], path


def test_build_machinery_is_flagged_with_its_hunk():
    shell = diff("arch/arm64/kvm/Makefile", MK, MK + "$(info $(shell cat /etc/shadow))\n")
    found = machinery.review(shell, "host")
    assert [(f.file, f.why) for f in found] == [("arch/arm64/kvm/Makefile", "runs a shell command at build time ($(shell ...))")]
    assert "+$(info $(shell cat /etc/shadow))" in found[0].hunk and found[0].hunk.startswith("--- arch/arm64/kvm/Makefile")
    assert "not scored" in found[0].flag() and "kvm.patch" in found[0].flag()
    assert whys(diff("arch/arm64/kvm/Makefile", MK, MK + "ccflags-y += -O0 -w\n")) == [
        ("arch/arm64/kvm/Makefile", "changes the toolchain's flags")]
    assert whys(diff("arch/arm64/kvm/Makefile", MK, MK + "foo:\n\ttouch /tmp/x\n")) == [
        ("arch/arm64/kvm/Makefile", "changes a Makefile recipe")]
    assert whys(diff("Makefile", "all:\n", "all:\nexport X := 1\n")) == [("Makefile", "changes Makefile rules (beyond adding an object)")]
    assert whys(diff("scripts/link-vmlinux.sh", "a\n", "a\nb\n")) == [
        ("scripts/link-vmlinux.sh", "changes the kernel's build scripts (scripts/)")]
    assert whys(diff("arch/arm64/kvm/Kconfig", "config KVM\n\tbool\n", "config KVM\n\tbool\n\tdefault y\n")) == [
        ("arch/arm64/kvm/Kconfig", "changes Kconfig defaults (default/select)")]
    assert whys(diff("arch/arm64/configs/defconfig", "A=y\n", "A=y\nB=y\n")) == [
        ("arch/arm64/configs/defconfig", "changes a kernel configuration (defconfig)")]


def test_a_file_outside_the_half_is_flagged_unless_diffcheck_names_it():
    assert whys(diff("kernel/fork.c", "a\n", "b\n")) == [("kernel/fork.c", "touches a file outside its half")]
    assert whys(diff("kernel/sys.c", "a\n", "b\n")) == []          # the guest's file: diffcheck's flag
    assert whys(diff("virt/kvm/kvm_main.c", "a\n", "b\n"), "guest") == []
    assert whys(diff("mm/mmap.c", "a\n", "b\n"), "guest") == [("mm/mmap.c", "touches a file outside its half")]


def test_flags_reach_grades_csv_and_index_html_with_the_hunk(tmp_path):
    found = machinery.review(diff("arch/arm64/kvm/Makefile", MK, MK + "$(info $(shell id))\n"), "host")
    r = {"id": "g01", "status": "graded", "flags": [f.flag() for f in found], "problems": [],
         "review": [f.to_dict() for f in found], "scores": {}, "checks": []}
    outputs.write_csv(tmp_path / "grades.csv", [r])
    assert "for a human to read: kvm.patch runs a shell command" in (tmp_path / "grades.csv").read_text()
    outputs.write_index(tmp_path, [r], [])
    page = (tmp_path / "index.html").read_text()
    assert "<details><summary>kvm.patch: arch/arm64/kvm/Makefile</summary>" in page
    assert "+$(info $(shell id))" in page
