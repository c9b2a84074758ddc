"""harness/build/sources.py on small fake kernel trees: identities, copies, the user's tree
left untouched, and the git URL + ref form."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.core import config
from harness.build import sources
from harness.core.errors import SourceError

MAKEFILE = "VERSION = 5\nPATCHLEVEL = 4\nSUBLEVEL = 0\nEXTRAVERSION =\n"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))


def git(tree: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def make_tree(root: Path, as_git: bool) -> Path:
    tree = root / "linux"
    (tree / "virt" / "kvm" / "arm").mkdir(parents=True)
    (tree / "Makefile").write_text(MAKEFILE)
    (tree / "virt" / "kvm" / "arm" / "psci.c").write_text("int x;\n")
    (tree / "scripts").mkdir()
    (tree / "scripts" / "tool.sh").write_text("#!/bin/sh\n")
    (tree / "scripts" / "tool.sh").chmod(0o755)
    if as_git:
        (tree / ".gitignore").write_text("*.o\n")
        git(tree, "init", "-q")
        git(tree, "add", "-A")
        git(tree, "commit", "-q", "-m", "v5.4")
        git(tree, "tag", "v5.4")
    return tree


def resolve_path(tree: Path, tmp_path: Path) -> sources.SourceTree:
    cfg = config.from_dict({"kernel": {"source": "path", "path": str(tree)}})
    return sources.resolve(cfg, tmp_path / "logs", progress=lambda m: None)


def snapshot(tree: Path) -> dict:
    return {str(p.relative_to(tree)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(tree.rglob("*")) if p.is_file()}


# -- git trees -----------------------------------------------------------------------------

def test_clean_git_tree_is_named_by_its_commit(tmp_path):
    tree = make_tree(tmp_path, as_git=True)
    head = git(tree, "rev-parse", "HEAD").strip()
    src = resolve_path(tree, tmp_path)
    assert src.identity == f"git:{head}"
    assert src.version == (5, 4, 0) and src.version_str == "5.4.0"
    assert (src.root / "virt/kvm/arm/psci.c").read_text() == "int x;\n"
    assert os.access(src.root / "scripts/tool.sh", os.X_OK)
    assert not (src.root / ".git").exists()
    assert src.root != tree


def test_uncommitted_and_untracked_files_are_carried_over_and_change_the_identity(tmp_path):
    tree = make_tree(tmp_path, as_git=True)
    clean = resolve_path(tree, tmp_path).identity
    (tree / "virt/kvm/arm/psci.c").write_text("int x;\nint host_cpuid;\n")
    dirty = resolve_path(tree, tmp_path)
    assert dirty.identity.startswith(clean + "+dirty:")
    assert "host_cpuid" in (dirty.root / "virt/kvm/arm/psci.c").read_text()

    (tree / "arch").mkdir()
    (tree / "arch/host_cpuid.c").write_text("/* new, not yet git-added */\n")
    (tree / "arch/junk.o").write_text("ignored build output")
    with_new = resolve_path(tree, tmp_path)
    assert with_new.identity not in (clean, dirty.identity)
    assert (with_new.root / "arch/host_cpuid.c").exists()
    assert not (with_new.root / "arch/junk.o").exists(), "ignored files stay behind"


def test_the_users_git_tree_is_never_written(tmp_path):
    tree = make_tree(tmp_path, as_git=True)
    (tree / "virt/kvm/arm/psci.c").write_text("int changed;\n")
    git(tree, "status", "--porcelain")  # let git refresh its index now, not during the check
    before = snapshot(tree)  # includes .git/ (index, refs, objects)
    resolve_path(tree, tmp_path)
    assert snapshot(tree) == before


def test_same_commit_same_entry_twice(tmp_path):
    tree = make_tree(tmp_path, as_git=True)
    a, b = resolve_path(tree, tmp_path), resolve_path(tree, tmp_path)
    assert a.root == b.root and a.identity == b.identity


def test_git_url_and_ref_gives_the_commit_identity(tmp_path):
    tree = make_tree(tmp_path, as_git=True)
    git(tree, "commit", "-q", "--allow-empty", "-m", "after the tag")
    tagged = git(tree, "rev-parse", "v5.4^{commit}").strip()
    cfg = config.from_dict({"kernel": {"source": "git", "git": {"url": str(tree), "ref": "v5.4"}}})
    src = sources.resolve(cfg, tmp_path / "logs", progress=lambda m: None)
    assert src.identity == f"git:{tagged}"
    assert src.version == (5, 4, 0)


def test_git_url_with_a_missing_ref_is_a_source_error(tmp_path):
    tree = make_tree(tmp_path, as_git=True)
    cfg = config.from_dict({"kernel": {"source": "git", "git": {"url": str(tree), "ref": "v9.9"}}})
    with pytest.raises(SourceError) as ei:
        sources.resolve(cfg, tmp_path / "logs", progress=lambda m: None)
    assert "v9.9" in ei.value.message and ei.value.stage == "source"


# -- plain directories ---------------------------------------------------------------------

def test_plain_tree_is_named_by_content_not_place_or_time(tmp_path):
    a = make_tree(tmp_path / "a", as_git=False)
    b = make_tree(tmp_path / "b", as_git=False)
    os.utime(b / "Makefile", ns=(1, 1))
    ida, idb = resolve_path(a, tmp_path).identity, resolve_path(b, tmp_path).identity
    assert ida.startswith("content:") and ida == idb


def test_plain_tree_content_change_with_same_size_and_mtime_is_seen(tmp_path):
    """An edit that keeps size and mtime (an editor or tool that restores the timestamp)
    must give a new identity AND a cached copy with the new bytes, through resolve()."""
    tree = make_tree(tmp_path, as_git=False)
    psci = tree / "virt/kvm/arm/psci.c"
    first = resolve_path(tree, tmp_path)
    assert (first.root / "virt/kvm/arm/psci.c").read_text() == "int x;\n"
    st = psci.stat()
    psci.write_text("int y;\n")  # same size
    os.utime(psci, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (psci.stat().st_size, psci.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = resolve_path(tree, tmp_path)
    assert second.identity != first.identity
    assert second.identity == "content:" + sources.content_digest(tree)
    assert (second.root / "virt/kvm/arm/psci.c").read_text() == "int y;\n"
    # and an untouched tree is not hashed again: same identity, no "hashing" message
    said = []
    cfg = config.from_dict({"kernel": {"source": "path", "path": str(tree)}})
    assert sources.resolve(cfg, tmp_path / "logs", progress=said.append).identity == second.identity
    assert not any("hashing" in m for m in said), said


def test_plain_tree_mode_change_changes_the_digest(tmp_path):
    tree = make_tree(tmp_path, as_git=False)
    before = sources.content_digest(tree)
    (tree / "scripts/tool.sh").chmod(0o644)
    assert sources.content_digest(tree) != before


def test_not_a_kernel_tree(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="not a kernel tree"):
        resolve_path(tmp_path / "empty", tmp_path)
