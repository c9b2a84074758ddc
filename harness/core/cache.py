"""Content-addressed cache outside the repository.

Location: ``$KVM_HARNESS_CACHE``, else ``$XDG_CACHE_HOME/kvm-hypercall-harness``, else
``~/.cache/kvm-hypercall-harness``.  An entry is a directory named by the hash of
everything that determines it.  It is built under a temporary name, holding an
exclusive lock, and renamed into place only when complete, so a killed build never
leaves a half entry and two processes never build the same thing twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

APP = "kvm-hypercall-harness"


def cache_root() -> Path:
    env = os.environ.get("KVM_HARNESS_CACHE")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / APP
    root.mkdir(parents=True, exist_ok=True)
    private(root)
    return root


def private(path: Path) -> None:
    """Readable by the invoking user only (SSH keys, sockets, run data on a shared machine)."""
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError:
        pass  # not ours (e.g. a shared cache set up by an admin): leave it as it is


def file_digest(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Union[str, Path], ignore: Callable[[str], bool] = lambda rel: False) -> str:
    """Hash of a directory's paths, modes and contents (symlinks by target)."""
    root = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if ignore(rel):
                continue
            h.update(rel.encode() + b"\0")
            if p.is_symlink():
                h.update(b"L" + os.readlink(p).encode())
            else:
                h.update(oct(p.stat().st_mode & 0o777).encode())
                h.update(file_digest(p).encode())
    return h.hexdigest()


def key_of(**parts) -> str:
    """Stable short key from named parts (values: str, bytes, or JSON-able)."""
    h = hashlib.sha256()
    for name in sorted(parts):
        value = parts[name]
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            data = value.encode()
        else:
            data = json.dumps(value, sort_keys=True).encode()
        h.update(name.encode() + b"=" + hashlib.sha256(data).digest())
    return h.hexdigest()[:20]


@contextlib.contextmanager
def locked(path: Union[str, Path]) -> Iterator[None]:
    """Exclusive cross-process lock on ``path`` (created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Entry:
    """One cache entry: ``<root>/<kind>/<key>/``.  Use ``ensure(builder)``."""

    def __init__(self, kind: str, key: str, root: Optional[Path] = None):
        self.kind = kind
        self.key = key
        self.base = (root or cache_root()) / kind
        self.path = self.base / key

    def _keep_logs_only(self, tmp: Path) -> None:
        """A failed attempt keeps its logs beside the entry (``<key>.failed/``) and nothing
        else: a half-extracted tree or half-built kernel must not keep the disk full."""
        _keep_logs_only_impl(tmp, self.base / f"{self.key}.failed")

    def ready(self) -> bool:
        return (self.path / ".complete").exists()

    def ensure(self, builder: Callable[[Path], None]) -> Path:
        """Return the entry's directory, running ``builder(tmpdir)`` first if absent."""
        if self.ready():
            return self.path
        with locked(self.base / f"{self.key}.lock"):
            if self.ready():
                return self.path
            _sweep_dead_tmp(self.base)
            tmp = self.base / f"{self.key}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                builder(tmp)
                (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
                if self.path.exists():
                    shutil.rmtree(self.path)
                os.rename(tmp, self.path)
            except BaseException:
                self._keep_logs_only(tmp)
                raise
        return self.path


KEPT_ON_FAILURE = (".log", ".json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_dead_tmp(base: Path) -> None:
    """Remove ``*.tmp-<pid>`` directories whose process is gone (a SIGKILLed build)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        head, sep, pid = name.rpartition(".tmp-")
        if sep and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(base / name, ignore_errors=True)


def _keep_logs_only_impl(tmp: Path, failed: Path) -> None:
    shutil.rmtree(failed, ignore_errors=True)
    if not tmp.exists():
        return
    try:
        failed.mkdir(parents=True, exist_ok=True)
        for p in tmp.iterdir():
            if p.is_file() and p.name.endswith(KEPT_ON_FAILURE):
                os.rename(p, failed / p.name)
    except OSError:
        pass
    shutil.rmtree(tmp, ignore_errors=True)


def clean(kinds: Optional[list] = None) -> list:
    """Remove cache kinds (all when None); returns what was removed."""
    root = cache_root()
    removed = []
    for d in sorted(root.iterdir()) if root.exists() else []:
        if d.is_dir() and (kinds is None or d.name in kinds):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
