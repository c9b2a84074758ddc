"""QEMU command lines (machine.py, nested.py), trace analysis, the overall verdict, and the CLI."""
import signal
from pathlib import Path

import pytest

from harness.observe import analysis
from harness import cli
from harness.core import config
from harness.stack import nested
from harness.jobs import run
from harness.core.errors import ConfigError, InfraError
from harness.stack.machine import MachineSpec
from harness.stack.nested import GuestSpec
from harness.observe.trace import make_trace_bytes, parse_trace


def opt(argv, flag):
    """Values following every occurrence of ``flag``."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


# -- L1: MachineSpec.argv ------------------------------------------------------------------

def spec(**kw):
    base = dict(name="l1", kernel=Path("/k/Image"), rootfs=Path("/r/rootfs.ext4"), cpus=4, memory_mb=2048,
                accel="tcg", forwards={"ssh": 22, "l2-ssh": 2222, "l2-qmp": 4444})
    base.update(kw)
    return MachineSpec(**base)


PORTS = {"ssh": 40022, "l2-ssh": 40222, "l2-qmp": 40444}


def test_a_confined_l1_qemu_sees_its_images_and_socket_directory_only(tmp_path, monkeypatch):
    """l1.confine (grading): QEMU under the sandbox, the host's network kept for its
    forwarded ports, its images read-only, its QMP directory writable, nothing else."""
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    k, r, pl, q = tmp_path / "Image", tmp_path / "root.ext4", tmp_path / "payload.img", tmp_path / "q"
    for f in (k, r, pl):
        f.write_bytes(b"x")
        f.chmod(0o644)
    q.mkdir()
    argv = spec(kernel=k, rootfs=r, payload=pl, confine=True).argv(PORTS, q / "l1-qmp.sock")
    assert argv[0] == "timeout" and "bwrap" in argv and "--unshare-net" not in argv and "--unshare-pid" in argv
    qemu = argv[argv.index("qemu-system-aarch64"):]
    assert qemu == spec(kernel=k, rootfs=r, payload=pl).argv(PORTS, q / "l1-qmp.sock")   # the same QEMU
    assert opt(argv, "--bind") == [str(q)]
    assert {str(k), str(r), str(pl)} <= set(opt(argv, "--ro-bind"))
    assert not [b for b in opt(argv, "--bind") + opt(argv, "--ro-bind") if b in ("/", "/root", "/home", "/var")]
    assert "--reuid=" + str(MachineSpec.sandbox_uid(q / "l1-qmp.sock")) in argv
    assert f"--memory={(2048 << 20) + (3 << 30)}" in argv
    # an image the sandbox's uid cannot read is the machine's problem, said before QEMU starts
    r.chmod(0o600)
    with pytest.raises(InfraError, match="not readable by others"):
        spec(kernel=k, rootfs=r, confine=True).argv(PORTS, q / "l1-qmp.sock")


def test_grading_confines_l1_qemu_and_the_main_job_does_not():
    assert config.load(config.CONFIGS / "grade.yaml").l1.confine
    assert not config.load(config.CONFIGS / "default.yaml").l1.confine


def test_l1_argv_under_tcg():
    argv = spec().argv(PORTS, Path("/run/q.sock"))
    assert argv[0] == "qemu-system-aarch64"
    machine = opt(argv, "-machine")[0]
    assert "virtualization=on" in machine and "gic-version=3" in machine and machine.startswith("virt")
    assert opt(argv, "-cpu") == ["cortex-a57"]
    assert opt(argv, "-accel")[0].startswith("tcg")
    assert opt(argv, "-smp") == ["4"] and opt(argv, "-m") == ["2048"]
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert opt(argv, "-kernel") == ["/k/Image"]
    append = opt(argv, "-append")[0]
    assert "panic=-1" in append.split() and "console=ttyAMA0" in append
    assert opt(argv, "-qmp") == ["unix:/run/q.sock,server=on,wait=off"]
    drives = opt(argv, "-drive")
    assert len(drives) == 1
    root = drives[0]
    assert root.startswith("file=/r/rootfs.ext4,") and "snapshot=on" in root.split(",")
    assert "readonly=on" in root.split(",")
    netdev = opt(argv, "-netdev")[0]
    for name, guest_port in {"ssh": 22, "l2-ssh": 2222, "l2-qmp": 4444}.items():
        assert f"hostfwd=tcp:127.0.0.1:{PORTS[name]}-:{guest_port}" in netdev
    assert "0.0.0.0" not in netdev  # forwards are local only


def test_l1_qemu_runs_under_its_own_seccomp_filter(monkeypatch):
    """L1 boots a student's kernel: QEMU gets its seccomp sandbox (no exec/fork, no new
    privileges, no scheduling or resource changes, obsolete calls denied)."""
    from harness.stack import machine
    monkeypatch.setattr(machine, "seccomp_refused", lambda qemu=machine.QEMU: "")
    sandbox = opt(spec().argv(PORTS, Path("/q")), "-sandbox")
    assert len(sandbox) == 1
    parts = sandbox[0].split(",")
    assert parts[0] == "on"
    assert {"obsolete=deny", "elevateprivileges=deny", "spawn=deny", "resourcecontrol=deny"} <= set(parts[1:])


@pytest.mark.skipif(not __import__("shutil").which("qemu-system-aarch64"), reason="qemu-system-aarch64 not installed")
def test_this_qemu_is_asked_whether_it_takes_the_seccomp_options():
    """This QEMU is asked, not assumed: where it says it takes the options, a real start
    with them succeeds; where it refuses, its words are the reason."""
    import subprocess
    from harness.stack.machine import QEMU, SECCOMP, seccomp_refused
    r = subprocess.run([QEMU, *SECCOMP, "-machine", "virt", "-display", "none", "-nodefaults", "-qmp", "stdio"],
                       input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n', capture_output=True,
                       text=True, timeout=60)
    refused = seccomp_refused()
    if refused:
        assert r.returncode != 0 and refused in r.stderr
    else:
        assert r.returncode == 0 and '"SHUTDOWN"' in r.stdout, r.stderr


def test_a_qemu_without_seccomp_starts_without_the_options(tmp_path, monkeypatch):
    """A QEMU with no -sandbox (an arm64 root under qemu-user has no seccomp below it): L1 must
    still start (said), not fail at launch."""
    from harness.stack import machine
    fake = tmp_path / "qemu-system-aarch64"
    fake.write_text("#!/bin/sh\necho \"qemu-system-aarch64: -sandbox on: There is no option group 'sandbox'\" >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    assert machine.seccomp_refused(str(fake)) == \
        "qemu-system-aarch64: -sandbox on: There is no option group 'sandbox'"
    monkeypatch.setattr(machine, "seccomp_refused", lambda qemu=machine.QEMU: "There is no option group 'sandbox'")
    assert opt(spec().argv(PORTS, Path("/q")), "-sandbox") == []


def test_l1_argv_payload_drive():
    argv = spec(payload=Path("/p/payload.ext4")).argv(PORTS, Path("/q"))
    drives = opt(argv, "-drive")
    assert len(drives) == 2
    payload = [d for d in drives if d.startswith("file=/p/payload.ext4,")]
    assert payload and "readonly=on" in payload[0] and "snapshot=on" not in payload[0]
    devices = opt(argv, "-device")
    assert "virtio-blk-pci,drive=payload" in devices and "virtio-blk-pci,drive=root" in devices


def test_l1_argv_extra_append_and_cpu_model():
    argv = spec(append="loglevel=8", cpu_model="cortex-a72", cpus=2, memory_mb=1024).argv(PORTS, Path("/q"))
    append = opt(argv, "-append")[0]
    assert append.endswith(" loglevel=8") and "panic=-1" in append
    assert opt(argv, "-cpu") == ["cortex-a72"] and opt(argv, "-smp") == ["2"] and opt(argv, "-m") == ["1024"]


def test_l1_argv_under_kvm(monkeypatch):
    from harness.stack import accel

    monkeypatch.setattr(accel, "decide_once", lambda req: accel.Decision("kvm", "probe ok"))
    argv = spec(accel="kvm").argv(PORTS, Path("/q"))
    assert opt(argv, "-accel") == ["kvm"] and opt(argv, "-cpu") == ["host"]
    assert "virtualization=on" in opt(argv, "-machine")[0]


def test_auto_accel_follows_the_decision(monkeypatch):
    from harness.stack import accel

    monkeypatch.setattr(accel, "decide_once", lambda req: accel.Decision("tcg", "x86 host"))
    assert spec(accel="auto").accelerator() == "tcg"
    monkeypatch.setattr(accel, "decide_once", lambda req: accel.Decision("kvm", "probe ok"))
    assert spec(accel="auto").accelerator() == "kvm"


def test_missing_forward_port_is_a_key_error():
    with pytest.raises(KeyError):
        spec().argv({"ssh": 1}, Path("/q"))


# -- L2: GuestSpec.argv --------------------------------------------------------------------

def test_l2_argv_uses_kvm_only():
    argv = GuestSpec(cpus=3, memory_mb=512, append="x=1").argv()
    assert argv[0] == "qemu-system-aarch64"
    assert opt(argv, "-accel") == ["kvm"]
    assert not any("tcg" in a for a in argv)
    assert opt(argv, "-cpu") == ["host"]
    assert opt(argv, "-smp") == ["3"] and opt(argv, "-m") == ["512"]
    assert "-daemonize" in argv and "-no-reboot" in argv
    assert opt(argv, "-name") == ["l2,debug-threads=on"]  # vCPU threads named "CPU k/KVM" in L1
    assert opt(argv, "-append")[0].split()[-1] == "x=1" and "panic=-1" in opt(argv, "-append")[0]
    # QMP on L1's loopback only: reached through the SSH session, never forwarded to a host port
    assert opt(argv, "-qmp") == [f"tcp:127.0.0.1:{nested.L2_QMP_PORT},server=on,wait=off"]
    assert f"hostfwd=tcp::{nested.L2_SSH_PORT}-:22" in opt(argv, "-netdev")[0]
    assert opt(argv, "-pidfile") == [f"{nested.RUN}/qemu.pid"]
    assert opt(argv, "-kernel") == ["/payload/Image"] and opt(argv, "-initrd") == ["/payload/initramfs.cpio.gz"]


def test_l1_forwards_cover_l2_ssh_but_not_its_qmp():
    assert nested.L1_FORWARDS["l2-ssh"] == nested.L2_SSH_PORT
    assert nested.L2_QMP_PORT not in nested.L1_FORWARDS.values()


# -- analysis ------------------------------------------------------------------------------

def trace_of(rets, lat=None, vcpu=1, start_ns=0, end_ns=0, **kw):
    lat = lat or [1000] * len(rets)
    recs = [(i, 100 * i, vcpu, r, l) for i, (r, l) in enumerate(zip(rets, lat))]
    return parse_trace(make_trace_bytes(recs, start_ns=start_ns, end_ns=end_ns, **kw))


def test_summary_counts_pcpu_changes():
    s = analysis.summarize_trace(trace_of([0, 0, 1, 1, 0, 3, 3], pinned_vcpu=1, start_ns=0, end_ns=7_000_000))
    assert s["samples"] == 7 and s["requested"] == 7
    assert s["pcpus"] == {0: 3, 1: 2, 3: 2}
    assert s["distinct_pcpus"] == 3
    assert s["pcpu_changes"] == 3  # 0->1, 1->0, 0->3
    assert s["first_pcpu"] == 0
    assert s["verdict"] == "ok" and s["outcomes"] == {"pcpu": 7}
    assert s["observed_vcpus"] == [1] and s["pinned_vcpu"] == 1
    assert s["calls_per_s"] == pytest.approx(1000.0)


def test_summary_no_changes_when_constant():
    s = analysis.summarize_trace(trace_of([2] * 10))
    assert s["pcpu_changes"] == 0 and s["distinct_pcpus"] == 1 and s["pcpus"] == {2: 10}


@pytest.mark.parametrize("rets,verdict", [
    ([1, 2, 3], "ok"),
    ([-1, -1], "not-supported"),
    ([0xFFFFFFFF, -1], "not-supported"),
    ([-38, -38, -38], "no-syscall"),
    ([1, -1], "mixed"),
    ([1, -38], "mixed"),
    ([-22], "mixed"),
    ([], "no-samples"),
])
def test_verdicts(rets, verdict):
    s = analysis.summarize_trace(trace_of(rets))
    assert s["verdict"] == verdict


def test_failures_are_not_counted_as_pcpus():
    s = analysis.summarize_trace(trace_of([0, -1, 1, -38, 1]))
    assert s["pcpus"] == {0: 1, 1: 2} and s["pcpu_changes"] == 1
    assert s["outcomes"] == {"pcpu": 3, "not_supported": 1, "enosys": 1}


def test_latency_percentiles():
    lat = [1000 * i for i in range(1, 101)]  # 1..100 us
    s = analysis.summarize_trace(trace_of([0] * 100, lat=list(reversed(lat))))
    assert s["latency_us"]["p50"] == pytest.approx(50.5)
    assert s["latency_us"]["p90"] == pytest.approx(90.1)
    assert s["latency_us"]["p99"] == pytest.approx(99.0, abs=0.05)
    assert s["latency_us"]["max"] == 100.0
    empty = analysis.summarize_trace(trace_of([]))
    assert empty["latency_us"] == {"p50": None, "p90": None, "p99": None, "max": None}
    assert empty["first_pcpu"] is None


def test_percentile_function():
    assert analysis.percentile([], 0.5) is None
    assert analysis.percentile([7], 0.99) == 7
    assert analysis.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert analysis.percentile([1, 2, 3, 4], 0.0) == 1 and analysis.percentile([1, 2, 3, 4], 1.0) == 4


def test_describe_and_human_summary():
    assert "NOT_SUPPORTED" in analysis.describe("not-supported", 451)
    assert "syscall 451" in analysis.describe("no-syscall", 451)
    s = analysis.summarize_trace(trace_of([3, 3]))
    text = analysis.human_summary({"scenarios": [{"name": "pinned", "pin": {0: 3}, "per_vcpu": {"0": s}}]})
    assert "scenario pinned: pins vCPU0->pCPU3" in text and "pCPUs [3x2]" in text and "-> ok" in text


# -- run.overall_verdict -------------------------------------------------------------------

def sc(*verdicts, pin_respected=None):
    per = {}
    for i, v in enumerate(verdicts):
        per[str(i)] = {"verdict": v}
        if pin_respected is not None:
            per[str(i)]["pin_respected"] = pin_respected
    return {"per_vcpu": per}


@pytest.mark.parametrize("scenarios,findings,expected", [
    ([sc("ok", "ok"), sc("ok")], [], "ok"),
    ([sc("ok", pin_respected=True)], [], "ok"),
    ([sc("ok", "ok")], [{"signature": "bug"}], "kernel-bug"),
    ([sc("ok")], [{"signature": "warning"}], "kernel-bug"),
    ([sc("not-supported")], [{"signature": "panic"}], "kernel-bug"),
    ([sc("ok", pin_respected=False), sc("ok")], [], "wrong-pcpu"),
    ([sc("not-supported", "not-supported")], [], "not-supported"),
    ([sc("ok"), sc("no-syscall")], [], "no-syscall"),
    ([sc("ok", "mixed")], [], "mixed"),
    ([sc("not-supported"), sc("mixed")], [], "mixed"),
])
def test_overall_verdict(scenarios, findings, expected):
    assert run.overall_verdict(scenarios, findings) == expected


# -- CLI -----------------------------------------------------------------------------------

def test_parser_run_with_tree_and_patch():
    args = cli.build_parser().parse_args(["run", "--kernel-tree", "X", "--kvm-patch", "Y"])
    assert args.cmd == "run" and args.func is cli.cmd_run
    assert args.kernel_tree == "X" and args.kvm_patch == "Y"
    assert args.vm_patch is None and args.config is None and args.set is None


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([])


def test_parser_repeatable_set():
    args = cli.build_parser().parse_args(["build", "--set", "l1.cpus=2", "--set", "l2.cpus=1"])
    assert args.set == ["l1.cpus=2", "l2.cpus=1"] and args.log_dir == "build-logs"


def test_config_from_cli_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv(config.ENV_TREE, raising=False)
    tree = tmp_path / "linux"
    tree.mkdir()
    patch = tmp_path / "kvm.patch"
    args = cli.build_parser().parse_args(["run", "--kernel-tree", str(tree), "--kvm-patch", str(patch),
                                          "--set", "l1.cpus=8", "-o", str(tmp_path / "out")])
    cfg = config.from_args(args)
    assert cfg.kernel.source == "path" and Path(cfg.kernel.path) == tree.resolve()
    assert Path(cfg.patches.host) == patch.resolve() and cfg.patches.guest == "reference"
    assert cfg.l1.cpus == 8 and cfg.output == str(tmp_path / "out")


def test_config_from_git_url_and_ref(tmp_path, monkeypatch):
    monkeypatch.delenv(config.ENV_TREE, raising=False)
    repo = tmp_path / "linux.git"
    repo.mkdir()
    args = cli.build_parser().parse_args(["run", "--kernel-git", str(repo), "--kernel-ref", "v5.4"])
    cfg = config.from_args(args)
    assert cfg.kernel.source == "git"
    assert (cfg.kernel.git.url, cfg.kernel.git.ref) == (str(repo.resolve()), "v5.4")
    url = "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git"
    cfg = config.from_args(cli.build_parser().parse_args(["build", "--kernel-git", url, "--kernel-ref", "v5.4.59"]))
    assert (cfg.kernel.git.url, cfg.kernel.git.ref) == (url, "v5.4.59")


@pytest.mark.parametrize("argv,message", [
    (["--kernel-git", "https://x/linux.git"], "--kernel-git needs --kernel-ref"),
    (["--kernel-ref", "v5.4"], "--kernel-ref goes with --kernel-git"),
    (["--kernel-tree", "/x", "--kernel-git", "https://x/linux.git", "--kernel-ref", "v5.4"], "give one"),
])
def test_git_flags_misused(argv, message, monkeypatch):
    monkeypatch.delenv(config.ENV_TREE, raising=False)
    with pytest.raises(ConfigError, match=message):
        config.from_args(cli.build_parser().parse_args(["run", *argv]))


@pytest.fixture
def keep_sigterm():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)  # cli.main installs its own handlers


def test_main_missing_config_returns_2_and_prints_stage(capsys, keep_sigterm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["run", "--config", "missing.yaml"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "FAILED at stage 'config'" in err and "missing.yaml" in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_main_bad_override_returns_2(capsys, keep_sigterm):
    rc = cli.main(["build", "--set", "l1.cpu=4"])
    assert rc == 2 and "unknown key l1.cpu" in capsys.readouterr().err


def test_cache_dir_command(capsys, keep_sigterm, tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "c"))
    assert cli.main(["cache-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c")


# -- L2 readiness: the console file in L1 ----------------------------------------------------

class FakeGuest(nested.Guest):
    """Guest.wait_ready with L1's side replaced by a script of console texts."""

    def __init__(self, texts, exit_after=None):
        from types import SimpleNamespace
        self.texts, self.calls, self.exit_after = list(texts), 0, exit_after
        self.launched_at, self.timings, self.pid = 0.0, {}, 1234
        self.l1 = SimpleNamespace(exit_reason=lambda: None)
        self.l1_ssh = SimpleNamespace(run=self._l1_run)

    def _l1_run(self, argv, check=True, timeout=60, stage="guest-command"):
        """`cat console.log; kill -0 PID` in L1: the text so far, rc 1 once QEMU is gone."""
        from types import SimpleNamespace
        assert argv[:2] == ["sh", "-c"] and "console.log" in argv[2] and "kill -0 1234" in argv[2]
        self.calls += 1
        gone = self.exit_after is not None and self.calls >= self.exit_after
        return SimpleNamespace(out=self.texts[min(self.calls, len(self.texts)) - 1], rc=1 if gone else 0)


