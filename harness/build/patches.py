"""Patches under test (kvm.patch for the host, vm.patch for the guest).

A patch is untrusted input: it is parsed and checked before anything is applied
(unified diff only, no absolute or '..' paths, nothing under .git, bounded size), then
applied with ``git apply`` (exact context, offsets allowed) and, failing that, GNU
patch with a small fuzz, which is logged.  A patch that does not apply is a PatchError
that names the patch, the file and the hunk.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from ..core.errors import PatchError

MAX_PATCH_BYTES = 8 * 1024 * 1024

_DIFF_GIT = re.compile(r"^diff --git (?P<a>\S+) (?P<b>\S+)$")
_OLD = re.compile(r"^--- (?P<p>[^\t\n]+)")
_NEW = re.compile(r"^\+\+\+ (?P<p>[^\t\n]+)")
_HUNK = re.compile(r"^@@ -(?P<old>\d+)(?:,\d+)? \+(?P<new>\d+)(?:,\d+)? @@")
_RENAME = re.compile(r"^(?:rename|copy) (?:from|to) (?P<p>.+)$")


@dataclass
class Hunk:
    file: str
    number: int        # 1-based within its file
    old_start: int
    header: str


@dataclass
class Patch:
    name: str          # what the user calls it (file name or "reference 6.1 kvm.patch")
    data: bytes
    strip: int = 1
    files: List[str] = field(default_factory=list)     # paths in the tree it touches
    created: List[str] = field(default_factory=list)   # files that do not exist before
    hunks: List[Hunk] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @classmethod
    def from_file(cls, path: Path, name: Optional[str] = None) -> "Patch":
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise PatchError(f"cannot read patch {path}: {e.strerror}") from None
        return cls.parse(data, name or str(path))

    @classmethod
    def parse(cls, data: bytes, name: str) -> "Patch":
        if len(data) > MAX_PATCH_BYTES:
            raise PatchError(f"{name}: {len(data)} bytes is more than the {MAX_PATCH_BYTES} allowed")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        patch = cls(name=name, data=data)
        raw_paths: List[Tuple[str, str]] = []  # (old, new) per file section
        renamed: List[str] = []  # "rename from/to" paths carry no a/ b/ prefix
        current: Optional[str] = None
        hunk_no = 0
        old = None
        for line in text.splitlines():
            m = _DIFF_GIT.match(line)
            if m:
                old = None
                continue
            m = _OLD.match(line)
            if m:
                old = m.group("p")
                continue
            m = _NEW.match(line)
            if m and old is not None:
                raw_paths.append((old, m.group("p")))
                current = m.group("p") if m.group("p") != "/dev/null" else old
                hunk_no = 0
                old = None
                continue
            m = _HUNK.match(line)
            if m and current is not None:
                hunk_no += 1
                patch.hunks.append(Hunk(current, hunk_no, int(m.group("old")), line.split(" @@")[0] + " @@"))
                continue
            m = _RENAME.match(line)
            if m:
                renamed.append(m.group("p"))
        if not raw_paths and not renamed:
            raise PatchError(f"{name}: not a unified diff (no '--- a/...' / '+++ b/...' file headers); "
                             "make it with `git diff > file.patch`")
        prefixed = all(
            (o == "/dev/null" or o.startswith("a/")) and (n == "/dev/null" or n.startswith("b/"))
            for o, n in raw_paths
        )
        patch.strip = 1 if prefixed else 0
        seen = set()
        for rel in renamed:
            cls._check_path(name, rel)
            if rel not in seen:
                seen.add(rel)
                patch.files.append(rel)
        for o, n in raw_paths:
            for p in (o, n):
                if p == "/dev/null":
                    continue
                rel = p.split("/", 1)[1] if (patch.strip and p[:2] in ("a/", "b/")) else p
                cls._check_path(name, rel)
                if rel not in seen:
                    seen.add(rel)
                    patch.files.append(rel)
            if o == "/dev/null" and n != "/dev/null":
                rel = n.split("/", 1)[1] if patch.strip else n
                patch.created.append(rel)
        for h in patch.hunks:
            if patch.strip and h.file[:2] in ("a/", "b/"):
                h.file = h.file.split("/", 1)[1]
        return patch

    @staticmethod
    def _check_path(name: str, rel: str) -> None:
        parts = Path(rel).parts
        if rel.startswith("/") or ".." in parts or ".git" in parts or "\0" in rel:
            raise PatchError(f"{name}: refuses to touch path {rel!r} (absolute, '..' or .git)")

    def hunk_at(self, file: str, line: int) -> Optional[Hunk]:
        best = None
        for h in self.hunks:
            if h.file == file and h.old_start <= line:
                if best is None or h.old_start >= best.old_start:
                    best = h
        return best

    def apply(self, tree: Path, log: Optional[Path] = None) -> str:
        """Apply to ``tree`` (files are replaced, never written through hard links).
        Returns "exact" or "fuzz"; raises PatchError naming file and hunk."""
        for rel in self.files:
            _unshare(tree / rel)
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(Path(tree).resolve().parent)}
        git = ["git", "apply", f"-p{self.strip}", "--whitespace=nowarn", "--verbose"]
        check = subprocess.run([*git, "--check", "-"], cwd=tree, input=self.data, capture_output=True, env=env)
        if check.returncode == 0:
            done = subprocess.run([*git, "-"], cwd=tree, input=self.data, capture_output=True, env=env)
            _log(log, git, done)
            if done.returncode == 0:
                return "exact"
            raise self._error(done.stderr.decode(errors="replace"), tree)
        _log(log, [*git, "--check"], check)
        gnu = ["patch", f"-p{self.strip}", "--batch", "--forward", "--fuzz=2", "--no-backup-if-mismatch",
               "-r", "-", "-d", str(tree)]
        dry = subprocess.run([*gnu, "--dry-run"], input=self.data, capture_output=True)
        _log(log, [*gnu, "--dry-run"], dry)
        if dry.returncode != 0:
            raise self._error(check.stderr.decode(errors="replace"), tree,
                              dry.stdout.decode(errors="replace"))
        done = subprocess.run(gnu, input=self.data, capture_output=True)
        _log(log, gnu, done)
        if done.returncode != 0:
            raise self._error(done.stdout.decode(errors="replace"), tree)
        return "fuzz"

    def _error(self, git_msg: str, tree: Path, gnu_msg: str = "") -> PatchError:
        where = ""
        m = re.search(r"patch failed: (?P<f>[^:\n]+):(?P<l>\d+)", git_msg)
        if m:
            f, line = m.group("f"), int(m.group("l"))
            h = self.hunk_at(f, line)
            where = f": file {f}, hunk #{h.number} {h.header}" if h else f": file {f}, line {line}"
        else:
            m = re.search(r"error: (?P<f>[^:\n]+): (?P<why>does not exist in index|No such file or directory|"
                          r"already exists in working directory)", git_msg)
            if m:
                where = f": file {m.group('f')} ({m.group('why')})"
        detail = "\n".join(x for x in (git_msg.strip(), gnu_msg.strip()) if x)
        return PatchError(f"{self.name} does not apply to {tree}{where}", tail=detail[-4000:],
                          reproduce=["git", "-C", str(tree), "apply", "--check", f"-p{self.strip}", "-v", self.name])


def _unshare(path: Path) -> None:
    """Replace a hard-linked file by a private copy so patching never alters the pristine tree."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_nlink > 1 and not os.path.islink(path):
        data = path.read_bytes()
        tmp = path.with_name(path.name + ".unshare")
        tmp.write_bytes(data)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, path)


def _log(log: Optional[Path], argv, proc: subprocess.CompletedProcess) -> None:
    if log is None:
        return
    import shlex

    with open(log, "ab") as f:
        f.write(f"$ {shlex.join(argv)}  # exit {proc.returncode}\n".encode())
        f.write(proc.stdout or b"")
        f.write(proc.stderr or b"")
