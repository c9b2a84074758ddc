import subprocess

import pytest

from harness.grade import diffcheck, static
from tests.grade.fixtures import fixtures, ref


def ev(text, role):
    d = diffcheck.check(text.encode(), role)
    assert d.ok, d.why
    t = d.normalized.decode()
    return static.host_evidence(t) if role == "host" else static.guest_evidence(t)


@pytest.mark.parametrize("profile", ["6.1", "5.4"])
def test_reference_ids_evaluated(profile):
    assert 0xC6000040 in ev(ref(profile, "kvm.patch"), "host")["func_ids"]
    g = ev(ref(profile, "vm.patch"), "guest")
    assert g["func_ids"] == [0xC6000040] and g["hvc_imms"] == [0]
    assert g["syscall"]["nr"] == (451 if profile == "6.1" else 436)


@pytest.mark.parametrize("profile", ["6.1", "5.4"])
def test_fixture_designs_read(profile):
    fx = {f.name: f for f in fixtures(profile)}
    assert ev(fx["good-id8"].kvm, "host")["func_ids"] == [8]
    assert ev(fx["good-id8"].vm, "guest")["func_ids"] == [8]
    assert ev(fx["good-imm87"].kvm, "host")["imms"] == [87]
    assert ev(fx["good-imm87"].vm, "guest")["hvc_imms"] == [87]
    vals = {n: [r["value"] for r in ev(fx[n].kvm, "host")["returns"]] for n in
            ("good-id8", "good-getcpu", "bad-vcpuid", "bad-const", "bad-smp")}
    assert vals == {"good-id8": ["vcpu->cpu"], "good-getcpu": ["get_cpu()"], "bad-vcpuid": ["the vCPU id"],
                    "bad-const": ["the constant 1"], "bad-smp": ["smp_processor_id()"]}
    assert any("no break" in n for n in ev(fx["bad-fallthrough"].kvm, "host")["notes"])
    assert not ev(fx["good-id8"].kvm, "host")["notes"]
    assert any("preempt_disable" in n for n in ev(fx["bad-preempt"].kvm, "host")["notes"])
    assert any("link error" in n for n in ev(fx["bad-link"].vm, "guest")["notes"])
    assert any("no hvc" in n for n in ev(fx["bad-nohvc"].vm, "guest")["notes"])
    assert any("arm32 register" in n for n in ev(fx["bad-asm"].vm, "guest")["notes"])


def test_shape_crlf_strip_reversed_roles():
    good = fixtures("6.1")[0]
    d = diffcheck.check(good.kvm.replace("\n", "\r\n").encode(), "host")
    assert any("CRLF" in f for f in d.flags) and b"\r" not in d.normalized
    deep = good.vm.replace(" a/", " a/linux/").replace(" b/", " b/linux/")
    d = diffcheck.check(deep.encode(), "guest")
    assert d.strip == 2 and any("strip level 2" in f for f in d.flags)
    assert "include/uapi/asm-generic/unistd.h" in d.files
    d = diffcheck.check(diffcheck.reverse(good.vm).encode(), "guest")
    assert d.reversed and d.normalized.decode().strip() == good.vm.strip()
    d = diffcheck.check((good.kvm + good.vm).encode(), "host")
    assert any("guest's syscall file include/uapi/asm-generic/unistd.h" in f for f in d.flags)
    d = diffcheck.check((good.vm + good.kvm).encode(), "guest")
    assert any("vm.patch touches KVM" in f for f in d.flags)
    assert not diffcheck.check(b"just text\n", "host").ok


def test_apply_modes_against_a_tree(tmp_path):
    tree = tmp_path / "t"
    (tree / "virt").mkdir(parents=True)
    orig = "".join(f"line {i}\n" for i in range(40))
    (tree / "virt" / "a.c").write_text(orig)
    new = orig.replace("line 20\n", "line 20\nadded\n")
    (tmp_path / "new.c").write_text(new)
    diff = subprocess.run(["diff", "-u", "--label", "a/virt/a.c", "--label", "b/virt/a.c", str(tree / "virt" / "a.c"),
                           str(tmp_path / "new.c")], capture_output=True, text=True).stdout
    assert diffcheck.check(diff.encode(), "host", tree).apply == "exact"
    (tree / "virt" / "a.c").write_text("extra\nextra\n" + orig)        # another tree version: offsets
    d = diffcheck.check(diff.encode(), "host", tree)
    assert d.apply == "offset" and any("offset" in f for f in d.flags)
    (tree / "virt" / "a.c").write_text(orig.replace("line 19", "changed 19").replace("line 21", "changed 21")
                                       .replace("line 22", "changed 22"))
    assert diffcheck.check(diff.encode(), "host", tree).apply == "fails"


def test_fixtures_apply_to_61(tree61):
    for f in fixtures("6.1"):
        for role, text in (("host", f.kvm), ("guest", f.vm)):
            d = diffcheck.check(text.encode(), role, tree61)
            assert d.apply == ("fails" if (f.name, role) == ("bad-apply", "guest") else "exact"), (f.name, role, d.apply_detail)


def test_fixtures_apply_to_54(tree54):
    for f in fixtures("5.4"):
        for role, text in (("host", f.kvm), ("guest", f.vm)):
            d = diffcheck.check(text.encode(), role, tree54)
            assert d.apply != "fails" or (f.name, role) == ("bad-apply", "guest"), (f.name, role, d.apply_detail)


def test_bad_preempt_fixture_is_valid_c_that_leaves_preemption_disabled():
    # it once lacked the ';' and failed to build: graded hc.builds, not the preemption bug it is about
    from tests.grade.fixtures import fixtures

    for prof in ("6.1", "5.4"):
        kvm = {f.name: f for f in fixtures(prof)}["bad-preempt"].kvm
        assert "+\t\tpreempt_disable();\n" in kvm and "preempt_enable" not in kvm
