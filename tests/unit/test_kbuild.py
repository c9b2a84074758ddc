"""harness/build/kbuild.py: config-symbol checks and the cached, worktree-based Builder,
driven against a tiny fake kernel tree whose Makefile mimics kbuild's interface
(``make -C src O=build ARCH=... allnoconfig|Image``)."""
import json
import os
from pathlib import Path

import pytest

from harness.core import cache, hostarch
from harness.build import kbuild, profiles
from harness.core.errors import BuildError, InfraError, PatchError
from harness.build.patches import Patch
from harness.build.profiles import Profile
from harness.build.sources import SourceTree

# -- requested_symbols / missing_symbols ---------------------------------------------------


def test_requested_symbols_forms():
    text = """
# a comment
CONFIG_A=y
CONFIG_B=m
CONFIG_S="hello world"
CONFIG_N=42
# CONFIG_OFF is not set
  CONFIG_INDENTED=y
CONFIG_LATER=y
# CONFIG_LATER is not set
#CONFIG_NOT_A_REQUEST=y
"""
    assert kbuild.requested_symbols(text) == {
        "CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_S": '"hello world"', "CONFIG_N": "42",
        "CONFIG_OFF": "n", "CONFIG_INDENTED": "y", "CONFIG_LATER": "n",
    }


def test_missing_symbols():
    requested = {"CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_OFF": "n", "CONFIG_GONE": "n",
                 "CONFIG_S": '"x"', "CONFIG_ABSENT": "y", "CONFIG_WRONG": "y"}
    final = "\n".join([
        "CONFIG_A=y", "CONFIG_B=y", "# CONFIG_OFF is not set", 'CONFIG_S="x"', "# CONFIG_WRONG is not set",
    ])
    assert kbuild.missing_symbols(requested, final) == [
        "CONFIG_B=m (final: y)",
        "CONFIG_ABSENT=y (final: absent)",
        "CONFIG_WRONG=y (final: n)",
    ]
    assert kbuild.missing_symbols({}, final) == []
    assert kbuild.missing_symbols({"CONFIG_S": '"y"'}, final) == ['CONFIG_S="y" (final: "x")']


def test_repo_common_fragment_parses():
    syms = kbuild.requested_symbols(profiles.COMMON_FRAGMENT.read_text())
    assert syms.get("CONFIG_PRINTK") == "y" and len(syms) > 10
    # a final .config that lost one request (kconfig dropped a symbol whose dependency is
    # missing) is caught, naming exactly that symbol
    dropped = "CONFIG_PRINTK"
    final = "\n".join(f"{k}={v}" if v != "n" else f"# {k} is not set" for k, v in syms.items() if k != dropped)
    assert kbuild.missing_symbols(syms, final) == [f"{dropped}=y (final: absent)"]
    assert kbuild.missing_symbols(syms, final + f"\n{dropped}=y\n") == []


# -- the fake kernel tree ------------------------------------------------------------------

FAKE_MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 99
EXTRAVERSION =

