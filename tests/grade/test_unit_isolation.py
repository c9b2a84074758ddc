"""Students' kernel builds cannot write into what trusted builds reuse: a sandboxed
build writes a private ccache (its batch's) and reads the shared one as read-only ccache
remote storage; the trusted local cache is not even visible inside the sandbox;
unsandboxed builds keep the shared ccache."""
import subprocess

import pytest

from harness import cache, kbuild
from harness.grade import batch
from harness.profiles import all_profiles
from harness.sources import SourceTree


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
    from harness import procs, sandbox
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
    from harness import profiles
    from harness.errors import BuildError
    from harness.patches import Patch
    import pytest

    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "fake-gcc 1.0")
    monkeypatch.setattr(kbuild, "COMMON_FRAGMENT", tmp_path / "common.config")
    monkeypatch.setattr(profiles, "COMMON_FRAGMENT", tmp_path / "common.config")
    (tmp_path / "common.config").write_text("CONFIG_A=y\n")
    root = tmp_path / "pristine"
    root.mkdir()
    (root / "Makefile").write_text(PLANTING_MAKEFILE)
    (root / "core.c").write_text("core v1\n")
    (root / "shared.c").write_text("shared v1\n")
    src = SourceTree(origin="fake", identity="fake:1", root=root, version=(6, 1, 99))
    profile = profiles.Profile(name="fake", directory=tmp_path, matches=("6.1",), syscall_nr=451,
                               hvc_func_id=0xC6000040)
    plant = Patch.parse(b"diff --git a/core.c b/core.c\n--- a/core.c\n+++ b/core.c\n@@ -1 +1 @@\n"
                        b"-core v1\n+PLANT\n", "plant.patch")
    b = kbuild.Builder(src, profile, jobs=1, use_ccache=False, progress=lambda m: None, sandboxed=True,
                       sandbox_ccache=tmp_path / "batch" / ".ccache")
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
    from harness import sandbox

    ro, rw = tmp_path / "ro", tmp_path / "ro" / "rw"
    rw.mkdir(parents=True)
    script = f"touch {rw}/yes; touch {ro}/no; grep CapEff /proc/self/status"
    r = subprocess.run(sandbox.confine(["sh", "-c", script], writable=[rw], readable=[ro]),
                       capture_output=True, text=True)
    assert (rw / "yes").exists() and not (ro / "no").exists()
    assert "Read-only file system" in r.stderr
    assert r.stdout.split() == ["CapEff:", "0000000000000000"]


def test_preflight_says_which_limits_hold(tmp_path, monkeypatch, needs_sandbox):
    from harness import config
    from harness import sandbox
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    done = batch.preflight(config.load(config.CONFIGS / "grade.yaml"), tmp_path / "out", False, lambda m: None)
    assert sandbox.limits_mechanism() in done and any(d.startswith("limits: rlimits") for d in done)


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
    from harness import profiles
    from harness.patches import Patch

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
