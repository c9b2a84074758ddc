"""Confinement for untrusted work: argv wrappers, no shell.

``confine(argv, writable=[...], readable=[...], env={...})`` runs a command under
bubblewrap that sees only what it needs (issue 18):

- the system's programs and libraries read-only (/usr, and /bin, /sbin, /lib* as the
  symlinks or directories they are here), nothing else of the host's file system: not
  /var, /srv, /opt, /mnt, /root, /home, /run, /sys, nor anything the harness keeps;
- a synthesized /etc (``etc_dir``): passwd and group naming the sandbox's user, the
  loader's cache, Debian's alternatives (awk, cc), fontconfig for poppler; no shadow,
  no keys, no machine secrets;
- the directories named in ``writable`` (read-write) and ``readable`` (read-only); of
  two nested ones the deeper decides: a kernel worktree's ``src``, whose files are hard
  links to the pristine tree every build shares, stays read-only inside it;
- a private /dev, /proc and /tmp (with, in /dev, the character devices named in
  ``devices``: see ``device_node``), every namespace but the user one unshared (no
  network), an environment of its own (``env`` plus PATH, HOME, USER): nothing of the
  harness's environment leaks in.

Inside, it runs as an unprivileged uid (``uid_for``: one per thing a sandbox writes,
so two concurrent sandboxes never share a process budget), with no capability, no
new privileges: a bind that leaks still meets file permissions.  bubblewrap runs as
root to set up the binds (the harness's cache under root's 0700 home cannot be reached
by the sandbox's uid), and ``setpriv`` drops to the uid before the command starts.
The ``writable`` directories are given to that uid.

Limits (``Limits``) are rlimits set before the drop and inherited by everything the
command starts: processes of its uid (RLIMIT_NPROC: a fork bomb meets EAGAIN), address
space per process, bytes per file written (a disk filler meets SIGXFSZ), no core dumps;
the totals, kept by ``guard.py`` around the whole sandbox: processes and memory in a
cgroup of its own where the machine lets one be made (v2, else v1), and the bytes
written into its writable directories; and ``timeout`` (wall clock, then SIGKILL).
``limits_mechanism()`` says which ones hold on this machine (the batch's preflight
prints it).  Used for kernel builds of students'
patches, for poppler on their PDFs, and for the KVM-API lab's student builds and
hypervisors (harness/kvmlab/sandbox.py, with /dev/kvm).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

from ..core.deadline import scaled
from ..core.errors import InfraError
from . import guard

PathLike = Union[str, Path]

UID_BASE = 200000      # the sandbox's uids: UID_BASE .. UID_BASE + UID_SPAN - 1, named by nobody here
UID_SPAN = 50000
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# what of the host's /etc the tools need (the loader, Debian's alternatives, fontconfig)
ETC_COPIED = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "fonts", "localtime")
PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    wall_s: int = 1800                 # a cold kernel build on 2 cores is ~5 min (scaled: slowdown factor)
    address_space: int = 6 << 30       # per process (cc1 on big files ~1 GiB)
    file_size: int = 2 << 30           # per file written (vmlinux ~ 200 MB with debug off)
    processes: int = 512               # tasks of the sandbox's uid (make -j2 of a kernel: < 40)
    memory: int = 8 << 30              # in all, where a cgroup can be made (make -j2 of a kernel: < 2 GiB)
    written: int = 8 << 30             # in all, into its writable directories (a cold 6.1 build: ~1.5 GB)


BUILD = Limits()
# L0's QEMU booting an untrusted kernel (machine.MachineSpec.confine): its address space is
# not bounded per process (guest RAM, a 1 GiB TCG buffer, an arena per thread), its
# memory in all is (confine_emulator); it writes nothing but its QMP socket
EMULATOR = Limits(wall_s=6 * 3600, address_space=1 << 40, file_size=64 << 20, processes=512,
                  written=64 << 20)
PDF = Limits(wall_s=60, address_space=1 << 30, file_size=64 << 20, processes=32, memory=1 << 30,
             written=256 << 20)
GUARD = Path(guard.__file__)


def available() -> str:
    """'' when bubblewrap works here, else why not."""
    for tool in ("bwrap", "prlimit", "timeout", "setpriv"):
        if not shutil.which(tool):
            return f"{tool} not found (apt-get install bubblewrap util-linux coreutils)"
    return ""


def uid_for(key: str) -> int:
    """The sandbox's uid for ``key`` (what it writes): stable, so a worktree keeps its owner."""
    return UID_BASE + int(hashlib.sha256(key.encode()).hexdigest(), 16) % UID_SPAN


