"""Cross-building arm64 kernel Images, cached by content.

An Image is named by everything that determines it: the source identity, the patch
bytes, the config fragments, the profile's make variables and the compiler version.
An unchanged build is a cache hit and costs nothing.  KBUILD_BUILD_USER, HOST,
TIMESTAMP and VERSION are fixed, so an Image does not depend on who built it, when, or
how often its worktree linked before.

A miss is built in a *worktree* kept per (source, configuration, role): a hard-linked
copy of the pristine tree plus an out-of-tree build directory.  Before a patch is
applied, the files the previous patch touched are restored from the pristine tree (as
new files, so make sees them as changed), so every build is "pristine + exactly this
patch", while make only recompiles what the patch change affects.  Sandboxed (students')
builds get worktrees of their own, named by their batch's ccache directory, and see
``src`` read-only: what their make leaves behind never reaches a trusted build.  They
write a private ccache per worktree (``<batch>/.ccache/<role>``) and read the shared one
as ccache remote storage, read-only (``shared_store``: hard links of the trusted local
cache's entries, refreshed by ``share_ccache`` when a batch starts); the trusted local
cache itself is not visible to them.  A grading batch gives every submission a ccache
directory of its own (``<batch>/.ccache/submissions/<id>``), hence worktrees and private
ccaches of its own, removed once it is graded: what one submission's make leaves behind
never reaches another's kernel.  So that such a worktree does not recompile the kernel,
it starts as a copy of the trusted worktree of its role when there is one (``_seed``:
the sources hard-linked, the build directory copied, ~110 MB for 6.1).

ccache sits underneath, keyed by what the compiler will see, not by header bytes
(issue 12).  vm.patch edits include/uapi/asm-generic/unistd.h, which 515 of the 846
objects of 6.1 include; make's dependency tracking and any key built from header bytes
or mtimes must recompile all of them, although the edit only adds macros that almost
none of them use.  So ccache runs in preprocessor mode through ``ccache-cpp-key``
(CCACHE_PREFIX_CPP), which removes from the preprocessed text what such an edit leaves
behind: blank lines, line-number-only markers and the line numbers of the markers that
enter and leave a file.  The markers themselves stay, so the key still names every
header in order, and ccache's direct mode (a hit without preprocessing when no header
changed) still learns every include.  On a miss the compiler compiles the real source
(run_second_cpp), so a cached object is always one the compiler made from source whose
tokens, in the same files and order, are the ones keyed.  Line numbers can reach an
object only through __LINE__ (expanded into the keyed text), __builtin_LINE (not used
by 5.4, 6.1 or 6.12) or debug line tables (the configuration has no DEBUG_INFO); a hit
replays the compiler's warnings as they were, line numbers included.  ccache rewrites
absolute paths under the cache root to relative ones, so __FILE__ reads ``../src/...``
on every version (6.12's kbuild does that itself).

Measured on 6.1 (2 cores, empty caches; ``kvm-harness build`` back to back, and
``make bench COLD=1``, which prints these figures):
  - header-byte keys (depend mode): host 323 s, then guest 245 s (0.76x), both compiling
    the 515 unistd.h users.
  - the cpp key: host 423 s (796 CPU-s: ~0.2 s of preprocessing per file on a miss),
    then guest 119-168 s (215-237 CPU-s, 0.27-0.30x the host's CPU): it preprocesses
    the 515 and compiles at most a handful.  Cold builds of the pair are therefore as
    long as before (568 s against 560-590 s); the gain is every later build whose header
    edit differs in bytes but not in what the compiler sees: a grading batch's guests
    (students write the same two lines differently: 108-122 s, ~210 CPU-s, against
    306-329 s compiled from source) and a developer editing unistd.h.
  - Images built with the cpp key are bit-identical to the same builds compiled
    without hits (CCACHE_RECACHE) for the reference vm.patch, a reformatted one and
    one with another syscall number.
  - Not adopted: seeding the guest's worktree from the host's build directory (0.76x
    against 0.81x: it still compiles the 515, for a new module and worktree layout);
    threaded xz for the tarball (9.6 s single-threaded, 11.6 s with -T2); hugepage
    malloc or a tmpfs TMPDIR for cc1 (kernel/fork.c: 1.37 s against 1.30 s, noise).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import buildlog
from ..core import cache, hostarch, procs, resources
from ..core.deadline import current as slowdown_now
from ..core.errors import INFRA, SUBJECT, BuildError, HarnessError, InfraError
from .patches import Patch
from .profiles import COMMON_FRAGMENT, Profile
from .sources import SourceTree

KBUILD_FORMAT = 3  # bump when the way kernels are built changes (3: KBUILD_BUILD_VERSION, the cpp key)
ARCH = "arm64"
CROSS_COMPILE = hostarch.cross_prefix()  # "" on an arm64 host
CPP_KEY = Path(__file__).with_name("ccache-cpp-key")  # ccache's preprocessor filter (docstring)

Progress = Callable[[str], None]
# a cold build of one kernel on the reference machine (2-core x86_64, cross gcc; see above)
COLD_BUILD_MIN = (5, 8)
MTIME_SLACK_NS = 2_000_000_000  # file systems with coarse timestamps: what a make in flight wrote


def _minutes(m: float) -> str:
    return f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def cold_estimate() -> str:
    """The progress line's cold-build estimate, through the slowdown factor."""
    s = slowdown_now()
    lo, hi = (m * s.factor for m in COLD_BUILD_MIN)
    est = f"{lo:.0f}-{_minutes(hi)}" if hi < 90 else f"{_minutes(lo)}-{_minutes(hi)}"
    return f"cold: {est} on 2 cores" + ("" if s.factor == 1 else f", slowdown x{s.factor:g} ({s.source})")


