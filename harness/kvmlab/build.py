"""Building the lab's pieces.

* the oracle shim (ours, trusted): cached, content-addressed by its source and the
  compiler version, under ``$KVMLAB_CACHE`` or ``$XDG_CACHE_HOME/kvm-hypercall-harness/kvmlab``
  (default ``~/.cache/...``); written to a temp name and renamed into place;
* a hypervisor + guest pair in a build directory laid out like kvm-hello-world:
  the harness-supplied Makefile, guest.ld, guest16.S, payload.S next to the two
  sources.  A student's sources are compiled under the sandbox (limits, timeout):
  a compiler can be made to hang or eat memory by its input.  Build profiles are
  tried in order (PROFILES): upstream kvm-hello-world's flags, then Ubuntu's
  compiler defaults (students build on Ubuntu), then warnings not fatal; the one
  that was needed is recorded.  A header the sources include but the submission
  does not hold is named (``missing_header``).
* the harness test guest: kvmlab_testguest.c + the student's guest.c (as
  student_guest.c) + a generated kvmlab_cfg.h, linked with testguest.ld, embedded in
  the student's hypervisor.

Nothing is written into the repository.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from . import LAB_DIR
from . import handin as handinmod
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
        out.chmod(0o644)  # loaded inside the sandbox, by its unprivileged uid
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
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@dataclass(frozen=True)
class Profile:
    """Flags added to upstream's ``-Wall -Wextra -Werror -O2`` (Makefile variables)."""
    name: str
    description: str
    variables: Dict[str, str]


# Ubuntu's gcc enables these by default (Ubuntu wiki, ToolChain/CompilerFlags); PIE is
# Debian's default too.  In the flat, freestanding guest only _FORTIFY_SOURCE makes
# sense: it maps strcpy & co. to builtins gcc can inline (no libc in the guest), while
# a stack protector would need %fs and __stack_chk_fail, which the guest lacks.
_UBUNTU_HV = ("-D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection "
              "-fcf-protection -Wformat -Wformat-security")
_UBUNTU_GUEST = "-D_FORTIFY_SOURCE=2"
# gcc 14 (Debian 13) makes these former warnings errors by default ("permerrors"), which
# -Wno-error does not touch; where warnings are meant not to be fatal they are named too,
# so a guest.c builds as it does with gcc 12 (Debian 12).  gcc 12 accepts the flags.
GCC14_PERMERRORS = ("-Wno-error=incompatible-pointer-types -Wno-error=int-conversion "
                    "-Wno-error=implicit-function-declaration -Wno-error=implicit-int")
PROFILES = (
    Profile("upstream", "upstream kvm-hello-world flags (-Wall -Wextra -Werror -O2; guest "
            "-ffreestanding -fno-pic)", {}),
    Profile("ubuntu-defaults", "with Ubuntu gcc's default flags (" + _UBUNTU_HV + ")",
            {"HV_PROFILE": _UBUNTU_HV, "GUEST_PROFILE": _UBUNTU_GUEST}),
    Profile("warnings-not-fatal", "with Ubuntu gcc's default flags and warnings not fatal (-Wno-error)",
            {"HV_PROFILE": f"{_UBUNTU_HV} -Wno-error {GCC14_PERMERRORS}",
             "GUEST_PROFILE": f"{_UBUNTU_GUEST} -Wno-error {GCC14_PERMERRORS}"}),
)


@dataclass
class Built:
    directory: Path
    binary: Optional[Path]      # None when the build failed
    log: Path
    argv: List[str]
    guest_image_size: Optional[int]
    notes: List[str]
    profile: Optional[Profile] = None
    attempts: List[str] = field(default_factory=list)   # "profile: ok|failed (log)"
    missing_header: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.binary is not None


def prepare(directory: Path, files: Dict[str, Path], generated: Optional[Dict[str, str]] = None,
            handin: Optional["handinmod.Handin"] = None) -> None:
    """Lay out a build directory: the hand-in's other files (headers, ...), the harness
    build files over them, then ``files`` (name -> source)."""
    directory.mkdir(parents=True, exist_ok=True)
    if handin is not None:
        handinmod.copy_into(handin, directory)
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


_MISSING = re.compile(rb"fatal error: ([^\s:]+): No such file or directory")
_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def includes_of(src: Path) -> List[str]:
    """The headers ``src`` #includes."""
    return _INCLUDE.findall(src.read_text(errors="replace"))


def missing_header(log: bytes, sources: List[Path]) -> Optional[str]:
    """The header named by a "No such file" compiler error, if one of ``sources`` includes it."""
    included = set()
    for src in sources:
        included.update(includes_of(src))
    for m in _MISSING.finditer(log):
        name = m.group(1).decode(errors="replace")
        if name in included:
            return name
    return None


