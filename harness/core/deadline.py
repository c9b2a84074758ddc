"""Deadlines that nest: a child's time left is min(its own, its parent's), so a retry
never outlives the job.  One slowdown factor scales every budget for emulation.

The budgets in the code (L1 boot 90 s, L2 SSH 120 s, a workload's seconds per call, the
cold kernel build's minutes, tool timeouts) were measured under TCG on a 2-core x86_64
machine.  A slower runner -- an arm64 userland under qemu-user, where L1's QEMU is itself
emulated (~25x); a small arm64 board; a loaded CI host -- gets them all multiplied by one
factor, never constants raised one by one (in the spirit of syzkaller's single timeout
factor for emulated targets):

- configured: ``KVM_HARNESS_SLOWDOWN`` (a number > 0; e.g. 3 on a busy CI runner, 0.3 to
  make the fault tests' timeouts come quickly), or else
- measured: ``calibrate()`` (the run does it before anything else) times QEMU itself: a
  TCG machine that powers itself off at once (start, translate, PSCI SYSTEM_OFF, exit),
  best of three, against the figure of the machine the budgets were measured on.  Below
  ``MEASURED_MIN`` times that figure the factor stays 1 (what load alone does there, which
  the budgets' headroom covers), above it is the ratio.

``scaled(seconds)`` is how a budget goes through the factor; ``Deadline`` applies it.
``current()`` says the factor and where it came from (progress lines, summary.json).
"""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import interrupts
from .errors import ConfigError, StageTimeout

ENV = "KVM_HARNESS_SLOWDOWN"
# the calibration: QEMU's start-to-exit with the guest below, best of CALIBRATION_RUNS.
# REFERENCE_S: measured on the 2-core x86_64 Debian 12 machine (QEMU 7.2) the budgets come
# from, at load average ~5: 0.08-0.24 s a run, best of three ~0.10 s.
REFERENCE_S = 0.12
CALIBRATION_RUNS = 3
CALIBRATION_TIMEOUT_S = 120  # a run that needs longer is slower than anything seen (~25x: ~3 s)
# load alone makes the reference machine 2-3x slower than REFERENCE_S (best of three at load
# average ~10: 0.25-0.38 s), and the budgets' headroom covers that: below this ratio, factor 1
MEASURED_MIN = 4.0
QEMU = "qemu-system-aarch64"


@dataclass(frozen=True)
class Slowdown:
    factor: float
    source: str   # "configured", "measured" or "default"
    detail: str

    def to_dict(self) -> dict:
        return {"factor": self.factor, "source": self.source, "detail": self.detail}

    def describe(self) -> str:
        return f"slowdown factor {self.factor:g} ({self.source}: {self.detail})"


_measured: Optional[Slowdown] = None