def _deadline(seconds=5.0):
    from harness.core.deadline import Deadline
    return Deadline(seconds, "l2-ssh")


def test_l2_ready_line_ends_the_wait():
    g = FakeGuest(["", "[ 1.0] booting\n", "HARNESS-READY l2\n"])
    g.wait_ready(_deadline(), poll=0)
    assert g.calls == 3 and "ready_s" in g.timings


@pytest.mark.parametrize("texts,exit_after,match", [
    (["[ 2.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n"], None, "L2's kernel crashed: .*Kernel panic"),
    (["HARNESS-ERROR l2: dropbear is not listening\n"], None, "dropbear is not listening"),
    (["[ 1.0] booting\n"], 2, "QEMU exited inside L1"),
])
def test_l2_not_ready_is_a_named_boot_error(texts, exit_after, match):
    from harness.core.errors import BootError
    with pytest.raises(BootError, match=match) as ei:
        FakeGuest(texts, exit_after).wait_ready(_deadline(), poll=0)
    assert ei.value.stage == "l2-ssh" and ei.value.tail is not None


def test_l2_silent_until_the_deadline_is_a_timeout():
    from harness.core.errors import StageTimeout
    with pytest.raises(StageTimeout, match="did not print 'HARNESS-READY l2'"):
        FakeGuest(["[ 1.0] booting\n"]).wait_ready(_deadline(0.05), poll=0.01)


