"""The reference hypervisor on its own: --explain tells the truth about the running
code, the oracle agrees with it, and bad guest input stops it cleanly."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from harness.build import sandbox as confinement
from harness.kvmlab import LAB_DIR, build, guestapi, oracle
from harness.kvmlab.sandbox import KVM_DEVICE, base_env, run_untrusted

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def ref(kvmlab_cache):
    return build.build_reference()


def run_with_oracle(binary, tmp_path, *args):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    rec = tmp_path / "rec.jsonl"
    shim = build.build_oracle()
    uid = confinement.uid_for(str(tmp_path.resolve()))
    env = base_env({"LD_PRELOAD": str(shim), "KVMLAB_ORACLE_OUT": str(rec)})
    res = run_untrusted([str(binary), "-l", *args], cwd=root, stdout_path=tmp_path / "out",
                        stderr_path=tmp_path / "err", timeout=10, env=env, writable=[tmp_path],
                        readable=[binary.parent, shim], devices=[KVM_DEVICE], uid=uid)
    confinement.drop_device_nodes(uid)
    return res, oracle.load(rec)


def test_explain_matches_the_oracle(ref, tmp_path):
    res, trace = run_with_oracle(ref.binary, tmp_path, "--explain")
    out = res.stdout().decode()
    assert res.returncode == 0, res.stderr()
    assert "guest memory: 2097152 bytes" in out
    assert re.search(r"host VA 0x[0-9a-f]+-0x[0-9a-f]+, registered", out)
    assert "PD[0] = 0x87 -> 2 MiB page: GVA 0x0-0x1fffff -> GPA 0x0-0x1fffff" in out
    assert "entry point: RIP = 0x0" in out
    # the explained counts are the oracle's counts
    hello = 0
    for e in trace.exits:
        if e.port != 0xE9:
            break
        hello += 1
    assert hello == len("Hello, world!\n")
    assert f'"Hello, world!\\n": {hello} exits' in out
    assert f"total exits: {len(trace.exits)};" in out
    line = int(re.search(r"kvm-hello-world.c:(\d+) \(ioctl KVM_RUN\)", out).group(1))
    src = (LAB_DIR / "reference" / "kvm-hello-world.c").read_text().splitlines()
    assert "KVM_RUN" in src[line - 1]


def test_reference_demo_uses_one_exit_for_display(ref, tmp_path):
    res, trace = run_with_oracle(ref.binary, tmp_path)
    assert res.returncode == 0
    displays = [e for e in trace.exits if e.port == 0xEC]
    assert displays and all(e.direction == "out" and e.size == 4 for e in displays)
    out = res.stdout().decode()
    assert "display: this whole line costs one exit\n1\n" in out  # exits spent in display() = 1
    assert (tmp_path / "root" / "guest_a.txt").read_text() == "first line of A\nsecond line of A\n"
    assert (tmp_path / "root" / "guest_b.txt").read_text() == "only line of B\n"
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("mode,message", [
    (2, "string at GVA 0xfffff000 is outside guest memory"),
    (3, "length 2147483632 is larger than guest memory"),
    (4, "unknown port"),
    (5, "not terminated within 4096 bytes"),
])
def test_bad_guest_input_stops_cleanly(ref, tmp_path, mode, message):
    src = LAB_DIR / "reference"
    api = guestapi.analyse((src / "guest.c").read_text())
    cfg = guestapi.config_header(api, mode=mode, nonce="t", abs_path="/nonexistent/x")
    built = build.build_testguest(tmp_path / "b", src / "kvm-hello-world.c", src / "guest.c", cfg)
    assert built.ok, built.log.read_text()
    res, trace = run_with_oracle(built.binary, tmp_path)
    assert res.returncode == 2 and res.signal is None, res.describe()
    err = res.stderr().decode()
    assert message in err and "stopping the VM" in err
    # the error names the exit the oracle saw last
    assert f"exit #{trace.exits[-1].n} " in err


def test_cli_explain_runs(kvmlab_cache):
    proc = subprocess.run([sys.executable, "-m", "harness.kvmlab", "explain"], capture_output=True,
                          text=True, timeout=60, cwd=str(LAB_DIR.parents[1]))
    assert proc.returncode == 0, proc.stderr
    assert "== Part A answers" in proc.stdout and "total exits:" in proc.stdout
