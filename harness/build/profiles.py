"""Kernel profiles: everything that differs between kernel versions, kept as data in
``images/profiles/<name>/`` (profile.yaml, the reference kvm.patch and vm.patch, and
extra config fragments)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import yaml

from ..core.errors import ConfigError, SourceError

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "images" / "profiles"
COMMON_FRAGMENT = REPO / "images" / "kernel" / "common.config"


@dataclass(frozen=True)
class Profile:
    name: str
    directory: Path
    matches: Tuple[str, ...]
    syscall_nr: int
    hvc_func_id: int
    tree_fragments: Tuple[str, ...] = ()
    fragments: Tuple[Path, ...] = ()
    make_vars: Tuple[Tuple[str, str], ...] = ()
    nvhe_banner: str = r"Hyp mode initialized successfully"
    notes: Tuple[str, ...] = ()

    @property
    def reference_kvm_patch(self) -> Path:
        return self.directory / "kvm.patch"

    @property
    def reference_vm_patch(self) -> Path:
        return self.directory / "vm.patch"

    def fingerprint(self) -> dict:
        """What of the profile goes into a kernel build's cache key."""
        return {
            "name": self.name,
            "tree_fragments": list(self.tree_fragments),
            "fragments": {p.name: p.read_text() for p in self.fragments},
            "common": COMMON_FRAGMENT.read_text(),
            "make_vars": list(self.make_vars),
        }


def _load(directory: Path) -> Profile:
    spec = directory / "profile.yaml"
    try:
        data = yaml.safe_load(spec.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{spec}: cannot load profile: {e}") from None
    allowed = {"name", "matches", "syscall_nr", "hvc_func_id", "tree_fragments", "fragments",
               "make_vars", "nvhe_banner", "notes"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{spec}: unknown key {sorted(unknown)[0]}")
    for key in ("name", "matches", "syscall_nr", "hvc_func_id"):
        if key not in data:
            raise ConfigError(f"{spec}: missing key {key}")
    try:
        return Profile(
            name=str(data["name"]),
            directory=directory,
            matches=tuple(str(m) for m in data["matches"]),
            syscall_nr=int(data["syscall_nr"]),
            hvc_func_id=int(data["hvc_func_id"]),
            tree_fragments=tuple(data.get("tree_fragments") or ()),
            fragments=tuple(directory / f for f in (data.get("fragments") or ())),
            make_vars=tuple(sorted((str(k), str(v)) for k, v in (data.get("make_vars") or {}).items())),
            nvhe_banner=str(data.get("nvhe_banner") or Profile.nvhe_banner),
            notes=tuple(str(n) for n in (data.get("notes") or ())),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{spec}: bad value: {e}") from None


def all_profiles(root: Path = PROFILES) -> Dict[str, Profile]:
    out = {}
    for d in sorted(root.iterdir()):
        if (d / "profile.yaml").exists():
            p = _load(d)
            out[p.name] = p
    return out


def tree_version(tree: Path) -> Tuple[int, int, int]:
    """(VERSION, PATCHLEVEL, SUBLEVEL) from a kernel tree's top Makefile."""
    makefile = Path(tree) / "Makefile"
    try:
        head = makefile.read_text(errors="replace")[:4096]
    except OSError:
        raise SourceError(f"{tree}: not a kernel tree (no readable Makefile)") from None
    values = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
        m = re.search(rf"^{key}\s*=\s*(\d+)\s*$", head, re.M)
        if not m:
            raise SourceError(f"{makefile}: no {key} line; is this a Linux source tree?")
        values[key] = int(m.group(1))
    return values["VERSION"], values["PATCHLEVEL"], values["SUBLEVEL"]


def select(version: Tuple[int, int, int], requested: str = "auto", root: Path = PROFILES) -> Profile:
    profiles = all_profiles(root)
    vstr = "%d.%d" % version[:2]
    if requested != "auto":
        if requested not in profiles:
            raise ConfigError(f"kernel.profile: no profile {requested!r} (have: {', '.join(profiles)})")
        return profiles[requested]
    for p in profiles.values():
        if vstr in p.matches:
            return p
    known = ", ".join(f"{p.name} for {'/'.join(p.matches)}" for p in profiles.values())
    raise SourceError(
        f"kernel version {'.'.join(map(str, version))} is not supported (profiles: {known}); "
        "add a profile under images/profiles/ or set kernel.profile"
    )