def build_pair(directory: Path, hypervisor_c: Path, guest_c: Path,
               handin: Optional["handinmod.Handin"] = None) -> Built:
    """Build with each profile in turn until one works; the result names the profile.
    The hand-in's own files and Makefile flags are used as its build would use them."""
    attempts: List[str] = []
    built: Optional[Built] = None
    for profile in PROFILES:
        pdir = directory / profile.name
        prepare(pdir, {"kvm-hello-world.c": hypervisor_c, "guest.c": guest_c}, handin=handin)
        built = make(pdir, {**profile.variables, **(handin.variables() if handin else {})})
        built.profile = profile
        attempts.append(f"{profile.name}: {'ok' if built.ok else 'failed'} ({built.log})")
        if built.ok:
            break
        built.missing_header = missing_header(built.log.read_bytes(), [hypervisor_c, guest_c])
        if built.missing_header or any("timeout" in n for n in built.notes):
            break  # no profile supplies a file or makes a hanging compiler finish
    assert built is not None
    built.attempts = attempts
    if not built.ok:
        built.profile = None
    return built


def build_testguest(directory: Path, hypervisor_c: Path, guest_c: Path, cfg_header: str,
                    profile: Profile = PROFILES[0],
                    handin: Optional["handinmod.Handin"] = None) -> Built:
    """The harness test guest with the profile the submission needed; our own code's
    warnings (unused student helpers, pointer casts in adapters) are never fatal."""
    prepare(directory, {
        "kvm-hello-world.c": hypervisor_c,
        "student_guest.c": guest_c,
        "kvmlab_testguest.c": LAB_DIR / "testguest" / "kvmlab_testguest.c",
        "testguest.ld": LAB_DIR / "testguest" / "testguest.ld",
    }, {"kvmlab_cfg.h": cfg_header}, handin=handin)
    variables = dict(profile.variables)
    if handin is not None:  # the student's flags and extra sources, not its linker script
        variables.update({k: v for k, v in handin.variables().items() if k != "GUEST_LD"})
    variables.update({"GUEST_SRC": "kvmlab_testguest.c", "GUEST_LD": "testguest.ld", "GUEST32_STUB": "1",
                      "GUEST_EXTRA": f"-Os -Wno-error {GCC14_PERMERRORS} -Wno-unused-function -Wno-unused-variable"})
    built = make(directory, variables)
    built.profile = profile
    if built.guest_image_size and built.guest_image_size > TESTGUEST_MAX:
        built.notes.append(f"test guest image is {built.guest_image_size} bytes, above 0x{TESTGUEST_MAX:x} "
                           "where kvm-hello-world style page tables live")
    return built


def with_mode(binary: Path, nonce: str, mode: int, out: Path) -> bool:
    """A copy of a test-guest hypervisor whose embedded guest runs ``mode``: the digit
    after ``kvmlab-mode-<nonce>=`` is the one the guest reads at run time.  False when
    the tag is not found exactly once (then the mode needs a build of its own)."""
    data = bytearray(binary.read_bytes())
    tag = f"kvmlab-mode-{nonce}=".encode()
    at = data.find(tag)
    if at < 0 or data.find(tag, at + 1) >= 0:
        return False
    data[at + len(tag)] = ord(str(int(mode)))
    out.write_bytes(bytes(data))
    out.chmod(0o755)
    return True


def build_reference(directory: Optional[Path] = None) -> Built:
    """The reference hypervisor + guest; cached by source digest unless a directory is given."""
    ref = LAB_DIR / "reference"
    srcs = [ref / "kvm-hello-world.c", ref / "guest.c"] + [LAB_DIR / "build" / n for n in BUILD_FILES]
    if directory is None:
        directory = cache_dir() / f"reference-{_digest(srcs, _compiler_id())}"
        cached = directory / PROFILES[0].name / "kvm-hello-world"
        if cached.exists():
            return Built(directory, cached, cached.parent / "build.log", [], None, [], PROFILES[0])
        tmp = Path(tempfile.mkdtemp(prefix=".reference-", dir=_ensure(cache_dir())))
        built = _reference_in(tmp)
        try:
            os.replace(tmp, directory)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        return Built(directory, cached, cached.parent / "build.log", built.argv,
                     built.guest_image_size, built.notes, PROFILES[0])
    return _reference_in(directory)


def _reference_in(directory: Path) -> Built:
    """The reference must build with upstream's own flags; anything else is our bug."""
    ref = LAB_DIR / "reference"
    built = build_pair(directory, ref / "kvm-hello-world.c", ref / "guest.c")
    if not built.ok or built.profile != PROFILES[0]:
        raise LabBuildError("building the reference with upstream's flags failed",
                            stage="kvmlab-reference-build", kind=INFRA,
                            log=directory / PROFILES[0].name / "build.log", reproduce=built.argv)
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
