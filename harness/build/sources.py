"""Kernel sources: Debian's linux-source tarball (the default), a tree on disk, or a git
URL + ref.  Each becomes a pristine, read-only-by-convention copy in the cache, named by
its identity; the user's own tree is never written to."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..core import cache, distro, procs, resources
from . import profiles
from ..core.deadline import about
from ..core.config import Config, KernelConfig, is_local_repository
from ..core.errors import SourceError
from .profiles import tree_version

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SourceTree:
    origin: str                  # human description: where it came from
    identity: str                # what the content is (commit id, tarball hash, ...)
    root: Path                   # the pristine tree in the cache
    version: Tuple[int, int, int]

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))


def _git_out(args, cwd=None) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    if p.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {cwd}: {p.stderr.strip()}",
                          reproduce=["git", "-C", str(cwd), *args])
    return p.stdout


def _remembered_digest(memo_name: str, stamp: str, compute: Callable[[], str]) -> str:
    """compute() once per stamp (a cheap description of the input, e.g. size and mtime);
    the results are kept in the cache's sources/<memo_name>."""
    memo = cache.cache_root() / "sources" / memo_name
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp not in known:
        known[stamp] = compute()
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, memo)
    return known[stamp]


def _tarball_identity(tarball: Path) -> str:
    """sha256 of the tarball, remembered by (size, mtime) so it is hashed once."""
    st = tarball.stat()
    stamp = f"{tarball.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return "sha256:" + _remembered_digest("tarball-digests.json", stamp, lambda: cache.file_digest(tarball))


def _walk(tree: Path):
    """(relative path, absolute path) of every file and symlink under tree, sorted, no .git."""
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            yield os.path.relpath(p, tree), p


def _stat_fingerprint(tree: Path) -> str:
    """Cheap change detector for a non-git tree: every file's path, size, mtime, inode and
    ctime.  mtime can be set back by anyone (touch -d, tar, rsync -t); ctime cannot: any
    write, chmod or rename sets it to now (git's "racy" check relies on the same)."""
    h = hashlib.sha256(str(tree).encode())
    for rel, p in _walk(tree):
        try:
            st = os.lstat(p)
        except OSError:
            continue
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\0{st.st_mode}\n".encode())
    return h.hexdigest()


