"""The spine, end to end on the real stack: QEMU TCG (L0) -> arm64 KVM host in nVHE
mode (L1) -> KVM guest (L2) -> host_cpuid workload, traces fetched over SFTP."""
from __future__ import annotations

import re

import pytest

from harness.stack import nested
from harness.jobs import run as run_mod
from harness.core.config import override
from harness.core.config import Scenario
from harness.observe.trace import read_trace

from .helpers import processes_mentioning, require_stack_tools

pytestmark = pytest.mark.e2e

CALLS = 1500


@pytest.fixture(scope="module", autouse=True)
def _tools():
    require_stack_tools()


def _scenario(stack, name, pin=None, calls=CALLS):
    sc = Scenario(name=name, pin=pin or {}, calls=calls)
    return run_mod.run_scenario(stack, sc, stack.run_dir / "traces" / name)


def _vtimer_interrupts(l1_ssh) -> int:
    """Sum over CPUs of L1's "kvm guest vtimer" interrupts: they exist only while L1's KVM
    runs a guest (under TCG emulation of L2 there would be none)."""
    for line in l1_ssh.run(["cat", "/proc/interrupts"]).out.splitlines():
        if "kvm guest vtimer" in line:
            fields = line.split()[1:]
            return sum(int(f) for f in fields if f.isdigit())
    raise AssertionError("no 'kvm guest vtimer' line in L1's /proc/interrupts")


def test_l2_really_uses_kvm(nested_stack):
    kvm = nested_stack.l2.qmp.cmd("query-kvm")
    assert kvm == {"enabled": True, "present": True}
    # L1's KVM delivers L2's timer interrupts: the count grows while L2 runs
    before = _vtimer_interrupts(nested_stack.l1_ssh)
    nested_stack.l2_ssh.run(["sleep", "1"])
    after = _vtimer_interrupts(nested_stack.l1_ssh)
    assert after > before, (before, after)


def _banner(image) -> str:
    """The "Linux version ..." banner baked into an (uncompressed arm64) Image, with the
    build number (#N: how often that worktree linked) left out."""
    data = image.read_bytes()
    i = data.find(b"Linux version ")
    assert i >= 0, f"no banner in {image}"
    return _without_build_number(data[i:data.index(b"\n", i)].decode())


def _without_build_number(banner: str) -> str:
    return re.sub(r" #\d* ", " # ", banner)


def test_l1_and_l2_run_the_configured_kernel(nested_stack):
    """The kernels that booted are the Images built for this tree and compiler (their
    banner), each in its role: only the guest's has the host_cpuid system call (from
    vm.patch), so host and guest Images swapped cannot pass."""
    version = nested_stack.art.source.version_str
    for ssh, build in ((nested_stack.l1_ssh, nested_stack.art.host), (nested_stack.l2_ssh, nested_stack.art.guest)):
        running = ssh.run(["cat", "/proc/version"]).out.strip()
        assert _without_build_number(running) == _banner(build.image), (build.role, running)
        assert ssh.run(["uname", "-r"]).out.strip().startswith(version)
    syscall = "__arm64_sys_host_cpuid"
    in_l2 = nested_stack.l2_ssh.run(["grep", "-c", syscall, "/proc/kallsyms"], check=False).out.strip()
    in_l1 = nested_stack.l1_ssh.run(["grep", "-c", syscall, "/proc/kallsyms"], check=False).out.strip()
    assert in_l2 == "1" and in_l1 == "0", (in_l1, in_l2)
    # the guest kernel has host_cpuid at the profile's number: on 5.4 that is 436
    nr = nested_stack.art.profile.syscall_nr
    assert nested_stack.art.source.version[:2] != (5, 4) or nr == 436


def test_vcpu_threads_from_qmp_are_the_named_vcpu_threads(nested_stack):
    """Pinning acts on the thread ids QMP reports; L1 must agree they are vCPU k's threads."""
    pid = nested_stack.l1_ssh.run(["cat", f"{nested.RUN}/qemu.pid"]).out.strip()
    threads = nested_stack.l2.vcpu_threads()
    assert sorted(threads) == list(range(nested_stack.cfg.l2.cpus)), threads
    for v, tid in threads.items():
        comm = nested_stack.l1_ssh.run(["cat", f"/proc/{pid}/task/{tid}/comm"]).out.strip()
        assert comm == f"CPU {v}/KVM", (v, tid, comm)


