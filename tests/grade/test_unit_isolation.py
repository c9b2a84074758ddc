"""Students' kernel builds cannot write into what trusted builds reuse: a sandboxed
build gets the batch's own ccache (seeded from the shared one), the shared one is not
even visible inside the sandbox; unsandboxed builds keep the shared ccache."""
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


def test_sandboxed_build_uses_the_batch_ccache(tmp_path, monkeypatch):
    mine = tmp_path / "batch" / ".ccache"
    b = builder(tmp_path, monkeypatch, sandboxed=True, sandbox_ccache=mine)
    shared = cache.cache_root() / "ccache"
    assert b.make_env()["CCACHE_DIR"] == str(mine)
    argv = b.confined(["make"])
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert str(mine) in binds and str(shared) not in binds
    trusted = builder(tmp_path, monkeypatch, sandbox_ccache=mine)     # not sandboxed: the shared one
    assert trusted.make_env()["CCACHE_DIR"] == str(shared)
    # the same config key: where ccache lives does not change what a kernel is
    assert b.config_key == trusted.config_key


def test_batch_ccache_is_a_seeded_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    shared = cache.cache_root() / "ccache"
    (shared / "a" / "b").mkdir(parents=True)
    (shared / "a" / "b" / "obj").write_bytes(b"trusted")
    (shared / "tmp").mkdir()
    d = batch.batch_ccache(tmp_path / "out", progress=lambda m: None)
    assert (d / "a" / "b" / "obj").read_bytes() == b"trusted" and not (d / "tmp").exists()
    (d / "a" / "b" / "obj").write_bytes(b"poisoned")           # a student's build writes here ...
    assert (shared / "a" / "b" / "obj").read_bytes() == b"trusted"   # ... not there
    assert batch.batch_ccache(tmp_path / "out", progress=lambda m: None) == d   # once per batch


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
    assert argv[argv.index("--cap-drop") + 1] == "ALL"


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
    assert "its make writes outside the build directory" in e.message and "Read-only file system" in e.message
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
