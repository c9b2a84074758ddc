import os
import subprocess
from pathlib import Path

import pytest

from harness.grade import diffcheck, static
from tests.grade import conftest
from tests.grade.conftest import tree_or_skip
from tests.grade.fixtures import NR, TBL, fixtures, ref


def ev(text, role):
    d = diffcheck.check(text.encode(), role)
    assert d.ok, d.why
    t = d.normalized.decode()
    return static.host_evidence(t) if role == "host" else static.guest_evidence(t)


def test_syscall_numbers_are_the_profiles():
    from harness.build.profiles import all_profiles

    assert NR == {v: p.syscall_nr for v, p in all_profiles().items()}


@pytest.mark.parametrize("profile", ["6.12", "6.1", "5.4"])
def test_reference_ids_evaluated(profile):
    assert 0xC6000040 in ev(ref(profile, "kvm.patch"), "host")["func_ids"]
    g = ev(ref(profile, "vm.patch"), "guest")
    assert g["func_ids"] == [0xC6000040] and g["hvc_imms"] == [0]
    assert g["syscall"]["nr"] == NR[profile]


@pytest.mark.parametrize("profile", ["6.12", "6.1", "5.4"])
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
    assert ev(fx["bad-nr"].vm, "guest")["syscall"]["nr"] == NR[profile] + 1


def test_612_fixtures_edit_the_table_arm64_builds_from():
    # from 6.11 arm64's syscall numbers come from scripts/syscall.tbl, not asm-generic/unistd.h
    fx = {f.name: f for f in fixtures("6.12")}
    assert TBL["6.12"] in fx["good-id8"].vm
    assert "+464\tcommon\thost_cpuid\t\t\tsys_host_cpuid" in fx["bad-nr"].vm and TBL["6.12"] not in fx["bad-nr"].vm
    assert "+463\tcommon\thost_cpuid\t\t\tsys_get_cpuid" in fx["bad-link"].vm
    # handle_hvc() has no 'int ret;' since 6.4: the immediate-keyed hosts use its 6.12 context
    assert " \tint ret;" not in fx["good-imm87"].kvm and "@@ -37,6 +37,10 @@" in fx["good-imm87"].kvm


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


@pytest.mark.parametrize("profile", ["6.12", "6.1"])
def test_fixtures_apply_to_cached_tree(profile):
    tree = tree_or_skip(profile)
    for f in fixtures(profile):
        for role, text in (("host", f.kvm), ("guest", f.vm)):
            d = diffcheck.check(text.encode(), role, tree)
            # the references are written on one 6.12.y (bookworm-backports' 6.12.117); on
            # another (Debian 13's 6.12.107, found in the trixie root) a hunk moves a line:
            # an offset, never fuzz or a failure
            want = ("fails",) if (f.name, role) == ("bad-apply", "guest") else ("exact", "offset")
            if not text:
                assert d.empty, f.name   # empty-kvm, empty-vm: nothing to apply
                continue
            assert d.apply in want, (f.name, role, d.apply, d.apply_detail)


@pytest.mark.parametrize("profile", ["5.4", "6.12", "6.1"])
def test_hostile_fixtures_apply_to_the_profile_tree(profile):
    """The runtime-hostile variants (tests/grade/hostile_runtime.py) of each profile apply
    to that profile's tree (5.4 from KVM_HARNESS_KERNEL_TREE, 6.1/6.12 where extracted)."""
    from tests.grade.hostile_runtime import hostile
    if profile == "5.4":
        env = os.environ.get("KVM_HARNESS_KERNEL_TREE")
        if not env:
            pytest.skip("set KVM_HARNESS_KERNEL_TREE to a v5.4 tree to check the 5.4 fixtures against it")
        tree = Path(env)
    else:
        tree = tree_or_skip(profile)
    for h in hostile(profile):
        f = h.fixture
        for role, text in (("host", f.kvm), ("guest", f.vm)):
            if text:
                d = diffcheck.check(text.encode(), role, tree)
                assert d.apply in ("exact", "offset"), (profile, f.name, role, d.apply_detail)


