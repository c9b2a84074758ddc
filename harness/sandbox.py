"""Confinement for untrusted work: argv wrappers, no shell.

``confine(argv, writable=[...])`` runs a command under bubblewrap with every
namespace unshared (no network), the root file system read-only, home directories
hidden, a private /tmp, and write access only to the directories named; under
``prlimit`` (address space, file size, no core dumps) and ``timeout`` (wall clock, then
SIGKILL).  Used for kernel builds of students' patches and for poppler on their PDFs.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

from .errors import InfraError

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Limits:
    wall_s: int = 1800                 # a cold kernel build on 2 cores is ~5 min
    address_space: int = 6 << 30       # per process (cc1 on big files ~1 GiB)
    file_size: int = 2 << 30           # per file written (vmlinux ~ 200 MB with debug off)


BUILD = Limits()
PDF = Limits(wall_s=60, address_space=1 << 30, file_size=64 << 20)


def available() -> str:
    """'' when bubblewrap works here, else why not."""
    for tool in ("bwrap", "prlimit", "timeout"):
        if not shutil.which(tool):
            return f"{tool} not found (apt-get install bubblewrap util-linux coreutils)"
    return ""


def confine(argv: Sequence[PathLike], *, writable: Sequence[PathLike] = (), readable: Sequence[PathLike] = (),
            limits: Limits = BUILD, cwd: PathLike = None) -> List[str]:
    """The argv that runs ``argv`` confined (see the module docstring)."""
    why = available()
    if why:
        raise InfraError(f"sandbox: {why}", stage="sandbox")
    out = ["timeout", "--kill-after=10", str(limits.wall_s),
           "prlimit", f"--as={limits.address_space}", f"--fsize={limits.file_size}", "--core=0", "--",
           "bwrap", "--die-with-parent", "--new-session", "--unshare-all",
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for home in ("/root", "/home"):
        if os.path.isdir(home):
            out += ["--tmpfs", home]
    for d in readable:
        out += ["--ro-bind", str(d), str(d)]
    for d in writable:
        Path(d).mkdir(parents=True, exist_ok=True)
        out += ["--bind", str(d), str(d)]
    if cwd:
        out += ["--chdir", str(cwd)]
    return out + ["--"] + [str(a) for a in argv]