@dataclass
class KernelBuild:
    role: str
    image: Path
    config: Path
    log: Path
    key: str
    meta: dict
    cached: bool


def requested_symbols(fragment_text: str) -> Dict[str, str]:
    """CONFIG_X=... and '# CONFIG_X is not set' lines of a fragment (later lines win)."""
    out: Dict[str, str] = {}
    for line in fragment_text.splitlines():
        line = line.strip()
        m = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$", line)
        if m:
            out[m.group(1)] = "n"
    return out


def _strip_prefixes(text: str, *prefixes: str) -> str:
    """``text`` with each prefix removed where it starts a path (at a line start or after a
    space, a quote, a bracket, a colon or '=')."""
    for p in prefixes:
        text = re.sub(r"(^|[\s'\"`(\[:=])" + re.escape(p), r"\1", text, flags=re.M)
    return text


def missing_symbols(requested: Dict[str, str], final_config: str) -> List[str]:
    """Requested values that did not survive into the final .config."""
    final = requested_symbols(final_config)
    missing = []
    for sym, want in requested.items():
        have = final.get(sym, "n")
        if want != have:
            missing.append(f"{sym}={want} (final: {have if sym in final else 'absent'})")
    return missing


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def ccache_env(ccache_dir: Path, base: Path) -> Dict[str, str]:
    """ccache's settings for kernel builds: preprocessor mode keyed through CPP_KEY (see
    the module docstring), paths under ``base`` hashed relative, so worktrees share."""
    return {
        "CCACHE_DIR": str(ccache_dir),
        "CCACHE_BASEDIR": str(base),
        "CCACHE_NOHASHDIR": "1",
        "CCACHE_PREFIX_CPP": str(CPP_KEY),
        # entries keyed through another filter (or none) are never mixed with these
        "CCACHE_NAMESPACE": "cpp-key-" + cache.file_digest(CPP_KEY)[:12],
        "CCACHE_COMPILERCHECK": "content",
        "CCACHE_MAXSIZE": "5G",
    }


def shared_store() -> Path:
    """The shared compiler cache as sandboxed builds see it: a ccache ``file:`` store
    (remote storage) that they read and none of them writes (``share_ccache``)."""
    return cache.cache_root() / "ccache-shared"


def share_ccache(local: Optional[Path] = None, store: Optional[Path] = None) -> int:
    """Mirror the trusted local ccache into ``shared_store()`` with hard links (no bytes
    copied): a local entry ``a/b/REST`` plus its type letter (R result, M manifest) is the
    store's ``ab/REST``, byte for byte (ccache 4.7 to 4.11 store the same entry bytes in
    both).  Entries ccache evicted from the local cache (one link left) leave the store.
    Trusted code only: run outside any sandbox.  Returns the number of entries shared."""
    local = local or cache.cache_root() / "ccache"
    store = store or shared_store()
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o755)
    n = 0
    for entry in local.glob("?/?/*"):
        if entry.name[-1:] not in ("R", "M") or not entry.is_file():
            continue
        d = store / (entry.parent.parent.name + entry.parent.name)
        target = d / entry.name[:-1]
        if not target.exists():
            d.mkdir(mode=0o755, exist_ok=True)
            try:
                os.link(entry, target)
            except FileExistsError:
                pass
            except OSError:  # evicted meanwhile, or another file system: copy what is there
                continue
        n += 1
    for target in store.glob("??/*"):
        try:
            if target.stat().st_nlink == 1:
                target.unlink()
        except OSError:
            pass
    return n


