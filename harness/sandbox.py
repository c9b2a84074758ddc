"""Confinement for untrusted work: argv wrappers, no shell.

``confine(argv, writable=[...], readable=[...])`` runs a command under bubblewrap with
every namespace unshared (no network), no capabilities (so nothing can be remounted),
the root file system read-only, home directories hidden, a private /tmp, write access
only to the directories named in ``writable`` and read-only ones in ``readable``.  Of two
nested ones the deeper decides: a kernel worktree's ``src``, whose files are hard links
to the pristine tree every build shares, stays read-only inside the writable worktree.
All under ``prlimit`` (address space, file size, no core dumps) and ``timeout`` (wall
clock, then SIGKILL).  Used for kernel builds of students' patches and for poppler on
their PDFs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

from .deadline import scaled
from .errors import InfraError

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Limits:
    wall_s: int = 1800                 # a cold kernel build on 2 cores is ~5 min (scaled: slowdown factor)
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
    out = ["timeout", "--kill-after=10", str(round(scaled(limits.wall_s))),
           "prlimit", f"--as={limits.address_space}", f"--fsize={limits.file_size}", "--core=0", "--",
           "bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for home in ("/root", "/home"):
        if os.path.isdir(home):
            out += ["--tmpfs", home]
    for d in writable:
        Path(d).mkdir(parents=True, exist_ok=True)
    # shallower paths first, so the deeper bind decides: a read-only directory inside a
    # writable one stays read-only, and a writable one inside a read-only one writable
    binds = [(Path(d), "--bind") for d in writable] + [(Path(d), "--ro-bind") for d in readable]
    for d, how in sorted(binds, key=lambda b: len(b[0].parts)):
        out += [how, str(d), str(d)]
    if cwd:
        out += ["--chdir", str(cwd)]
    return out + ["--"] + [str(a) for a in argv]


def unusable() -> str:
    """'' when a sandbox can really be made here, else why not: the tools, then bubblewrap
    itself (a kernel or an emulator without user namespaces refuses it: qemu-user's
    process is multi-threaded, so unshare(CLONE_NEWUSER) fails with EINVAL there)."""
    why = available()
    if why:
        return why
    try:
        probe = subprocess.run(confine(["true"], limits=PDF), capture_output=True, text=True,
                               timeout=scaled(60))
    except subprocess.TimeoutExpired:
        return "bubblewrap did not start a sandbox within a minute"
    if probe.returncode != 0:
        return f"bubblewrap cannot create a sandbox here: {probe.stderr.strip()[-300:]}"
    return ""
