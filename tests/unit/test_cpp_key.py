"""ccache's key for kernel objects (harness/build/ccache-cpp-key): what a header edit that only
adds unused macros leaves behind must not change it; anything the compiler sees must.
Real gcc and real ccache on a two-file program."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.build import kbuild

GCC = kbuild.CROSS_COMPILE + "gcc"
pytestmark = pytest.mark.skipif(not shutil.which(GCC), reason=f"{GCC} not installed (make setup)")

HEADER = "#define USED 1\n\n#define OTHER 2\n"
SOURCE = '#include "h.h"\nint f(void) { return USED + __LINE__; }\n'


@pytest.fixture
def prog(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "h.h").write_text(HEADER)
    (tmp_path / "a.c").write_text(SOURCE)
    return tmp_path


def key_text(d: Path, to_stdout: bool = False) -> str:
    """The filtered preprocessor output, as ccache runs it (-o FILE) or to stdout."""
    argv = [str(kbuild.CPP_KEY), GCC, "-Iinc", "-E", "a.c"]
    if to_stdout:
        return subprocess.run(argv, cwd=d, check=True, capture_output=True, text=True).stdout
    subprocess.run(argv + ["-o", "a.i"], cwd=d, check=True)
    return (d / "a.i").read_text()


def test_unused_macros_and_blank_lines_leave_the_key_alone(prog):
    before = key_text(prog)
    (prog / "inc" / "h.h").write_text("/* HW2 */\n#define NEW_NR 451\n\n\n\n" + HEADER + "#define LAST 3\n")
    assert key_text(prog) == before
    assert key_text(prog, to_stdout=True) == before


def test_a_used_value_or_a_moved_line_of_the_source_changes_the_key(prog):
    before = key_text(prog)
    (prog / "inc" / "h.h").write_text(HEADER.replace("USED 1", "USED 2"))
    assert "return 2 + 2;" in key_text(prog) and key_text(prog) != before
    (prog / "inc" / "h.h").write_text(HEADER)
    (prog / "a.c").write_text("\n" + SOURCE)            # __LINE__ is expanded into the text
    assert "return 1 + 3;" in key_text(prog)


def test_every_header_entered_is_still_named(prog):
    text = key_text(prog)
    assert '# 0 "inc/h.h" 1' in text                     # ccache's direct mode learns includes here
    assert not any(line.strip() == "" for line in text.splitlines())


def test_a_failing_preprocessor_fails_the_filter(prog):
    (prog / "a.c").write_text('#include "missing.h"\n')
    r = subprocess.run([str(kbuild.CPP_KEY), GCC, "-E", "a.c", "-o", "a.i"], cwd=prog, capture_output=True, text=True)
    assert r.returncode != 0 and "missing.h" in r.stderr
    r = subprocess.run([str(kbuild.CPP_KEY), GCC, "-E", "a.c"], cwd=prog, capture_output=True, text=True)
    assert r.returncode != 0


@pytest.mark.skipif(not shutil.which("ccache"), reason="ccache not installed (make setup)")
def test_ccache_hits_across_an_unused_macro_and_the_object_is_the_compilers(prog):
    env = {**os.environ, **kbuild.ccache_env(prog / "ccache", base=prog), "CCACHE_STATSLOG": str(prog / "stats.log")}
    compile_ = ["-Iinc", "-Wp,-MMD,a.d", "-c", "a.c", "-o", "a.o"]

    def build(cached: bool) -> bytes:
        argv = (["ccache"] if cached else []) + [GCC] + compile_
        subprocess.run(argv, cwd=prog, env=env, check=True)
        return (prog / "a.o").read_bytes()

    def stats() -> dict:
        out = subprocess.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True, check=True).stdout
        return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines())}

    build(True)
    (prog / "inc" / "h.h").write_text("#define NEW_NR 451\n\n" + HEADER)   # vm.patch's kind of edit
    hit = build(True)
    assert stats()["preprocessed_cache_hit"] == 1
    assert hit == build(False)                                            # what gcc makes of it
    assert "inc/h.h" in (prog / "a.d").read_text()
    (prog / "inc" / "h.h").write_text(HEADER.replace("USED 1", "USED 5"))
    changed = build(True)
    assert stats()["cache_miss"] == 2 and changed != hit
    # the per-build log the harness reads for "N compiled, M from ccache"
    assert kbuild.ccache_counts(prog / "stats.log") == {"compiled": 2, "cached": 1}
    assert kbuild.ccache_counts(prog / "no-such.log") is None
