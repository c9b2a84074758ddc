"""The untrusted-process runner: timeout kills the whole group, limits apply."""
from __future__ import annotations

import signal
import time

from harness.kvmlab.sandbox import Limits, run_untrusted


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for its (re)parent to reap it is dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_timeout_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    # the shell leaves a grandchild behind; the group kill must take it too
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    res = run_untrusted(["/bin/sh", "-c", script], cwd=tmp_path, stdout_path=tmp_path / "o",
                        stderr_path=tmp_path / "e", timeout=0.5)
    assert res.timed_out and res.returncode is None
    assert "timeout" in res.describe()
    pid = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"grandchild {pid} survived the timeout")


def test_file_size_limit_and_signal_reporting(tmp_path):
    res = run_untrusted(["/bin/sh", "-c", "head -c 200000 /dev/zero > big"], cwd=tmp_path,
                        stdout_path=tmp_path / "o", stderr_path=tmp_path / "e", timeout=10,
                        limits=Limits(file_size=100000))
    assert (tmp_path / "big").stat().st_size <= 100000
    assert res.returncode != 0


def test_crash_is_a_signal_not_a_timeout(tmp_path):
    res = run_untrusted(["/bin/sh", "-c", "kill -SEGV $$"], cwd=tmp_path, stdout_path=tmp_path / "o",
                        stderr_path=tmp_path / "e", timeout=10)
    assert res.crashed and res.signal == signal.SIGSEGV and not res.timed_out
    assert res.describe() == "killed by signal SIGSEGV"


def test_kvm_probe_names_what_is_wrong(tmp_path):
    import pytest

    from harness.kvmlab.errors import KvmUnavailable
    from harness.kvmlab.sandbox import probe_kvm

    with pytest.raises(KvmUnavailable, match="cannot open"):
        probe_kvm(str(tmp_path / "nope"))
    with pytest.raises(KvmUnavailable, match="KVM_GET_API_VERSION"):
        probe_kvm("/dev/null")