def cgroup_controllers() -> List[str]:
    """The cgroup v2 controllers this machine offers ([] when there is no cgroup v2)."""
    for d in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        try:
            return Path(d, "cgroup.controllers").read_text().split()
        except OSError:
            continue
    return []


_MECHANISM: List[str] = []


def cgroups() -> str:
    """'cgroup v2', 'cgroup v1' or '' (none can be made here): looked at once."""
    if not _MECHANISM:
        _MECHANISM.append(guard.mechanism())
    return _MECHANISM[0]


def limits_mechanism() -> str:
    """Which limits hold here, for the batch's preflight."""
    totals = (f"{cgroups()} per sandbox (processes: {BUILD.processes} for a build, {PDF.processes} for "
              f"poppler; memory: {BUILD.memory >> 30} GiB in all for a build)" if cgroups() else
              f"no cgroup can be made here (cgroup v2 controllers: {' '.join(cgroup_controllers()) or 'none'}; "
              f"no writable v1 pids and memory hierarchies), so memory is bounded per process only")
    return (f"limits: {totals}; bytes written: {BUILD.written >> 30} GiB in all for a build "
            f"(measured every {guard.INTERVAL_S:.0f} s), {BUILD.file_size >> 30} GiB per file; rlimits under an "
            f"unprivileged uid per sandbox (processes of the uid: {BUILD.processes}; address space: "
            f"{BUILD.address_space >> 30} GiB per process); a wall-clock timeout")


def _state_dir() -> Path:
    from ..core import cache

    d = cache.cache_root() / "sandbox"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)  # bound into sandboxes: readable by their uids (the cache root above stays private)
    return d


