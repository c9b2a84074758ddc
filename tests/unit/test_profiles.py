"""harness/build/profiles.py: tree versions, profile selection, the repo's profiles and patches."""
from pathlib import Path

import pytest

from harness.build import profiles
from harness.core.errors import ConfigError, SourceError
from harness.build.patches import Patch

KERNEL_MAKEFILE_HEAD = """\
# SPDX-License-Identifier: GPL-2.0
VERSION = {v}
PATCHLEVEL = {p}
SUBLEVEL = {s}
EXTRAVERSION =
NAME = Hurr durr I'ma ninja sloth
"""


def fake_tree(tmp_path, v=6, p=1, s=76, text=None):
    tree = tmp_path / "linux"
    tree.mkdir(exist_ok=True)
    (tree / "Makefile").write_text(text if text is not None else KERNEL_MAKEFILE_HEAD.format(v=v, p=p, s=s))
    return tree


# -- tree_version --------------------------------------------------------------------------

def test_tree_version_from_makefile(tmp_path):
    assert profiles.tree_version(fake_tree(tmp_path, 6, 1, 76)) == (6, 1, 76)


def test_tree_version_accepts_str_path_and_no_spaces(tmp_path):
    tree = fake_tree(tmp_path, text="VERSION=5\nPATCHLEVEL=15\nSUBLEVEL=0\n")
    assert profiles.tree_version(str(tree)) == (5, 15, 0)


def test_tree_version_ignores_similar_names(tmp_path):
    text = "KERNELVERSION = 9\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 2\nPATCHLEVEL_X = 7\n"
    assert profiles.tree_version(fake_tree(tmp_path, text=text)) == (6, 1, 2)


def test_tree_without_makefile(tmp_path):
    with pytest.raises(SourceError, match="not a kernel tree"):
        profiles.tree_version(tmp_path)


def test_makefile_without_patchlevel(tmp_path):
    tree = fake_tree(tmp_path, text="VERSION = 6\nSUBLEVEL = 1\n")
    with pytest.raises(SourceError) as ei:
        profiles.tree_version(tree)
    assert "no PATCHLEVEL line" in ei.value.message and str(tree / "Makefile") in ei.value.message


# -- select --------------------------------------------------------------------------------

def test_select_6_1_auto():
    p = profiles.select((6, 1, 76))
    assert p.name == "6.1"
    assert p.syscall_nr == 451
    assert p.hvc_func_id == 0xC6000040
    assert p.directory == profiles.PROFILES / "6.1"
    assert p.reference_kvm_patch.is_file() and p.reference_vm_patch.is_file()


def test_select_from_fake_tree_version(tmp_path):
    assert profiles.select(profiles.tree_version(fake_tree(tmp_path, 6, 1, 0))).name == "6.1"


def test_unsupported_version_error_text():
    with pytest.raises(SourceError) as ei:
        profiles.select((4, 19, 0))
    msg = ei.value.message
    assert "kernel version 4.19.0 is not supported" in msg
    assert "6.1 for 6.1" in msg  # the known profiles are listed
    assert "images/profiles/" in msg and "kernel.profile" in msg  # and how to fix it
    assert ei.value.stage == "source"


def test_version_prefix_does_not_match_longer_patchlevel():
    # 6.10 must not be taken for 6.1
    with pytest.raises(SourceError):
        profiles.select((6, 10, 0))


def test_explicit_profile_name_overrides_version():
    assert profiles.select((5, 4, 0), "6.1").name == "6.1"


def test_explicit_unknown_profile_name():
    with pytest.raises(ConfigError) as ei:
        profiles.select((6, 1, 0), "9.9")
    assert "no profile '9.9'" in ei.value.message and "6.1" in ei.value.message


# -- profiles from a custom root -----------------------------------------------------------

def make_profile(root: Path, dirname: str, body: str) -> Path:
    d = root / dirname
    d.mkdir(parents=True)
    (d / "profile.yaml").write_text(body)
    return d


def test_custom_root_selection_and_fields(tmp_path):
    d = make_profile(tmp_path, "a", "name: '5.4'\nmatches: ['5.4', '5.5']\nsyscall_nr: 440\n"
                                   "hvc_func_id: 0xC6000041\nfragments: [extra.config]\n"
                                   "make_vars: {LLVM: 1, W: 0}\nnotes: [hello]\n")
    (d / "extra.config").write_text("CONFIG_FOO=y\n")
    make_profile(tmp_path, "b", "name: other\nmatches: ['4.19']\nsyscall_nr: 1\nhvc_func_id: 2\n")
    (tmp_path / "not-a-profile").mkdir()
    allp = profiles.all_profiles(tmp_path)
    assert set(allp) == {"5.4", "other"}
    p = profiles.select((5, 5, 3), root=tmp_path)
    assert p.name == "5.4" and p.syscall_nr == 440 and p.hvc_func_id == 0xC6000041
    assert p.fragments == (d / "extra.config",)
    assert p.make_vars == (("LLVM", "1"), ("W", "0"))
    assert p.notes == ("hello",)
    assert p.nvhe_banner == profiles.Profile.nvhe_banner
    fp = p.fingerprint()
    assert fp["fragments"] == {"extra.config": "CONFIG_FOO=y\n"}
    assert fp["make_vars"] == [("LLVM", "1"), ("W", "0")]
    assert profiles.select((5, 5, 3), "other", root=tmp_path).name == "other"


