"""Helpers shared by the end-to-end tests."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

import pytest

from harness.core import hostarch, procs


def require_stack_tools() -> None:
    """Skip (naming what is missing) when this machine cannot build or boot the stack."""
    missing = [t for t in ("qemu-system-aarch64", hostarch.gcc(), "mmdebstrap", "mke2fs")
               if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (run `make setup`)")


def processes_mentioning(text: str) -> List[str]:
    """Command lines of live processes whose argv contains ``text``."""
    return [f"{pid}: {cmd[:200]}" for pid, cmd in procs.processes_mentioning(text).items()]
