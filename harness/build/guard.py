"""The guard around one sandbox: the totals that rlimits cannot bound.

rlimits (sandbox.confine) bound each process (its address space, each file it writes)
and the number of processes of a uid.  Many processes can still take all the
machine's memory together, and many files can fill its disk.  The guard runs the
sandbox's command as its child and bounds, for everything that child starts:

- **processes and memory**, in a cgroup of its own, where the machine lets root make
  one (``mechanism()``): cgroup v2 when the pids and memory controllers can be enabled
  below the guard's own cgroup, else the cgroup v1 pids and memory hierarchies (the
  new cgroup goes below the guard's own cgroup there too, so whatever limits the
  harness also limits the sandbox).  A fork beyond the limit meets EAGAIN; memory
  beyond it meets the OOM killer inside that cgroup only, never the harness or a QEMU;
- **bytes written** into its writable directories (``--watch``): their allocated size
  is measured every few seconds (never more than ~5 % of a core), and the command is
  killed once they have grown by more than ``--bytes``.  It may overshoot by what it
  writes in one interval: the bound keeps a disk filler far from filling the disk.

The cgroup is removed when the command ends.  A limit that was met is said on stderr,
in a line starting with "sandbox:" (a build log keeps it: the evidence shows the limit);
nothing is said otherwise.  It runs as a script (``python3 guard.py ... -- argv``) and uses
only the standard library, so that it works however the harness is installed.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

PARENT = "kvm-harness-sandboxes"
STOPPED_BYTES = 153         # the guard's exit code when it stopped a writer (128 + SIGXFSZ, as a file limit)
INTERVAL_S = 2.0            # between two measurements of the written bytes (longer when a walk is slow)


def _mounts() -> List[Tuple[str, str, str]]:
    """(mount point, fstype, super options) of every cgroup file system."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        fstype, opts = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        if fstype in ("cgroup", "cgroup2"):
            out.append((fields[4], fstype, opts))
    return out


def _own_cgroups() -> Dict[str, str]:
    """The guard's own cgroup per hierarchy: '' for v2, the controller names for v1."""
    own = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                own[c] = path
    except OSError:
        pass
    return own