@pytest.mark.parametrize("body,message", [
    ("name: x\nmatches: []\nsyscall_nr: 1\nhvc_func_id: 2\nsyscal: 3\n", "unknown key syscal"),
    ("name: x\nmatches: []\nhvc_func_id: 2\n", "missing key syscall_nr"),
    ("name: x\nmatches: []\nsyscall_nr: lots\nhvc_func_id: 2\n", "bad value"),
    ("name: [x\n", "cannot load profile"),
], ids=["unknown-key", "missing-key", "bad-value", "invalid-yaml"])
def test_bad_profile_is_a_config_error(tmp_path, body, message):
    make_profile(tmp_path, "x", body)
    with pytest.raises(ConfigError, match=message):
        profiles.all_profiles(tmp_path)


# -- the repository's own profiles ---------------------------------------------------------

REPO_PROFILES = sorted(profiles.all_profiles().values(), key=lambda p: p.name)


def test_repo_has_profiles():
    assert {"6.1", "5.4"} <= {p.name for p in REPO_PROFILES}


def test_select_5_4_for_the_tag_and_stable_trees():
    for sub in (0, 59, 214):
        p = profiles.select((5, 4, sub))
        assert p.name == "5.4" and p.syscall_nr == 436


def test_5_4_profile_never_builds_at_Os():
    """gcc 12 at -Os moves EL2 helpers out of line on 5.4 (hyp_panic at the first KVM_RUN)."""
    p = profiles.select((5, 4, 0))
    assert not p.tree_fragments, "kernel/configs/tiny.config selects CC_OPTIMIZE_FOR_SIZE"
    text = "\n".join(f.read_text() for f in p.fragments)
    assert "CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE=y" in text
    assert "CONFIG_CC_OPTIMIZE_FOR_SIZE=y" not in text + profiles.COMMON_FRAGMENT.read_text()
    assert ("HOSTCFLAGS", "-fcommon") in p.make_vars
    assert any("HOSTCFLAGS=-fcommon" in n for n in p.notes), "workarounds are logged"


@pytest.mark.parametrize("profile", REPO_PROFILES, ids=lambda p: p.name)
def test_repo_profile_is_consistent(profile):
    assert profile.matches, "a profile must match at least one VERSION.PATCHLEVEL"
    for m in profile.matches:
        major, minor = m.split(".")
        assert profiles.select((int(major), int(minor), 0)).name == profile.name
    assert 0 < profile.syscall_nr < 1024
    # SMCCC fast call, 64-bit, owner vendor-specific hypervisor service (6)
    assert profile.hvc_func_id >> 31 == 1 and (profile.hvc_func_id >> 30) & 1 == 1
    assert (profile.hvc_func_id >> 24) & 0x3F == 6
    for f in profile.fragments:
        assert f.is_file(), f
    fp = profile.fingerprint()
    assert fp["name"] == profile.name and fp["common"] == profiles.COMMON_FRAGMENT.read_text()


@pytest.mark.parametrize("profile", REPO_PROFILES, ids=lambda p: p.name)
def test_repo_reference_patches_parse(profile):
    kvm = Patch.from_file(profile.reference_kvm_patch)
    vm = Patch.from_file(profile.reference_vm_patch)
    for p in (kvm, vm):
        assert p.strip == 1 and p.files and p.hunks
        assert all(not f.startswith(("a/", "b/", "/")) for f in p.files)
        assert all(h.file in p.files for h in p.hunks)
    assert any(f.startswith(("arch/arm64/kvm/", "virt/kvm/arm/")) for f in kvm.files)
    assert any(f.startswith("arch/arm64/") for f in vm.files)
    assert vm.created, "vm.patch adds the syscall's source file"
    assert set(vm.created) <= set(vm.files)
    # the guest syscall number in vm.patch is the profile's
    assert f"#define __NR_host_cpuid {profile.syscall_nr}" in vm.data.decode()
    # both sides use the profile's SMCCC function ID
    assert smccc_ids(kvm.data.decode()) == [profile.hvc_func_id]
    assert smccc_ids(vm.data.decode()) == [profile.hvc_func_id]
    # the host side says why it does not use smp_processor_id()
    assert "preempt" in kvm.data.decode()


