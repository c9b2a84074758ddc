"""Intake: a hand-in (``<group_id>_hw2.zip`` or a folder) -> a Submission on disk.

Zips are untrusted.  Every member is checked before a byte is written and the whole
archive is refused when one member is an absolute path, contains ``..``, is a symlink
or a special file, is encrypted, or when the member count, a member's size, the total
uncompressed size or a member's compression ratio is over its limit (a zip bomb).
Sizes are enforced again while extracting (the central directory can lie).  Nested
archives are never opened: they are named in a flag.  Only regular files are written.

A wrong file name, a missing member or a member found under an unexpected name are
flags and problems of the submission, never a reason to stop the batch.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple

from ..core.cache import file_digest, tree_digest
from .errors import IntakeError

MEMBERS = ("kvm.patch", "vm.patch", "report.pdf")
NAME_RE = re.compile(r"^(?P<gid>[A-Za-z0-9][A-Za-z0-9-]*)_hw2\.zip$")
NESTED = (".zip", ".tar", ".tgz", ".gz", ".xz", ".bz2", ".7z", ".rar", ".zst")
IGNORED_DIRS = ("__MACOSX",)


@dataclass(frozen=True)
class Limits:
    members: int = 200
    member_bytes: int = 32 << 20      # a report with scans can be big; patches are small
    total_bytes: int = 64 << 20
    ratio: float = 200.0              # uncompressed / compressed, per member over 1 MiB
    ratio_floor: int = 1 << 20


@dataclass
class Submission:
    sub_id: str                       # filesystem-safe id (the group id when the name is right)
    origin: Path                      # what was handed in
    digest: str                       # sha256 of the hand-in's bytes (resume key)
    group_id: Optional[str] = None
    root: Optional[Path] = None       # where its files are (unpacked copy)
    members: Dict[str, Optional[Path]] = field(default_factory=dict)
    flags: List[str] = field(default_factory=list)      # worth a human's look, no points
    problems: List[str] = field(default_factory=list)   # missing/refused things that cost points
    refused: Optional[str] = None                       # the whole archive was refused: why

    def member(self, name: str) -> Optional[Path]:
        return self.members.get(name)

    def to_dict(self) -> dict:
        return {"id": self.sub_id, "origin": str(self.origin), "digest": self.digest, "group_id": self.group_id,
                "members": {k: (str(v) if v else None) for k, v in self.members.items()},
                "flags": self.flags, "problems": self.problems, "refused": self.refused}


def safe_id(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "submission"
    return s[:80]


def check_name(filename: str) -> Tuple[Optional[str], Optional[str]]:
    """(group_id, flag): the group id when the name is ``<group_id>_hw2.zip``, else a flag."""
    m = NAME_RE.match(filename)
    if m:
        return m.group("gid"), None
    return None, f"file name {filename!r} is not <group_id>_hw2.zip"


def member_refusal(info: zipfile.ZipInfo, limits: Limits) -> Optional[str]:
    """Why this member makes the archive unsafe, or None."""
    name = info.filename.replace("\\", "/")
    p = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in p.parts:
        return "path with '..'"
    if "\0" in name:
        return "NUL in the name"
    if info.flag_bits & 0x1:
        return "encrypted member"
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode):  # unix file type present
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return f"special file (mode {oct(mode)})"
    if info.file_size > limits.member_bytes:
        return f"{info.file_size} bytes uncompressed (limit {limits.member_bytes})"
    if info.file_size > limits.ratio_floor and info.file_size > limits.ratio * max(info.compress_size, 1):
        return (f"compression ratio {info.file_size / max(info.compress_size, 1):.0f}:1 "
                f"(limit {limits.ratio:.0f}:1): zip bomb")
    return None


def extract_zip(archive: Path, dest: Path, limits: Limits = Limits()) -> List[str]:
    """Check every member, then write regular files under ``dest``; returns the names
    of nested archives seen (not opened).  Raises IntakeError when refused."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise IntakeError(f"{archive.name}: not a readable zip archive ({e})") from None
    nested: List[str] = []
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.members:
            raise IntakeError(f"{archive.name}: {len(infos)} members (limit {limits.members})")
        total = 0
        for info in infos:
            why = member_refusal(info, limits)
            if why:
                raise IntakeError(f"{archive.name}: refused member {info.filename!r}: {why}")
            total += info.file_size
            if total > limits.total_bytes:
                raise IntakeError(f"{archive.name}: more than {limits.total_bytes} bytes uncompressed in total")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for info in infos:
            if info.is_dir():
                continue
            rel = PurePosixPath(info.filename.replace("\\", "/"))
            if rel.name.lower().endswith(NESTED):
                nested.append(str(rel))
            target = (root / rel).resolve()
            if root not in target.parents:
                raise IntakeError(f"{archive.name}: member {info.filename!r} resolves outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "xb") as out:
                    left = info.file_size
                    while True:
                        block = src.read(1 << 16)
                        if not block:
                            break
                        left -= len(block)
                        written += len(block)
                        if left < 0 or written > limits.total_bytes:
                            raise IntakeError(f"{archive.name}: member {info.filename!r} is larger than declared")
                        out.write(block)
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as e:
                raise IntakeError(f"{archive.name}: cannot extract {info.filename!r}: {e}") from None
            target.chmod(0o644)
    return nested


def locate(root: Path, flags: List[str]) -> Dict[str, Optional[Path]]:
    """The three members, found case-insensitively at the top or under one top-level folder."""
    def files_in(d: Path) -> Dict[str, List[Path]]:
        out: Dict[str, List[Path]] = {}
        for p in sorted(d.iterdir()):
            if p.is_file() and not p.is_symlink():
                out.setdefault(p.name.lower(), []).append(p)
        return out

    top = files_in(root)
    dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink() and d.name not in IGNORED_DIRS]
    found: Dict[str, Optional[Path]] = {}
    for name in MEMBERS:
        cands = top.get(name, [])
        if not cands and len(dirs) == 1:
            cands = files_in(dirs[0]).get(name, [])
        if not cands:
            found[name] = None
            continue
        p = cands[0]
        if p.name != name:
            flags.append(f"{name} handed in as {p.relative_to(root)}")
        found[name] = p
    return found


