"""Ctrl-C during a stuck pairing (issue 18): a hypercall handler that never returns holds
L2's vCPU thread inside L1's kernel, so L2's QEMU answers neither the workload nor QMP.
SIGINT then ends `grade` (a worker thread blocked on that guest) and `run` (the main
thread blocked on it) within 10 s, exit 130, nothing left running."""
from __future__ import annotations

import signal
import time

import pytest

from tests.grade.fixtures import make_zip
from tests.grade.hostile_runtime import hostile

from .conftest import Live, harness_argv, no_process_left, warm_cache_or_skip
from .test_faults import assert_stopped_by_the_interrupt, default_tarball

STUCK_S = 15  # after the workload started: the handler spins, the workload's own timeout is 60 s away
EXIT_WITHIN_S = 10


@pytest.fixture(scope="module")
def spin():
    if default_tarball()[1] != (6, 1):
        pytest.skip("the hostile runtime fixtures are written for the 6.1 profile")
    warm_cache_or_skip()
    return hostile("6.1")[0].fixture


@pytest.mark.parametrize("command", ["grade", "run"])
def test_ctrl_c_during_a_stuck_pairing_ends_within_10_s(spin, tmp_path, command):
    if command == "grade":
        (tmp_path / "in").mkdir()
        make_zip(tmp_path / "in" / f"{spin.name}_hw2.zip", spin.files())
        argv = harness_argv("grade", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
        started = f"{spin.name}: [hypercall] scenario pinned"
    else:
        patch = tmp_path / "spin-kvm.patch"
        patch.write_text(spin.kvm)
        argv = harness_argv("run", "--run-dir", str(tmp_path / "run"), "--kvm-patch", str(patch),
                            "--set", "scenarios=[{name: stuck, calls: 300}]")
        started = "scenario stuck"
    live = Live(argv)
    try:
        live.wait_for(started, timeout=1800)
        time.sleep(STUCK_S)
        assert live.p.poll() is None, "".join(live.lines)[-3000:]
        t0 = time.monotonic()
        live.signal(signal.SIGINT)
        r = live.finish(timeout=60)
        took = time.monotonic() - t0
    finally:
        live.kill()
    print(f"{command}: SIGINT to exit {took:.1f} s")
    assert_stopped_by_the_interrupt(r)
    assert took < EXIT_WITHIN_S, f"{took:.1f} s\n{r.out[-3000:]}"
    assert no_process_left(str(tmp_path), grace=1) == []