def storage_option(ccache_version: str) -> str:
    """ccache's name for remote storage: ``secondary_storage`` before 4.8."""
    m = re.search(r"(\d+)\.(\d+)", ccache_version)
    return "CCACHE_REMOTE_STORAGE" if not m or (int(m.group(1)), int(m.group(2))) >= (4, 8) \
        else "CCACHE_SECONDARY_STORAGE"


def ccache_counts(stats_log: Path) -> Optional[Dict[str, int]]:
    """How many compilations of a build ccache ran the compiler for, and how many it served,
    from its CCACHE_STATSLOG ("# <source>" then one counter per line); None if unreadable."""
    try:
        counters = stats_log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return {"compiled": counters.count("cache_miss"),
            "cached": counters.count("direct_cache_hit") + counters.count("preprocessed_cache_hit")}


def compiler_version() -> str:
    return procs.tool_version([CROSS_COMPILE + "gcc", "--version"])


def fragments_text(source: SourceTree, profile: Profile) -> str:
    """The combined KCONFIG_ALLCONFIG input: the tree's own fragments, ours, the profile's."""
    parts = []
    for rel in profile.tree_fragments:
        p = source.root / rel
        if p.exists():
            parts.append(f"# --- {rel} (from the kernel tree)\n{p.read_text()}")
    parts.append(f"# --- images/kernel/common.config\n{COMMON_FRAGMENT.read_text()}")
    for p in profile.fragments:
        parts.append(f"# --- {p.relative_to(profile.directory.parent.parent.parent)}\n{p.read_text()}")
    return "\n".join(parts)


def our_requests(profile: Profile) -> Dict[str, str]:
    """The symbols the harness needs (the tree's tiny fragments are best effort)."""
    text = COMMON_FRAGMENT.read_text() + "\n" + "\n".join(p.read_text() for p in profile.fragments)
    return requested_symbols(text)


def _damaged(entry: Path) -> Optional[str]:
    """Why a cached kernel entry cannot be used (Image missing, truncated or changed), or None."""
    image = entry / "Image"
    try:
        meta = json.loads((entry / "meta.json").read_text())
        size = image.stat().st_size
    except (OSError, ValueError):
        return "Image or meta.json missing"
    if size == 0:
        return "Image is empty"
    if "image_bytes" in meta and size != meta["image_bytes"]:
        return f"Image has {size} bytes, {meta['image_bytes']} were built"
    if "image_sha256" in meta and cache.file_digest(image) != meta["image_sha256"]:
        return "Image's sha256 differs from the one recorded at build time"
    expected = _image_size_from_map(entry / "System.map")  # entries made before sizes were recorded
    if expected is not None and size != expected:
        return f"Image has {size} bytes, System.map says {expected} (_edata - _text)"
    return None


def _image_size_from_map(system_map: Path) -> Optional[int]:
    """arm64's Image is the kernel from _text to _edata: its size, from System.map."""
    addr = {}
    try:
        with open(system_map) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] in ("_text", "_edata"):
                    addr[parts[2]] = int(parts[0], 16)
    except (OSError, ValueError):
        return None
    return addr["_edata"] - addr["_text"] if len(addr) == 2 else None


def sandboxed_worktree_tag(ccache_dir: Path) -> str:
    """The suffix of the worktrees of sandboxed builds that use ``ccache_dir``."""
    return "-sandboxed-" + cache.key_of(ccache=str(ccache_dir))[:8]


def remove_sandboxed_worktrees(ccache_dir: Path) -> List[Path]:
    """Delete the worktrees of the sandboxed builds that used ``ccache_dir`` (a finished
    grading batch's); returns what was removed."""
    tag = sandboxed_worktree_tag(ccache_dir)
    gone = []
    for wt in sorted((cache.cache_root() / "work").glob(f"*{tag}")):
        with cache.locked(str(wt) + ".lock"):
            shutil.rmtree(wt, ignore_errors=True)
        Path(str(wt) + ".lock").unlink(missing_ok=True)
        gone.append(wt)
    return gone