def _v2_base() -> Optional[Path]:
    """Where a v2 cgroup with pids and memory can be made, else None."""
    own = _own_cgroups().get("")
    for mnt, fstype, _ in _mounts():
        if fstype != "cgroup2" or own is None:
            continue
        here = Path(mnt) / own.lstrip("/")
        try:
            have = (here / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if not {"pids", "memory"} <= set(have):
            continue
        try:
            # allowed in the hierarchy's root, or in a cgroup delegated to us with no process of its own
            (here / "cgroup.subtree_control").write_text("+pids +memory")
            base = here / PARENT
            base.mkdir(exist_ok=True)
            (base / "cgroup.subtree_control").write_text("+pids +memory")
            return base
        except OSError:
            continue
    return None


def _v1_bases() -> Optional[Dict[str, Path]]:
    """{'pids': dir, 'memory': dir} where v1 cgroups can be made, else None."""
    own = _own_cgroups()
    bases: Dict[str, Path] = {}
    for mnt, fstype, opts in _mounts():
        if fstype != "cgroup":
            continue
        for ctrl in ("pids", "memory"):
            if ctrl in opts.split(",") and ctrl in own and ctrl not in bases:
                base = Path(mnt) / own[ctrl].lstrip("/") / PARENT
                try:
                    base.mkdir(exist_ok=True)
                except OSError:
                    continue
                if os.access(base, os.W_OK):
                    bases[ctrl] = base
    return bases if set(bases) == {"pids", "memory"} else None


def mechanism() -> str:
    """'cgroup v2', 'cgroup v1' or '' (none can be made here)."""
    if _v2_base() is not None:
        return "cgroup v2"
    if _v1_bases() is not None:
        return "cgroup v1"
    return ""


class Cgroup:
    """One sandbox's cgroup (one directory in v2, one per controller in v1)."""

    def __init__(self, name: str, pids: int, memory: int):
        self.dirs: List[Path] = []
        self.version = 0
        base = _v2_base()
        if base is not None:
            self.version = 2
            self._make([base / name])
            self._set(self.dirs[0], "pids.max", pids)
            self._set(self.dirs[0], "memory.max", memory)
            self._set(self.dirs[0], "memory.swap.max", 0, required=False)
            return
        bases = _v1_bases()
        if bases is not None:
            self.version = 1
            self._make([bases["pids"] / name, bases["memory"] / name])
            self._set(self.dirs[0], "pids.max", pids)
            self._set(self.dirs[1], "memory.limit_in_bytes", memory)
            self._set(self.dirs[1], "memory.memsw.limit_in_bytes", memory, required=False)

    def _make(self, dirs: List[Path]) -> None:
        for d in dirs:
            _prune(d.parent)
            d.mkdir(exist_ok=True)
            self.dirs.append(d)

    @staticmethod
    def _set(d: Path, knob: str, value: int, required: bool = True) -> None:
        try:
            (d / knob).write_text(str(value))
        except OSError:
            if required:
                raise

    def join(self) -> None:
        """Put the calling process in it (the child does, before it execs the command)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    def events(self) -> Dict[str, int]:
        """Forks refused at the process limit and processes the OOM killer ended."""
        counts = {"refused": 0, "oom_kill": 0}
        for d in self.dirs:
            for name, key, field in (("pids.events", "refused", "max"), ("memory.events", "oom_kill", "oom_kill"),
                                     ("memory.oom_control", "oom_kill", "oom_kill")):
                try:
                    for line in (d / name).read_text().splitlines():
                        k, _, v = line.partition(" ")
                        if k == field:
                            counts[key] = max(counts[key], int(v))
                except (OSError, ValueError):
                    continue
        return counts

    def kill_and_remove(self) -> None:
        """End whatever is left in it, then remove it."""
        for _ in range(50):
            left = []
            for d in self.dirs:
                try:
                    left += [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    pass
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for d in list(self.dirs):
                try:
                    d.rmdir()
                    self.dirs.remove(d)
                except FileNotFoundError:
                    self.dirs.remove(d)
                except OSError:
                    pass
            if not self.dirs:
                return
            time.sleep(0.1)


def _prune(base: Path) -> None:
    """Remove the empty cgroups of guards that were killed before they could."""
    try:
        for e in os.scandir(base):
            if e.is_dir(follow_symlinks=False) and e.name.startswith("sb-"):
                try:
                    pid = int(e.name.split("-")[1])
                    os.kill(pid, 0)
                except (ValueError, IndexError, ProcessLookupError):
                    try:
                        os.rmdir(e.path)
                    except OSError:
                        pass
                except PermissionError:
                    pass
    except OSError:
        pass


def allocated(dirs: Sequence[str]) -> int:
    """Bytes allocated to the files under ``dirs`` (symlinks not followed)."""
    total = 0
    stack = list(dirs)
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            total += e.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def run(argv: Sequence[str], *, pids: int, memory: int, written: int, watch: Sequence[str]) -> int:
    cg = Cgroup(f"sb-{os.getpid()}", pids, memory)
    base = allocated(watch)
    child = subprocess.Popen(list(argv), preexec_fn=cg.join if cg.version else None)

    def stop(signum, _frame):
        child.kill()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    over = 0
    wait = INTERVAL_S
    try:
        while True:
            try:
                rc = child.wait(wait)
                break
            except subprocess.TimeoutExpired:
                pass
            t0 = time.monotonic()
            grown = allocated(watch) - base
            wait = max(INTERVAL_S, 20 * (time.monotonic() - t0))   # the walk's cost stays ~5 % of a core
            if grown > written:
                over = grown
                child.kill()
                child.wait()
                rc = STOPPED_BYTES
                break
    finally:
        if cg.version:
            ev = cg.events()
            cg.kill_and_remove()
            if ev["refused"]:
                print(f"sandbox: {ev['refused']} forks refused at the process limit ({pids} in all, cgroup "
                      f"v{cg.version})", file=sys.stderr)
            if ev["oom_kill"]:
                print(f"sandbox: the memory limit ({_size(memory)} in all, cgroup v{cg.version}) was reached: "
                      f"{ev['oom_kill']} "
                      f"processes killed by the OOM killer", file=sys.stderr)
    if over:
        print(f"sandbox: stopped: it wrote {_size(over)} into {', '.join(watch)}, over the limit of "
              f"{_size(written)} in all (a disk filler)", file=sys.stderr)
    return rc if rc >= 0 else 128 - rc


def main(args: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="guard.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pids", type=int, required=True)
    p.add_argument("--memory", type=int, required=True, help="bytes of memory in all")
    p.add_argument("--bytes", type=int, required=True, help="bytes written into the watched directories in all")
    p.add_argument("--watch", action="append", default=[])
    p.add_argument("argv", nargs=argparse.REMAINDER)
    ns = p.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        p.error("no command after --")
    return run(argv, pids=ns.pids, memory=ns.memory, written=ns.bytes, watch=ns.watch)


if __name__ == "__main__":
    sys.exit(main())
