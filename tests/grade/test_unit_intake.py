import zipfile

import pytest

from harness.grade import intake
from harness.grade.errors import IntakeError
from tests.grade.fixtures import bad_zips, fixtures, make_zip


def test_good_zip_members_and_group_id(tmp_path):
    f = fixtures("6.1")[0]
    z = make_zip(tmp_path / "12_hw2.zip", f.files())
    sub = intake.load(z, tmp_path / "out")
    assert sub.group_id == "12" and sub.sub_id == "12"
    assert not sub.problems and not sub.flags and sub.refused is None
    assert sub.member("kvm.patch").read_text() == f.kvm


@pytest.mark.parametrize("name,key,needle", [
    ("slip_hw2.zip", "refused", "'..'"), ("bomb_hw2.zip", "refused", "zip bomb"),
    ("symlink_hw2.zip", "refused", "symbolic link"), ("noreport_hw2.zip", "problems", "missing report.pdf"),
    ("Group7-HW2.zip", "flags", "is not <group_id>_hw2.zip"),
])
def test_bad_zips_named(tmp_path, name, key, needle):
    bad_zips("6.1", tmp_path / "in")
    sub = intake.load(tmp_path / "in" / name, tmp_path / "out")
    got = getattr(sub, key)
    assert needle in (got if isinstance(got, str) else " | ".join(got))
    if key == "refused":  # nothing of a refused archive is written
        assert not (tmp_path / "out" / "files").exists() or not any((tmp_path / "out" / "files").rglob("*"))
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_members_case_insensitive_under_one_folder(tmp_path):
    bad_zips("6.1", tmp_path / "in")
    sub = intake.load(tmp_path / "in" / "Group7-HW2.zip", tmp_path / "out")
    assert sub.member("kvm.patch").name == "KVM.PATCH" and sub.member("report.pdf") is not None
    assert any("handed in as hw2/KVM.PATCH" in f for f in sub.flags)


def test_member_limits(tmp_path):
    z = tmp_path / "x_hw2.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(5):
            zf.writestr(f"f{i}", b"x")
    with pytest.raises(IntakeError, match="5 members"):
        intake.extract_zip(z, tmp_path / "o", intake.Limits(members=4))
    with pytest.raises(IntakeError, match="absolute"):
        with zipfile.ZipFile(tmp_path / "abs.zip", "w") as zf:
            zf.writestr("/etc/x", b"x")
        intake.extract_zip(tmp_path / "abs.zip", tmp_path / "o2")


def test_nested_archive_flagged_not_opened(tmp_path):
    f = fixtures("6.1")[0]
    inner = make_zip(tmp_path / "inner.zip", f.files())
    z = make_zip(tmp_path / "3_hw2.zip", {"inner.zip": inner.read_bytes()})
    sub = intake.load(z, tmp_path / "out")
    assert any("nested archive inner.zip" in x for x in sub.flags)
    assert "missing kvm.patch" in sub.problems


def test_folder_inputs_and_expand(tmp_path):
    d = tmp_path / "batch"
    (d / "5_hw2").mkdir(parents=True)
    for n, data in fixtures("6.1")[0].files().items():
        (d / "5_hw2" / n).write_bytes(data)
    (d / "5_hw2" / "link.patch").symlink_to("/etc/passwd")
    make_zip(d / "6_hw2.zip", fixtures("6.1")[1].files())
    items = intake.expand([d])
    assert [p.name for p in items] == ["5_hw2", "6_hw2.zip"]
    sub = intake.load(d / "5_hw2", tmp_path / "o")
    assert sub.group_id == "5" and not sub.problems
    assert any("symbolic link link.patch" in f for f in sub.flags)