def _looks_like_submission(d: Path) -> bool:
    names = {p.name.lower() for p in d.iterdir() if p.is_file()}
    if names & set(MEMBERS):
        return True
    subs = [p for p in d.iterdir() if p.is_dir() and p.name not in IGNORED_DIRS]
    if len(subs) == 1 and not any(p.suffix.lower() == ".zip" for p in d.iterdir()):
        return bool({p.name.lower() for p in subs[0].iterdir() if p.is_file()} & set(MEMBERS))
    return False


def expand(paths: List[Path]) -> List[Path]:
    """Zips and submission folders named, or found one level inside a folder of them."""
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not _looks_like_submission(p):
            out += [c for c in sorted(p.iterdir())
                    if (c.is_file() and c.suffix.lower() == ".zip") or (c.is_dir() and c.name not in IGNORED_DIRS)]
        else:
            out.append(p)
    return out


def load(path: Path, workdir: Path, limits: Limits = Limits()) -> Submission:
    """Unpack (zip) or copy (folder) a hand-in under ``workdir/files`` and find its members.
    Never raises for the submission's faults: they end in ``refused``/``problems``/``flags``."""
    path = Path(path)
    files = workdir / "files"
    if files.exists():
        shutil.rmtree(files)
    if path.is_file():
        digest = file_digest(path)
        gid, flag = check_name(path.name)
        stem = path.name[:-4] if path.name.lower().endswith(".zip") else path.stem
        sub = Submission(sub_id=safe_id(gid or stem), origin=path, digest=digest, group_id=gid, root=files)
        if flag:
            sub.flags.append(flag)
        try:
            nested = extract_zip(path, files, limits)
        except IntakeError as e:
            sub.refused = e.message
            sub.problems.append(f"archive refused: {e.message}")
            sub.members = {m: None for m in MEMBERS}
            return sub
        for n in nested:
            sub.flags.append(f"nested archive {n} was not opened")
    elif path.is_dir():
        digest = hashlib.sha256(tree_digest(path).encode()).hexdigest()
        sub = Submission(sub_id=safe_id(path.name), origin=path, digest=digest, root=files)
        gid = re.match(r"^([A-Za-z0-9][A-Za-z0-9-]*)_hw2$", path.name)
        sub.group_id = gid.group(1) if gid else None
        if not gid:
            sub.flags.append(f"folder name {path.name!r} is not <group_id>_hw2")
        _copy_regular(path, files, sub, limits)
    else:
        raise IntakeError(f"{path}: no such file or folder", stage="intake")
    sub.members = locate(files, sub.flags)
    for name, p in sub.members.items():
        if p is None:
            sub.problems.append(f"missing {name}")
    return sub


def _copy_regular(src: Path, dest: Path, sub: Submission, limits: Limits) -> None:
    """Copy a folder hand-in: regular files only (symlinks are named and skipped)."""
    total = 0
    count = 0
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_symlink():
            sub.flags.append(f"symbolic link {rel} was not followed")
            continue
        if p.is_dir():
            continue
        if not p.is_file():
            sub.flags.append(f"special file {rel} skipped")
            continue
        count += 1
        total += p.stat().st_size
        if count > limits.members or total > limits.total_bytes or p.stat().st_size > limits.member_bytes:
            sub.refused = f"folder over the limits ({count} files, {total} bytes)"
            sub.problems.append(sub.refused)
            return
        if rel.name.lower().endswith(NESTED):
            sub.flags.append(f"nested archive {rel} was not opened")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest / rel)
    dest.mkdir(parents=True, exist_ok=True)
