"""The fault-injection suite (`make faults`, `pytest -m faults`).  Each case strikes one
fault on the real stack and checks: exit code, whose fault (kind), stage, the log tail,
no QEMU left, and that the cache is not poisoned (a following run succeeds)."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Tuple

import pytest

from harness.core import cache, config, resources
from harness.stack import images, ssh
from harness.build import profiles, sources
from harness.core.errors import SourceError

from .conftest import (Live, alive, descendants, harness_argv, in_overlay, no_process_left, processes_mentioning,
                       run, warm_cache_or_skip)

QUICK = ["--set", "scenarios=[{name: quick, calls: 300}]"]


def default_tarball() -> Tuple[Path, tuple]:
    """The embedded default follows the release (6.1 on Debian 12, 6.12 on Debian 13)."""
    try:
        tarball, _ = sources.auto_tarball()
    except SourceError as e:
        pytest.skip(f"no default kernel source: {e.message}")
    return tarball, tuple(int(x) for x in tarball.name[len("linux-source-"):-len(".tar.xz")].split("."))


def ref_vm_patch() -> Path:
    return profiles.PROFILES / ("%d.%d" % default_tarball()[1]) / "vm.patch"


@pytest.fixture(scope="module")
def warm():
    warm_cache_or_skip()


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def failed_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("FAILED at stage")]
    assert lines, f"no FAILED line in:\n{text[-3000:]}"
    return lines[0]


# -- disk full ------------------------------------------------------------------------------

def test_disk_full_while_extracting_the_source(tmpfs, tmp_path, monkeypatch):
    fs = tmpfs("cache", 300)
    env = {"KVM_HARNESS_CACHE": str(fs.path), "KVM_HARNESS_SKIP_PREFLIGHT": "1"}
    r = run(harness_argv("build", "--log-dir", str(tmp_path / "logs")), env=env)
    assert r.rc == 3, r.err[-3000:]
    assert failed_line(r.err).startswith("FAILED at stage 'source' (the machine or harness): tar:")
    assert "no space left on device: the machine's fault" in failed_line(r.err)
    assert "Cannot write: No space left on device" in r.err  # tar's own lines in the tail
    # the failed attempt does not keep the disk full
    assert fs.used_mb() < 10, f"{fs.used_mb():.0f} MB left behind"
    assert not list((fs.path / "sources").glob("*.tmp-*"))

    # with the preflight on, nothing starts, and the number needed is named
    r = run(harness_argv("build", "--log-dir", str(tmp_path / "logs")), env={"KVM_HARNESS_CACHE": str(fs.path)})
    assert r.rc == 3
    line = failed_line(r.err)
    assert line.startswith("FAILED at stage 'preflight' (the machine or harness): extracting "
                           f"{default_tarball()[0].name}")
    assert f"needs {resources.SOURCE_TREE_MB} MB free" in line

    # after freeing space, the next attempt succeeds
    fs.resize(2600)
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(fs.path))
    tree = sources.resolve(config.load(None), tmp_path / "logs2", progress=lambda m: None)
    assert (tree.root / "Makefile").is_file() and tree.version[:2] == default_tarball()[1]


def assert_stopped_by_the_interrupt(r) -> None:
    """Exit 130 and the CLI's own check that every child of the run is gone."""
    assert r.rc == 130, r.out[-3000:]
    assert "interrupted: every QEMU and build process of this run was stopped (checked)" in r.out


def _variant_vm_patch(tmp_path: Path, old: str, new: str) -> Path:
    text = ref_vm_patch().read_text()
    assert text.count(old) == 1
    p = tmp_path / "vm-variant.patch"
    p.write_text(text.replace(old, new))
    return p


