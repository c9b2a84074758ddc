"""Students' kernel builds cannot write into what trusted builds reuse: a sandboxed
build writes a private ccache (its batch's) and reads the shared one as read-only ccache
remote storage; the trusted local cache is not even visible inside the sandbox;
unsandboxed builds keep the shared ccache."""
import subprocess

import pytest

from harness.core import cache
from harness.build import kbuild
from harness.grade import batch
from harness.build.profiles import all_profiles
from harness.build.sources import SourceTree


def builder(tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "fake-gcc 1.0")
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: "/usr/bin/" + name)
    root = tmp_path / "linux"
    root.mkdir(exist_ok=True)
    src = SourceTree(origin="fake", identity="fake:1", root=root, version=(6, 1, 0))
    return kbuild.Builder(src, all_profiles()["6.1"], jobs=1, use_ccache=True, progress=lambda m: None, **kw)


def test_sandboxed_build_writes_a_private_ccache_and_reads_the_shared_one(tmp_path, monkeypatch):
    mine = tmp_path / "batch" / ".ccache"
    b = builder(tmp_path, monkeypatch, sandboxed=True, sandbox_ccache=mine)
    local, store = cache.cache_root() / "ccache", kbuild.shared_store()
    env = b.make_env()
    assert env["CCACHE_DIR"] == str(mine)
    assert env[b.ccache_remote] == f"file:{store}|read-only"
    argv = b.confined(["make"])
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    ro = [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert str(mine) in binds and str(store) in ro and str(store) not in binds
    assert str(local) not in binds + ro     # the trusted cache itself is not even visible
    # the environment inside is the build's own: --clearenv, then the ccache settings
    assert "--clearenv" in argv and ["--setenv", "CCACHE_DIR", str(mine)] == argv[argv.index("CCACHE_DIR") - 1:][:3]
    trusted = builder(tmp_path, monkeypatch, sandbox_ccache=mine)     # not sandboxed: the shared one
    assert trusted.make_env()["CCACHE_DIR"] == str(local) and b.ccache_remote not in trusted.make_env()
    # the same config key: where ccache lives does not change what a kernel is
    assert b.config_key == trusted.config_key


def test_ccache_storage_option_follows_the_version():
    assert kbuild.storage_option("ccache version 4.7.5") == "CCACHE_SECONDARY_STORAGE"
    assert kbuild.storage_option("ccache version 4.11.2") == "CCACHE_REMOTE_STORAGE"


def test_a_sandboxed_compile_hits_the_shared_ccache_and_cannot_write_it(tmp_path, monkeypatch, needs_sandbox):
    """Real ccache and gcc: a trusted compile fills the local cache; share_ccache links it
    into the store; a sandboxed compile with a private ccache is served from the store
    (remote hit), and its attempt to write the store is refused."""
    import shutil
    import pytest
    from harness.core import procs
    from harness.build import sandbox
    if not shutil.which("gcc") or not shutil.which("ccache"):
        pytest.skip("gcc and ccache needed")
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    srcdir = tmp_path / "src"
    srcdir.mkdir()
    (srcdir / "a.c").write_text("int answer(void) { return 42; }\n")
    local = cache.cache_root() / "ccache"
    subprocess.run(["ccache", "gcc", "-c", str(srcdir / "a.c"), "-o", str(tmp_path / "trusted.o")],
                   env={"PATH": "/usr/bin:/bin", "CCACHE_DIR": str(local)}, check=True)
    assert kbuild.share_ccache() == 2    # a result and a manifest
    store, private, out = kbuild.shared_store(), tmp_path / "private", tmp_path / "out"
    option = kbuild.storage_option(procs.tool_version(["ccache", "--version"]))
    env = {"CCACHE_DIR": str(private), option: f"file:{store}|read-only", "CCACHE_STATSLOG": str(out / "stats")}
    script = (f"ccache gcc -c {srcdir}/a.c -o {out}/a.o && echo compiled; "
              f"touch {store}/poison || echo store refused; ls -d {local} || echo local invisible")
    r = subprocess.run(sandbox.confine(["sh", "-c", script], writable=[out, private], readable=[srcdir, store],
                                       env=env), capture_output=True, text=True)
    assert "compiled" in r.stdout and "store refused" in r.stdout and "local invisible" in r.stdout, r
    assert (out / "a.o").read_bytes() == (tmp_path / "trusted.o").read_bytes()
    assert "remote_storage_hit" in (out / "stats").read_text() or "secondary_storage_hit" in (out / "stats").read_text()
    assert not (store / "poison").exists()
    # an entry evicted from the local cache leaves the store
    for f in local.glob("?/?/*[RM]"):
        f.unlink()
    assert kbuild.share_ccache() == 0 and not list(store.glob("??/*"))


def test_grade_cli_has_no_patch_options():
    r = subprocess.run([".venv/bin/kvm-harness", "grade", "x.zip", "--out", "o", "--kvm-patch", "k.patch"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments: --kvm-patch" in r.stderr


def test_sandboxed_builds_get_their_own_worktrees(tmp_path, monkeypatch):
    """What a student's make leaves in its build directory never reaches a trusted build,
    nor another batch's: the worktree is named by the builder's ccache."""
    trusted = builder(tmp_path, monkeypatch)
    batch_a = builder(tmp_path, monkeypatch, sandboxed=True, sandbox_ccache=tmp_path / "a" / ".ccache")
    batch_b = builder(tmp_path, monkeypatch, sandboxed=True, sandbox_ccache=tmp_path / "b" / ".ccache")
    tags = {b.worktree_tag for b in (trusted, batch_a, batch_b)}
    assert trusted.worktree_tag == "" and len(tags) == 3
    argv = batch_a.confined(["make"])
    assert "--bounding-set=-all" in argv and "--no-new-privs" in argv


PLANTING_MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 99
EXTRAVERSION =
allnoconfig:
\t@mkdir -p $(O) && cp $(KCONFIG_ALLCONFIG) $(O)/.config
Image:
\t@mkdir -p $(O)/arch/arm64/boot && cat core.c > $(O)/arch/arm64/boot/Image
\t@if grep -q PLANT core.c; then echo planted >> $(CURDIR)/shared.c; fi
"""


@pytest.mark.usefixtures("needs_sandbox")
def test_a_sandboxed_make_cannot_write_the_pristine_sources_through_the_worktree(tmp_path, monkeypatch):
    """A worktree's sources are hard links to the pristine tree: a patch whose make writes
    into them would change every later build.  Under the sandbox the write fails, the
    patch is blamed, and the pristine file is untouched (real bubblewrap, real make)."""
    from harness.core.errors import BuildError
    from harness.build.patches import Patch
    import pytest

    builder = fake_kernel(tmp_path, monkeypatch, PLANTING_MAKEFILE, {"core.c": "core v1\n", "shared.c": "shared v1\n"})
    root = tmp_path / "pristine"
    plant = Patch.parse(b"diff --git a/core.c b/core.c\n--- a/core.c\n+++ b/core.c\n@@ -1 +1 @@\n"
                        b"-core v1\n+PLANT\n", "plant.patch")
    b = builder(sandboxed=True, sandbox_ccache=tmp_path / "batch" / ".ccache")
    with pytest.raises(BuildError) as ei:
        b.build("host", plant, tmp_path / "logs")
    e = ei.value
    assert (root / "shared.c").read_text() == "shared v1\n"
    assert e.kind == "subject" and e.stage == "kernel-build (host)"
    # the sandbox's uid does not own the sources: the write meets their permissions first
    assert "its make writes outside the build directory" in e.message and "Permission denied" in e.message
    # the same worktree builds the next patch cleanly
    assert b.build("host", None, tmp_path / "logs").image.read_text() == "core v1\n"


def test_a_finished_batch_removes_its_worktrees_only(tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    mine, other = tmp_path / "a" / ".ccache", tmp_path / "b" / ".ccache"
    work = cache.cache_root() / "work"
    kept = [work / "k-host", work / f"k-host{kbuild.sandboxed_worktree_tag(other)}"]
    gone = [work / f"k-{role}{kbuild.sandboxed_worktree_tag(mine)}" for role in ("host", "guest")]
    for wt in kept + gone:
        (wt / "build").mkdir(parents=True)
    assert sorted(kbuild.remove_sandboxed_worktrees(mine)) == sorted(gone)
    assert [wt.exists() for wt in kept + gone] == [True, True, False, False]


@pytest.mark.usefixtures("needs_sandbox")
def test_the_deeper_of_two_nested_binds_decides_and_no_capability_is_kept(tmp_path):
    from harness.build import sandbox

    ro, rw = tmp_path / "ro", tmp_path / "ro" / "rw"
    rw.mkdir(parents=True)
    script = f"touch {rw}/yes; touch {ro}/no; grep CapEff /proc/self/status"
    r = subprocess.run(sandbox.confine(["sh", "-c", script], writable=[rw], readable=[ro]),
                       capture_output=True, text=True)
    assert (rw / "yes").exists() and not (ro / "no").exists()
    assert "Read-only file system" in r.stderr
    assert r.stdout.split() == ["CapEff:", "0000000000000000"]


def test_preflight_says_which_limits_hold(tmp_path, monkeypatch, needs_sandbox):
    from harness.core import config
    from harness.build import sandbox
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    done = batch.preflight(config.load(config.CONFIGS / "grade.yaml"), tmp_path / "out", False, lambda m: None)
    assert sandbox.limits_mechanism() in done and any(d.startswith("limits: ") and "rlimits" in d for d in done)


PROBING_MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 99
EXTRAVERSION =
$(info PROBE shadow: $(shell cat /etc/shadow 2>&1))
$(info PROBE other: $(shell cat {other} 2>&1))
$(info PROBE kernels: $(shell ls {kernels} 2>&1))
$(info PROBE trusted-ccache: $(shell ls {local} 2>&1))
$(info PROBE store-write: $(shell touch {store}/poison 2>&1))
$(info PROBE uid: $(shell id -u))
$(info PROBE env: $(shell env | grep -c H18_HARNESS_SECRET))
allnoconfig:
\t@mkdir -p $(O) && cp $(KCONFIG_ALLCONFIG) $(O)/.config
Image:
\t@mkdir -p $(O)/arch/arm64/boot && cat core.c > $(O)/arch/arm64/boot/Image
"""


def test_a_make_that_looks_around_sees_nothing_of_the_machine(tmp_path, monkeypatch, needs_sandbox):
    """A sandboxed kernel build (real Builder, bubblewrap, make) whose Makefile probes the
    machine with $(shell): every probe is refused, visible in the build log."""
    from harness.build import profiles
    from harness.build.patches import Patch

    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("H18_HARNESS_SECRET", "leak")
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "fake-gcc 1.0")
    monkeypatch.setattr(kbuild, "COMMON_FRAGMENT", tmp_path / "common.config")
    monkeypatch.setattr(profiles, "COMMON_FRAGMENT", tmp_path / "common.config")
    (tmp_path / "common.config").write_text("CONFIG_A=y\n")
    other = tmp_path / "out" / "submissions" / "g02" / "work" / "kvm.patch"
    other.parent.mkdir(parents=True)
    other.write_text("g02's patch\n")
    kernels = cache.cache_root() / "kernels"
    (kernels / "k1").mkdir(parents=True)
    local = cache.cache_root() / "ccache"
    local.mkdir()
    root = tmp_path / "pristine"
    root.mkdir()
    (root / "Makefile").write_text(PROBING_MAKEFILE.format(other=other, kernels=kernels, local=local,
                                                           store=kbuild.shared_store()))
    (root / "core.c").write_text("core v1\n")
    src = SourceTree(origin="fake", identity="fake:1", root=root, version=(6, 1, 99))
    profile = profiles.Profile(name="fake", directory=tmp_path, matches=("6.1",), syscall_nr=451,
                               hvc_func_id=0xC6000040)
    b = kbuild.Builder(src, profile, jobs=1, use_ccache=True, progress=lambda m: None, sandboxed=True,
                       sandbox_ccache=tmp_path / "out" / ".ccache")
    kb = b.build("host", Patch.parse(b"diff --git a/core.c b/core.c\n--- a/core.c\n+++ b/core.c\n@@ -1 +1 @@\n"
                                     b"-core v1\n+core v2\n", "p.patch"), tmp_path / "logs")
    said = dict(ln[len("PROBE "):].split(": ", 1) for ln in kb.log.read_text().splitlines()
                if ln.startswith("PROBE ") and ": " in ln)
    assert "No such file or directory" in said["shadow"]
    assert "No such file or directory" in said["other"] and "g02's patch" not in said["other"]
    assert "No such file or directory" in said["kernels"] and "No such file or directory" in said["trusted-ccache"]
    assert "Read-only file system" in said["store-write"] or "Permission denied" in said["store-write"]
    assert int(said["uid"]) >= 200000 and said["env"].strip() == "0"
    assert kb.image.read_text() == "core v2\n" and not (kbuild.shared_store() / "poison").exists()


# a fake kernel: its Image is core.c plus every object the build directory holds, so what
# one build leaves in build/ shows in the next Image built there; as kbuild does, it
# recompiles (``compiled``) when the command saved in a .cmd file, which names the sources
# by absolute path, is not the one it would run
OBJECTS_MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 99
EXTRAVERSION =
CMD := cmd_core.o := cc -I$(CURDIR)/include -c $(CURDIR)/core.c
allnoconfig:
\t@mkdir -p $(O) && cp $(KCONFIG_ALLCONFIG) $(O)/.config
Image:
\t@grep -qxF -- '$(CMD)' $(O)/.core.o.cmd || { echo compiled >> $(O)/history.o; echo '$(CMD)' > $(O)/.core.o.cmd; }
\t@if grep -q PLANT core.c; then echo poison > $(O)/planted.o; fi
\t@echo built >> $(O)/history.o
\t@mkdir -p $(O)/arch/arm64/boot && cat core.c $(O)/*.o > $(O)/arch/arm64/boot/Image
"""


def fake_kernel(tmp_path, monkeypatch, makefile=None, files=None):
    """A Builder factory over a tiny fake tree (``makefile`` and ``files``: name -> text)."""
    from harness.build import profiles

    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "fake-gcc 1.0")
    monkeypatch.setattr(kbuild, "COMMON_FRAGMENT", tmp_path / "common.config")
    monkeypatch.setattr(profiles, "COMMON_FRAGMENT", tmp_path / "common.config")
    (tmp_path / "common.config").write_text("CONFIG_A=y\n")
    root = tmp_path / "pristine"
    root.mkdir()
    (root / "Makefile").write_text(makefile or OBJECTS_MAKEFILE)
    for name, text in (files or {"core.c": "core v1\n", "other.c": "other v1\n"}).items():
        (root / name).write_text(text)
    src = SourceTree(origin="fake", identity="fake:1", root=root, version=(6, 1, 99))
    profile = profiles.Profile(name="fake", directory=tmp_path, matches=("6.1",), syscall_nr=451,
                               hvc_func_id=0xC6000040)
    return lambda **kw: kbuild.Builder(src, profile, jobs=1, use_ccache=False, progress=lambda m: None, **kw)


def edit(name: str, old: str, new: str, patch_name: str):
    from harness.build.patches import Patch
    return Patch.parse(f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n-{old}\n+{new}\n"
                       .encode(), patch_name)


def submission_builder(make, tmp_path, sub_id):
    from harness.core import config
    from harness.grade.grader import own_ccache

    cfg = config.override(config.load(config.CONFIGS / "grade.yaml"),
                          [f'kernel.sandbox_ccache="{tmp_path / "out" / ".ccache"}"'])
    own = own_ccache(cfg, sub_id)
    return make(sandboxed=True, sandbox_ccache=own), own


@pytest.mark.usefixtures("needs_sandbox")
def test_submissions_of_a_batch_build_in_worktrees_and_ccaches_of_their_own(tmp_path, monkeypatch):
    """Real bubblewrap and make: submission A's make plants an object in its build
    directory; submission B of the same batch, built after it, does not link it, and
    grading A removes its worktree and private ccache."""
    make = fake_kernel(tmp_path, monkeypatch)
    a, own_a = submission_builder(make, tmp_path, "g01")
    b, own_b = submission_builder(make, tmp_path, "g02")
    ka = a.build("host", edit("core.c", "core v1", "PLANT", "a.patch"), tmp_path / "logs-a")
    assert "poison" in ka.image.read_text()
    kb = b.build("host", edit("core.c", "core v1", "core v2", "b.patch"), tmp_path / "logs-b")
    assert kb.image.read_text() == "core v2\ncompiled\nbuilt\n"        # nothing of A's build directory
    assert a.work != b.work and not (b.work / "build" / "planted.o").exists()
    assert a.ccache_dir != b.ccache_dir and a.ccache_dir.is_relative_to(own_a) and b.ccache_dir.is_relative_to(own_b)
    assert kbuild.remove_sandboxed_builds(own_a) == [a.work]
    assert not a.work.exists() and not own_a.exists() and b.work.exists() and own_b.exists()


@pytest.mark.usefixtures("needs_sandbox")
def test_a_submission_worktree_starts_from_the_trusted_one_without_sharing_what_it_writes(tmp_path, monkeypatch):
    """A new sandboxed worktree is seeded from the trusted worktree of its role: its
    build directory a copy (the trusted one keeps its inodes and content), its sources
    links that the harness's restore and patch replace rather than write through, its
    commands naming its own paths."""
    make = fake_kernel(tmp_path, monkeypatch)
    trusted = make()
    trusted.build("host", edit("other.c", "other v1", "other ref", "ref.patch"), tmp_path / "logs-t")
    t_build, t_src = trusted.work / "build", trusted.work / "src"
    t_history = (t_build / "history.o").stat()
    said = []
    sub, _ = submission_builder(make, tmp_path, "g01")
    sub.progress = said.append
    k = sub.build("host", edit("core.c", "core v1", "PLANT", "a.patch"), tmp_path / "logs-a")
    assert any("from the trusted" in m for m in said), said
    # the trusted build directory came along (history.o: built once before), its commands
    # renamed to this worktree's paths (nothing recompiled for them) ...
    assert k.image.read_text() == "PLANT\ncompiled\nbuilt\nbuilt\npoison\n"
    s_build, s_src = sub.work / "build", sub.work / "src"
    # ... as a copy: the trusted one is untouched
    assert (s_build / "history.o").stat().st_ino != t_history.st_ino
    assert (t_build / "history.o").read_text() == "compiled\nbuilt\n" and not (t_build / "planted.o").exists()
    # the sources: unpatched files still links, the patched and the restored ones private
    assert (s_src / "Makefile").stat().st_ino == (t_src / "Makefile").stat().st_ino
    assert (t_src / "core.c").read_text() == "core v1\n" and (tmp_path / "pristine" / "core.c").read_text() == "core v1\n"
    assert (s_src / "other.c").read_text() == "other v1\n" and (t_src / "other.c").read_text() == "other ref\n"
    cmd = (s_build / ".core.o.cmd").read_text()
    assert str(s_src) in cmd and str(t_src) not in cmd
    assert str(t_src) in (t_build / ".core.o.cmd").read_text()


def test_a_worktree_is_seeded_only_from_a_clean_trusted_one(tmp_path, monkeypatch):
    make = fake_kernel(tmp_path, monkeypatch)
    sub, _ = submission_builder(make, tmp_path, "g01")
    sub.work = sub.work_base / f"{sub.config_key}-host{sub.worktree_tag}"
    sub.work.mkdir(parents=True)
    assert not sub._seed(tmp_path / "log")                      # no trusted worktree
    trusted = sub.work_base / f"{sub.config_key}-host"
    (trusted / "src").mkdir(parents=True)
    (trusted / "build").mkdir()
    (trusted / "build" / ".config").write_text("CONFIG_A=y\n")
    (trusted / "state.json").write_text('{"patch": null, "files": [], "created": [], "dirty": true}')
    assert not sub._seed(tmp_path / "log")                      # killed mid-checkout


@pytest.mark.parametrize("fuzzy", [False, True])
def test_applying_a_patch_never_writes_through_a_hard_link(tmp_path, fuzzy):
    """A seeded worktree's sources are links to the trusted worktree's and the pristine
    tree's files: git apply (exact) and GNU patch (fuzz) give the patched file a new inode."""
    from harness.build.patches import Patch

    trusted, copy = tmp_path / "trusted", tmp_path / "copy"
    trusted.mkdir()
    (trusted / "f.c").write_text("".join(f"l{i}\n" for i in range(1, 8)))
    subprocess.run(["cp", "-al", trusted, copy], check=True)
    ctx = ("X2", "X6") if fuzzy else ("l2", "l6")
    p = Patch.parse(f"diff --git a/f.c b/f.c\n--- a/f.c\n+++ b/f.c\n@@ -2,5 +2,5 @@\n {ctx[0]}\n l3\n-l4\n+L4\n"
                    f" l5\n {ctx[1]}\n".encode(), "p.patch")
    assert p.apply(copy) == ("fuzz" if fuzzy else "exact")
    assert "L4" in (copy / "f.c").read_text() and "L4" not in (trusted / "f.c").read_text()
    assert (copy / "f.c").stat().st_ino != (trusted / "f.c").stat().st_ino
