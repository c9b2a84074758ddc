"""Root filesystems and disks for the nested stack, built offline from Debian arm64
packages and cached by content (package list, overlay files, identity, tool versions).

* ``l1_rootfs``   ext4 image for L1, the arm64 KVM host (booted read-only, snapshot=on).
* ``l2_initramfs`` gzip'd newc cpio for L2, the guest; the package extract is cached
  separately, so a new workload binary only re-packs (well under 2 s).
* ``payload_disk`` small ext4 image with named files, attached to L1 as /dev/vdb.
* ``ssh_identity`` the client key and the pre-made dropbear host key, generated once.

Nothing arm64 runs at build time except ``busybox --list-full`` under
qemu-aarch64-static (natively on an arm64 host), to learn the applet names.

Kernel command lines the inits expect:
    L1: console=ttyAMA0 root=/dev/vda ro init=/sbin/harness-init panic=-1
    L2: console=ttyAMA0 quiet panic=-1          (initramfs, /init)
Ready markers printed on the console once sshd listens: ``HARNESS-READY l1`` /
``HARNESS-READY l2``.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from ..core import cache, hostarch, procs
from ..core.deadline import scaled
from ..core.errors import INPUT, ImageError

REPO = Path(__file__).resolve().parents[2]
OVERLAY_L1 = REPO / "images" / "l1"
OVERLAY_L2 = REPO / "images" / "l2"

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

L1_PACKAGES = ("busybox-static", "dropbear-bin", "openssh-sftp-server", "util-linux", "qemu-system-arm")
L2_PACKAGES = ("busybox-static", "dropbear-bin", "openssh-sftp-server")

# dpkg path excludes: documentation, manuals, translations
PATH_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
    "/usr/share/bash-completion/*",
)
# Debian's dropbear runs this for the "sftp" subsystem (compiled-in SFTPSERVER_PATH);
# openssh-sftp-server ships it as a symlink to openssh/sftp-server.
DROPBEAR_SFTP_PATH = "usr/lib/sftp-server"
HOST_KEY_PATH = "etc/dropbear/dropbear_ed25519_host_key"

# The ELF files the L2 initramfs needs; their shared libraries are added by closure.
L2_KEEP = ("bin/busybox", "usr/sbin/dropbear", "usr/lib/openssh/sftp-server", DROPBEAR_SFTP_PATH)
WORKLOAD_PATH = "usr/bin/hostcpuid-trace"

# Bump when the extract/prune recipe changes in a way the inputs below don't capture.
EXTRACT_RECIPE = "3"

READY_L1 = "HARNESS-READY l1"
READY_L2 = "HARNESS-READY l2"
L1_CMDLINE = "console=ttyAMA0 root=/dev/vda ro init=/sbin/harness-init panic=-1"
L2_CMDLINE = "console=ttyAMA0 quiet panic=-1"


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class SshIdentity:
    client_key: Path          # OpenSSH ed25519 private key (paramiko: Ed25519Key.from_private_key_file)
    client_pub: str           # "ssh-ed25519 AAAA... harness"
    host_key_dropbear: Path   # dropbear-format host key, installed in both guests
    host_pub: str             # "ssh-ed25519 AAAA..." of the host key, to verify the server


def ssh_identity() -> SshIdentity:
    """The harness's SSH client key and the guests' host key, generated once into the cache."""
    stage = "ssh-identity"

    def build(d: Path) -> None:
        log = d / "keygen.log"
        procs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvm-harness", "-f", d / "client_ed25519"],
                  stage=stage, log=log, error=ImageError, timeout=60)
        procs.run(["dropbearkey", "-t", "ed25519", "-f", d / "host_ed25519.dropbear"],
                  stage=stage, log=log, error=ImageError, timeout=60)
        out = procs.run(["dropbearkey", "-y", "-f", d / "host_ed25519.dropbear"],
                        stage=stage, error=ImageError, timeout=60).stdout
        pub = [line for line in out.splitlines() if line.startswith("ssh-ed25519 ")]
        if not pub:
            raise ImageError("dropbearkey -y printed no ssh-ed25519 line", stage=stage, tail=out)
        (d / "host_ed25519.pub").write_text(" ".join(pub[0].split()[:2]) + "\n")

    path = cache.Entry("ssh-identity", "ed25519-v1").ensure(build)
    return SshIdentity(
        client_key=path / "client_ed25519",
        client_pub=(path / "client_ed25519.pub").read_text().strip(),
        host_key_dropbear=path / "host_ed25519.dropbear",
        host_pub=(path / "host_ed25519.pub").read_text().strip(),
    )


# --------------------------------------------------------------------------- helpers


def _mirror() -> str:
    return os.environ.get("KVM_HARNESS_DEBIAN_MIRROR", DEFAULT_MIRROR)


def _tool_versions() -> Dict[str, str]:
    return {
        "mmdebstrap": procs.tool_version(["mmdebstrap", "--version"]),
        "mke2fs": _mke2fs_version(),
        "arm64-runner": procs.tool_version([*hostarch.arm64_runner(), "--version"]) if hostarch.arm64_runner() else "native",
    }


def _mke2fs_version() -> str:
    try:
        out = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True, timeout=scaled(30))
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stderr or out.stdout).splitlines()[0].strip() if (out.stderr or out.stdout) else ""


def _require_root(stage: str) -> None:
    if os.geteuid() != 0:
        raise ImageError(
            "building root filesystems needs root (mmdebstrap --mode=root extracts root-owned files, "
            "and mke2fs -d records the owners it sees); run the build as root, e.g. with sudo",
            stage=stage, kind=INPUT)


def mmdebstrap_argv(packages: Sequence[str], dest: Path, mirror: Optional[str] = None) -> List[str]:
    """The extract command line (argv list)."""
    argv = ["mmdebstrap", "--mode=root", "--arch=arm64", "--variant=extract",
            "--include=" + ",".join(packages)]
    argv += [f"--dpkgopt=path-exclude={p}" for p in PATH_EXCLUDES]
    argv += [SUITE, str(dest), mirror or _mirror()]
    return argv


def _extract(kind: str, packages: Sequence[str], log_dir: Path, stage: str,
             post: Optional[callable] = None, post_id: str = "") -> Path:
    """Cached ``mmdebstrap --variant=extract`` of ``packages``: returns the entry dir
    (tree under ``root/``)."""
    key = cache.key_of(recipe=EXTRACT_RECIPE, packages=sorted(packages), suite=SUITE, mirror=_mirror(),
                       excludes=list(PATH_EXCLUDES), mmdebstrap=_tool_versions()["mmdebstrap"], post=post_id)
    entry = cache.Entry(kind, key)
    if entry.ready():
        return entry.path
    _require_root(stage)

    def build(d: Path) -> None:
        log = Path(log_dir) / f"{stage}-mmdebstrap.log"
        t0 = time.monotonic()
        procs.run(mmdebstrap_argv(packages, d / "root"), stage=stage, log=log, error=ImageError,
                  timeout=1800, what="mmdebstrap")
        (d / "mmdebstrap.seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
        shutil.copy(log, d / "mmdebstrap.log")
        if post:
            post(d / "root")

    return entry.ensure(build)


def busybox_applets(root: Path, stage: str) -> List[str]:
    """Paths (relative, e.g. 'sbin/ip') of busybox's applets, asked from the arm64 binary."""
    out = procs.run([*hostarch.arm64_runner(), root / "bin/busybox", "--list-full"], stage=stage,
                    error=ImageError, timeout=120, what="busybox --list-full").stdout
    apps = [line.strip() for line in out.splitlines() if line.strip()]
    if "bin/sh" not in apps:
        raise ImageError("busybox --list-full did not list bin/sh", stage=stage, tail=out)
    return apps


