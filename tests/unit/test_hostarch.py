"""The host architecture decides the package set, the compiler prefix and how arm64 code runs."""
import subprocess
import sys

import pytest

from harness.core import hostarch


@pytest.mark.parametrize("arch", ["aarch64", "arm64"])
def test_arm64_host_builds_natively(arch):
    pkgs = hostarch.apt_packages(arch)
    assert "gcc-aarch64-linux-gnu" not in pkgs  # does not exist for Debian's arm64 architecture
    assert "qemu-user-static" not in pkgs and "libc6-dev-arm64-cross" not in pkgs
    assert "gcc" in pkgs and "qemu-system-arm" in pkgs and "python3-venv" in pkgs
    assert hostarch.cross_prefix(arch) == "" and hostarch.gcc(arch) == "gcc"
    assert hostarch.arm64_runner(arch) == []


def test_x86_host_cross_compiles():
    pkgs = hostarch.apt_packages("x86_64")
    assert {"gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user-static", "python3-venv"} <= set(pkgs)
    assert hostarch.gcc("x86_64") == "aarch64-linux-gnu-gcc"
    assert hostarch.arm64_runner("x86_64") == ["qemu-aarch64-static"]


def test_script_prints_the_list_with_the_standard_library_only():
    # make setup runs it with the system python before any virtual environment exists
    out = subprocess.run([sys.executable, "-S", hostarch.__file__, "apt-packages"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == hostarch.apt_packages()
