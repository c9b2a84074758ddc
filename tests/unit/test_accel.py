"""accel: auto/kvm/tcg decided from the host architecture, /dev/kvm and QEMU's probe."""
import pytest

from harness.stack import accel
from harness.core.errors import INPUT

REFUSED = (1, "qemu-system-aarch64: mach-virt: KVM does not support providing Virtualization extensions "
              "to the guest CPU\n")


def never(): raise AssertionError("the probe must not run")  # noqa: E704


def test_x86_host_is_tcg_without_probing():
    d = accel.decide("auto", arch="x86_64", kvm_device=True, probe=never)
    assert d.accel == "tcg" and "x86_64" in d.reason


def test_arm64_without_dev_kvm_is_tcg():
    d = accel.decide("auto", arch="aarch64", kvm_device=False, probe=never)
    assert d.accel == "tcg" and "/dev/kvm" in d.reason


def test_arm64_kvm_without_nested_falls_back_with_qemus_words():
    d = accel.decide("auto", arch="aarch64", kvm_device=True, probe=lambda: REFUSED)
    assert d.accel == "tcg"
    assert "KVM does not support providing Virtualization extensions" in d.reason


def test_arm64_kvm_with_el2_is_kvm():
    d = accel.decide("auto", arch="aarch64", kvm_device=True, probe=lambda: (0, ""))
    assert d.accel == "kvm"


def test_kvm_requested_but_impossible_is_a_clear_error():
    with pytest.raises(accel.AccelError, match="l1.accel is kvm, but KVM cannot give L1 EL2.*Virtualization ext") as e:
        accel.decide("kvm", arch="aarch64", kvm_device=True, probe=lambda: REFUSED)
    assert e.value.kind == INPUT and e.value.stage == "accel"
    with pytest.raises(accel.AccelError, match="this host is x86_64"):
        accel.decide("kvm", arch="x86_64", kvm_device=True, probe=never)


def test_tcg_requested_is_tcg_anywhere():
    assert accel.decide("tcg", arch="aarch64", kvm_device=True, probe=never).accel == "tcg"


def test_probe_argv_asks_for_el2_and_stops_at_once():
    argv = accel.probe_argv()
    assert argv[argv.index("-accel") + 1] == "kvm" and "virtualization=on" in argv[argv.index("-machine") + 1]
    assert "-S" in argv and argv[argv.index("-qmp") + 1] == "stdio"
    assert '"quit"' in accel.PROBE_QMP_INPUT
