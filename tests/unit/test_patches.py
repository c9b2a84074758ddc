"""harness/build/patches.py: parsing untrusted patches and applying them to a tree."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from harness.build import patches
from harness.core.errors import INPUT, PatchError
from harness.build.patches import Patch

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
       "-c", "core.autocrlf=false", "-c", "diff.noprefix=false"]

LINES = [f"line {i}\n" for i in range(1, 31)]
BASE = "".join(LINES)


def edited(lines, changes):
    out = list(lines)
    for idx, new in changes.items():
        out[idx] = new
    return "".join(out)


def write_tree(root: Path, files: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def git_patch(tmp_path: Path, before: dict, after: dict, *diff_args: str) -> bytes:
    """A real `git diff` between two file sets (deleted: value None in after)."""
    repo = tmp_path / "patch-src"
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    write_tree(repo, before)
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True, env=env)
    subprocess.run([*GIT, "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", "base"], check=True, env=env)
    for rel, text in after.items():
        p = repo / rel
        if text is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    subprocess.run([*GIT, "-C", str(repo), "add", "."], check=True, env=env)
    out = subprocess.run([*GIT, "-C", str(repo), "diff", "--cached", *diff_args], check=True, env=env,
                         capture_output=True).stdout
    assert out, "the fixture produced an empty diff"
    return out


TWO_HUNKS_AFTER = edited(LINES, {3: "LINE 4 changed\n", 21: "LINE 22 changed\n"})


@pytest.fixture(scope="module")
def two_hunks(tmp_path_factory):
    return git_patch(tmp_path_factory.mktemp("two-hunks"), {"src/f.txt": BASE}, {"src/f.txt": TWO_HUNKS_AFTER})


# -- parsing -------------------------------------------------------------------------------

def test_parse_git_style(two_hunks):
    p = Patch.parse(two_hunks, "my.patch")
    assert p.name == "my.patch" and p.strip == 1
    assert p.files == ["src/f.txt"] and p.created == []
    assert [(h.file, h.number) for h in p.hunks] == [("src/f.txt", 1), ("src/f.txt", 2)]
    assert p.hunks[0].old_start == 1 and p.hunks[1].old_start == 19
    assert p.hunks[1].header.startswith("@@ -19,") and p.hunks[1].header.endswith(" @@")
    assert len(p.sha256) == 64 and p.sha256 == Patch.parse(two_hunks, "other name").sha256


def test_parse_no_prefix(tmp_path):
    data = git_patch(tmp_path, {"src/f.txt": BASE}, {"src/f.txt": TWO_HUNKS_AFTER}, "--no-prefix")
    assert b"--- src/f.txt" in data
    p = Patch.parse(data, "np.patch")
    assert p.strip == 0 and p.files == ["src/f.txt"]
    assert {h.file for h in p.hunks} == {"src/f.txt"}


def test_parse_multiple_files_created_and_deleted(tmp_path):
    data = git_patch(tmp_path, {"a.c": "x\n", "gone.c": "bye\n", "d/e.h": "1\n"},
                     {"a.c": "y\n", "gone.c": None, "new/dir/n.c": "hello\n"})
    p = Patch.parse(data, "m.patch")
    assert p.strip == 1
    assert set(p.files) == {"a.c", "gone.c", "new/dir/n.c"}
    assert p.created == ["new/dir/n.c"]
    assert {h.file for h in p.hunks} == {"a.c", "gone.c", "new/dir/n.c"}


def test_parse_rename(tmp_path):
    data = git_patch(tmp_path, {"old.txt": BASE}, {"old.txt": None, "new.txt": BASE}, "-M")
    assert b"rename from old.txt" in data
    p = Patch.parse(data, "r.patch")
    assert p.files == ["old.txt", "new.txt"] and p.strip == 1


def test_parse_plain_unified_diff_with_timestamps():
    data = (b"--- a/f.txt\t2024-01-01 00:00:00.000000000 +0000\n"
            b"+++ b/f.txt\t2024-01-01 00:00:01.000000000 +0000\n"
            b"@@ -1 +1 @@\n-x\n+y\n")
    p = Patch.parse(data, "u.patch")
    assert p.files == ["f.txt"] and p.strip == 1 and p.hunks[0].file == "f.txt"


@pytest.mark.parametrize("old,new,bad", [
    ("a/../etc/passwd", "b/../etc/passwd", "../etc/passwd"),
    ("a/x/../../y", "b/x/../../y", "x/../../y"),
    ("/etc/passwd", "/etc/passwd", "/etc/passwd"),
    ("a//etc/passwd", "b//etc/passwd", "/etc/passwd"),
    ("a/.git/config", "b/.git/config", ".git/config"),
    (".git/hooks/pre-commit", ".git/hooks/pre-commit", ".git/hooks/pre-commit"),
    ("/dev/null", "b/../evil", "../evil"),
])
def test_refuses_dangerous_paths(old, new, bad):
    data = f"--- {old}\n+++ {new}\n@@ -1 +1 @@\n-x\n+y\n".encode()
    with pytest.raises(PatchError) as ei:
        Patch.parse(data, "evil.patch")
    assert "evil.patch" in ei.value.message and repr(bad) in ei.value.message
    assert ei.value.kind == INPUT and ei.value.stage == "patch"


def test_refuses_dangerous_rename():
    data = (b"diff --git a/x b/../x\nsimilarity index 100%\nrename from x\nrename to ../x\n")
    with pytest.raises(PatchError, match=r"refuses to touch path '\.\./x'"):
        Patch.parse(data, "mv.patch")


@pytest.mark.parametrize("data", [b"", b"hello world\n", b"@@ -1 +1 @@\n-x\n+y\n", b"\xff\xfe binary"])
def test_not_a_diff(data):
    with pytest.raises(PatchError) as ei:
        Patch.parse(data, "junk.patch")
    assert "junk.patch: not a unified diff" in ei.value.message and "git diff" in ei.value.message


def test_size_limit():
    data = b"x" * (patches.MAX_PATCH_BYTES + 1)
    with pytest.raises(PatchError, match="more than the .* allowed"):
        Patch.parse(data, "big.patch")


def test_size_limit_is_checked_before_parsing(monkeypatch, two_hunks):
    monkeypatch.setattr(patches, "MAX_PATCH_BYTES", len(two_hunks) - 1)
    with pytest.raises(PatchError, match=f"{len(two_hunks)} bytes"):
        Patch.parse(two_hunks, "p")
    monkeypatch.setattr(patches, "MAX_PATCH_BYTES", len(two_hunks))
    assert Patch.parse(two_hunks, "p").files == ["src/f.txt"]


def test_from_file(tmp_path, two_hunks):
    f = tmp_path / "kvm.patch"
    f.write_bytes(two_hunks)
    assert Patch.from_file(f).name == str(f)
    assert Patch.from_file(f, "nice name").name == "nice name"
    with pytest.raises(PatchError, match="cannot read patch"):
        Patch.from_file(tmp_path / "missing.patch")


def test_hunk_at(two_hunks):
    p = Patch.parse(two_hunks, "x")
    assert p.hunk_at("src/f.txt", 1).number == 1
    assert p.hunk_at("src/f.txt", 18).number == 1
    assert p.hunk_at("src/f.txt", 19).number == 2
    assert p.hunk_at("src/f.txt", 500).number == 2
    assert p.hunk_at("other.txt", 19) is None


# -- applying ------------------------------------------------------------------------------

def test_apply_exact(tmp_path, two_hunks):
    tree = write_tree(tmp_path / "tree", {"src/f.txt": BASE, "untouched.txt": "u\n"})
    log = tmp_path / "patch.log"
    assert Patch.parse(two_hunks, "p").apply(tree, log=log) == "exact"
    assert (tree / "src/f.txt").read_text() == TWO_HUNKS_AFTER
    assert (tree / "untouched.txt").read_text() == "u\n"
    assert "$ git apply" in log.read_text()


def test_apply_no_prefix(tmp_path):
    data = git_patch(tmp_path, {"src/f.txt": BASE}, {"src/f.txt": TWO_HUNKS_AFTER}, "--no-prefix")
    tree = write_tree(tmp_path / "tree", {"src/f.txt": BASE})
    assert Patch.parse(data, "np").apply(tree) == "exact"
    assert (tree / "src/f.txt").read_text() == TWO_HUNKS_AFTER


def test_apply_creates_and_deletes(tmp_path):
    data = git_patch(tmp_path, {"a.c": "x\n", "gone.c": "bye\n"},
                     {"a.c": "y\n", "gone.c": None, "new/dir/n.c": "hello\n"})
    tree = write_tree(tmp_path / "tree", {"a.c": "x\n", "gone.c": "bye\n"})
    assert Patch.parse(data, "m").apply(tree) == "exact"
    assert (tree / "a.c").read_text() == "y\n"
    assert not (tree / "gone.c").exists()
    assert (tree / "new/dir/n.c").read_text() == "hello\n"


def test_apply_inside_an_unrelated_git_repo(tmp_path, two_hunks):
    """git apply must not discover an enclosing repository (it would then silently skip paths)."""
    outer = tmp_path / "outer"
    subprocess.run([*GIT, "init", "-q", str(outer)], check=True)
    tree = write_tree(outer / "sub" / "tree", {"src/f.txt": BASE})
    assert Patch.parse(two_hunks, "p").apply(tree) == "exact"
    assert (tree / "src/f.txt").read_text() == TWO_HUNKS_AFTER


def test_failing_hunk_names_patch_file_and_hunk(tmp_path, two_hunks):
    # hunk 1 still applies, hunk 2's removed line is different in this tree
    tree = write_tree(tmp_path / "tree", {"src/f.txt": edited(LINES, {21: "someone else's line 22\n"})})
    before = (tree / "src/f.txt").read_text()
    p = Patch.parse(two_hunks, "student kvm.patch")
    with pytest.raises(PatchError) as ei:
        p.apply(tree, log=tmp_path / "log")
    e = ei.value
    assert "student kvm.patch does not apply" in e.message
    assert "file src/f.txt" in e.message
    assert "hunk #2 @@ -19," in e.message
    assert "patch failed" in e.tail
    assert e.reproduce and "apply --check" in e.reproduce
    assert e.kind == INPUT and e.stage == "patch"
    assert (tree / "src/f.txt").read_text() == before  # nothing half-applied
    assert "FAILED at stage 'patch'" in e.render()


def test_failing_first_hunk(tmp_path, two_hunks):
    tree = write_tree(tmp_path / "tree", {"src/f.txt": edited(LINES, {3: "not line 4\n"})})
    with pytest.raises(PatchError, match=r"file src/f\.txt, hunk #1 "):
        Patch.parse(two_hunks, "p").apply(tree)


def test_patch_for_missing_file(tmp_path, two_hunks):
    tree = write_tree(tmp_path / "tree", {"other.txt": "o\n"})
    with pytest.raises(PatchError) as ei:
        Patch.parse(two_hunks, "p").apply(tree)
    assert "file src/f.txt" in ei.value.message
    assert not (tree / "src").exists()


def test_creating_an_existing_file_fails(tmp_path):
    data = git_patch(tmp_path, {"keep": "k\n"}, {"n.c": "hello\n"})
    tree = write_tree(tmp_path / "tree", {"n.c": "already here\n"})
    with pytest.raises(PatchError, match="n.c"):
        Patch.parse(data, "p").apply(tree)
    assert (tree / "n.c").read_text() == "already here\n"


def fuzz_tree(tmp_path):
    # the first context line of hunk 2 (line 19) differs: git apply refuses, GNU patch fuzz 1 takes it
    return write_tree(tmp_path / "tree", {"src/f.txt": edited(LINES, {18: "line 19 (edited upstream)\n"})})


def test_apply_with_fuzz(tmp_path, two_hunks):
    tree = fuzz_tree(tmp_path)
    log = tmp_path / "patch.log"
    assert Patch.parse(two_hunks, "p").apply(tree, log=log) == "fuzz"
    got = (tree / "src/f.txt").read_text()
    assert got == edited(LINES, {3: "LINE 4 changed\n", 18: "line 19 (edited upstream)\n",
                                 21: "LINE 22 changed\n"})
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))
    text = log.read_text()
    assert "--check" in text and "$ patch" in text and "fuzz" in text.lower()


def _hard_linked_twin(tmp_path, tree, rel="src/f.txt"):
    twin = tmp_path / "pristine-f.txt"
    os.link(tree / rel, twin)
    assert os.stat(twin).st_nlink == 2
    return twin, twin.read_bytes()


@pytest.mark.parametrize("mode", ["exact", "fuzz"])
def test_never_writes_through_hard_links(tmp_path, two_hunks, mode):
    tree = fuzz_tree(tmp_path) if mode == "fuzz" else write_tree(tmp_path / "tree", {"src/f.txt": BASE})
    os.chmod(tree / "src/f.txt", 0o755)
    twin, pristine = _hard_linked_twin(tmp_path, tree)
    assert Patch.parse(two_hunks, "p").apply(tree) == mode
    assert twin.read_bytes() == pristine, "the pristine copy was modified through a hard link"
    patched = tree / "src/f.txt"
    assert b"LINE 22 changed" in patched.read_bytes()
    assert os.stat(patched).st_ino != os.stat(twin).st_ino
    assert os.stat(twin).st_nlink == 1
    assert stat.S_IMODE(os.stat(patched).st_mode) == 0o755


def test_failed_apply_leaves_hard_linked_twin_alone(tmp_path, two_hunks):
    tree = write_tree(tmp_path / "tree", {"src/f.txt": edited(LINES, {21: "different\n"})})
    twin, pristine = _hard_linked_twin(tmp_path, tree)
    with pytest.raises(PatchError):
        Patch.parse(two_hunks, "p").apply(tree)
    assert twin.read_bytes() == pristine
