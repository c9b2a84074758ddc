"""Fault injection on the real stack: each test strikes one fault and asserts the exit
code, whose fault it is, the stage, the log tail, that no QEMU is left and that the cache
is not poisoned (the next run succeeds).

Isolation: the shared cache is never written.  Faults that need a nearly full disk or a
damaged cache entry run the harness in a private mount namespace (unshare) where the
cache directory is an overlay: the shared cache below, read-only, and a small tmpfs above
that takes every write.  Nothing of it is visible outside the namespace."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from harness.core import cache, procs

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session", autouse=True)
def _prerequisites():
    if os.geteuid() != 0:
        pytest.skip("fault injection mounts tmpfs and overlay file systems: run as root")
    for tool in ("unshare", "mount", "umount", "qemu-system-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"missing {tool} (run `make setup`)")


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err


def harness_argv(*args: str) -> List[str]:
    return [sys.executable, "-m", "harness", *args]


def run(argv: List[str], env: Optional[dict] = None, timeout: float = 900, cwd=REPO) -> Result:
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                       timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


class Tmpfs:
    """A tmpfs of a given size, mounted for one test."""

    def __init__(self, path: Path, size_mb: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "faults", str(path)], check=True)

    def resize(self, size_mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(self.path)], check=True)

    def used_mb(self) -> float:
        return shutil.disk_usage(self.path).used / (1 << 20)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def tmpfs(tmp_path):
    made = []

    def make(name: str, size_mb: int) -> Tmpfs:
        t = Tmpfs(tmp_path / name, size_mb)
        made.append(t)
        return t

    yield make
    for t in made:
        t.umount()


def shared_cache() -> Path:
    return cache.cache_root()


def in_overlay(upper: Tmpfs, argv: List[str], before: str = "") -> List[str]:
    """argv run in a private mount namespace whose cache directory is the shared cache with
    ``upper`` on top (all writes land there).  ``before`` is a shell snippet run first
    inside the namespace (e.g. to damage a cached file)."""
    root = shared_cache()
    (upper.path / "upper").mkdir(exist_ok=True)
    (upper.path / "work").mkdir(exist_ok=True)
    script = (f"mount -t overlay overlay -o lowerdir={shlex.quote(str(root))},"
              f"upperdir={shlex.quote(str(upper.path / 'upper'))},workdir={shlex.quote(str(upper.path / 'work'))} "
              f"{shlex.quote(str(root))} && {before} exec {shlex.join(argv)}")
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]


def processes_mentioning(text: str) -> List[str]:
    """Command lines of live processes whose argv contains ``text``."""
    return [f"{pid}: {cmd[:200]}" for pid, cmd in procs.processes_mentioning(text).items()]


def no_process_left(text: str, grace: float = 10.0) -> List[str]:
    end = time.monotonic() + grace
    while time.monotonic() < end:
        left = processes_mentioning(text)
        if not left:
            return []
        time.sleep(0.2)
    return processes_mentioning(text)


def warm_cache_or_skip(cfg_args=()) -> None:
    """The faults that boot the stack need the default build cached (a cold build is ~8 min)."""
    r = run(harness_argv("build", "--log-dir", "/tmp/faults-build-logs", *cfg_args), timeout=1800)
    if r.rc != 0:
        pytest.fail(f"the default build does not succeed, so no fault can be judged:\n{r.err[-3000:]}")


class Live:
    """`kvm-harness run` in the background, its output read line by line."""

    def __init__(self, argv: List[str], env: Optional[dict] = None):
        self.lines: List[str] = []
        self.p = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1)

    def wait_for(self, text: str, timeout: float = 300) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.p.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"never saw {text!r}; output:\n{''.join(self.lines)[-3000:]}")

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def finish(self, timeout: float = 120) -> Result:
        rest, _ = self.p.communicate(timeout=timeout)
        self.lines.append(rest or "")
        return Result(self.p.returncode, "".join(self.lines), "", 0.0)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def descendants(pid: int) -> List[Tuple[int, str]]:
    """(pid, command line) of every live process below ``pid``."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p:
                try:
                    cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                found.append((child, cmd))
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever inherited it, is not)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