# A stand-in for kbuild: every .c file is "compiled" to $(O)/obj/%.o (a copy, printing
# "  CC" like kbuild), and Image is the concatenation of the objects.  Errors name the
# source by its absolute path, as an out-of-tree (O=) kbuild does.
SRCS := $(sort $(wildcard *.c */*.c))
OBJS := $(patsubst %.c,$(O)/obj/%.o,$(SRCS))
IMAGE := $(O)/arch/$(ARCH)/boot/Image

.PHONY: allnoconfig Image FORCE

allnoconfig:
\t@test -n "$(O)" && test -n "$(KCONFIG_ALLCONFIG)" && test "$(ARCH)" = arm64 && mkdir -p $(O) && \\
\t  grep -v '^CONFIG_UNSUPPORTED' $(KCONFIG_ALLCONFIG) > $(O)/.config && echo "  CONF    $(O)/.config"

Image: $(IMAGE)

$(IMAGE): $(OBJS) FORCE
\t@mkdir -p $(dir $@) && echo link >> $(O)/link-count && \\
\t  if grep -l BREAK_THE_BUILD $(OBJS); then \\
\t    echo "$(CURDIR)/drivers/broken.c:1:1: error: the build is broken on purpose"; exit 1; fi && \\
\t  cat $(OBJS) > $@ && echo "  LD      $@"

$(O)/obj/%.o: %.c
\t@mkdir -p $(dir $@) && echo "  CC      $<" && ! grep -q DIE_WITHOUT_A_WORD $< && cp $< $@ && \\
\t  case $< in *blk.c) echo "$<:1:1: warning: old code, new compiler [-Wfake]";; esac
"""

PRISTINE = {
    "core.c": "core v1\n",
    "drivers/net.c": "net v1\n",
    "drivers/blk.c": "blk v1\n",
    "kvm.c": "kvm v1\n",
    "mm.c": "mm v1\n",
    "kernel/configs/tiny.config": "CONFIG_FROM_TREE=y\n",
}
# Image = objects in $(sort) order of the sources
PRISTINE_IMAGE = "".join(PRISTINE[f] for f in sorted(["core.c", "drivers/blk.c", "drivers/net.c",
                                                      "kvm.c", "mm.c"]))

FRAGMENT = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n"


def patch_text(path: str, old: str, new: str) -> bytes:
    if old is None:
        return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n" \
               f"@@ -0,0 +1 @@\n+{new}".encode()
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{old}+{new}".encode()


PATCH_A = Patch.parse(patch_text("kvm.c", "kvm v1\n", "kvm PATCH-A\n"), "a.patch")
PATCH_B = Patch.parse(patch_text("core.c", "core v1\n", "core PATCH-B\n")
                      + patch_text("new.c", None, "new PATCH-B\n"), "b.patch")
PATCH_BROKEN = Patch.parse(patch_text("mm.c", "mm v1\n", "BREAK_THE_BUILD\n"), "broken.patch")
PATCH_MUTE = Patch.parse(patch_text("mm.c", "mm v1\n", "DIE_WITHOUT_A_WORD\n"), "mute.patch")


def write_files(root: Path, files: dict) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    monkeypatch.delenv("MFLAGS", raising=False)
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "fake-gcc 1.0")
    fragment = tmp_path / "common.config"
    fragment.write_text(FRAGMENT)
    monkeypatch.setattr(kbuild, "COMMON_FRAGMENT", fragment)
    monkeypatch.setattr(profiles, "COMMON_FRAGMENT", fragment)

    root = tmp_path / "pristine" / "linux"
    write_files(root, PRISTINE)
    (root / "Makefile").write_text(FAKE_MAKEFILE)
    source = SourceTree(origin="fake tree", identity="fake:1", root=root, version=profiles.tree_version(root))
    pdir = tmp_path / "profiles" / "fake"
    pdir.mkdir(parents=True)
    profile = Profile(name="fake", directory=pdir, matches=("6.1",), syscall_nr=451, hvc_func_id=0xC6000040,
                      tree_fragments=("kernel/configs/tiny.config", "kernel/configs/absent.config"),
                      notes=("a note for the log",))

    class Env:
        pass

    e = Env()
    e.tmp, e.root, e.source, e.profile, e.fragment = tmp_path, root, source, profile, fragment
    e.messages = []
    e.builder = lambda **kw: kbuild.Builder(source, profile, jobs=2, use_ccache=False,
                                            progress=e.messages.append, **kw)
    e.logs = tmp_path / "logs"
    return e


def image_of(build) -> str:
    return build.image.read_text()


def link_count(builder) -> int:
    p = builder.work / "build" / "link-count"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_fake_tree_version(env):
    assert env.source.version == (6, 1, 99) and env.source.version_str == "6.1.99"


# both hosts' compilers, whichever this one is: x86_64 cross-compiles, arm64's own gcc is the
# arm64 compiler (a test that assumed the cross prefix failed in an arm64 userland)
HOSTS = pytest.mark.parametrize("prefix", [hostarch.cross_prefix("x86_64"), hostarch.cross_prefix("aarch64")],
                                ids=["x86_64-host", "arm64-host"])


@HOSTS
def test_make_argv(env, monkeypatch, prefix):
    monkeypatch.setattr(kbuild, "CROSS_COMPILE", prefix)
    b = env.builder()
    argv = b.make_argv("Image", jobs=3)
    assert argv[:3] == ["make", "-C", str(b.work / "src")]
    assert f"O={b.work / 'build'}" in argv
    assert "ARCH=arm64" in argv and f"CROSS_COMPILE={prefix}" in argv
    assert f"CC={prefix}gcc" in argv
    assert argv[-2:] == ["-j3", "Image"]
    assert "-j" not in " ".join(b.make_argv("allnoconfig"))
    assert b.work == cache.cache_root() / "work" / b.config_key
    assert "CCACHE_DIR" not in b.make_env() and b.make_env()["KBUILD_BUILD_TIMESTAMP"] == "1970-01-01"
    assert b.make_env()["KBUILD_BUILD_VERSION"] == "1"   # not how often the worktree linked before


@HOSTS
def test_make_argv_profile_vars_and_ccache(env, monkeypatch, prefix):
    import dataclasses

    monkeypatch.setattr(kbuild, "CROSS_COMPILE", prefix)
    profile = dataclasses.replace(env.profile, make_vars=(("LLVM", "0"), ("W", "1")))
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: "/usr/bin/" + name)
    b = kbuild.Builder(env.source, profile, jobs=1, use_ccache=True, progress=env.messages.append)
    argv = b.make_argv("Image")
    assert f"CC=ccache {prefix}gcc" in argv
    assert argv[-3:] == ["LLVM=0", "W=1", "Image"]
    assert b.make_env()["CCACHE_DIR"] == str(cache.cache_root() / "ccache")
    assert b.make_env()["CCACHE_PREFIX_CPP"] == str(kbuild.CPP_KEY) and "CCACHE_DEPEND" not in b.make_env()
    assert os.access(kbuild.CPP_KEY, os.X_OK)
    # ccache and make variables are part of the configuration's identity
    assert b.config_key != env.builder().config_key


@HOSTS
def test_no_compiler_is_an_infra_error(env, monkeypatch, prefix):
    monkeypatch.setattr(kbuild, "CROSS_COMPILE", prefix)
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "")
    with pytest.raises(InfraError, match=rf"\] {prefix}gcc not found: run `make setup`"):
        env.builder()


def test_config_key_depends_on_inputs(env, monkeypatch):
    k0 = env.builder().config_key
    assert env.builder().config_key == k0
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "fake-gcc 2.0")
    assert env.builder().config_key != k0
    monkeypatch.setattr(kbuild, "compiler_version", lambda: "fake-gcc 1.0")
    env.fragment.write_text(FRAGMENT + "CONFIG_D=y\n")
    assert env.builder().config_key != k0


def test_fragments_text_includes_tree_and_common(env):
    text = kbuild.fragments_text(env.source, env.profile)
    assert "CONFIG_FROM_TREE=y" in text and FRAGMENT in text
    assert text.index("CONFIG_FROM_TREE") < text.index("CONFIG_A=y")  # the tree's fragments first
    assert "absent.config" not in text


def test_artefact_keys(env):
    b = env.builder()
    keys = {b.artefact_key(None), b.artefact_key(PATCH_A), b.artefact_key(PATCH_B)}
    assert len(keys) == 3
    same_bytes = Patch.parse(PATCH_A.data, "renamed.patch")
    assert b.artefact_key(same_bytes) == b.artefact_key(PATCH_A)  # named by content, not by name


def test_build_cache_worktree_and_no_cross_contamination(env):
    b = env.builder()
    pristine_digest = cache.tree_digest(env.root)

    # 1. cold build with patch A
    a1 = b.build("host", PATCH_A, env.logs)
    assert not a1.cached
    assert image_of(a1) == PRISTINE_IMAGE.replace("kvm v1", "kvm PATCH-A")
    assert a1.meta["compiled_files"] == 5 and a1.meta["patch_mode"] == "exact"
    assert a1.meta["compiler_warnings"] == 1  # blk.c's, counted and kept in the log
    assert a1.meta["patch"] == "a.patch" and a1.meta["patch_sha256"] == PATCH_A.sha256
    assert a1.meta["compiler"] == "fake-gcc 1.0" and a1.meta["version"] == "6.1.99"
    assert "make -C" in a1.meta["reproduce"] and "Image" in a1.meta["reproduce"]
    assert a1.key == b.artefact_key(PATCH_A)
    assert a1.image == cache.cache_root() / "kernels" / a1.key / "Image"
    assert "CONFIG_A=y" in a1.config.read_text()
    run_log = (env.logs / "kbuild-host.log").read_text()
    assert "# profile fake: a note for the log" in run_log and "  CC      kvm.c" in run_log
    assert link_count(b) == 1

    # 2. the same build again: a cache hit, make is not run, the Image is untouched
    mtime = a1.image.stat().st_mtime_ns
    a2 = b.build("host", PATCH_A, env.logs)
    assert a2.cached and a2.key == a1.key and a2.image == a1.image
    assert a2.image.stat().st_mtime_ns == mtime and link_count(b) == 1
    # a new Builder (a new harness run) hits the same entry; role does not matter
    a3 = env.builder().build("guest", PATCH_A, env.logs)
    assert a3.cached and a3.image == a1.image and link_count(b) == 1

    # 3. another patch: another key; the Image holds exactly pristine + B, nothing of A
    bb = b.build("host", PATCH_B, env.logs)
    assert not bb.cached and bb.key != a1.key
    img = image_of(bb)
    assert "PATCH-A" not in img and "kvm v1" in img
    assert "core PATCH-B" in img and "new PATCH-B" in img
    assert img == "core PATCH-B\nblk v1\nnet v1\nkvm v1\nmm v1\nnew PATCH-B\n"
    # incremental: kvm.c (restored), core.c (patched) and new.c (created) only
    assert bb.meta["compiled_files"] == 3
    assert image_of(a1) == PRISTINE_IMAGE.replace("kvm v1", "kvm PATCH-A")  # the cached A is intact

    # 4. back to no patch: pristine content again, created files gone
    none = b.build("host", None, env.logs)
    assert not none.cached and none.meta["patch"] is None and none.meta["patch_mode"] == "none"
    assert image_of(none) == PRISTINE_IMAGE
    assert not (b.work / "src" / "new.c").exists()
    assert none.meta["compiled_files"] == 1  # core.c restored

    # 5. the pristine tree was never written to (the worktree is hard-linked to it)
    assert cache.tree_digest(env.root) == pristine_digest
    assert (env.root / "kvm.c").read_text() == "kvm v1\n"
    state = json.loads((b.work / "state.json").read_text())
    assert state == {"patch": None, "files": [], "created": [], "dirty": False}


def test_interrupted_checkout_is_repaired(env):
    """A kill between 'dirty' and the final state: the recorded files are restored."""
    b = env.builder()
    b.build("host", PATCH_A, env.logs)
    # as if killed while re-applying A: kvm.c half-written, state dirty
    (b.work / "src" / "kvm.c").write_text("garbage\n")
    state = json.loads((b.work / "state.json").read_text())
    (b.work / "state.json").write_text(json.dumps({**state, "dirty": True}))
    import shutil

    shutil.rmtree(cache.cache_root() / "kernels")
    rebuilt = b.build("host", PATCH_A, env.logs)
    assert image_of(rebuilt) == PRISTINE_IMAGE.replace("kvm v1", "kvm PATCH-A")


def test_kill_after_apply_does_not_contaminate_next_build(env, monkeypatch):
    b = env.builder()
    b.build("host", None, env.logs)
    real_apply = Patch.apply

    def apply_then_die(self, tree, log=None):
        real_apply(self, tree, log)
        raise KeyboardInterrupt  # SIGINT/SIGKILL right after the patch landed

    monkeypatch.setattr(Patch, "apply", apply_then_die)
    with pytest.raises(KeyboardInterrupt):
        b.build("host", PATCH_A, env.logs)
    monkeypatch.setattr(Patch, "apply", real_apply)
    import shutil

    shutil.rmtree(cache.cache_root() / "kernels")
    clean = b.build("host", None, env.logs)
    assert image_of(clean) == PRISTINE_IMAGE


def test_a_make_killed_mid_write_leaves_no_truncated_target_behind(env, monkeypatch):
    """Ctrl-C kills make's group with SIGKILL: a target it was writing stays, truncated and
    newer than its source, and make would take it as up to date (seen in the real tree: an
    empty include/generated/vdso-offsets.h).  The next build must write it again."""
    b = env.builder()
    b.build("host", None, env.logs)
    real_run = kbuild.procs.run

    def killed_mid_write(argv, **kw):
        if str(kw.get("what", "")).startswith("make Image"):
            (b.work / "build" / "obj" / "mm.o").write_text("mm v")  # half written, mm.c untouched
            raise KeyboardInterrupt
        return real_run(argv, **kw)

    monkeypatch.setattr(kbuild.procs, "run", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        b.build("host", PATCH_A, env.logs)
    monkeypatch.setattr(kbuild.procs, "run", real_run)
    rebuilt = b.build("host", PATCH_A, env.logs)
    assert image_of(rebuilt) == PRISTINE_IMAGE.replace("kvm v1", "kvm PATCH-A")
    assert any("did not finish" in m for m in env.messages), env.messages
    assert "make_started_ns" not in json.loads((b.work / "state.json").read_text())
    # a make that finished leaves nothing to prune
    import shutil

    shutil.rmtree(cache.cache_root() / "kernels")
    b.build("host", PATCH_A, env.logs)
    assert sum("did not finish" in m for m in env.messages) == 1


def test_patch_that_does_not_apply(env):
    b = env.builder()
    bad = Patch.parse(patch_text("kvm.c", "something else\n", "x\n"), "student.patch")
    with pytest.raises(PatchError) as ei:
        b.build("host", bad, env.logs)
    assert "student.patch" in ei.value.message and "kvm.c" in ei.value.message
    assert not cache.Entry("kernels", b.artefact_key(bad)).ready()
    # the worktree is still usable afterwards
    ok = b.build("host", PATCH_A, env.logs)
    assert image_of(ok) == PRISTINE_IMAGE.replace("kvm v1", "kvm PATCH-A")


def test_missing_config_symbol_is_a_kernel_config_error(env):
    env.fragment.write_text(FRAGMENT + "CONFIG_UNSUPPORTED_THING=y\n")
    b = env.builder()
    with pytest.raises(BuildError) as ei:
        b.build("host", None, env.logs)
    e = ei.value
    assert e.stage == "kernel-config"
    assert "CONFIG_UNSUPPORTED_THING=y (final: absent)" in e.message
    assert "CONFIG_A" not in e.message  # only what is missing
    assert "6.1.99" in e.message
    assert e.reproduce and "allnoconfig" in e.reproduce and "KCONFIG_ALLCONFIG=" in e.reproduce
    assert e.log == env.logs / "kbuild-host.log" and e.log.exists()
    assert not cache.Entry("kernels", b.artefact_key(None)).ready()


def test_failing_make_image_reports_log_tail(env):
    b = env.builder()
    with pytest.raises(BuildError) as ei:
        b.build("guest", PATCH_BROKEN, env.logs)
    e = ei.value
    assert e.stage == "kernel-build (guest)"
    assert e.message.startswith("guest kernel (broken.patch) does not build")
    assert e.message.endswith("does not build: drivers/broken.c:1: compiler: the build is broken on purpose")
    assert e.kind == "subject"
    assert "error: the build is broken on purpose" in e.tail
    assert "failed with exit code" not in e.tail and "make" in (e.reproduce or "")
    assert e.log == env.logs / "kbuild-guest.log"
    assert "error: the build is broken on purpose" in e.log.read_text()
    key = b.artefact_key(PATCH_BROKEN)
    assert not cache.Entry("kernels", key).ready()
    assert (cache.cache_root() / "kernels" / f"{key}.failed" / "build.log").exists()
    rendered = e.render()
    assert "kernel-build (guest)" in rendered and "| drivers/broken.c:1:1: error" in rendered
    # after the failure, an unpatched build is pristine again
    assert image_of(b.build("guest", None, env.logs)) == PRISTINE_IMAGE


@pytest.mark.parametrize("free_mb, kind", [(12, "infra"), (5000, "subject")])
def test_an_object_failing_without_a_word_is_the_disk_when_the_disk_is_full(env, monkeypatch, free_mb, kind):
    """Seen in CI: on a full disk an object failed with no message at all, and its -j1 retry
    could not open its own log.  With no tool naming an error, the free space where the
    build writes decides; with room to spare, the failure stays the patch's."""
    monkeypatch.setenv("KVM_HARNESS_SKIP_PREFLIGHT", "1")  # as the fault suite reaches a real ENOSPC
    monkeypatch.setattr(kbuild.resources, "free_mb", lambda path: free_mb)
    with pytest.raises(BuildError) as ei:
        env.builder().build("guest", PATCH_MUTE, env.logs)
    e = ei.value
    assert e.kind == kind and e.stage == "kernel-build (guest)"
    if kind == "infra":
        assert "the machine ran out of resources (no space left on device: 12 MB free where the build writes)" \
            in e.message and "not the patch's fault" in e.message
    else:
        assert "does not build: make Image" in e.message and "failed with exit code" in e.message
        assert "ran out of" not in e.message


def test_truncated_cached_image_is_rebuilt_not_booted(env):
    b = env.builder()
    first = b.build("host", PATCH_A, env.logs)
    assert first.meta["image_bytes"] == first.image.stat().st_size
    with open(first.image, "r+b") as f:
        f.truncate(3)
    messages = len(env.messages)
    again = b.build("host", PATCH_A, env.logs)
    assert not again.cached
    assert any("damaged (Image has 3 bytes" in m for m in env.messages[messages:])
    assert "kvm PATCH-A" in image_of(again)
    assert again.image.stat().st_size == first.meta["image_bytes"]


def test_source_paths_are_said_as_the_tree_does_absolute_or_relative_to_the_build():
    """6.1's kbuild names sources by absolute path; 6.12 (and v5.4 under make 4.4) by
    ../src/...: found in the Debian 13 root, where the first error read
    '../src/arch/arm64/kernel/host_cpuid.c:21'."""
    from harness.build.kbuild import _strip_prefixes

    log = ("../src/arch/arm64/kernel/host_cpuid.c:21:9: error: 'x' undeclared\n"
           "In file included from /cache/wt/k-guest/src/include/linux/list.h:5,\n"
           "make[4]: *** [../src/scripts/Makefile.build:229: arch/arm64/kernel/host_cpuid.o] Error 1\n"
           "keep ../srcfoo/a.c and x/../src/b.c\n")
    out = _strip_prefixes(log, "/cache/wt/k-guest/src/", "../src/")
    assert out.splitlines() == [
        "arch/arm64/kernel/host_cpuid.c:21:9: error: 'x' undeclared",
        "In file included from include/linux/list.h:5,",
        "make[4]: *** [scripts/Makefile.build:229: arch/arm64/kernel/host_cpuid.o] Error 1",
        "keep ../srcfoo/a.c and x/../src/b.c"]