def etc_dir() -> Path:
    """The sandboxes' /etc, made once: only what the tools need (module docstring)."""
    etc = _state_dir() / "etc"
    if (etc / "passwd").exists():
        return etc
    tmp = _state_dir() / f"etc.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    for name in ETC_COPIED:
        p = Path("/etc") / name
        if p.is_symlink() or p.is_file():
            shutil.copy2(p, tmp / name, follow_symlinks=False)
        elif p.is_dir():
            shutil.copytree(p, tmp / name, symlinks=True)
    (tmp / "hostname").write_text("sandbox\n")
    (tmp / "hosts").write_text("127.0.0.1 localhost sandbox\n")
    (tmp / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files\n")
    for name in ("passwd", "group"):
        (tmp / name).write_text("")  # mount points of each sandbox's own (identity_files)
    os.chmod(tmp, 0o755)
    try:
        tmp.rename(etc)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return etc


def identity_files(uid: int) -> Mapping[str, Path]:
    """/etc/passwd and /etc/group naming root and the sandbox's user ``build`` (uid, gid)."""
    d = _state_dir() / f"id-{uid}"
    files = {"passwd": f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
                       f"build:x:{uid}:{uid}:sandboxed build:/tmp:/usr/sbin/nologin\n",
             "group": f"root:x:0:\nbuild:x:{uid}:\n"}
    if not (d / "group").exists():
        d.mkdir(mode=0o755, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
            (d / name).chmod(0o644)
        _prune_identities(keep=d)
    else:
        os.utime(d)  # in use: the pruning below goes by this time
    return {name: d / name for name in files}


IDENTITIES_KEPT = 256          # a uid per build directory: made often (each test's tmp dir), kept few
IDENTITY_MAX_AGE_S = 86400     # and never one a sandbox may be starting with right now


def _prune_identities(keep: Path) -> None:
    """Remove the oldest id-<uid> directories beyond IDENTITIES_KEPT, unused for a day
    (measured: 3,528 had piled up on a machine after a few days of tests)."""
    found = []
    for e in os.scandir(keep.parent):
        if e.name.startswith("id-") and e.path != str(keep):
            try:
                found.append((e.stat().st_mtime, e.path))
            except FileNotFoundError:
                continue
    found.sort()
    old = time.time() - IDENTITY_MAX_AGE_S
    for mtime, path in found[:max(0, len(found) + 1 - IDENTITIES_KEPT)]:
        if mtime < old:
            shutil.rmtree(path, ignore_errors=True)


def give(directory: Path, uid: int) -> None:
    """``directory`` (made if missing) and what it holds, owned by ``uid``; a no-op when it
    already is (a worktree's build directory is walked once, not per make)."""
    directory.mkdir(parents=True, exist_ok=True)
    if directory.stat().st_uid == uid:
        return
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(directory, uid, uid)


def device_node(device: PathLike, uid: int) -> Path:
    """A node of the host's character device ``device`` (same major and minor) owned by
    ``uid``, mode 0600, to be bound at ``device`` inside that uid's sandbox: the sandbox
    opens it as its own unprivileged uid, whatever the host's node allows (/dev/kvm is
    root's 0600 here), and nobody outside reaches it (its directory is root's 0700)."""
    st = os.stat(device)
    if not stat.S_ISCHR(st.st_mode):
        raise InfraError(f"sandbox: {device} is not a character device", stage="sandbox")
    d = _state_dir() / "dev" / str(uid)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    node = d / Path(device).name
    try:
        have = os.stat(node)
    except FileNotFoundError:
        have = None
    if have is None or have.st_rdev != st.st_rdev or have.st_uid != uid:
        tmp = d / f".{node.name}.{os.getpid()}"
        try:
            os.mknod(tmp, 0o600 | stat.S_IFCHR, st.st_rdev)
            os.chown(tmp, uid, uid)
            os.rename(tmp, node)
        except OSError as e:
            raise InfraError(f"sandbox: cannot make a node of {device} for uid {uid}: {e}",
                             stage="sandbox") from e
    if os.statvfs(node).f_flag & os.ST_NODEV:
        raise InfraError(f"sandbox: {d} is on a nodev mount: {device} cannot be given to a sandbox",
                         stage="sandbox")
    return node


def drop_device_nodes(uid: int) -> None:
    """Remove the device nodes made for ``uid`` (``device_node``), once its sandboxes are done."""
    shutil.rmtree(_state_dir() / "dev" / str(uid), ignore_errors=True)


def system_binds() -> List[str]:
    """The system's programs and libraries, read-only, as they are here (merged /usr or not)."""
    out: List[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            out += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            out += ["--ro-bind", d, d]
    return out


def _parents(paths: Sequence[Path]) -> List[str]:
    """bubblewrap makes the missing parents of a bind's mount point 0700 (root's): made
    here first, 0755, so the sandbox's uid can walk down to what it is given."""
    mounted = [Path(p) for p in (*SYSTEM_DIRS, "/etc")] + list(paths)   # nothing is made inside these
    made: List[Path] = []
    for p in paths:
        for a in reversed(p.parents):
            if a in (Path("/"), Path("/tmp")) or a in made or any(a == m or m in a.parents for m in mounted):
                continue
            made.append(a)
    out: List[str] = []
    for a in made:
        out += ["--perms", "0755", "--dir", str(a)]
    return out


def confine(argv: Sequence[PathLike], *, writable: Sequence[PathLike] = (), readable: Sequence[PathLike] = (),
            limits: Limits = BUILD, cwd: PathLike = None, env: Optional[Mapping[str, str]] = None,
            uid: Optional[int] = None, devices: Sequence[PathLike] = (), network: bool = False,
            scratch: Sequence[str] = ("/tmp",)) -> List[str]:
    """The argv that runs ``argv`` confined (see the module docstring).  ``env`` is the
    whole environment the command gets, beside PATH, HOME and USER; ``uid`` defaults
    to one named by the first writable directory (else by the command); ``devices``
    (character devices such as /dev/kvm) appear in its /dev, openable by that uid;
    ``network`` keeps the host's network namespace (for QEMU's forwarded ports only);
    ``scratch`` are its private tmpfs directories, each of ``limits.written`` bytes."""
    why = available()
    if why:
        raise InfraError(f"sandbox: {why}", stage="sandbox")
    if uid is None:
        uid = uid_for(str(Path(writable[0]).resolve()) if writable else " ".join(map(str, argv)))
    for d in writable:
        give(Path(d), uid)
    ident = identity_files(uid)
    out = ["timeout", "--kill-after=10", str(round(scaled(limits.wall_s))),
           sys.executable or "python3", "-I", str(GUARD), f"--pids={limits.processes}",
           f"--memory={limits.memory}", f"--bytes={limits.written}"]
    out += [f"--watch={Path(d)}" for d in writable]
    out += ["--",
           "prlimit", f"--as={limits.address_space}", f"--fsize={limits.file_size}", "--core=0",
           f"--nproc={limits.processes}", "--",
           "bwrap", "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
           *([] if network else ["--unshare-net"]),
           "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox", "--clearenv"]
    out += system_binds()
    out += ["--ro-bind", str(etc_dir()), "/etc",
            "--ro-bind", str(ident["passwd"]), "/etc/passwd", "--ro-bind", str(ident["group"]), "/etc/group",
            "--dev", "/dev", "--proc", "/proc"]
    for d in scratch:
        out += ["--perms", "1777", "--size", str(limits.written), "--tmpfs", d]
    for dev in devices:
        out += ["--dev-bind", str(device_node(dev, uid)), str(dev)]
    # shallower paths first, so the deeper bind decides: a read-only directory inside a
    # writable one stays read-only, and a writable one inside a read-only one writable
    binds = sorted([(Path(d), "--bind") for d in writable] + [(Path(d), "--ro-bind") for d in readable],
                   key=lambda b: len(b[0].parts))
    out += _parents([d for d, _ in binds])
    for d, how in binds:
        out += [how, str(d), str(d)]
    if cwd:
        out += ["--chdir", str(cwd)]
    base = {"PATH": PATH, "HOME": "/tmp", "USER": "build", "LOGNAME": "build"}
    for k, v in {**base, **(env or {})}.items():
        out += ["--setenv", k, str(v)]
    out += ["--", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]
    return out + [str(a) for a in argv]


def confine_emulator(argv: Sequence[PathLike], *, images: Sequence[PathLike], socket_dir: PathLike,
                     memory_mb: int, uid: int, devices: Sequence[PathLike] = ()) -> List[str]:
    """The argv that runs L0's QEMU (``argv``) confined: it reads its ``images`` (kernel,
    root file system, payload), writes ``socket_dir`` (its QMP socket) and nothing else;
    it keeps the host's network namespace, where its user-mode network forwards
    127.0.0.1 ports to the guest.  Its memory in all is the guest's plus 3 GiB (TCG's
    code buffer, QEMU's own), in a cgroup where one can be made."""
    limits = replace(EMULATOR, memory=(memory_mb << 20) + (3 << 30))
    images = [Path(i).resolve() for i in images]
    for i in images:
        if not os.stat(i).st_mode & stat.S_IROTH:
            raise InfraError(f"sandbox: {i} is not readable by others, so L0's confined QEMU cannot read it",
                             stage="launch")
    # snapshot=on keeps its overlay in a temporary file in /var/tmp (QEMU prefers it to a /tmp)
    return confine(argv, writable=[socket_dir], readable=images, limits=limits, uid=uid, devices=devices,
                   network=True, scratch=("/tmp", "/var/tmp"))


def unusable() -> str:
    """'' when a sandbox can really be made here, else why not: the tools, then bubblewrap
    itself (a kernel or an emulator without user namespaces refuses it: qemu-user's
    process is multi-threaded, so unshare(CLONE_NEWUSER) fails with EINVAL there)."""
    why = available()
    if why:
        return why
    try:
        probe = subprocess.run(confine(["true"], limits=PDF), capture_output=True, text=True,
                               timeout=scaled(60))
    except subprocess.TimeoutExpired:
        return "bubblewrap did not start a sandbox within a minute"
    if probe.returncode != 0:
        return f"bubblewrap cannot create a sandbox here: {probe.stderr.strip()[-300:]}"
    return ""