def _link_applets(root: Path, applets: Iterable[str]) -> None:
    """Symlink missing applets to /bin/busybox (never shadowing a real binary)."""
    for rel in applets:
        p = root / rel
        if os.path.lexists(p):
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", p)


def read_overlay(overlay: Path) -> Dict[str, bytes]:
    """Overlay files by relative path (README.md at the top level is documentation)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(overlay):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(overlay).as_posix()
            if rel == "README.md":
                continue
            files[rel] = p.read_bytes()
    return files


def overlay_mode(rel: str, data: bytes) -> int:
    """Scripts (#!) are executable; everything else is 0644 (/etc/shadow 0600)."""
    if data.startswith(b"#!"):
        return 0o755
    if rel in ("etc/shadow",):
        return 0o600
    return 0o644


def _put(root: Path, rel: str, data: bytes, mode: int) -> None:
    """Write a fresh file (unlinking any hardlinked/ symlinked original first)."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(p):
        if p.is_dir() and not p.is_symlink():
            raise ImageError(f"overlay file {rel} collides with a directory", stage="rootfs")
        p.unlink()
    p.write_bytes(data)
    os.chmod(p, mode)


def _common_files(ident: SshIdentity) -> Dict[str, tuple]:
    """Files generated from the identity: rel -> (bytes, mode)."""
    return {
        "root/.ssh/authorized_keys": ((ident.client_pub + "\n").encode(), 0o600),
        HOST_KEY_PATH: (ident.host_key_dropbear.read_bytes(), 0o600),
    }


def _dirs(root: Path, rels: Iterable[str], mode: int = 0o755) -> None:
    for rel in rels:
        p = root / rel
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, mode)


def _self_digest() -> str:
    return cache.file_digest(Path(__file__))


def _check_overlay(files: Dict[str, bytes], required: Sequence[str], overlay: Path, stage: str) -> None:
    missing = [r for r in required if r not in files]
    if missing:
        raise ImageError(f"overlay {overlay} lacks {', '.join(missing)}", stage=stage, kind=INPUT)


# --------------------------------------------------------------------------- L1


def _prune_l1(root: Path) -> None:
    # firmware of other architectures' machines; L2 boots with -kernel and romfile=
    qdir = root / "usr/share/qemu"
    if qdir.is_dir():
        for p in qdir.iterdir():
            if p.name in ("keymaps", "trace-events-all"):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for rel in ("usr/include", "usr/share/icons", "usr/share/gcc", "usr/share/perl5", "usr/share/iso-codes",
                "usr/share/xml", "usr/share/alsa", "usr/share/gst-plugins-base"):
        shutil.rmtree(root / rel, ignore_errors=True)


def l1_rootfs(log_dir: Path, overlay: Path = OVERLAY_L1) -> Path:
    """ext4 image of L1's root filesystem (boot it read-only: ``-drive ...,snapshot=on``)."""
    stage = "rootfs-l1"
    log_dir = Path(log_dir)
    files = read_overlay(overlay)
    _check_overlay(files, ("sbin/harness-init", "etc/passwd", "etc/group"), overlay, stage)
    ident = ssh_identity()
    ext = _extract("l1-extract", L1_PACKAGES, log_dir, stage, post=_prune_l1, post_id="prune-l1-v1")
    key = cache.key_of(extract=ext.name, overlay=sorted((k, v.hex()) for k, v in files.items()),
                       client=ident.client_pub, host=ident.host_pub, tools=_tool_versions(), code=_self_digest())

    def build(d: Path) -> None:
        log = log_dir / f"{stage}.log"
        stage_root = d / "tree"
        # hardlink copy of the extract (cheap); overlay files replace links, never edit them
        procs.run(["cp", "-al", ext / "root", stage_root], stage=stage, log=log, error=ImageError, timeout=300)
        applets = busybox_applets(stage_root, stage)
        _link_applets(stage_root, applets)
        _dirs(stage_root, ("proc", "sys", "dev", "tmp", "run", "payload", "mnt", "var/tmp", "var/log", "etc/dropbear"))
        os.chmod(stage_root / "tmp", 0o1777)
        os.chmod(stage_root / "var/tmp", 0o1777)
        _dirs(stage_root, ("root", "root/.ssh"), 0o700)
        if not os.path.lexists(stage_root / "var/run"):
            os.symlink("/run", stage_root / "var/run")
        for rel, data in files.items():
            _put(stage_root, rel, data, overlay_mode(rel, data))
        for rel, (data, mode) in _common_files(ident).items():
            _put(stage_root, rel, data, mode)
        _check_tree(stage_root, ("sbin/harness-init", "bin/busybox", "usr/sbin/dropbear", DROPBEAR_SFTP_PATH,
                                 "usr/bin/taskset", "usr/bin/qemu-system-aarch64"), stage)
        image = d / "l1-rootfs.ext4"
        size_mb = _fs_size_mb(stage_root, margin=1.15, extra_mb=48)
        procs.run(mke2fs_argv(stage_root, image, size_mb, label="l1root"), stage=stage, log=log,
                  error=ImageError, timeout=600, what="mke2fs")
        shutil.rmtree(stage_root)
        shutil.copy(log, d / "build.log")

    entry = cache.Entry("l1-rootfs", key).ensure(build)
    return entry / "l1-rootfs.ext4"


def _check_tree(root: Path, rels: Sequence[str], stage: str) -> None:
    missing = [r for r in rels if not os.path.exists(root / r) and not os.path.islink(root / r)]
    # a symlink must resolve inside the tree
    for r in rels:
        p = root / r
        if os.path.islink(p):
            target = os.readlink(p)
            t = (root / target.lstrip("/")) if target.startswith("/") else (p.parent / target)
            if not t.exists():
                missing.append(f"{r} -> {target}")
    if missing:
        raise ImageError(f"image tree lacks {', '.join(missing)}", stage=stage)


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (1 + len(dirnames))
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            # block-rounded; small files and symlinks still take an inode + block
            total += ((st.st_size + 4095) // 4096) * 4096 if stat.S_ISREG(st.st_mode) else 0
            total += 256
    return total


def _fs_size_mb(root: Path, margin: float, extra_mb: int) -> int:
    return int(_tree_bytes(root) * margin / (1 << 20)) + extra_mb


def mke2fs_argv(src: Path, image: Path, size_mb: int, label: str) -> List[str]:
    """ext4 without a journal (the guests mount it read-only), no reserved blocks."""
    return ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-L", label,
            "-E", "root_owner=0:0", "-d", str(src), str(image), f"{size_mb}M"]


# --------------------------------------------------------------------------- L2


def elf_needed(path: Path) -> List[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF ([] for static or non-ELF files)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dyn = [], None
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dyn = (p_offset, p_filesz)
    if dyn is None:
        return []

    def v2o(vaddr: int) -> int:
        for v, o, sz in loads:
            if v <= vaddr < v + sz:
                return vaddr - v + o
        raise ValueError(f"{path}: address {vaddr:#x} outside PT_LOAD")

    needed, strtab = [], None
    off, end = dyn
    while off + 16 <= dyn[0] + end:
        tag, val = struct.unpack_from("<qQ", data, off)
        off += 16
        if tag == 0:
            break
        if tag == 1:
            needed.append(val)
        elif tag == 5:
            strtab = v2o(val)
    if strtab is None:
        return []
    names = []
    for n in needed:
        s = strtab + n
        names.append(data[s:data.index(b"\0", s)].decode())
    return names


LIB_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")


def library_closure(root: Path, elves: Sequence[str], stage: str) -> Set[str]:
    """Relative paths (incl. symlink chains) of ``elves`` and all the libraries they need."""
    keep: Set[str] = set()
    todo = list(elves)
    seen_libs: Set[str] = set()

    def add_path(rel: str) -> str:
        """Add rel and its symlink chain; return the final regular file's rel path."""
        for _ in range(40):
            keep.add(rel)
            p = root / rel
            if not p.is_symlink():
                return rel
            target = os.readlink(p)
            rel = os.path.normpath(target.lstrip("/") if target.startswith("/")
                                   else os.path.join(os.path.dirname(rel), target))
            # intermediate directories that are symlinks (e.g. /lib -> usr/lib) are not expected here
        raise ImageError(f"symlink loop at {rel}", stage=stage)

    while todo:
        rel = todo.pop()
        if not os.path.lexists(root / rel):
            raise ImageError(f"{rel} missing from the package extract", stage=stage)
        real = add_path(rel)
        for lib in elf_needed(root / real):
            if lib in seen_libs:
                continue
            seen_libs.add(lib)
            for d in LIB_DIRS:
                cand = f"{d}/{lib}"
                if os.path.lexists(root / cand):
                    todo.append(cand)
                    break
            else:
                raise ImageError(f"library {lib} (needed by {real}) not found in the extract", stage=stage)
    # the dynamic loader is found by its absolute PT_INTERP path
    if any(elf_needed(root / k) for k in keep if (root / k).is_file() and not (root / k).is_symlink()):
        add_path("lib/ld-linux-aarch64.so.1")
    return keep


def _prune_l2(root: Path) -> None:
    """Keep only the ELF files L2 needs and their libraries, plus busybox's applet list."""
    stage = "rootfs-l2"
    applets = busybox_applets(root, stage)
    keep = library_closure(root, L2_KEEP, stage)
    slim = root.parent / "slim"
    for rel in sorted(keep):
        src, dst = root / rel, slim / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    (root.parent / "applets.txt").write_text("\n".join(applets) + "\n")
    shutil.rmtree(root)
    os.rename(slim, root)


class Cpio:
    """A newc ("070701") archive written in memory, every entry owned by root."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.names: Set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple = (0, 0), nlink: int = 1) -> None:
        if name in self.names:
            raise ValueError(f"duplicate cpio entry {name}")
        self.names.add(name)
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
        self.buf.write(hdr.encode() + nb)
        self.buf.write(b"\0" * (-(110 + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))
        self.ino += 1

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _cpio_tree(c: Cpio, root: Path, dirs_done: Set[str]) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in dirnames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            p = Path(dirpath) / name
            if p.is_symlink():
                c.symlink(rel, os.readlink(p))
            elif rel not in dirs_done:
                c.dir(rel, stat.S_IMODE(p.stat().st_mode))
                dirs_done.add(rel)
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            p = Path(dirpath) / name
            if p.is_symlink():
                c.symlink(rel, os.readlink(p))
            else:
                c.file(rel, p.read_bytes(), stat.S_IMODE(p.stat().st_mode))


def _ensure_parents(c: Cpio, rel: str, dirs_done: Set[str]) -> None:
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in dirs_done:
            c.dir(d, 0o700 if d in ("root", "root/.ssh") else 0o755)
            dirs_done.add(d)


def build_l2_cpio(base: Path, applets: Sequence[str], overlay_files: Dict[str, bytes],
                  generated: Dict[str, tuple], workload: Optional[bytes]) -> bytes:
    """The uncompressed cpio: package files, applet links, dirs, overlay, keys, workload."""
    c = Cpio()
    dirs_done: Set[str] = set()
    for d, perm in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777), ("run", 0o755),
                    ("root", 0o700), ("root/.ssh", 0o700), ("etc", 0o755), ("etc/dropbear", 0o755),
                    ("var", 0o755), ("var/log", 0o755), ("mnt", 0o755)):
        c.dir(d, perm)
        dirs_done.add(d)
    c.chardev("dev/console", 5, 1, 0o600)
    c.chardev("dev/null", 1, 3, 0o666)
    c.symlink("var/run", "/run")
    _cpio_tree(c, base, dirs_done)
    extra: Dict[str, tuple] = {}
    for rel, data in overlay_files.items():
        extra[rel] = (data, overlay_mode(rel, data))
    extra.update(generated)
    if workload is not None:
        extra[WORKLOAD_PATH] = (workload, 0o755)
    for rel in sorted(extra):
        if rel in c.names:
            raise ImageError(f"L2 file {rel} is both in the packages and the overlay", stage="rootfs-l2")
        _ensure_parents(c, rel, dirs_done)
        data, mode = extra[rel]
        c.file(rel, data, mode)
    for rel in applets:
        if rel in c.names or rel in extra:
            continue
        _ensure_parents(c, rel, dirs_done)
        c.symlink(rel, "/bin/busybox")
    return c.finish()


def l2_initramfs(workload: Path, log_dir: Path, overlay: Path = OVERLAY_L2) -> Path:
    """gzip'd cpio initramfs for L2 with the workload at /usr/bin/hostcpuid-trace."""
    stage = "rootfs-l2"
    log_dir = Path(log_dir)
    workload = Path(workload)
    if not workload.is_file():
        raise ImageError(f"workload binary {workload} does not exist", stage=stage, kind=INPUT)
    files = read_overlay(overlay)
    _check_overlay(files, ("init", "etc/passwd", "etc/group"), overlay, stage)
    ident = ssh_identity()
    ext = _extract("l2-extract", L2_PACKAGES, log_dir, stage, post=_prune_l2, post_id="prune-l2-v1")
    key = cache.key_of(extract=ext.name, overlay=sorted((k, v.hex()) for k, v in files.items()),
                       workload=cache.file_digest(workload), client=ident.client_pub, host=ident.host_pub,
                       code=_self_digest())

    def build(d: Path) -> None:
        t0 = time.monotonic()
        applets = (ext / "applets.txt").read_text().split()
        raw = build_l2_cpio(ext / "root", applets, files, _common_files(ident), workload.read_bytes())
        with open(d / "initramfs.cpio.gz", "wb") as f:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                gz.write(raw)
        (d / "pack.seconds").write_text(f"{time.monotonic() - t0:.2f}\n")

    return cache.Entry("l2-initramfs", key).ensure(build) / "initramfs.cpio.gz"


# --------------------------------------------------------------------------- payload


def payload_disk(dest: Path, files: Dict[str, Path], log_dir: Optional[Path] = None) -> Path:
    """ext4 image at ``dest`` holding ``files`` (name -> source) at its top level."""
    stage = "payload"
    dest = Path(dest)
    if not files:
        raise ImageError("payload disk needs at least one file", stage=stage, kind=INPUT)
    for name, src in files.items():
        if not name or "/" in name or name in (".", "..") or name.startswith("."):
            raise ImageError(f"bad payload file name {name!r} (a plain file name)", stage=stage, kind=INPUT)
        if not Path(src).is_file():
            raise ImageError(f"payload file {name}: {src} does not exist", stage=stage, kind=INPUT)
    log = Path(log_dir or dest.parent) / f"{stage}.log"
    staging = dest.parent / f".{dest.name}.d"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        total = 0
        for name, src in files.items():
            try:
                os.link(src, staging / name)
            except OSError:
                shutil.copyfile(src, staging / name)
            total += (Path(src).stat().st_size + 4095) // 4096 * 4096
        size_mb = max(8, int(total * 1.1 / (1 << 20)) + 8)
        if dest.exists():
            dest.unlink()
        procs.run(mke2fs_argv(staging, dest, size_mb, label="payload"), stage=stage, log=log,
                  error=ImageError, timeout=300, what="mke2fs")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