def test_disk_full_while_linking_the_guest_kernel(warm, tmpfs, tmp_path):
    # a guest patch differing in one comment: one object recompiled, then the link
    patch = _variant_vm_patch(tmp_path, "ask the hypervisor which", "ask the hypervisor (fault test) which")
    upper = tmpfs("upper", 24)
    argv = harness_argv("build", "--log-dir", str(tmp_path / "logs"), "--vm-patch", str(patch))
    r = run(in_overlay(upper, argv), env={"KVM_HARNESS_SKIP_PREFLIGHT": "1"})
    assert r.rc == 3, r.err[-3000:]
    line = failed_line(r.err)
    assert line.startswith("FAILED at stage 'kernel-build (guest)' (the machine or harness): guest kernel")
    # the disk fills wherever the build writes next: ld's output ("No space left on device"),
    # a .cmd file of kbuild's fixdep ("not all data was written"), or a tool that fails
    # without a word (then the free space where the build writes says it): all the machine's
    assert "not the patch's fault" in line
    m = re.search(r"no space left on device: (\d+) MB free where the build writes", line)
    if m:
        assert int(m.group(1)) < resources.BUILD_DISK_FULL_MB
    else:
        disk_full = {"no space left on device": "No space left on device",
                     "a write failed (the disk is full or failing)": "fixdep: not all data was written"}
        said = [k for k in disk_full if k in line]
        assert said, line
        assert disk_full[said[0]] in r.err.split("--- last lines ---", 1)[-1], r.err[-3000:]
    assert [p for p in processes_mentioning(str(tmp_path)) if "make" in p] == []

    # space freed: the same build succeeds, nothing of the failure sticks
    upper.resize(3000)
    r = run(in_overlay(upper, argv))
    assert r.rc == 0, r.err[-3000:]
    built = json.loads(r.out[r.out.index("{"):])
    assert built["guest"].endswith("/Image")


# -- unexpected exception -------------------------------------------------------------------

def test_sigint_during_a_kernel_build_stops_make_and_the_next_build_goes_on(warm, tmpfs, tmp_path):
    # a guest patch differing in one comment: Ctrl-C strikes while its make runs
    patch = _variant_vm_patch(tmp_path, "ask the hypervisor which", "ask the hypervisor (interrupted) which")
    upper = tmpfs("upper", 3000)
    argv = harness_argv("build", "--log-dir", str(tmp_path / "logs"), "--vm-patch", str(patch))
    live = Live(in_overlay(upper, argv))
    try:
        live.wait_for(f"applying {patch}")
        end = time.monotonic() + 120
        while not [c for _, c in descendants(live.p.pid) if c.startswith("make ") and " Image" in c]:
            assert time.monotonic() < end and live.p.poll() is None, "make Image never started"
            time.sleep(0.2)
        time.sleep(1)  # make is compiling now
        builders = descendants(live.p.pid)
        live.signal(signal.SIGINT)
        r = live.finish()
    finally:
        live.kill()
    assert_stopped_by_the_interrupt(r)
    left = [f"{pid}: {cmd[:120]}" for pid, cmd in builders if alive(pid)]
    assert left == [], left
    # the interrupted worktree is not trusted as it was left: the same build succeeds
    r = run(in_overlay(upper, argv))
    assert r.rc == 0, r.err[-3000:]
    assert json.loads(r.out[r.out.index("{"):])["guest"].endswith("/Image")


