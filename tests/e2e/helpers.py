"""Helpers shared by the end-to-end tests."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List

import pytest

from harness import hostarch


def require_stack_tools() -> None:
    """Skip (naming what is missing) when this machine cannot build or boot the stack."""
    missing = [t for t in ("qemu-system-aarch64", hostarch.gcc(), "mmdebstrap", "mke2fs")
               if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (run `make setup`)")


def processes_mentioning(text: str) -> List[str]:
    """Command lines of live processes whose argv contains ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path("/proc", pid, "cmdline").read_bytes()
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if text in cmd:
            found.append(f"{pid}: {cmd[:200]}")
    return found
