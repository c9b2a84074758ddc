"""Preflight: what a run needs from the machine, checked before the step that needs it,
with the number needed.  Running out half-way costs minutes and leaves a half-written
disk; being told "needs 1800 MB in /cache, 310 MB free" costs nothing.

Figures measured on this stack (Debian's linux-source-6.1, the minimal config):
  the extracted source tree            1.5 GB (linux-source-6.12: 1.64 GB, du -sm)
  one kernel worktree (build dir)      ~0.3 GB (objects) + ccache growth

``KVM_HARNESS_SKIP_PREFLIGHT=1`` turns the disk checks off (the fault-injection tests use
it to reach a real ENOSPC)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Union

from .errors import InfraError

SOURCE_TREE_MB = 1800      # extracted linux-source-6.1 / 6.12: 1.44 / 1.64 GB measured, plus headroom
KERNEL_BUILD_MB = 700      # one role's build dir + Image + ccache growth, with headroom
# a kernel build that failed without a tool naming an error, with less than this free where
# it writes, ran out of disk (its largest single write, vmlinux, is 7-9 MB on this config)
BUILD_DISK_FULL_MB = 64
ROOTFS_MB = 600            # mmdebstrap extract of L1's packages + ext4 image
MEMORY_HEADROOM_MB = 256   # QEMU's own use beyond the guest's RAM


def skipped() -> bool:
    return os.environ.get("KVM_HARNESS_SKIP_PREFLIGHT", "") not in ("", "0")


def free_mb(path: Union[str, Path]) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free // (1 << 20)


def require_disk(path: Union[str, Path], need_mb: int, what: str) -> None:
    """InfraError (stage 'preflight') when ``path``'s file system has less than need_mb free."""
    if skipped():
        return
    have = free_mb(path)
    if have < need_mb:
        raise InfraError(
            f"{what} needs {need_mb} MB free in {path}, only {have} MB are free: free space there "
            "or point KVM_HARNESS_CACHE at a larger file system (nothing was started)",
            stage="preflight")


def available_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 30


def require_memory(need_mb: int, what: str) -> None:
    have = available_memory_mb()
    if have < need_mb + MEMORY_HEADROOM_MB:
        raise InfraError(f"{what} needs {need_mb + MEMORY_HEADROOM_MB} MB of memory, "
                         f"{have} MB are available", stage="preflight")


def require_tools(tools: Iterable[str], why: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        raise InfraError(f"{why}: missing {', '.join(missing)} (run `make setup`)", stage="preflight")
