"""accel: auto on a real arm64 KVM host without nested virtualization: L1 is one.  The
probe's argv runs in L1 against L1's /dev/kvm and QEMU; the same decision logic the
harness uses on an aarch64 runner must fall back to TCG and say why in QEMU's words."""
from __future__ import annotations

import shlex

import pytest

from harness.stack import accel

from .helpers import require_stack_tools

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def _tools():
    require_stack_tools()


def _probe_in_l1(l1_ssh, argv):
    script = f'printf "%s" "$1" | {shlex.join(argv)}'
    res = l1_ssh.run(["sh", "-c", script, "probe", accel.PROBE_QMP_INPUT], check=False, timeout=60)
    return res.rc, res.err


def test_auto_falls_back_to_tcg_on_l1_with_qemus_reason(nested_stack):
    l1 = nested_stack.l1_ssh
    assert l1.run(["uname", "-m"]).out.strip() == "aarch64"
    kvm_device = l1.run(["test", "-w", "/dev/kvm"], check=False).rc == 0
    assert kvm_device, "L1 must have a usable /dev/kvm (it runs L2 with KVM)"
    probe = _probe_in_l1(l1, accel.probe_argv())
    decision = accel.decide("auto", arch="aarch64", kvm_device=kvm_device, probe=lambda: probe)
    assert decision.accel == "tcg", decision
    assert "Virtualization extensions" in decision.reason, decision.reason
    with pytest.raises(accel.AccelError, match="l1.accel is kvm, but KVM cannot give L1 EL2"):
        accel.decide("kvm", arch="aarch64", kvm_device=kvm_device, probe=lambda: probe)


def test_the_probe_is_not_failing_for_another_reason(nested_stack):
    """Without virtualization=on the same QEMU and /dev/kvm start: the fallback above is
    about EL2, not a broken probe."""
    argv = accel.probe_argv()
    argv[argv.index("-machine") + 1] = "virt,gic-version=3"
    rc, err = _probe_in_l1(nested_stack.l1_ssh, argv)
    assert rc == 0, err
