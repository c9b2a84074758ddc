"""How L0 runs L1: KVM with EL2 for the guest where this host and QEMU can do it,
otherwise TCG, and why.

An arm64 host with /dev/kvm is not enough: giving a guest EL2 (``virtualization=on``)
needs nested virtualization (FEAT_NV2 hardware, a recent host kernel and QEMU); most
hosts refuse with "KVM does not support providing Virtualization extensions to the
guest CPU".  ``accel: auto`` therefore asks QEMU itself: a short start, stopped at once
(``-S`` + QMP ``quit`` on stdin), and falls back to TCG with QEMU's own words.
``accel: kvm`` that cannot work is an error.

The probe's argv and the decision are plain functions, so the same logic runs on this
host (``decide()``) and, in the e2e tests, against L1's /dev/kvm and QEMU over SSH.
"""
from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from ..core import hostarch
from ..core.deadline import scaled
from ..core.errors import INFRA, INPUT, HarnessError

QEMU = "qemu-system-aarch64"
PROBE_MACHINE = "virt,virtualization=on,gic-version=3"
PROBE_QMP_INPUT = '{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
PROBE_TIMEOUT_S = 20


@dataclass(frozen=True)
class Decision:
    accel: str   # "kvm" or "tcg"
    reason: str

    def to_dict(self) -> dict:
        return {"accel": self.accel, "reason": self.reason}


class AccelError(HarnessError):
    stage = "accel"
    kind = INFRA


def probe_argv(qemu: str = QEMU) -> List[str]:
    """QEMU with KVM and EL2 for the guest, stopped before running anything; QMP on stdio."""
    return [qemu, "-accel", "kvm", "-machine", PROBE_MACHINE, "-cpu", "host", "-m", "64", "-nodefaults",
            "-display", "none", "-S", "-qmp", "stdio"]


def qemu_words(stderr: str) -> str:
    """The line of QEMU's output that says why (its last non-empty line)."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def local_probe() -> Tuple[int, str]:
    timeout = scaled(PROBE_TIMEOUT_S)
    try:
        p = subprocess.run(probe_argv(), input=PROBE_QMP_INPUT, capture_output=True, text=True,
                           timeout=timeout)
    except FileNotFoundError:
        return 127, f"{QEMU} not found (run `make setup`)"
    except subprocess.TimeoutExpired:
        return 124, f"{QEMU} did not answer the probe within {timeout:.0f} s"
    return p.returncode, p.stderr


def decide(requested: str, arch: Optional[str] = None, kvm_device: Optional[bool] = None,
           probe: Callable[[], Tuple[int, str]] = local_probe) -> Decision:
    """KVM or TCG for L1, with the reason.  ``requested`` is l1.accel: auto, kvm or tcg."""
    if requested == "tcg":
        return Decision("tcg", "l1.accel is tcg")
    machine = hostarch.machine(arch)
    if kvm_device is None:
        kvm_device = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if not hostarch.is_arm64(arch):
        why = f"this host is {machine}: arm64 guests run under TCG"
    elif not kvm_device:
        why = "no usable /dev/kvm on this arm64 host"
    else:
        rc, err = probe()
        if rc == 0:
            return Decision("kvm", "KVM gives the guest EL2 here (QEMU probe with virtualization=on started)")
        why = f"KVM cannot give L1 EL2 on this host: QEMU says: {qemu_words(err)}"
    if requested == "kvm":
        raise AccelError(f"l1.accel is kvm, but {why}; use l1.accel: auto or tcg", kind=INPUT)
    return Decision("tcg", why)


@functools.lru_cache(maxsize=None)
def decide_once(requested: str) -> Decision:
    """decide() for this host, probed once per process."""
    return decide(requested)
