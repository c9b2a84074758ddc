"""harness/core/cache.py: keys, entries built once and atomically, location, tree digests."""
import os
import threading
import time
from pathlib import Path

import pytest

from harness.core import cache


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(root))
    return root


# -- location ------------------------------------------------------------------------------

def test_kvm_harness_cache_wins(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == cache_dir and cache_dir.is_dir()


def test_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("KVM_HARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "kvm-hypercall-harness"
    assert (tmp_path / "xdg" / "kvm-hypercall-harness").is_dir()


def test_home_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("KVM_HARNESS_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "kvm-hypercall-harness"


def test_empty_env_values_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache.cache_root() == tmp_path / "h" / ".cache" / "kvm-hypercall-harness"


def test_entry_lives_under_root(cache_dir):
    e = cache.Entry("kernels", "abc")
    assert e.path == cache_dir / "kernels" / "abc"
    e2 = cache.Entry("kernels", "abc", root=cache_dir / "other")
    assert e2.path == cache_dir / "other" / "kernels" / "abc"


# -- keys ----------------------------------------------------------------------------------

def test_key_of_is_stable_and_order_independent():
    k = cache.key_of(a="x", b={"y": 1, "z": [1, 2]}, c=b"\x00\x01")
    assert k == cache.key_of(c=b"\x00\x01", b={"z": [1, 2], "y": 1}, a="x")
    assert len(k) == 20 and all(ch in "0123456789abcdef" for ch in k)
    assert cache.key_of(a="x") == cache.key_of(a=b"x")  # str is hashed as its UTF-8 bytes


def test_key_of_known_value_is_deterministic():
    import subprocess
    import sys

    code = "from harness.core import cache; print(cache.key_of(source='s', patch='p', n=1, d={'b': 2, 'a': 1}))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(cache.__file__).parents[2],
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {cache.key_of(source="s", patch="p", n=1, d={"a": 1, "b": 2})}


@pytest.mark.parametrize("other", [
    dict(a="x", b="z"),          # a value changed
    dict(a="x", c="y"),          # a name changed
    dict(a="x", b="y", c=""),    # a part added
    dict(a="x"),                 # a part removed
    dict(a="xy", b=""),          # same concatenation, different split
    dict(a="x", b=["y"]),        # same text, different type
])
def test_key_of_is_sensitive(other):
    assert cache.key_of(a="x", b="y") != cache.key_of(**other)


def test_key_of_distinguishes_int_and_str():
    assert cache.key_of(n=1) != cache.key_of(n="1x")
    assert cache.key_of(n=1) != cache.key_of(n=2)


# -- entries -------------------------------------------------------------------------------

def test_ensure_builds_once(cache_dir):
    calls = []

    def builder(tmp: Path) -> None:
        calls.append(tmp)
        assert tmp.is_dir() and tmp != cache_dir / "things" / "k1"
        (tmp / "out.txt").write_text("built")

    e = cache.Entry("things", "k1")
    assert not e.ready()
    p1 = e.ensure(builder)
    p2 = cache.Entry("things", "k1").ensure(builder)
    assert p1 == p2 == cache_dir / "things" / "k1"
    assert len(calls) == 1
    assert (p1 / "out.txt").read_text() == "built" and (p1 / ".complete").exists()
    assert e.ready()
    assert not calls[0].exists()  # the temporary directory was renamed into place
    assert not list((cache_dir / "things").glob("k1.tmp-*"))


def test_different_keys_build_separately():
    n = []
    for key in ("a", "b"):
        cache.Entry("x", key).ensure(lambda tmp: n.append(tmp))
    assert len(n) == 2


def test_failed_builder_leaves_no_entry_and_keeps_failed_dir(cache_dir):
    def bad(tmp: Path) -> None:
        (tmp / "build.log").write_text("error: it broke\n")
        raise RuntimeError("boom")

    e = cache.Entry("kernels", "k")
    with pytest.raises(RuntimeError, match="boom"):
        e.ensure(bad)
    assert not e.ready() and not e.path.exists()
    failed = cache_dir / "kernels" / "k.failed"
    assert (failed / "build.log").read_text() == "error: it broke\n"
    assert not (failed / ".complete").exists()
    assert not list((cache_dir / "kernels").glob("k.tmp-*"))

    # a later good build succeeds; a second failure replaces the .failed dir
    calls = []
    assert e.ensure(lambda tmp: calls.append(1)) == e.path and e.ready() and calls == [1]

    e2 = cache.Entry("kernels", "k2")
    for msg in ("first", "second"):
        def bad2(tmp, msg=msg):
            (tmp / f"{msg}.log").write_text(msg)
            raise ValueError(msg)
        with pytest.raises(ValueError):
            e2.ensure(bad2)
    assert sorted(p.name for p in (cache_dir / "kernels" / "k2.failed").iterdir()) == ["second.log"]


def test_failed_attempt_keeps_its_logs_and_nothing_else(cache_dir):
    """A half-extracted tree must not keep the disk full: only logs and metadata stay."""
    def bad(tmp: Path) -> None:
        (tmp / "linux" / "drivers").mkdir(parents=True)
        (tmp / "linux" / "drivers" / "big.c").write_bytes(b"x" * 100_000)
        (tmp / "Image").write_bytes(b"y" * 50_000)
        (tmp / "meta.json").write_text("{}")
        (tmp / "build.log").write_text("tar: Cannot write: No space left on device\n")
        raise OSError(28, "No space left on device")

    e = cache.Entry("sources", "s")
    with pytest.raises(OSError):
        e.ensure(bad)
    failed = cache_dir / "sources" / "s.failed"
    assert sorted(p.name for p in failed.iterdir()) == ["build.log", "meta.json"]
    assert not list((cache_dir / "sources").glob("s.tmp-*"))


def test_a_killed_builds_tmp_dir_is_swept_by_the_next_build(cache_dir):
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = cache_dir / "kernels" / f"old.tmp-{dead.pid}"
    (stale / "linux").mkdir(parents=True)
    live = cache_dir / "kernels" / f"other.tmp-{os.getpid()}"
    live.mkdir()
    cache.Entry("kernels", "new").ensure(lambda tmp: None)
    assert not stale.exists()
    assert live.exists()  # our own pid: alive


def test_keyboard_interrupt_in_builder_leaves_no_entry():
    def interrupted(tmp: Path) -> None:
        (tmp / "half").write_text("half")
        raise KeyboardInterrupt

    e = cache.Entry("kernels", "ki")
    with pytest.raises(KeyboardInterrupt):
        e.ensure(interrupted)
    assert not e.ready() and not e.path.exists()


def test_stale_incomplete_entry_is_rebuilt(cache_dir):
    e = cache.Entry("x", "stale")
    e.path.mkdir(parents=True)
    (e.path / "junk").write_text("half written, no .complete")
    assert not e.ready()
    e.ensure(lambda tmp: (tmp / "good").write_text("ok"))
    assert (e.path / "good").exists() and not (e.path / "junk").exists()


def test_concurrent_ensure_builds_once():
    calls = []
    lock = threading.Lock()

    def slow(tmp: Path) -> None:
        with lock:
            calls.append(tmp)
        time.sleep(0.2)
        (tmp / "x").write_text("x")

    e = cache.Entry("conc", "k")
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.Entry("conc", "k").ensure(slow)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and results == [e.path] * 4


def test_locked_is_exclusive(tmp_path):
    order = []
    path = tmp_path / "l.lock"

    def second():
        with cache.locked(path):
            order.append("second")

    with cache.locked(path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.1)
        order.append("first-done")
    t.join(5)
    assert order == ["first-done", "second"]


def test_clean(cache_dir):
    for kind in ("kernels", "work", "sources"):
        cache.Entry(kind, "k").ensure(lambda tmp: None)
    removed = cache.clean(["kernels", "work"])
    assert {p.name for p in removed} == {"kernels", "work"}
    assert (cache_dir / "sources").is_dir() and not (cache_dir / "kernels").exists()
    assert {p.name for p in cache.clean()} == {"sources"}


# -- digests -------------------------------------------------------------------------------

def make_tree(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "d" / "b.txt").write_text("beta")
    return root


def test_file_digest(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert cache.file_digest(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_tree_digest_stable_across_copies(tmp_path):
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b")
    assert cache.tree_digest(a) == cache.tree_digest(b) == cache.tree_digest(str(a))


def test_tree_digest_changes_with_content(tmp_path):
    t = make_tree(tmp_path / "t")
    d0 = cache.tree_digest(t)
    (t / "d" / "b.txt").write_text("betA")
    assert cache.tree_digest(t) != d0


def test_tree_digest_changes_with_mode(tmp_path):
    t = make_tree(tmp_path / "t")
    os.chmod(t / "a.txt", 0o644)
    d0 = cache.tree_digest(t)
    os.chmod(t / "a.txt", 0o755)
    d1 = cache.tree_digest(t)
    assert d1 != d0
    os.chmod(t / "a.txt", 0o644)
    os.utime(t / "a.txt", (0, 0))  # mtimes do not matter
    assert cache.tree_digest(t) == d0


def test_tree_digest_changes_with_names_and_new_files(tmp_path):
    t = make_tree(tmp_path / "t")
    d0 = cache.tree_digest(t)
    (t / "a.txt").rename(t / "A.txt")
    d1 = cache.tree_digest(t)
    assert d1 != d0
    (t / "d" / "empty").write_text("")
    assert cache.tree_digest(t) != d1


def test_tree_digest_ignore_and_symlinks(tmp_path):
    t = make_tree(tmp_path / "t")
    d0 = cache.tree_digest(t)
    (t / "build.log").write_text("noise")
    assert cache.tree_digest(t, ignore=lambda rel: rel.endswith(".log")) == d0
    assert cache.tree_digest(t) != d0
    (t / "build.log").unlink()
    os.symlink("a.txt", t / "link")
    d_link = cache.tree_digest(t)
    (t / "link").unlink()
    os.symlink("d/b.txt", t / "link")
    assert cache.tree_digest(t) != d_link  # symlinks hash by target


def test_cache_root_and_run_dirs_are_private(tmp_path, monkeypatch):
    import os
    import stat

    from harness.core import config
    from harness.jobs import run

    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "c"))
    os.umask(0o022)
    root = cache.cache_root()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    cfg = config.from_dict({"output": str(tmp_path / "runs")})
    d = run.new_run_dir(cfg)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