def smccc_ids(patch_text: str) -> list:
    """The function IDs an (added) ARM_SMCCC_CALL_VAL(...) in a patch evaluates to."""
    import re
    owners = {"ARM_SMCCC_OWNER_VENDOR_HYP": 6}
    text = patch_text.replace("\\\n+", " ")
    out = []
    for m in re.finditer(r"ARM_SMCCC_CALL_VAL\(\s*ARM_SMCCC_(FAST|STD)_CALL,\s*ARM_SMCCC_SMC_(32|64),"
                         r"\s*(\w+),\s*(0x[0-9a-fA-F]+|\d+)\)", text):
        fast, conv, owner, fn = m.groups()
        owner = owners[owner] if owner in owners else int(owner, 0)
        out.append((fast == "FAST") << 31 | (conv == "64") << 30 | owner << 24 | int(fn, 0))
    return out


def test_common_fragment_turns_on_the_preemption_checks():
    """The run's kernel-bug verdict rests on these: without them an unsafe handler is silent."""
    from harness.build.kbuild import requested_symbols
    wanted = requested_symbols(profiles.COMMON_FRAGMENT.read_text())
    for sym in ("CONFIG_PREEMPT", "CONFIG_DEBUG_KERNEL", "CONFIG_DEBUG_PREEMPT", "CONFIG_DEBUG_ATOMIC_SLEEP",
                "CONFIG_KVM", "CONFIG_PRINTK"):
        assert wanted.get(sym) == "y", sym


def test_6_12_profile_numbers_the_syscall_in_the_generic_table():
    """6.11+ arm64 generates its syscall numbers from scripts/syscall.tbl: a vm.patch that only
    edits asm-generic/unistd.h would build a guest without the syscall."""
    p = profiles.select((6, 12, 117))
    assert p.name == "6.12" and p.syscall_nr == 463
    vm = Patch.from_file(p.reference_vm_patch)
    assert "scripts/syscall.tbl" in vm.files
    added = [l for l in vm.data.decode().splitlines() if l.startswith("+") and "host_cpuid" in l]
    assert any(l.split()[:3] == ["+463", "common", "host_cpuid"] for l in added), added


def test_6_12_host_patch_passes_the_smccc_filter():
    """From 6.4 kvm_smccc_get_action() denies an ID that is in no bitmap and not in
    kvm_smccc_default_allowed(): the reference must add it there, in the handler it answers in."""
    text = profiles.select((6, 12, 0)).reference_kvm_patch.read_text()
    hunks = text.split("\n@@ ")
    allowed = [h for h in hunks if h.split("\n")[0].endswith("kvm_smccc_default_allowed(u32 func_id)")]
    assert allowed and "+\tcase KVM_HOST_CPUID_FUNC_ID:" in allowed[0]
    handler = [h for h in hunks if h.split("\n")[0].endswith("int kvm_smccc_call_handler(struct kvm_vcpu *vcpu)")]
    assert handler and "+\t\tval[0] = READ_ONCE(vcpu->cpu);" in handler[0]


def test_grading_patches_wrap_the_handler_of_their_version():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_patches_probe", profiles.REPO / "images/grading/make_patches.py")
    src = spec.loader.get_data(spec.origin).decode()
    namespace: dict = {"__file__": spec.origin}
    exec(compile(src.split("\nfor prof in sorted")[0], spec.origin, "exec"), namespace)
    for version, handler in (("6.12", "kvm_smccc_call_handler"), ("6.1", "kvm_hvc_call_handler"),
                             ("5.4", "kvm_hvc_call_handler")):
        d = profiles.PROFILES / version
        assert namespace["handler_name"]((d / "kvm.patch").read_text()) == handler
        graded = (d / "grading" / "kvm.patch").read_text()
        assert f"#define {handler} {handler}_ref" in graded, version
        # from 6.4 handle_smc() reaches the same handler: the hook answers HVCs only, as up to 6.3
        assert ("if (hvc && func_ok && imm_ok)" in graded) == (handler == "kvm_smccc_call_handler"), version
        assert graded == namespace["host"]((d / "kvm.patch").read_text()), "grading patch is stale"


def test_6_12_banner_matches_its_nvhe_line_and_not_6_1s():
    import re
    line = "[    4.585439] kvm [1]: Hyp nVHE mode initialized successfully"
    assert re.search(profiles.select((6, 12, 0)).nvhe_banner, line)
    assert not re.search(profiles.select((6, 12, 0)).nvhe_banner, "kvm [1]: VHE mode initialized successfully")
