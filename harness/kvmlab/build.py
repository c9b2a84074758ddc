"""Building the lab's pieces.

* the oracle shim (ours, trusted): cached, content-addressed by its source and the
  compiler version, under ``$KVMLAB_CACHE`` or ``$XDG_CACHE_HOME/kvm-hypercall-harness/kvmlab``
  (default ``~/.cache/...``); written to a temp name and renamed into place;
* a hypervisor + guest pair in a build directory laid out like kvm-hello-world:
  the harness-supplied Makefile, guest.ld, guest16.S, payload.S next to the two
  sources.  A student's sources are compiled under the sandbox (limits, timeout):
  a compiler can be made to hang or eat memory by its input.
* the harness test guest: kvmlab_testguest.c + the student's guest.c (as
  student_guest.c) + a generated kvmlab_cfg.h, linked with testguest.ld, embedded in
  the student's hypervisor.

Nothing is written into the repository.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from . import LAB_DIR
from .errors import INFRA, LabBuildError
from .sandbox import Limits, base_env, run_untrusted

BUILD_FILES = ("Makefile", "guest.ld", "guest16.S", "payload.S")
BUILD_TIMEOUT = 120.0
TESTGUEST_MAX = 0x2000  # kvm-hello-world style page tables start here


def cache_dir() -> Path:
    env = os.environ.get("KVMLAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvm-hypercall-harness" / "kvmlab"


def _compiler_id() -> str:
    try:
        out = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise LabBuildError(f"gcc is not usable: {e}", stage="kvmlab-toolchain", kind=INFRA) from e
    return "gcc-" + out


def _digest(paths: List[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_oracle() -> Path:
    """The LD_PRELOAD shim, built once per source/compiler version."""
    src = LAB_DIR / "oracle" / "kvmlab_oracle.c"
    key = _digest([src], _compiler_id())
    out = cache_dir() / f"kvmlab_oracle-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".oracle-", suffix=".so", dir=out.parent)
    os.close(fd)
    argv = ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", tmp, str(src), "-ldl"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if proc.returncode != 0:
            raise LabBuildError("building the oracle shim failed", stage="kvmlab-oracle-build",
                                kind=INFRA, tail=proc.stderr[-4000:], reproduce=argv)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@dataclass
class Built:
    directory: Path
    binary: Optional[Path]      # None when the build failed
    log: Path
    argv: List[str]
    guest_image_size: Optional[int]
    notes: List[str]

    @property
    def ok(self) -> bool:
        return self.binary is not None


def prepare(directory: Path, files: Dict[str, Path], generated: Optional[Dict[str, str]] = None) -> None:
    """Lay out a build directory: harness build files, then ``files`` (name -> source)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in BUILD_FILES:
        shutil.copyfile(LAB_DIR / "build" / name, directory / name)
    for name, src in files.items():
        shutil.copyfile(src, directory / name)
    for name, text in (generated or {}).items():
        (directory / name).write_text(text)


def make(directory: Path, variables: Optional[Dict[str, str]] = None, *,
         timeout: float = BUILD_TIMEOUT) -> Built:
    """Run the harness Makefile in ``directory``.  A failure is returned, not raised."""
    argv = ["make", "--no-print-directory", "-j2"]
    argv += [f"{k}={v}" for k, v in (variables or {}).items()]
    argv.append("kvm-hello-world")
    log = directory / "build.log"
    err = directory / "build.stderr"
    res = run_untrusted(argv, cwd=directory, stdout_path=log, stderr_path=err, timeout=timeout,
                        env=base_env({"CC": "gcc", "LD": "ld"}),
                        limits=Limits(cpu_seconds=int(timeout), address_space=4 << 30,
                                      file_size=256 << 20))
    # one log: stdout then stderr
    with open(log, "ab") as f:
        f.write(err.read_bytes())
    err.unlink()
    notes = []
    if res.timed_out:
        notes.append(f"build {res.describe()}")
    g32 = directory / "guest32.log"
    if g32.exists() and g32.stat().st_size:
        notes.append("guest.c does not build for 32-bit; a halting stub stands in (only -l is graded)")
    binary = directory / "kvm-hello-world"
    ok = res.returncode == 0 and binary.exists()
    img = directory / "guest64.img"
    return Built(directory=directory, binary=binary if ok else None, log=log, argv=argv,
                 guest_image_size=img.stat().st_size if img.exists() else None, notes=notes)


def build_pair(directory: Path, hypervisor_c: Path, guest_c: Path) -> Built:
    prepare(directory, {"kvm-hello-world.c": hypervisor_c, "guest.c": guest_c})
    return make(directory)


def build_testguest(directory: Path, hypervisor_c: Path, guest_c: Path, cfg_header: str) -> Built:
    prepare(directory, {
        "kvm-hello-world.c": hypervisor_c,
        "student_guest.c": guest_c,
        "kvmlab_testguest.c": LAB_DIR / "testguest" / "kvmlab_testguest.c",
        "testguest.ld": LAB_DIR / "testguest" / "testguest.ld",
    }, {"kvmlab_cfg.h": cfg_header})
    built = make(directory, {"GUEST_SRC": "kvmlab_testguest.c", "GUEST_LD": "testguest.ld",
                             "GUEST_EXTRA": "-Os -Wno-unused-function -Wno-unused-variable"})
    if built.guest_image_size and built.guest_image_size > TESTGUEST_MAX:
        built.notes.append(f"test guest image is {built.guest_image_size} bytes, above 0x{TESTGUEST_MAX:x} "
                           "where kvm-hello-world style page tables live")
    return built


def build_reference(directory: Optional[Path] = None) -> Built:
    """The reference hypervisor + guest; cached by source digest unless a directory is given."""
    ref = LAB_DIR / "reference"
    srcs = [ref / "kvm-hello-world.c", ref / "guest.c"] + [LAB_DIR / "build" / n for n in BUILD_FILES]
    if directory is None:
        directory = cache_dir() / f"reference-{_digest(srcs, _compiler_id())}"
        if (directory / "kvm-hello-world").exists():
            return Built(directory, directory / "kvm-hello-world", directory / "build.log", [], None, [])
        tmp = Path(tempfile.mkdtemp(prefix=".reference-", dir=_ensure(cache_dir())))
        built = build_pair(tmp, ref / "kvm-hello-world.c", ref / "guest.c")
        if not built.ok:
            raise LabBuildError("building the reference failed", stage="kvmlab-reference-build",
                                kind=INFRA, log=built.log, reproduce=built.argv)
        try:
            os.replace(tmp, directory)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        return Built(directory, directory / "kvm-hello-world", directory / "build.log", built.argv,
                     built.guest_image_size, built.notes)
    built = build_pair(directory, ref / "kvm-hello-world.c", ref / "guest.c")
    if not built.ok:
        raise LabBuildError("building the reference failed", stage="kvmlab-reference-build",
                            kind=INFRA, log=built.log, reproduce=built.argv)
    return built


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def imports_of(binary: Path) -> Optional[List[str]]:
    """Undefined dynamic symbols of ``binary`` (None if it is static / nm fails)."""
    try:
        proc = subprocess.run(["nm", "-D", "--undefined-only", str(binary)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    syms = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts:
            syms.append(parts[-1].split("@")[0])
    return syms


def is_dynamic(binary: Path) -> bool:
    """True if the ELF has a PT_INTERP program header (so LD_PRELOAD applies)."""
    import struct
    with open(binary, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return True
    return False