def remove_sandboxed_builds(ccache_dir: Path) -> List[Path]:
    """Delete the worktrees of the sandboxed builds that used ``ccache_dir`` (a graded
    submission's) and that private ccache; returns the worktrees removed."""
    gone = remove_sandboxed_worktrees(ccache_dir)
    shutil.rmtree(ccache_dir, ignore_errors=True)
    return gone


def _repath(build: Path, old: str, new: str) -> None:
    """Rename ``old`` to ``new`` in the text files of a build directory (kbuild's .cmd and
    .d files name sources and include directories by absolute path; a changed command
    line recompiles its object), keeping their times."""
    before, after = old.encode(), new.encode()
    for root, _, files in os.walk(build):
        for name in files:
            f = Path(root, name)
            if f.is_symlink():
                continue
            data = f.read_bytes()
            if before in data and b"\0" not in data:
                st = f.stat()
                f.write_bytes(data.replace(before, after))
                os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def _writable(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (from outside any sandbox)."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory):
            return True
    except OSError:
        return False


class Builder:
    """Builds kernels for one source tree and profile."""

    def __init__(self, source: SourceTree, profile: Profile, jobs: int = 0, use_ccache: bool = True,
                 progress: Progress = print, sandboxed: bool = False, sandbox_ccache: Optional[Path] = None):
        self.source = source
        self.profile = profile
        self.jobs = jobs or os.cpu_count() or 2
        self.use_ccache = use_ccache and shutil.which("ccache") is not None
        self.progress = progress
        self.sandboxed = sandboxed  # untrusted patches: make runs under bubblewrap (harness/build/sandbox.py)
        # the ccache make uses: sandboxed builds get a private one (their batch's) and read the
        # shared one (shared_store) without writing it; trusted builds use the shared one
        self.sandbox_ccache = sandbox_ccache
        self.ccache_dir = Path(sandbox_ccache) if sandboxed and sandbox_ccache else cache.cache_root() / "ccache"
        self.ccache_store = shared_store() if sandboxed and sandbox_ccache and self.use_ccache else None
        self.ccache_remote = storage_option(procs.tool_version(["ccache", "--version"])) if self.ccache_store else ""
        self.fragments = fragments_text(source, profile)
        self.cc_version = compiler_version()
        if not self.cc_version:
            raise InfraError(f"{CROSS_COMPILE}gcc not found: run `make setup`", stage="kernel-build")
        self.config_key = cache.key_of(
            source=source.identity, profile=profile.fingerprint(), fragments=self.fragments,
            cc=self.cc_version, format=KBUILD_FORMAT, ccache=self.use_ccache,
        )
        self.work_base = cache.cache_root() / "work"
        # untrusted builds never share a worktree with trusted ones: what one leaves in its
        # build directory stays with the builds of its ccache (a grading batch's own)
        self.worktree_tag = sandboxed_worktree_tag(self.ccache_dir) if sandboxed else ""
        self.work = self.work_base / self.config_key  # set per role in build()

    # -- make --------------------------------------------------------------------------------
    def make_argv(self, *targets: str, jobs: Optional[int] = None) -> List[str]:
        cc = f"ccache {CROSS_COMPILE}gcc" if self.use_ccache else f"{CROSS_COMPILE}gcc"
        argv = ["make", "-C", str(self.work / "src"), f"O={self.work / 'build'}", f"ARCH={ARCH}",
                f"CROSS_COMPILE={CROSS_COMPILE}", f"CC={cc}"]
        argv += [f"{k}={v}" for k, v in self.profile.make_vars]
        if jobs:
            argv.append(f"-j{jobs}")
        return argv + list(targets)

    def confined(self, argv: List[str], env: Optional[Dict[str, str]] = None) -> List[str]:
        """``argv`` as run: under the sandbox (harness/build/sandbox.py: no network, an
        unprivileged uid, writes only to this worktree's build directory and its private
        ccache, the shared ccache read-only, limits) when the builder is sandboxed, with
        ``env`` (default make_env()) as its whole environment.  The worktree's ``src``
        stays read-only: its files are hard links to the pristine tree, so a write there
        would reach every later build."""
        if not self.sandboxed:
            return argv
        from . import sandbox

        readable = [CPP_KEY, self.work / "src", self.work / "all.config"]
        if self.ccache_store is not None:
            self.ccache_store.mkdir(parents=True, exist_ok=True)
            readable.append(self.ccache_store)
        # ccache hashes the locale variables: the harness's own, so trusted objects hit
        locale = {k: os.environ[k] for k in ("LANG", "LC_CTYPE", "LC_MESSAGES") if k in os.environ}
        return sandbox.confine(argv, writable=[self.work / "build", self.ccache_dir], readable=readable,
                               env={**locale, **(self.make_env() if env is None else env)})

    def make_env(self) -> Dict[str, str]:
        env = {"KBUILD_BUILD_USER": "harness", "KBUILD_BUILD_HOST": "harness",
               "KBUILD_BUILD_TIMESTAMP": "1970-01-01", "KBUILD_BUILD_VERSION": "1", "LC_ALL": "C"}
        if self.use_ccache:
            env.update(ccache_env(self.ccache_dir, base=cache.cache_root()))
            if self.ccache_store is not None:
                env[self.ccache_remote] = f"file:{self.ccache_store}|read-only"
        return env

    # -- worktree ----------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.work / "state.json"

    def _read_state(self) -> Optional[dict]:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, state: dict) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self._state_path())

    def _fresh_worktree(self, log: Path) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        if self.sandboxed and self._seed(log):
            return
        self.progress("preparing a worktree (hard-linked copy of the pristine tree)")
        procs.run(["cp", "-al", self.source.root, self.work / "src"], stage="kernel-build", log=log,
                  error=InfraError, what="cp -al")
        (self.work / "build").mkdir()
        self._write_state({"patch": None, "files": [], "created": []})

    def _seed(self, log: Path) -> bool:
        """Start a sandboxed worktree from the trusted one of its role, when there is one
        (module docstring): ``src`` hard-linked (the harness replaces files, never writes
        through a link), ``build`` copied, its state copied so that _checkout undoes the
        trusted patch; the build directory's absolute paths renamed so make sees its own
        commands.  False when there is nothing to seed from."""
        trusted = self.work_base / self.work.name.removesuffix(self.worktree_tag)
        if not (trusted / "state.json").exists():
            return False
        with cache.locked(str(trusted) + ".lock"):
            try:
                state = json.loads((trusted / "state.json").read_text())
            except (OSError, ValueError):
                return False
            if state.get("dirty") or not (trusted / "src").is_dir() or not (trusted / "build" / ".config").exists():
                return False
            self.progress(f"preparing a worktree from the trusted {trusted.name} (sources linked, build copied)")
            for argv in (["cp", "-al", trusted / "src", self.work / "src"],
                         ["cp", "-a", "--reflink=auto", trusted / "build", self.work / "build"]):
                procs.run(argv, stage="kernel-build", log=log, error=InfraError, what=" ".join(map(str, argv[:-2])))
        _repath(self.work / "build", f"{trusted}/", f"{self.work}/")
        self._write_state(state)
        return True

    def _restore(self, state: dict) -> None:
        """Undo the previously applied patch: pristine content as new files."""
        src, pristine = self.work / "src", self.source.root
        for rel in state.get("created", []):
            p = src / rel
            if p.exists() or p.is_symlink():
                p.unlink()
        for rel in state.get("files", []):
            if rel in state.get("created", []):
                continue
            orig, p = pristine / rel, src / rel
            if p.exists() or p.is_symlink():
                p.unlink()
            if orig.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(orig, p)  # new inode, new mtime: make rebuilds dependents
                shutil.copymode(orig, p)

    def _prune_interrupted_make(self) -> None:
        """A make killed mid-way (Ctrl-C and timeouts kill its process group with SIGKILL;
        a power cut) can leave a target half written and newer than its inputs, which the
        next make takes as up to date (seen: a truncated include/generated/vdso-offsets.h,
        then "'vdso_offset_sigtramp' undeclared" in every later build of the worktree).
        The make in flight is recorded in state.json; every file of build/ it may have been
        writing (modified since it started) is deleted, so the next make writes it again."""
        state = self._read_state()
        started = state.get("make_started_ns") if state else None
        if started is None:
            return
        cutoff = started - MTIME_SLACK_NS
        removed = 0
        for parent, _dirs, files in os.walk(self.work / "build"):
            for name in files:
                p = os.path.join(parent, name)
                try:
                    if os.lstat(p).st_mtime_ns >= cutoff:
                        os.unlink(p)
                        removed += 1
                except FileNotFoundError:
                    pass
        if removed:
            self.progress(f"the last make in {self.work.name} did not finish: removed the {removed} "
                          "files it was writing (make writes them again)")
        self._write_state({k: v for k, v in state.items() if k != "make_started_ns"})

    def _make_in_flight(self, flying: bool) -> None:
        state = self._read_state() or {}
        state.pop("make_started_ns", None)
        self._write_state({**state, "make_started_ns": time.time_ns()} if flying else state)

    def _checkout(self, patch: Optional[Patch], log: Path) -> str:
        state = self._read_state()
        if state is None or state.get("dirty") or not (self.work / "src").is_dir():
            # missing, or a previous build was killed between restore and apply: start clean
            self._fresh_worktree(log)
            state = self._read_state()
        want = patch.sha256 if patch else None
        if state.get("patch") == want and not state.get("dirty"):
            return "unchanged"
        self._write_state({**state, "dirty": True})  # a kill from here on means: rebuild worktree
        self._restore(state)
        mode = "none"
        if patch is not None:
            self.progress(f"applying {patch.name}")
            mode = patch.apply(self.work / "src", log=log)
            if mode == "fuzz":
                self.progress(f"warning: {patch.name} applied only with fuzz (see {log})")
        self._write_state({"patch": want, "files": patch.files if patch else [],
                           "created": patch.created if patch else [], "dirty": False})
        return mode

    def _configure(self, log: Path) -> None:
        build = self.work / "build"
        allconfig = self.work / "all.config"
        allconfig.write_text(self.fragments)
        allconfig.chmod(0o644)  # read by the sandbox's uid
        config = build / ".config"
        old = config.read_bytes() if config.exists() else None
        old_stat = config.stat() if config.exists() else None
        try:
            procs.run(self.confined(self.make_argv("allnoconfig")) + [f"KCONFIG_ALLCONFIG={allconfig}"], stage="kernel-config",
                      log=log, env=self.make_env(), error=BuildError, what="make allnoconfig")
        except BuildError as e:
            # the harness's config step on the tree: a Kconfig error names its file (a patch that
            # breaks Kconfig is the patch's), anything else is the harness's or the machine's
            found = buildlog.first_error(log.read_text(errors="replace"))
            if found and found.tool == buildlog.KCONFIG and not found.resource:
                e.message = f"make allnoconfig fails: {found.headline()}"
                e.tail = found.context
            else:
                e.kind = INFRA
                if found:
                    e.message += f": {found.headline()}"
            raise
        if old is not None and config.read_bytes() == old:
            os.utime(config, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))  # no spurious rebuild
        missing = missing_symbols(our_requests(self.profile), config.read_text())
        if missing:
            raise BuildError(
                "requested kernel config symbols did not reach the final .config "
                f"(a dependency is missing or the symbol does not exist in {self.source.version_str}): "
                + ", ".join(missing),
                stage="kernel-config", log=log, kind="infra",
                reproduce=self.make_argv("allnoconfig") + [f"KCONFIG_ALLCONFIG={allconfig}"],
            )

    def _explain_failure(self, e: HarnessError, label: str, role: str, log: Path) -> None:
        """Name the first error of a failed ``make Image``: file, tool, message, and the log
        lines around it.  Parallel jobs interleave their output, so a failed object is
        compiled once more alone (-j1) and its clean output is read first.  Running out of
        disk or memory is the machine's failure, not the patch's."""
        e.stage = f"kernel-build ({role})"
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""
        if e.tail and e.tail not in text:  # the log could not be written: the rest was kept in memory
            text += "\n" + e.tail
        src = self.work / "src"
        exists = lambda rel: (src / rel).exists()  # noqa: E731
        # out-of-tree builds name sources by absolute path (6.1) or relative to the build
        # directory (../src/..., newer kbuild and make 4.4): say them as the tree does
        tree_relative = lambda t: _strip_prefixes(t, f"{src}/", os.path.relpath(src, self.work / "build") + "/")  # noqa: E731
        text = tree_relative(text)
        exhausted = buildlog.exhaustion(text) or buildlog.exhaustion(e.message)  # the log itself may be unwritable
        found = None
        if not exhausted:
            for obj in buildlog.failed_objects(text)[:1]:
                retry_log = log.with_name("retry-j1.log")
                try:
                    procs.run(self.confined(self.make_argv(obj, jobs=1)), stage=e.stage, log=retry_log,
                              env=self.make_env(), error=BuildError, what=f"make -j1 {obj}", timeout=600)
                except HarnessError as retry_error:
                    rtext = tree_relative(retry_log.read_text(errors="replace")) if retry_log.exists() else ""
                    # the retry's log sits where the build writes: a full disk may refuse it
                    exhausted = buildlog.exhaustion(rtext) or buildlog.exhaustion(retry_error.message)
                    found = buildlog.first_error(rtext, exists)
                    if found:
                        e.reproduce = procs.reproducer(self.make_argv(obj, jobs=1), env=self.make_env())
                        with open(log, "a") as f:  # the clean output, after the build's own
                            f.write(f"# --- the first failed object again, alone (-j1): {obj}\n{rtext}")
        found = found or buildlog.first_error(text, exists)
        lines = (text + "\n" + e.message).splitlines()  # the message: a refused log's words
        refused = [i for i, ln in enumerate(lines) if "Read-only file system" in ln or (
            not exhausted and "Permission denied" in ln)]  # the sandbox's uid owns only build/
        if refused and exhausted in (None, buildlog.READ_ONLY) and self.sandboxed and _writable(self.work / "build"):
            # the build directory takes writes: the refused place was one the sandbox
            # keeps read-only (the sources, the system), where only the patch's make writes
            at = refused[0]
            e.kind = SUBJECT
            e.message = (f"{label} does not build: its make writes outside the build directory, which "
                         f"the sandbox keeps read-only (the kernel is built out of tree, O=build): "
                         f"{lines[at].strip()}")
            e.tail = "\n".join(lines[max(0, at - buildlog.CONTEXT_BEFORE):at + buildlog.CONTEXT_AFTER])
            return
        if not exhausted and (found is None or found.tool == buildlog.MAKE):
            # no tool named an error: a tool that died on a full disk without a word (seen:
            # an object failing with no message, its -j1 retry refused its own log)
            free = resources.free_mb(self.work)
            if free < resources.BUILD_DISK_FULL_MB:
                exhausted = f"no space left on device: {free} MB free where the build writes"
        if exhausted:
            e.kind = INFRA
            e.message = (f"{label}: the machine ran out of resources ({exhausted}) while building; "
                         f"not the patch's fault: free space/memory (cache: {cache.cache_root()}) and run again")
            if found:
                e.message += f"; the tool said: {found.headline()}"
        elif found:
            e.message = f"{label} does not build: {found.headline()}"
            if found.others:
                e.message += f" (and {len(found.others)} more error(s) after it)"
        else:
            e.message = f"{label} does not build: {e.message}"
        if found:
            e.tail = found.context

    # -- public ------------------------------------------------------------------------------
    def artefact_key(self, patch: Optional[Patch]) -> str:
        return cache.key_of(config=self.config_key, patch=patch.sha256 if patch else "none")

    def build(self, role: str, patch: Optional[Patch], log_dir: Path) -> KernelBuild:
        key = self.artefact_key(patch)
        entry = cache.Entry("kernels", key)
        # one worktree per role: host builds only ever switch between host patches (and
        # guest builds between guest patches), so a patch change recompiles only what it touches
        self.work = self.work_base / f"{self.config_key}-{role}{self.worktree_tag}"
        if self.ccache_store is not None:
            # one private ccache per worktree: its builds run one at a time, as one uid
            self.ccache_dir = Path(self.sandbox_ccache) / role
        label = f"{role} kernel ({patch.name if patch else 'unpatched'})"
        log_dir.mkdir(parents=True, exist_ok=True)
        run_log = log_dir / f"kbuild-{role}.log"
        cached = entry.ready()
        if cached:
            damage = _damaged(entry.path)
            if damage:  # a cache entry changed after it was made (disk error, a tool, a person)
                self.progress(f"warning: cached {label} is damaged ({damage}): building it again")
                with cache.locked(entry.base / f"{key}.lock"):
                    shutil.rmtree(entry.path, ignore_errors=True)
                cached = False
        if cached:
            self.progress(f"{label}: cached ({entry.path.name})")
        else:
            resources.require_disk(self.work_base, resources.KERNEL_BUILD_MB, f"building the {label}")
            self.progress(f"building {label} for Linux {self.source.version_str} "
                          f"({cold_estimate()}; after a small patch change: seconds)")

        def do_build(tmp: Path) -> None:
            log = tmp / "build.log"
            meta = {
                "role": role, "source": self.source.origin, "identity": self.source.identity,
                "version": self.source.version_str, "profile": self.profile.name,
                "patch": patch.name if patch else None, "patch_sha256": patch.sha256 if patch else None,
                "compiler": self.cc_version, "ccache": self.use_ccache, "jobs": self.jobs,
                "worktree": str(self.work),
                "reproduce": " ".join(shlex.quote(a) for a in self.make_argv("Image", jobs=self.jobs)),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # before the build: survives a kill
            t0 = time.monotonic()
            with cache.locked(str(self.work) + ".lock"):
                self.work.parent.mkdir(parents=True, exist_ok=True)
                for note in self.profile.notes:
                    with open(log, "a") as f:
                        f.write(f"# profile {self.profile.name}: {note}\n")
                if self.ccache_store is not None:  # what trusted builds compiled meanwhile
                    share_ccache(store=self.ccache_store)
                self._prune_interrupted_make()
                meta["patch_mode"] = self._checkout(patch, log)
                self._configure(log)
                counter = {"n": 0, "warnings": 0, "t": time.monotonic()}

                def on_line(line: str) -> None:
                    if line.startswith("  CC"):
                        counter["n"] += 1
                    elif "warning: " in line:
                        counter["warnings"] += 1
                    if time.monotonic() - counter["t"] > 15:
                        counter["t"] = time.monotonic()
                        self.progress(f"  ... {role} kernel: {counter['n']} files compiled, "
                                      f"{time.monotonic() - t0:.0f} s")

                env = self.make_env()
                stats = self.work / "build" / "ccache-stats.log"  # writable in the sandbox
                if self.use_ccache:
                    stats.unlink(missing_ok=True)
                    env["CCACHE_STATSLOG"] = str(stats)
                cpu0 = _children_cpu()
                # until it succeeds: a make killed or failed, what it wrote goes (ccache has it)
                self._make_in_flight(True)
                try:
                    procs.run(self.confined(self.make_argv("Image", jobs=self.jobs), env), stage="kernel-build", log=log,
                              env=env, error=BuildError, what=f"make Image ({label})", on_line=on_line)
                except HarnessError as e:
                    self._explain_failure(e, label, role, log)
                    raise
                self._make_in_flight(False)
                build = self.work / "build"
                shutil.copyfile(build / "arch" / ARCH / "boot" / "Image", tmp / "Image")
                shutil.copyfile(build / ".config", tmp / "config")
                if (build / "System.map").exists():
                    shutil.copyfile(build / "System.map", tmp / "System.map")
            meta["image_sha256"] = cache.file_digest(tmp / "Image")
            meta["image_bytes"] = (tmp / "Image").stat().st_size
            meta["seconds"] = round(time.monotonic() - t0, 1)
            # make and everything it ran; process-wide, so exact when one build runs at a time
            # (run, bench), while grading's -j 2 may add a concurrent build of the other role
            meta["cpu_seconds"] = round(_children_cpu() - cpu0, 1)
            meta["compiled_files"] = counter["n"]  # kbuild's CC lines: compiled or taken from ccache
            meta["ccache"] = ccache_counts(stats) if self.use_ccache else None
            meta["compiler_warnings"] = counter["warnings"]  # old trees with today's gcc: many, none fatal
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            c = meta["ccache"]
            files = f"{counter['n']} files through make; ccache compiled {c['compiled']}, served {c['cached']}" \
                if c else f"{counter['n']} files compiled"
            self.progress(f"{label}: built in {meta['seconds']} s ({files}, "
                          f"{counter['warnings']} compiler warnings; see build.log)")

        try:
            path = entry.ensure(do_build)
        except HarnessError as e:
            failed_log = entry.base / f"{key}.failed" / "build.log"
            if failed_log.exists():
                shutil.copyfile(failed_log, run_log)
                e.log = run_log
            raise
        shutil.copyfile(path / "build.log", run_log) if (path / "build.log").exists() else None
        meta = json.loads((path / "meta.json").read_text())
        return KernelBuild(role=role, image=path / "Image", config=path / "config", log=path / "build.log",
                           key=key, meta=meta, cached=cached)
