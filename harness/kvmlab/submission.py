"""Unpacking a submission and finding its two sources.

A submission is a folder or a .tar.gz/.tgz/.tar holding ``guest.c`` and
``kvm-hello-world.c`` (at the top or inside one directory, as students tar them).
Archives are never extracted with ``extractall``: every member is checked first and
the whole archive is refused if any member is an absolute path, contains ``..``,
is a link, a device or a FIFO, is larger than MAX_MEMBER, or the total exceeds
MAX_TOTAL / MAX_MEMBERS.  Only regular files are written.
"""
from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional

from .errors import SubmissionError

GUEST = "guest.c"
HYPERVISOR = "kvm-hello-world.c"
MAX_MEMBER = 1 << 20          # 1 MiB per file: these are two C sources
MAX_TOTAL = 16 << 20
MAX_MEMBERS = 2000


@dataclass
class Submission:
    name: str             # a filesystem-safe id, from the archive/folder name
    origin: Path          # what the user gave
    root: Path            # the folder the sources were found in
    guest_c: Path
    hypervisor_c: Path

    def sources(self) -> Dict[str, Path]:
        return {GUEST: self.guest_c, HYPERVISOR: self.hypervisor_c}


def safe_name(path: Path) -> str:
    base = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "submission"
    return base[:80]


def check_member(member: tarfile.TarInfo) -> Optional[str]:
    """Why ``member`` is refused, or None if it is acceptable."""
    name = member.name
    p = PurePosixPath(name)
    if name.startswith("/") or p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if any(part == ".." for part in p.parts):
        return "path with '..'"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if member.isdev() or member.isfifo() or member.ischr() or member.isblk():
        return "device or FIFO"
    if not (member.isfile() or member.isdir()):
        return f"unsupported member type {member.type!r}"
    if member.isfile() and member.size > MAX_MEMBER:
        return f"member of {member.size} bytes (limit {MAX_MEMBER})"
    return None


def extract_archive(archive: Path, dest: Path) -> List[str]:
    """Check every member, then write the regular files under ``dest``.  Returns their names."""
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise SubmissionError(f"{archive}: not a readable tar archive: {e}") from e
    written: List[str] = []
    with tf:
        members = []
        total = 0
        try:
            for m in tf:
                members.append(m)
                if len(members) > MAX_MEMBERS:
                    raise SubmissionError(f"{archive}: more than {MAX_MEMBERS} members")
                why = check_member(m)
                if why:
                    raise SubmissionError(f"{archive}: refused member {m.name!r}: {why}")
                total += m.size if m.isfile() else 0
                if total > MAX_TOTAL:
                    raise SubmissionError(f"{archive}: members total more than {MAX_TOTAL} bytes")
        except tarfile.TarError as e:
            raise SubmissionError(f"{archive}: corrupt archive: {e}") from e
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for m in members:
            if not m.isfile():
                continue
            target = (dest / PurePosixPath(m.name)).resolve()
            if root != target and root not in target.parents:
                raise SubmissionError(f"{archive}: member {m.name!r} resolves outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:
                continue
            data = src.read(MAX_MEMBER + 1)
            if len(data) > MAX_MEMBER:
                raise SubmissionError(f"{archive}: member {m.name!r} larger than declared")
            with open(target, "xb") as out:
                out.write(data)
            target.chmod(0o644)
            written.append(m.name)
    return written


def find_source(root: Path, basename: str) -> Path:
    """The shallowest regular file called ``basename`` under ``root`` (no symlinks followed)."""
    found = []
    for p in sorted(root.rglob(basename)):
        if p.is_symlink() or not p.is_file():
            continue
        rel = p.relative_to(root)
        if any(part.startswith("__MACOSX") for part in rel.parts):
            continue
        found.append(p)
    if not found:
        raise SubmissionError(f"{root}: no {basename} in the submission")
    depth = min(len(p.relative_to(root).parts) for p in found)
    shallow = [p for p in found if len(p.relative_to(root).parts) == depth]
    if len(shallow) > 1:
        raise SubmissionError(
            f"{root}: {len(shallow)} candidates for {basename}: "
            + ", ".join(str(p.relative_to(root)) for p in shallow))
    if shallow[0].stat().st_size > MAX_MEMBER:
        raise SubmissionError(f"{shallow[0]}: larger than {MAX_MEMBER} bytes")
    return shallow[0]


def load(path: Path, workdir: Path) -> Submission:
    """Open a submission folder or archive; archives are unpacked under ``workdir``."""
    path = Path(path)
    if path.is_dir():
        root = path
    elif path.is_file():
        root = workdir / "unpacked"
        extract_archive(path, root)
    else:
        raise SubmissionError(f"{path}: no such file or folder")
    guest = find_source(root, GUEST)
    hv = find_source(root, HYPERVISOR)
    return Submission(name=safe_name(path), origin=path, root=root, guest_c=guest, hypervisor_c=hv)