def test_l2_failure_is_annotated_with_what_l1_printed(tmp_path):
    from harness.core.errors import StageTimeout
    console = "".join(f"[ {i}.0] line {i}\n" for i in range(100)) + (
        "[ 90.504755] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
        "[ 90.512601] CPU 0/KVM       R  running task        0    80      1 0x00000002\n")
    e = StageTimeout("l1: `qemu-system-aarch64 ...` did not finish within 60 s", stage="l2-launch")
    run.annotate_l2_failure(e, console, tmp_path / "l1-console.log", "qemu-system-aarch64 -accel kvm")
    assert e.message.endswith("; L1's console: [ 90.504755] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
    assert e.tail.splitlines()[-1].startswith("[ 90.512601] CPU 0/KVM") and len(e.tail.splitlines()) == 60
    assert e.log == tmp_path / "l1-console.log"
    assert "qemu-system-aarch64 -accel kvm" in e.reproduce and e.stage == "l2-launch"
    assert "L1's console" in e.render() and "CPU 0/KVM" in e.render()


def test_l2_failure_keeps_its_own_tail_and_a_quiet_l1_adds_nothing(tmp_path):
    from harness.core.errors import BootError
    e = BootError("l2-ssh: L2's kernel crashed: x", stage="l2-ssh", tail="L2 console tail", reproduce="r")
    run.annotate_l2_failure(e, "[ 1.0] all quiet\n", tmp_path / "l1.log", "qemu")
    assert (e.message, e.tail, e.reproduce, e.log) == ("l2-ssh: L2's kernel crashed: x", "L2 console tail", "r", None)


def test_qmp_socket_stays_within_the_unix_path_limit(tmp_path):
    import stat

    from harness.stack.machine import UNIX_PATH_MAX, qmp_socket_path

    short = qmp_socket_path(tmp_path, "l1")
    assert short.parent == tmp_path
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    p = qmp_socket_path(deep, "l1")
    assert len(str(p)) <= UNIX_PATH_MAX and p.name == "l1-qmp.sock"
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700  # private: QMP has no authentication
    p.parent.rmdir()


def test_grade_takes_the_kernel_tree_from_the_environment_like_run(tmp_path, monkeypatch):
    from harness.grade import cli as grade_cli

    tree = tmp_path / "linux-5.4"
    tree.mkdir()
    monkeypatch.setenv(config.ENV_TREE, str(tree))
    args = cli.build_parser().parse_args(["grade", "sub_hw2.zip", "--out", str(tmp_path / "out")])
    cfg = grade_cli.grade_config(args)
    assert cfg.kernel.source == "path" and Path(cfg.kernel.path) == tree.resolve()
    assert cfg.l1.restrict_net  # still configs/grade.yaml
    # a config the user names is never overridden by the environment
    own = tmp_path / "own.yaml"
    own.write_text((Path(grade_cli.GRADE_CONFIG)).read_text())
    args = cli.build_parser().parse_args(["grade", "sub_hw2.zip", "--out", str(tmp_path / "out"), "-c", str(own)])
    assert grade_cli.grade_config(args).kernel.source == "debian"
