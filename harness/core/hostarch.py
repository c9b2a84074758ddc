"""What this host's architecture means for the harness: the Debian packages to install,
the compiler that produces arm64 code, and whether arm64 code runs natively.

On x86_64 the kernels and the workload are cross-compiled (``aarch64-linux-gnu-``) and
``qemu-aarch64-static`` runs arm64 helpers at image-build time; on an arm64 host the
native ``gcc`` is the arm64 compiler (Debian has no ``gcc-aarch64-linux-gnu`` for arm64)
and arm64 code runs as it is.

This file is also a script that needs nothing but the standard library, so ``make setup``
asks it for the package list before any virtual environment exists::

    python3 harness/core/hostarch.py apt-packages
"""
from __future__ import annotations

import platform
import sys
from typing import Dict, List, Optional

try:
    from . import distro
except ImportError:  # run as a script by `make setup`, before the package is installed
    import distro  # type: ignore[no-redef]

ARM64 = ("aarch64", "arm64")

# needed on every host
COMMON_PACKAGES = (
    "qemu-system-arm", "xz-utils", "make", "flex", "bison", "bc", "libssl-dev",
    "libelf-dev", "cpio", "kmod", "ccache", "patch", "git", "mmdebstrap", "e2fsprogs",
    "debian-archive-keyring", "dropbear-bin", "openssh-client", "ca-certificates", "gcc", "libc6-dev",
    # the virtual environment that holds the Python side (PEP 668: no system-wide pip)
    "python3-venv",
    # sandboxing of untrusted builds; PDF pages of submitted reports
    "bubblewrap", "poppler-utils",
)
# cross toolchain and user-mode emulation, only where arm64 is foreign
CROSS_PACKAGES = ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user-static")


def machine(override: Optional[str] = None) -> str:
    return override or platform.machine()


def is_arm64(arch: Optional[str] = None) -> bool:
    return machine(arch) in ARM64


def apt_packages(arch: Optional[str] = None, os_info: Optional[Dict[str, str]] = None) -> List[str]:
    """Debian packages for this host: the common set, Debian's kernel source for this release
    (linux-source-6.1 on Debian 12, linux-source-6.12 on Debian 13; see distro.py) and, where
    arm64 is foreign, the cross tools."""
    return (list(COMMON_PACKAGES) + [distro.source_package(os_info)]
            + ([] if is_arm64(arch) else list(CROSS_PACKAGES)))


def cross_prefix(arch: Optional[str] = None) -> str:
    """CROSS_COMPILE for arm64 code: empty on an arm64 host."""
    return "" if is_arm64(arch) else "aarch64-linux-gnu-"


def gcc(arch: Optional[str] = None) -> str:
    return cross_prefix(arch) + "gcc"


def arm64_runner(arch: Optional[str] = None) -> List[str]:
    """argv prefix that runs a static arm64 program on this host."""
    return [] if is_arm64(arch) else ["qemu-aarch64-static"]


if __name__ == "__main__":
    if sys.argv[1:] == ["apt-packages"]:
        print(" ".join(apt_packages()))
    else:
        sys.exit("usage: python3 harness/core/hostarch.py apt-packages")
