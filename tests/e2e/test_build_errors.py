"""A guest patch whose C does not compile: the run fails at the guest build, and its first
line names the file, the tool and the compiler's message (not make's last words)."""
from __future__ import annotations

import json

import pytest

from harness.build import buildlog
from harness.jobs import run as run_mod
from harness.core.config import override
from harness.core.errors import BuildError

from .helpers import require_stack_tools

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def _tools():
    require_stack_tools()

GOOD = "\treturn res.a0;\n"
BAD = "\treturn res.a0 + host_cpuid_undeclared;\n"
SOURCE = "arch/arm64/kernel/host_cpuid.c"


def line_in_new_file(patch: str, path: str, text: str) -> int:
    """The line number of ``text`` in the file the patch creates at ``path`` (the
    profiles' host_cpuid.c differ in their header comments: 21 on 6.1, 22 on 5.4)."""
    hunk = patch.split(f"+++ b/{path}\n", 1)[1].split("\ndiff --git ", 1)[0]
    added = [ln[1:] for ln in hunk.splitlines(keepends=True)[1:] if ln.startswith("+")]  # after the @@ line
    return added.index(text) + 1


def test_patch_whose_c_does_not_compile_names_file_and_error(harness_config, artefacts, e2e_runs, tmp_path):
    reference = artefacts.profile.reference_vm_patch.read_text()
    if reference.count(GOOD) != 1:
        pytest.skip(f"the {artefacts.profile.name} reference vm.patch has no single {GOOD.strip()!r} line to break")
    bad = tmp_path / "vm-does-not-compile.patch"
    bad.write_text(reference.replace(GOOD, BAD))
    cfg = override(harness_config, [f"patches.guest='{bad}'", "scenarios=[]"])
    run_dir = run_mod.new_run_dir(cfg, "bad-c")
    with pytest.raises(BuildError) as ei:
        run_mod.main_job(cfg, run_dir)
    e = ei.value
    assert e.stage == "kernel-build (guest)" and e.kind == "subject"
    first = e.render().splitlines()[0]
    assert first.startswith("FAILED at stage 'kernel-build (guest)' (the kernel/patch under test): guest kernel (")
    line = line_in_new_file(reference, SOURCE, GOOD)
    assert (f"vm-does-not-compile.patch) does not build: {SOURCE}:{line}: compiler: "
            "'host_cpuid_undeclared' undeclared (first use in this function)") in first
    # the tail is the lines around the error (a short -j1 retry log may end within them:
    # make's own last words may follow the error, never replace it)
    lines = e.tail.splitlines()
    at = next(i for i, ln in enumerate(lines) if "host_cpuid_undeclared" in ln)
    assert len(lines) <= buildlog.CONTEXT_BEFORE + buildlog.CONTEXT_AFTER + 1, e.tail
    assert not any("sub-make" in ln for ln in lines[:at]), e.tail
    assert json.loads((run_dir / "summary.json").read_text())["error"]["whose_fault"] == \
        "the kernel/patch under test"
