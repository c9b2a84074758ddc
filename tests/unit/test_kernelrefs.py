"""harness/observe/kernelrefs.py: the mechanism's file:line found in trees of each layout."""
from harness.observe import kernelrefs

HYPERCALLS_6_12 = """// SPDX
static bool kvm_smccc_default_allowed(u32 func_id)
{
}

int kvm_smccc_call_handler(struct kvm_vcpu *vcpu)
{
"""
HYPERCALLS_6_1 = HYPERCALLS_6_12.replace("kvm_smccc_call_handler", "kvm_hvc_call_handler")


def _tree(tmp_path, hypercalls):
    f = tmp_path / "arch/arm64/kvm/hypercalls.c"
    f.parent.mkdir(parents=True)
    f.write_text(hypercalls)
    return tmp_path


def test_handler_renamed_in_6_4_is_found(tmp_path):
    refs = kernelrefs.find_refs(_tree(tmp_path, HYPERCALLS_6_12))
    assert refs["hvc_call_handler"]["line"] == 6
    assert kernelrefs.handler_name(refs) == "kvm_smccc_call_handler"


def test_old_handler_name_is_kept(tmp_path):
    refs = kernelrefs.find_refs(_tree(tmp_path, HYPERCALLS_6_1))
    assert kernelrefs.handler_name(refs) == "kvm_hvc_call_handler"
    assert "hvc_call_handler" not in kernelrefs.missing(refs)


def test_static_helper_is_not_taken_for_the_handler(tmp_path):
    refs = kernelrefs.find_refs(_tree(tmp_path, "static int kvm_smccc_call_handler(struct kvm_vcpu *v)\n"))
    assert "hvc_call_handler" in kernelrefs.missing(refs)