def test_every_call_returns_a_pcpu_in_range(nested_stack):
    ncpu = int(nested_stack.l1_ssh.run(["nproc"]).out)
    assert ncpu == nested_stack.cfg.l1.cpus
    res = _scenario(nested_stack, "range")
    for v, s in res["per_vcpu"].items():
        assert s["verdict"] == "ok", (v, s["outcomes"])
        assert all(0 <= p < ncpu for p in s["pcpus"]), (v, s["pcpus"])
        assert s["observed_vcpus"] == [int(v)], "the workload did not stay on its vCPU"


@pytest.mark.parametrize("pins", [{0: 3, 1: 2}, {0: 1, 1: 0}], ids=["v0p3-v1p2", "v0p1-v1p0"])
def test_pinned_vcpu_reports_its_pin(nested_stack, pins):
    res = _scenario(nested_stack, "pin-" + "-".join(f"{v}{p}" for v, p in pins.items()), pin=pins)
    for v, p in pins.items():
        s = res["per_vcpu"][str(v)]
        assert s["pcpus"] == {p: CALLS}, f"vCPU {v} pinned to pCPU {p} reported {s['pcpus']}"
        assert s["pin_respected"] is True


def test_trace_has_exactly_the_requested_samples(nested_stack):
    calls = 777
    res = _scenario(nested_stack, "count", calls=calls)
    for v in res["per_vcpu"]:
        tr = read_trace(nested_stack.run_dir / "traces" / "count" / f"vcpu{v}.bin")
        assert len(tr) == calls
        assert list(tr.seq) == list(range(calls))
        assert all(b >= a for a, b in zip(tr.t_ns, tr.t_ns[1:])), "timestamps must not go back"


def test_kernels_logged_no_bug_or_warning(nested_stack):
    _scenario(nested_stack, "bugscan", calls=200)
    assert nested_stack.kernel_findings() == []


def test_unpatched_host_reports_not_supported(harness_config, e2e_runs):
    cfg = override(harness_config, ["patches.host=none", "scenarios=[]"])
    summary = run_mod.main_job(cfg, run_mod.new_run_dir(cfg, "unpatched-host"))
    assert summary["verdict"] == "not-supported", summary.get("verdict_text")
    for s in summary["scenarios"][0]["per_vcpu"].values():
        assert s["outcomes"] == {"not_supported": s["samples"]}
    assert "NOT_SUPPORTED" in summary["verdict_text"]
    assert processes_mentioning(summary["run_dir"]) == []


def test_no_qemu_left_after_the_run(harness_config, artefacts, e2e_runs):
    run_dir = run_mod.new_run_dir(harness_config, "cleanup")
    with run_mod.Stack(harness_config, artefacts, run_dir) as stack:
        assert processes_mentioning(str(run_dir)), "L1's QEMU should be running inside the with-block"
        assert stack.l1_ssh.run(["pidof", "qemu-system-aarch64"]).out.strip()
    assert processes_mentioning(str(run_dir)) == []


def test_failed_boot_is_named_and_cleaned_up(harness_config, artefacts, e2e_runs, tmp_path):
    """A kernel that cannot boot (here: L1 told to use a root device that does not exist
    and to panic at once) ends in BootError with the console tail, and no QEMU stays."""
    from harness.core.errors import BootError

    cfg = override(harness_config, ["l1.append=root=/dev/nonexistent rootwait=0 rootdelay=0"])
    run_dir = run_mod.new_run_dir(cfg, "bad-boot")
    with pytest.raises(BootError) as exc:
        with run_mod.Stack(cfg, artefacts, run_dir):
            pass
    assert type(exc.value) is BootError  # a crash seen on the console, not a timeout
    assert exc.value.stage == "l1-boot"
    assert "l1 crashed (panic" in exc.value.message and "VFS" in exc.value.message
    assert exc.value.tail, "the console tail must be attached"
    assert processes_mentioning(str(run_dir)) == []
