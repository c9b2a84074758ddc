"""What a hand-in holds beyond the two sources, and how its Makefile is read (no KVM)."""
from __future__ import annotations

from harness.kvmlab import handin, rubric as rubricmod

MK = """# a student's Makefile
CFLAGS = -Wall -Wextra -Werror -O2 -Wno-unused-parameter -DVERBOSE=0 \\
\t-fplugin=evil.so -I/etc
kvm-hello-world: kvm-hello-world.o payload.o fs.o
\t$(CC) $^ -o $@
guest64.img: guest64.o strings.o
\t$(LD) -T my.ld $^ -o $@
"""


def test_makefile_flags_extra_sources_and_linker_script_are_read_not_run():
    got = handin.read_makefile(MK, ["Makefile", "fs.c", "strings.c", "my.ld"])
    assert got["cflags"] == ["-Wno-unused-parameter", "-DVERBOSE=0"]
    assert got["ignored"] == ["-fplugin=evil.so", "-I/etc"]
    assert got["hv_extra"] == ["fs.c"] and got["guest_extra"] == ["strings.c"] and got["ld"] == "my.ld"


def test_a_makefile_without_werror_builds_warnings_not_fatal():
    assert handin.read_makefile("CFLAGS = -O2 -w\n", [])["cflags"] == ["-w", "-Wno-error"]
    assert handin.read_makefile("CFLAGS += -w\n", [])["cflags"] == ["-w"]


def test_handin_files_are_listed_and_used(tmp_path):
    for name, text in {"guest.c": "int x;", "kvm-hello-world.c": "int main(){}", "guest.h": "#define P 1",
                       "Makefile": MK, "guest.ld": "SECTIONS {}", "kvm-hello-world": "stale binary",
                       ".git/config": "x"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    h = handin.read(tmp_path / "guest.c")
    assert h.files == ["Makefile", "guest.h", "guest.ld", "kvm-hello-world"] and h.headers == ["guest.h"]
    assert h.linker_script == "guest.ld"     # the Makefile's my.ld is not handed in
    assert h.variables()["GUEST_LD"] == "student-guest.ld"
    assert "beyond guest.c and kvm-hello-world.c" in h.describe() and "guest.h" in h.describe()
    out = tmp_path / "build"
    out.mkdir()
    handin.copy_into(h, out)
    assert (out / "guest.h").exists() and (out / "student-guest.ld").exists()
    assert not (out / "kvm-hello-world").exists()   # a handed-in binary never stands in for a build


def test_two_files_only_is_not_flagged(tmp_path):
    (tmp_path / "guest.c").write_text("int x;")
    (tmp_path / "kvm-hello-world.c").write_text("int main(){}")
    h = handin.read(tmp_path / "guest.c")
    assert not h.beyond_two and h.describe() == "" and h.variables() == {}


def test_extra_files_cost_nothing_unless_the_rubric_says_so(tmp_path):
    import json
    assert rubricmod.load().extra_files_deduction == 0
    data = json.loads((rubricmod.LAB_DIR / "rubric.json").read_text())
    data["extra_files_deduction"] = 3
    p = tmp_path / "r.json"
    p.write_text(json.dumps(data))
    assert rubricmod.load(p).extra_files_deduction == 3


def test_the_test_guests_mode_is_patched_into_one_build(tmp_path):
    from harness.kvmlab.build import with_mode
    b = tmp_path / "hv"
    b.write_bytes(b"\x7fELF...kvmlab-mode-ab12=1\0...")
    assert with_mode(b, "ab12", 3, tmp_path / "hv3")
    assert b"kvmlab-mode-ab12=3\0" in (tmp_path / "hv3").read_bytes() and b"=1" in b.read_bytes()
    b.write_bytes(b"kvmlab-mode-ab12=1 kvmlab-mode-ab12=1")   # twice: cannot tell which
    assert not with_mode(b, "ab12", 3, tmp_path / "hv4")
