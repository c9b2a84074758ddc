"""tools/arm64-check.sh's logic that runs without root: the binfmt_misc entry (register
when missing, enable when disabled, refuse one without the F flag), which roots count as
made, and the steps.  The script's functions are sourced (ARM64_CHECK_LIB=1) with
BINFMT_DIR pointing at a directory of plain files standing in for binfmt_misc."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "arm64-check.sh"
CONF_LINE = (r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
             r":\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
             r":/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF")


def call(tmp_path: Path, script: str, conf: str = CONF_LINE) -> subprocess.CompletedProcess:
    binfmt = tmp_path / "binfmt"
    binfmt.mkdir(exist_ok=True)
    (binfmt / "register").touch()
    conf_file = tmp_path / "qemu-aarch64.conf"
    conf_file.write_text(f"# comment\n{conf}\n" if conf else "")
    env = {"PATH": os.environ["PATH"], "ARM64_CHECK_LIB": "1", "BINFMT_DIR": str(binfmt),
           "BINFMT_CONF": str(conf_file), "CLONE": "/srv/c"}
    return subprocess.run(["sh", "-c", f". {SCRIPT}; {script}"], env=env, capture_output=True, text=True, timeout=20)


def entry(tmp_path: Path, state: str, flags: str) -> Path:
    (tmp_path / "binfmt").mkdir(exist_ok=True)
    e = tmp_path / "binfmt" / "qemu-aarch64"
    e.write_text(f"{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\n")
    return e


def test_missing_entry_is_registered_from_qemu_user_statics_file(tmp_path):
    r = call(tmp_path, "binfmt_ensure")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "registered"
    assert "registering arm64 binaries with binfmt_misc" in r.stderr  # it says so
    assert (tmp_path / "binfmt" / "register").read_text() == CONF_LINE + "\n"


def test_registered_entry_is_left_alone(tmp_path):
    entry(tmp_path, "enabled", "POF")
    r = call(tmp_path, "binfmt_ensure")
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "present", "")
    assert (tmp_path / "binfmt" / "register").read_text() == ""


def test_disabled_entry_is_enabled(tmp_path):
    e = entry(tmp_path, "disabled", "POF")
    r = call(tmp_path, "binfmt_ensure")
    assert r.returncode == 0 and r.stdout.strip() == "enabled" and "is disabled: enabling it" in r.stderr
    assert e.read_text() == "1\n"


def test_entry_without_fix_binary_flag_is_refused(tmp_path):
    """Without F the kernel looks the interpreter up inside the root, where it is not."""
    entry(tmp_path, "enabled", "OC")
    r = call(tmp_path, "binfmt_ensure")
    assert r.returncode == 2 and "without the F flag" in r.stderr


def test_without_qemu_user_static_it_says_what_to_install(tmp_path):
    r = call(tmp_path, f'BINFMT_CONF={tmp_path}/none; binfmt_ensure')
    assert r.returncode == 2 and "apt-get install qemu-user-static" in r.stderr


def test_conf_without_the_aarch64_line_is_an_error(tmp_path):
    r = call(tmp_path, "binfmt_ensure", conf=":qemu-arm:M::x:y:/usr/libexec/qemu-binfmt/arm-binfmt-P:F")
    assert r.returncode == 2 and "has no :qemu-aarch64: line" in r.stderr


@pytest.mark.parametrize("machine,ready", [(0xB7, True), (0x3E, False)])
def test_a_root_counts_as_made_when_its_python_is_arm64(tmp_path, machine, ready):
    root = tmp_path / "bookworm"
    (root / "usr" / "bin").mkdir(parents=True)
    py = root / "usr" / "bin" / "python3"
    py.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + bytes([machine, 0]) + bytes(40))
    py.chmod(0o755)
    r = call(tmp_path, f"root_ready {root} && echo yes || echo no")
    assert r.stdout.strip() == ("yes" if ready else "no")
    r = call(tmp_path, f"root_ready {tmp_path}/absent && echo yes || echo no")
    assert r.stdout.strip() == "no"


def test_roots_are_kept_under_the_cache_per_suite(tmp_path):
    r = call(tmp_path, "CACHE=/c/kvm-harness-arm64; root_of bookworm; root_of trixie")
    assert r.stdout.split() == ["/c/kvm-harness-arm64/bookworm", "/c/kvm-harness-arm64/trixie"]


def test_steps_are_the_readmes_commands(tmp_path):
    r = call(tmp_path, "for s in setup unit run e2e; do step_cmd $s; done; step_cmd bogus || echo refused")
    assert r.stdout.splitlines() == ["make -C /srv/c setup", "make -C /srv/c unit", "make -C /srv/c run",
                                     "/srv/c/.venv/bin/python -m pytest -q -rs -m e2e", "refused"]