def configured() -> Optional[Slowdown]:
    """The factor of ``KVM_HARNESS_SLOWDOWN``, or None when it is not set."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV}={raw!r}: must be a number (the factor every stage budget is multiplied by)") \
            from None
    if not value > 0:
        raise ConfigError(f"{ENV}={raw!r}: must be greater than 0")
    return Slowdown(value, "configured", f"{ENV}={raw}")


def current() -> Slowdown:
    """The factor in force: configured, else measured (after calibrate()), else 1."""
    return configured() or _measured or Slowdown(1.0, "default", "not measured (no calibration in this process)")


def slowdown() -> float:
    """Multiplier for every timeout (see the module's docstring)."""
    return current().factor


def scaled(seconds: float) -> float:
    """A budget measured on the reference machine, for this one."""
    return seconds * slowdown()


def duration(seconds: float) -> str:
    """A duration for a progress line: 30 s, 11 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def about(seconds: float) -> str:
    """A progress line's estimate of a step measured at ``seconds`` on the reference machine."""
    s = current()
    return f"about {duration(scaled(seconds))}" + ("" if s.factor == 1 else f", slowdown x{s.factor:g}")


def factor_from(best_s: float, reference_s: float = REFERENCE_S) -> float:
    """The measured factor: 1 up to MEASURED_MIN times the reference, else the ratio (1 decimal)."""
    ratio = best_s / reference_s
    return 1.0 if ratio < MEASURED_MIN else round(ratio, 1)


def calibration_guest() -> bytes:
    """A raw arm64 program QEMU's virt machine boots at EL1: x0 = PSCI SYSTEM_OFF, HVC
    (QEMU's own PSCI: the machine powers off and QEMU exits 0)."""
    movz_x0 = 0xD2800000 | (0x0008 << 5)              # movz x0, #0x0008
    movk_x0 = 0xF2800000 | (1 << 21) | (0x8400 << 5)  # movk x0, #0x8400, lsl #16
    hvc0 = 0xD4000002                                 # hvc #0
    loop = 0x14000000                                 # b .  (not reached)
    return struct.pack("<4I", movz_x0, movk_x0, hvc0, loop)


def calibration_argv(guest: Path, qemu: str = QEMU) -> list:
    return [qemu, "-machine", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "64", "-nodefaults",
            "-display", "none", "-monitor", "none", "-serial", "none", "-no-reboot", "-kernel", str(guest)]


def time_qemu(runs: int = CALIBRATION_RUNS, qemu: str = QEMU) -> float:
    """Best wall time of ``runs`` calibration runs; raises OSError (no QEMU) or
    RuntimeError (QEMU failed or took longer than CALIBRATION_TIMEOUT_S)."""
    with tempfile.TemporaryDirectory(prefix="kvmh-cal-") as tmp:
        guest = Path(tmp) / "poweroff.bin"
        guest.write_bytes(calibration_guest())
        best = float("inf")
        for _ in range(runs):
            interrupts.check()
            t0 = time.monotonic()
            try:
                p = subprocess.run(calibration_argv(guest, qemu), capture_output=True, text=True,
                                   timeout=CALIBRATION_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{qemu} did not power the calibration guest off within "
                                   f"{CALIBRATION_TIMEOUT_S} s") from None
            if p.returncode != 0:
                raise RuntimeError(f"{qemu} exited {p.returncode}: {(p.stderr or '').strip()[-200:]}")
            best = min(best, time.monotonic() - t0)
        return best


def calibrate(measure: Callable[[], float] = time_qemu) -> Slowdown:
    """Measure the factor once per process (unless KVM_HARNESS_SLOWDOWN configures it);
    returns the factor in force.  A calibration that cannot run leaves the factor at 1
    and says why; one that times out gives the factor its timeout implies."""
    global _measured
    conf = configured()
    if conf is not None:
        return conf
    if _measured is None:
        try:
            best = measure()
        except OSError as e:
            _measured = Slowdown(1.0, "default", f"could not measure: {QEMU}: {e.strerror or e}")
        except RuntimeError as e:
            if "within" in str(e):
                _measured = Slowdown(factor_from(CALIBRATION_TIMEOUT_S), "measured", f"{e} (at least that slow)")
            else:
                _measured = Slowdown(1.0, "default", f"could not measure: {e}")
        else:
            _measured = Slowdown(factor_from(best), "measured",
                                 f"QEMU TCG start to power-off {best:.2f} s, best of {CALIBRATION_RUNS}, against "
                                 f"{REFERENCE_S:g} s on the 2-core x86_64 machine the budgets come from")
    return _measured


def reset() -> None:
    """Forget the measured factor (tests)."""
    global _measured
    _measured = None


class Deadline:
    def __init__(self, seconds: float, stage: str, parent: Optional["Deadline"] = None):
        self.stage = stage
        self.budget = scaled(seconds)
        self.start = time.monotonic()
        own_end = self.start + self.budget
        self.end = min(own_end, parent.end) if parent else own_end

    def remaining(self) -> float:
        interrupts.check()  # every wait asks: a swallowed Ctrl-C is raised again here
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        interrupts.check()
        return time.monotonic() >= self.end

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def child(self, seconds: float, stage: str) -> "Deadline":
        return Deadline(seconds, stage, parent=self)

    def check(self, what: str = "", **kw) -> None:
        if self.expired():
            raise StageTimeout(
                f"{self.stage}: {what or 'no progress'} after {self.elapsed():.0f} s", stage=self.stage, **kw
            )