def test_fixtures_apply_to_54(tree54):
    for f in fixtures("5.4"):
        for role, text in (("host", f.kvm), ("guest", f.vm)):
            d = diffcheck.check(text.encode(), role, tree54)
            assert d.apply != "fails" or d.empty or (f.name, role) == ("bad-apply", "guest"), (f.name, role, d.apply_detail)


def test_bad_preempt_fixture_is_valid_c_that_leaves_preemption_disabled():
    # it once lacked the ';' and failed to build: graded hc.builds, not the preemption bug it is about
    from tests.grade.fixtures import fixtures

    for prof in ("6.12", "6.1", "5.4"):
        kvm = {f.name: f for f in fixtures(prof)}["bad-preempt"].kvm
        assert "+\t\tpreempt_disable();\n" in kvm and "preempt_enable" not in kvm


def test_tree_skip_names_the_tarball_that_extracts_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))   # no extracted tree
    monkeypatch.setattr(conftest.sources, "auto_tarball",
                        lambda: (tmp_path / "linux-source-6.12.tar.xz", "Debian 13 ships linux-source-6.12"))
    with pytest.raises(pytest.skip.Exception, match=r"no extracted 6.12 tree .*`make run` once "
                                                    r"\(it extracts linux-source-6.12\)"):
        tree_or_skip("6.12")
    with pytest.raises(pytest.skip.Exception, match=r"kernel.tarball=/usr/src/linux-source-6.1.tar.xz.* `make run` "
                                                    r"extracts linux-source-6.12 on this machine"):
        tree_or_skip("6.1")


def test_grading_source_follows_the_default_or_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(conftest.ENV_GRADE_TARBALL, raising=False)
    monkeypatch.setattr(conftest.sources, "auto_tarball", lambda: (tmp_path / "linux-source-6.12.tar.xz", ""))
    assert conftest.grading_source() == (None, "6.12")
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    tarball.write_bytes(b"")
    monkeypatch.setenv(conftest.ENV_GRADE_TARBALL, str(tarball))
    assert conftest.grading_source() == (tarball, "6.1")

    def none():
        raise conftest.SourceError("kernel.tarball: auto: no /usr/src/linux-source-X.Y.tar.xz; install linux-source-6.12")
    monkeypatch.delenv(conftest.ENV_GRADE_TARBALL)
    monkeypatch.setattr(conftest.sources, "auto_tarball", none)
    with pytest.raises(pytest.skip.Exception, match="no kernel source to grade on: .*install linux-source-6.12"):
        conftest.grading_source()


def _without(patch: str, path: str) -> str:
    """The patch without its section for ``path``."""
    parts = patch.split("diff --git ")
    return "diff --git ".join(p for p in parts if not p.startswith(f"a/{path} "))


def test_612_number_and_entry_read_from_syscall_tbl_alone():
    # a 6.12 student may edit only scripts/syscall.tbl (arm64's source of truth since 6.11)
    vm = _without(ref("6.12", "vm.patch"), "include/uapi/asm-generic/unistd.h")
    assert "asm-generic/unistd.h" not in vm and TBL["6.12"] in vm
    sc = ev(vm, "guest")
    assert (sc["syscall"]["nr"], sc["syscall"]["name"], sc["syscall"]["table_entry"]) == \
        (NR["6.12"], "__NR_host_cpuid", "sys_host_cpuid")
    assert not [n for n in sc["notes"] if "table" in n]
    bad = vm.replace("\thost_cpuid\t\t\tsys_host_cpuid", "\thost_cpuid\t\t\tsys_get_cpuid")
    assert any("names sys_get_cpuid" in n and "link error" in n for n in ev(bad, "guest")["notes"])


def test_a_kvm_patch_that_edits_the_612_syscall_table_is_flagged():
    vm = ref("6.12", "vm.patch")
    tbl = "diff --git a/scripts/syscall.tbl " + vm.split("diff --git a/scripts/syscall.tbl ")[1].split("diff --git ")[0]
    d = diffcheck.check((ref("6.12", "kvm.patch") + tbl).encode(), "host")
    assert "kvm.patch touches the guest's syscall file scripts/syscall.tbl" in d.flags
