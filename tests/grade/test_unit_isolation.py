"""Students' kernel builds cannot write into what trusted builds reuse: a sandboxed
build gets the batch's own ccache (seeded from the shared one), the shared one is not
even visible inside the sandbox; unsandboxed builds keep the shared ccache."""
import subprocess

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
