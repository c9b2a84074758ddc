"""Which Debian release this machine runs, and which of Debian's kernel sources goes with it.

The embedded default kernel follows the distribution: Debian 12 (bookworm) ships
``linux-source-6.1``, Debian 13 (trixie) ``linux-source-6.12`` (also in bookworm-backports).
``kernel.tarball: auto`` takes the release's own tarball from /usr/src when it is there,
else the newest ``linux-source-X.Y.tar.xz`` the harness has a profile for.

Standard library only: ``make setup`` runs it (through hostarch.py) before the virtual
environment exists.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

OS_RELEASE = Path("/etc/os-release")
USR_SRC = Path("/usr/src")
PROFILES = Path(__file__).resolve().parents[2] / "images" / "profiles"
# Debian release (VERSION_ID or codename) -> the linux-source version it ships
RELEASE_KERNEL = {"12": "6.1", "bookworm": "6.1", "13": "6.12", "trixie": "6.12"}
TARBALL = re.compile(r"^linux-source-(\d+)\.(\d+)\.tar\.xz$")


def os_release(path: Path = OS_RELEASE) -> Dict[str, str]:
    """KEY=value pairs of os-release(5); empty when the file is missing."""
    out: Dict[str, str] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip().strip("\"'")
    return out


def release_name(info: Dict[str, str]) -> str:
    """'Debian 13 (trixie)' or what the file says; 'unknown' without one."""
    if info.get("PRETTY_NAME"):
        return info["PRETTY_NAME"]
    return " ".join(x for x in (info.get("NAME") or info.get("ID", "").capitalize(), info.get("VERSION_ID")) if x) \
        or "this system"


def release_kernel(info: Dict[str, str]) -> Optional[str]:
    """The linux-source version this Debian release ships, if it is one we know."""
    if info.get("ID") != "debian" and "debian" not in info.get("ID_LIKE", "").split():
        return None
    for key in ("VERSION_ID", "VERSION_CODENAME"):
        if info.get(key) in RELEASE_KERNEL:
            return RELEASE_KERNEL[info[key]]
    return None


def _vkey(version: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def profile_versions(root: Path = PROFILES) -> List[str]:
    """Versions with a kernel profile (directory names), newest first."""
    names = [d.name for d in root.iterdir() if (d / "profile.yaml").is_file() and re.match(r"^\d+\.\d+$", d.name)]
    return sorted(names, key=_vkey, reverse=True)


def installed_tarballs(usr_src: Path = USR_SRC) -> Dict[str, Path]:
    """{'6.12': /usr/src/linux-source-6.12.tar.xz, ...} as installed."""
    out = {}
    try:
        entries = list(Path(usr_src).iterdir())
    except OSError:
        return out
    for p in entries:
        m = TARBALL.match(p.name)
        if m and p.is_file():
            out[f"{m.group(1)}.{m.group(2)}"] = p
    return out


def choose_tarball(supported: Iterable[str], usr_src: Path = USR_SRC,
                   info: Optional[Dict[str, str]] = None) -> Tuple[Optional[Path], str]:
    """(tarball, why) for ``kernel.tarball: auto``; (None, what is missing) when no
    installed tarball has a profile."""
    info = os_release() if info is None else info
    supported = sorted(set(supported), key=_vkey, reverse=True)
    have = installed_tarballs(usr_src)
    own = release_kernel(info)
    if own and own in have and own in supported:
        return have[own], f"{release_name(info)} ships linux-source-{own}"
    usable = [v for v in supported if v in have]
    if usable:
        why = f"the newest of {', '.join('linux-source-' + v for v in usable)} in {usr_src} with a kernel profile"
        if own:
            why += f" ({release_name(info)}'s own linux-source-{own} is not installed)"
        return have[usable[0]], why
    wanted = f"linux-source-{own}" if own in supported else " or ".join("linux-source-" + v for v in supported)
    return None, (f"no {usr_src}/linux-source-X.Y.tar.xz for a version with a kernel profile "
                  f"({', '.join(supported)}); install {wanted} (`make setup` does) or set kernel.tarball "
                  "or kernel.source")


def _apt_has(package: str) -> bool:
    if not shutil.which("apt-cache"):
        return False
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def source_package(info: Optional[Dict[str, str]] = None, versions: Optional[List[str]] = None,
                   apt_has=_apt_has) -> str:
    """The linux-source package ``make setup`` installs: the release's own, else the newest
    one with a profile that apt can install, else linux-source-6.1."""
    info = os_release() if info is None else info
    versions = profile_versions() if versions is None else versions
    own = release_kernel(info)
    if own in versions:
        return f"linux-source-{own}"
    for v in versions:
        if apt_has(f"linux-source-{v}"):
            return f"linux-source-{v}"
    return "linux-source-6.1"