def test_unexpected_exception_is_exit_3_in_one_line_with_the_traceback_in_the_log(warm, tmp_path):
    run_dir = tmp_path / "run"
    code = ("import sys\n"
            "from harness.stack import images\n"
            "def broken(*a, **k):\n"
            "    raise ValueError(\"invalid literal for int() with base 10: 'garbage'\")\n"
            "images.payload_disk = broken\n"
            "from harness.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = run([sys.executable, "-c", code, "run", "--run-dir", str(run_dir), *QUICK])
    assert r.rc == 3, r.err[-3000:]
    line = failed_line(r.err)
    assert line.startswith("FAILED at stage 'boot' (the machine or harness): unexpected ValueError: invalid literal")
    assert "Traceback" not in r.err
    tb = (run_dir / "logs" / "traceback.log").read_text()
    assert tb.startswith("Traceback") and "in broken" in tb
    assert summary_of(run_dir)["error"]["kind"] == "infra"
    assert no_process_left(str(run_dir)) == []


# -- kernels that die or hang ---------------------------------------------------------------

def test_l1_panic(warm, tmp_path):
    run_dir = tmp_path / "run"
    r = run(harness_argv("run", "--run-dir", str(run_dir), *QUICK, "--set", "l1.append=init=/bin/busybox -- false"))
    assert r.rc == 3, r.err[-3000:]  # pristine tree + reference patches: the settings/machine, not the kernel
    line = failed_line(r.err)
    assert line.startswith("FAILED at stage 'l1-boot' (the machine or harness): l1-boot: l1 crashed (panic")
    assert "Attempted to kill init" in r.err
    assert summary_of(run_dir)["error"]["stage"] == "l1-boot"
    assert no_process_left(str(run_dir)) == []


def test_l2_panic(warm, tmp_path):
    run_dir = tmp_path / "run"
    r = run(harness_argv("run", "--run-dir", str(run_dir), *QUICK, "--set", "l2.append=rdinit=/bin/busybox -- false"))
    assert r.rc == 3, r.err[-3000:]
    line = failed_line(r.err)
    assert line.startswith("FAILED at stage 'l2-ssh' (the machine or harness): l2-ssh: L2's kernel crashed")
    assert "Attempted to kill init" in line
    assert "--- L2's console (last lines) ---" in r.err
    assert no_process_left(str(run_dir)) == []


def test_l2_hang_shows_l2s_console(warm, tmp_path):
    run_dir = tmp_path / "run"
    append = 'l2.append=rdinit=/bin/busybox -- sh -c "echo L2-INIT-BLOCKED; exec sleep 100000"'
    t0 = time.monotonic()
    r = run(harness_argv("run", "--run-dir", str(run_dir), *QUICK, "--set", append),
            env={"KVM_HARNESS_SLOWDOWN": "0.3"})
    took = time.monotonic() - t0
    assert r.rc == 3, r.err[-3000:]
    line = failed_line(r.err)
    assert line.startswith("FAILED at stage 'l2-ssh' (the machine or harness): l2-ssh: L2 did not print")
    assert "L2's console ends with: 'L2-INIT-BLOCKED'" in line
    tail = r.err.split("--- L2's console (last lines) ---", 1)[1]
    assert "L2-INIT-BLOCKED" in tail.split("--- L1's console", 1)[0]
    assert (run_dir / "l2-console.log").read_text().count("L2-INIT-BLOCKED") == 1
    assert took < 120
    assert no_process_left(str(run_dir)) == []


# -- the harness interrupted or killed --------------------------------------------------------

STAGES = {"boot": "booting L1", "l2-launch": "launching L2", "scenario": "scenario quick ("}  # the progress line, not the summary


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigint_at_each_stage_stops_every_qemu(warm, tmp_path, stage):
    run_dir = tmp_path / "run"
    live = Live(harness_argv("run", "--run-dir", str(run_dir), *QUICK))
    try:
        live.wait_for(STAGES[stage])
        if stage != "boot":
            assert [p for p in processes_mentioning(str(run_dir)) if "qemu-system" in p], "L1 should be running"
        live.signal(signal.SIGINT)
        r = live.finish()
    finally:
        live.kill()
    assert_stopped_by_the_interrupt(r)
    assert no_process_left(str(run_dir), grace=1) == []
    summary = summary_of(run_dir)  # the run directory says why it stopped, not a silent half
    assert summary["verdict"] == "interrupted" and summary["interrupted"]["signal"] == "SIGINT", summary


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_at_each_stage_leaves_no_qemu(warm, tmp_path, stage):
    run_dir = tmp_path / "run"
    live = Live(harness_argv("run", "--run-dir", str(run_dir), *QUICK))
    try:
        live.wait_for(STAGES[stage])
        time.sleep(0.5)  # let QEMU start: the fault is a kill while it runs
        live.signal(signal.SIGKILL)
        live.p.wait(timeout=30)
    finally:
        live.kill()
    assert no_process_left(str(run_dir), grace=10) == []


def test_l1_qemu_killed_mid_scenario(warm, tmp_path):
    run_dir = tmp_path / "run"
    live = Live(harness_argv("run", "--run-dir", str(run_dir), "--set", "scenarios=[{name: long, calls: 200000}]"))
    try:
        live.wait_for("scenario long (")
        qemu = [p for p in processes_mentioning(str(run_dir)) if "qemu-system-aarch64" in p]
        assert len(qemu) == 1, qemu
        os.kill(int(qemu[0].split(":")[0]), signal.SIGKILL)
        r = live.finish(timeout=300)
    finally:
        live.kill()
    assert r.rc == 3, r.out[-3000:]
    line = failed_line(r.out)
    assert "(the machine or harness)" in line and "SSH" in line and "unexpected" not in line, line
    assert summary_of(run_dir)["error"]["kind"] == "infra"
    assert no_process_left(str(run_dir)) == []


# -- the cache ------------------------------------------------------------------------------

def test_l1_ssh_server_killed_mid_scenario(warm, tmp_path):
    """L1's dropbear (the listener and every session, the harness's included) killed while
    the workload runs in L2: the machine's failure, named, with nothing left running."""
    run_dir = tmp_path / "run"
    live = Live(harness_argv("run", "--run-dir", str(run_dir), "--set", "scenarios=[{name: long, calls: 200000}]"))
    try:
        live.wait_for("scenario long (")
        cmdline = (run_dir / "l1-qemu.cmdline").read_text()
        port = int(re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22\b", cmdline).group(1))
        ident = images.ssh_identity()
        own = ssh.Session.connect("l1-fault", "127.0.0.1", port, ident.client_key, ident.host_pub)
        # the kill takes this session down too: start it, do not wait for an answer
        own.start(["sh", "-c", "sleep 0.5; killall -9 dropbear"])
        r = live.finish(timeout=300)
        own.close()
    finally:
        live.kill()
    assert r.rc == 3, r.out[-3000:]
    line = failed_line(r.out)
    assert "(the machine or harness)" in line and "SSH" in line and "unexpected" not in line, line
    assert "l1" in line, line
    assert summary_of(run_dir)["error"]["kind"] == "infra"
    assert no_process_left(str(run_dir)) == []


def test_truncated_cached_image_is_rebuilt_not_booted(warm, tmpfs, tmp_path):
    r = run(harness_argv("build", "--log-dir", str(tmp_path / "logs")))
    host_image = Path(json.loads(r.out[r.out.index("{"):])["host"])
    before = cache.file_digest(host_image)
    upper = tmpfs("upper", 3000)
    argv = harness_argv("build", "--log-dir", str(tmp_path / "logs2"))
    r = run(in_overlay(upper, argv, before=f"truncate -s 100 {host_image} &&"))
    assert r.rc == 0, r.err[-3000:]
    assert "is damaged (Image has 100 bytes" in r.out
    assert cache.file_digest(host_image) == before  # the shared cache was never touched


def test_two_runs_at_once_share_one_cache(warm, tmp_path):
    lives = [Live(harness_argv("run", "--run-dir", str(tmp_path / f"run{i}"), *QUICK)) for i in range(2)]
    try:
        results = [lv.finish(timeout=600) for lv in lives]
    finally:
        for lv in lives:
            lv.kill()
    for i, r in enumerate(results):
        assert r.rc == 0, r.out[-3000:]
        assert summary_of(tmp_path / f"run{i}")["verdict"] == "ok"
    assert no_process_left(str(tmp_path)) == []


def test_after_the_faults_a_normal_run_succeeds(warm, tmp_path):
    run_dir = tmp_path / "run"
    r = run(harness_argv("run", "--run-dir", str(run_dir), *QUICK))
    assert r.rc == 0, r.err[-3000:]
    assert summary_of(run_dir)["verdict"] == "ok"