def content_digest(tree: Path) -> str:
    """What a non-git tree contains: every file's path, executable bit and bytes (symlinks:
    their target).  Independent of where the tree is and of its timestamps."""
    h = hashlib.sha256()
    for rel, p in _walk(tree):
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                h.update(f"L {rel}\0{os.readlink(p)}\n".encode())
                continue
            with open(p, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise SourceError(f"{p}: cannot read: {e.strerror}") from None
        h.update(f"F {rel}\0{st.st_mode & 0o111:o}\0{digest}\n".encode())
    return h.hexdigest()


def _tree_identity(tree: Path, progress: Progress) -> str:
    """content:<digest> of a non-git tree, hashed once per change (remembered by the stat
    fingerprint, so an untouched tree costs one walk)."""
    def compute() -> str:
        progress(f"hashing the contents of {tree} (once per change of the tree)")
        return content_digest(tree)

    return "content:" + _remembered_digest("tree-digests.json", _stat_fingerprint(tree), compute)


def _git_state(path: Path) -> Tuple[str, str, List[str]]:
    """(HEAD commit, diff of tracked files against HEAD, untracked non-ignored files)."""
    commit = _git_out(["rev-parse", "HEAD"], cwd=path).strip()
    diff = _git_out(["diff", "HEAD", "--binary"], cwd=path)
    untracked = [f for f in _git_out(["ls-files", "-z", "--others", "--exclude-standard"], cwd=path).split("\0") if f]
    return commit, diff, untracked


def _git_identity(path: Path, commit: str, diff: str, untracked: List[str]) -> str:
    """git:<commit>, plus +dirty:<hash> when the work tree differs from it."""
    if not diff and not untracked:
        return f"git:{commit}"
    h = hashlib.sha256(diff.encode())
    for rel in untracked:
        p = path / rel
        h.update(f"\0{rel}\0".encode())
        h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
    return f"git:{commit}+dirty:{h.hexdigest()[:16]}"


def _finish(root: Path, origin: str, identity: str) -> SourceTree:
    return SourceTree(origin=origin, identity=identity, root=root, version=tree_version(root))


def auto_tarball(usr_src: Path = distro.USR_SRC, info: Optional[dict] = None) -> Tuple[Path, str]:
    """``kernel.tarball: auto``: (tarball, why it was chosen); a SourceError when /usr/src has
    none with a kernel profile."""
    tarball, why = distro.choose_tarball(profiles.all_profiles(), usr_src, info)
    if tarball is None:
        raise SourceError(f"kernel.tarball: auto: {why}")
    return tarball, why


def _from_tarball(tarball: Path, log_dir: Path, progress: Progress, why: str = "") -> SourceTree:
    if not tarball.exists():
        m = distro.TARBALL.match(tarball.name)
        package = f"linux-source-{m.group(1)}.{m.group(2)}" if m else distro.source_package()
        raise SourceError(
            f"kernel.tarball: {tarball} does not exist; install it with `make setup` "
            f"(Debian package {package}) or point kernel.source at your own tree"
        )
    identity = _tarball_identity(tarball)
    entry = cache.Entry("sources", cache.key_of(identity=identity))
    if not entry.ready():
        resources.require_disk(entry.base, resources.SOURCE_TREE_MB, f"extracting {tarball.name}")
        progress(f"extracting {tarball.name} (once; {about(30)})")

    def extract(tmp: Path) -> None:
        procs.run(["tar", "-xf", tarball, "-C", tmp], stage="source", error=SourceError,
                  log=log_dir / "source.log", what="tar")
        tops = [d for d in tmp.iterdir() if d.is_dir()]
        if len(tops) != 1:
            raise SourceError(f"{tarball}: expected one top directory, found {len(tops)}")
        tops[0].rename(tmp / "linux")

    root = entry.ensure(extract) / "linux"
    return _finish(root, f"debian tarball {tarball}" + (f" (kernel.tarball auto: {why})" if why else ""),
                   identity)


def _export_git(repo: Path, commit: str, dest: Path, log: Path) -> None:
    """``git archive`` a commit into dest (no worktree, nothing written to the repo)."""
    archive = dest.parent / (dest.name + ".tar")
    procs.run(["git", "-C", repo, "archive", "--format=tar", "-o", archive, commit],
              stage="source", error=SourceError, log=log, what="git archive")
    dest.mkdir()
    procs.run(["tar", "-xf", archive, "-C", dest], stage="source", error=SourceError, log=log, what="tar")
    archive.unlink()


def _from_path(path: Path, log_dir: Path, progress: Progress) -> SourceTree:
    path = path.expanduser().resolve()
    if not (path / "Makefile").exists():
        raise SourceError(f"kernel.path: {path} is not a kernel tree (no Makefile)")
    log = log_dir / "source.log"
    is_git = (path / ".git").exists()
    if is_git:
        commit, diff, untracked = _git_state(path)
        identity = _git_identity(path, commit, diff, untracked)
    else:
        identity = _tree_identity(path, progress)
    entry = cache.Entry("sources", cache.key_of(identity=identity))
    if not entry.ready():
        resources.require_disk(entry.base, resources.SOURCE_TREE_MB, f"copying {path}")
        progress(f"copying {path} into the cache (the tree itself is never modified)")

    def copy(tmp: Path) -> None:
        dest = tmp / "linux"
        if is_git:
            # the commit, then what the work tree adds to it: changes to tracked files and
            # new files not yet added (ignored files, e.g. build output, stay behind)
            _export_git(path, commit, dest, log)
            if diff:
                procs.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=dest, stage="source",
                          error=SourceError, log=log, input=diff.encode(), what="git apply (uncommitted changes)",
                          env={"GIT_CEILING_DIRECTORIES": str(tmp)})
            for rel in untracked:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path / rel, dest / rel, follow_symlinks=False)
        else:
            shutil.copytree(path, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
            if (dest / ".config").exists() or (dest / "include" / "config").exists():
                procs.run(["make", "-C", dest, "mrproper"], stage="source", error=SourceError, log=log,
                          what="make mrproper (copy of an in-tree build)")

    root = entry.ensure(copy) / "linux"
    return _finish(root, f"tree {path}", identity)


def _from_git(url: str, ref: str, log_dir: Path, progress: Progress) -> SourceTree:
    log = log_dir / "source.log"
    mirror = cache.cache_root() / "git" / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".git")
    with cache.locked(str(mirror) + ".lock"):
        if not mirror.exists():
            procs.run(["git", "init", "-q", "--bare", mirror], stage="source", error=SourceError, log=log)
        progress(f"fetching {ref} from {url}")
        procs.run(["git", "-C", mirror, "fetch", "--no-tags", "--depth", "1", url, ref], stage="source",
                  error=SourceError, log=log, what=f"git fetch {url} {ref}", env={"GIT_TERMINAL_PROMPT": "0"})
        commit = _git_out(["rev-parse", "FETCH_HEAD^{commit}"], cwd=mirror).strip()
    identity = f"git:{commit}"
    entry = cache.Entry("sources", cache.key_of(identity=identity))
    root = entry.ensure(lambda tmp: _export_git(mirror, commit, tmp / "linux", log)) / "linux"
    return _finish(root, f"git {url} {ref}", identity)


def resolve(cfg: Config, log_dir: Path, progress: Progress = print) -> SourceTree:
    """The pristine kernel tree the configuration names."""
    k: KernelConfig = cfg.kernel
    log_dir.mkdir(parents=True, exist_ok=True)
    if k.source == "debian":
        if k.tarball == "auto":
            tarball, why = auto_tarball()
            progress(f"kernel.tarball auto: {tarball} ({why})")
            return _from_tarball(tarball, log_dir, progress, why)
        return _from_tarball(Path(k.tarball), log_dir, progress)
    if k.source == "path":
        return _from_path(cfg.resolve_path(k.path), log_dir, progress)
    assert k.git is not None
    url = k.git.url
    if is_local_repository(url):
        url = str(cfg.resolve_path(url))
    return _from_git(url, k.git.ref, log_dir, progress)
