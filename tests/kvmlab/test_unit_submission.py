"""Submission unpacking: unsafe archives are refused before anything is written."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from harness.kvmlab.errors import SubmissionError
from harness.kvmlab.submission import MAX_MEMBER, load, safe_name

GOOD = {"guest.c": b"int x;\n", "kvm-hello-world.c": b"int main(void){return 0;}\n"}


def make_tar(path: Path, members) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            info, data = m
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def reg(name: str, data: bytes = b"x"):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def test_good_archive_nested_in_one_folder(tmp_path):
    arc = make_tar(tmp_path / "190050001.tar.gz", [reg(f"190050001/{n}", d) for n, d in GOOD.items()])
    sub = load(arc, tmp_path / "w")
    assert sub.name == "190050001"
    assert sub.guest_c.read_bytes() == GOOD["guest.c"]
    assert sub.hypervisor_c.name == "kvm-hello-world.c"


def test_folder_submission(tmp_path):
    for n, d in GOOD.items():
        (tmp_path / n).write_bytes(d)
    sub = load(tmp_path, tmp_path / "w")
    assert sub.root == tmp_path


@pytest.mark.parametrize("member,why", [
    (reg("/etc/evil.c"), "absolute"),
    (reg("a/../../evil.c"), ".."),
])
def test_refuses_paths(tmp_path, member, why):
    arc = make_tar(tmp_path / "s.tar.gz", [reg("guest.c"), member])
    with pytest.raises(SubmissionError, match=why):
        load(arc, tmp_path / "w")
    assert not (tmp_path / "w" / "unpacked").exists(), "nothing may be written before all members pass"


def test_refuses_symlink_hardlink_device(tmp_path):
    for kind, typ in (("link", tarfile.SYMTYPE), ("link", tarfile.LNKTYPE), ("device", tarfile.CHRTYPE)):
        ti = tarfile.TarInfo("guest.c")
        ti.type = typ
        ti.linkname = "/etc/passwd"
        arc = make_tar(tmp_path / f"s{typ!r}.tar.gz", [(ti, None)])
        with pytest.raises(SubmissionError, match=kind):
            load(arc, tmp_path / f"w{typ!r}")


def test_refuses_huge_member(tmp_path):
    arc = make_tar(tmp_path / "big.tar.gz", [reg("guest.c", b"\0" * (MAX_MEMBER + 1))])
    with pytest.raises(SubmissionError, match="bytes"):
        load(arc, tmp_path / "w")


def test_missing_and_ambiguous_sources(tmp_path):
    arc = make_tar(tmp_path / "m.tar.gz", [reg("guest.c")])
    with pytest.raises(SubmissionError, match="no kvm-hello-world.c"):
        load(arc, tmp_path / "w1")
    arc = make_tar(tmp_path / "a.tar.gz", [reg("x/guest.c"), reg("y/guest.c"),
                                           reg("x/kvm-hello-world.c")])
    with pytest.raises(SubmissionError, match="candidates for guest.c"):
        load(arc, tmp_path / "w2")


def test_not_an_archive(tmp_path):
    p = tmp_path / "junk.tar.gz"
    p.write_bytes(b"not a tar")
    with pytest.raises(SubmissionError, match="not a readable tar"):
        load(p, tmp_path / "w")


def test_safe_name():
    assert safe_name(Path("/x/Roll No 12.tar.gz")) == "Roll_No_12"
    assert safe_name(Path("../..")) == "submission"
