#!/usr/bin/env bash
# The layout move of issue 19: harness/'s flat modules into packages that show the pipeline.
# Pending: run once on a clean main, commit the result as one pure-move commit, run CI, then
# delete this script (tested on the merged main of 2026-12-03: unit suite 725 passed after it).
#
#   cd <a checkout of kvm-hypercall-harness> && bash tools/relayout.sh
#
# Pure moves (git mv) plus the rewrites a move needs and nothing else: every import
# (relative `from .x`, `from ..x`, absolute `harness.x`), dotted names in strings
# (monkeypatch targets "harness.kbuild.x", `python -m harness.bench`), paths in text
# (`harness/kbuild.py`, the Makefile's `harness/hostarch.py`), and `Path(__file__)...parent.parent`
# of a module that now sits one level deeper.  It does not commit: review `git status`,
# run the unit tests, then commit (message printed at the end).
#
# Safe to run twice: it refuses when the tree is not clean, when a package below already
# exists; and it refuses when harness/ holds a top-level module that is in no list (a module
# another branch added: put it in one).  A listed module that is not there is skipped.
#
# Kernel, image and lab inputs under images/ and labs/, and the data files (ccache-cpp-key
# names ccache's namespace), are never rewritten: their bytes are build keys, and a changed
# comment would rebuild every kernel.  Their stale mentions of old paths are listed at the
# end.  harness/stack/images.py's own digest is a key of the root filesystems, so the first
# run after the move rebuilds those (not the kernels).
set -euo pipefail

# ---- the layout: package -> its modules (edit here; names without .py) -------------------
CORE="config errors deadline interrupts procs cache resources distro hostarch"
BUILD="sources patches profiles kbuild buildlog sandbox"
STACK="machine nested console ssh accel images qmp"
OBSERVE="workload trace hosttrace groundtruth analysis kernelrefs"
JOBS="run experiment scenarios report bench soak"
# data files (not modules) that move with a package
BUILD_DATA="ccache-cpp-key"
# what stays at the top: the entry points and the two applications
STAY="__init__ __main__ cli pytest_plugin grade kvmlab"

die() { echo "relayout: $*" >&2; exit 1; }

[ -f pyproject.toml ] && [ -d harness ] && [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$(pwd -P)" ] \
    || die "run me at the top of a checkout of kvm-hypercall-harness"
command -v python3 >/dev/null || die "python3 is needed"
[ -z "$(git status --porcelain --untracked-files=no)" ] || die "the work tree has changes: commit or stash them first"
for pkg in core build stack observe jobs; do
    [ ! -e "harness/$pkg" ] || die "harness/$pkg already exists: the move was done (or a module is named $pkg)"
done

declare -A PKG_OF
for m in $CORE; do PKG_OF[$m]=core; done
for m in $BUILD; do PKG_OF[$m]=build; done
for m in $STACK; do PKG_OF[$m]=stack; done
for m in $OBSERVE; do PKG_OF[$m]=observe; done
for m in $JOBS; do PKG_OF[$m]=jobs; done

# every tracked top-level entry of harness/ must be in a list
unknown=()
for entry in $(git ls-files harness | cut -d/ -f2 | sort -u); do
    name=${entry%.py}
    case " $STAY $BUILD_DATA " in *" $name "*) continue;; esac
    [ -n "${PKG_OF[$name]:-}" ] || unknown+=("$entry")
done
[ ${#unknown[@]} -eq 0 ] || die "harness/ has modules in no list: ${unknown[*]} (add each to CORE, BUILD, STACK, OBSERVE, JOBS or STAY at the top of this script)"
# a listed module that is not here (another branch's, not merged yet) is left out
for m in "${!PKG_OF[@]}"; do
    if ! [ -f "harness/$m.py" ] && ! [ -f "harness/$m/__init__.py" ]; then
        echo "relayout: harness/$m(.py) is not in this checkout: skipped"
        unset "PKG_OF[$m]"
    fi
done

# ---- the rewrites, computed on the old layout, written after the moves --------------------
export MOVES=""
for m in "${!PKG_OF[@]}"; do MOVES+="$m:${PKG_OF[$m]} "; done
export BUILD_DATA
PLAN=$(mktemp --suffix=.relayout.json)
export PLAN
trap 'rm -f "$PLAN"' EXIT
python3 - <<'PYEOF'
import ast
import json
import os
import re
import subprocess
from pathlib import Path

moves = dict(item.split(":") for item in os.environ["MOVES"].split())  # top-level name -> package
data = {name: "build" for name in os.environ["BUILD_DATA"].split()}

files = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.decode().split("\0")
files = [f for f in files if f and Path(f).is_file()]

# old module name -> file, for harness/**.py
def modname(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)

old_mods = {modname(f): f for f in files if f.startswith("harness/") and f.endswith(".py")}


def new_name(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) >= 2 and parts[0] == "harness" and parts[1] in moves:
        return ".".join(["harness", moves[parts[1]]] + parts[1:])
    return mod


def new_path(path: str) -> str:
    parts = Path(path).parts
    if len(parts) >= 2 and parts[0] == "harness":
        top = parts[1][:-3] if parts[1].endswith(".py") else parts[1]
        pkg = moves.get(top) or data.get(parts[1])
        if pkg:
            return str(Path("harness", pkg, *parts[1:]))
    return path


def package_of(mod: str, path: str) -> list:
    return mod.split(".") if path.endswith("__init__.py") else mod.split(".")[:-1]


def relative(base: str, pkg: list) -> str:
    """`from <this> import` naming absolute module ``base`` from inside package ``pkg``."""
    b = base.split(".")
    common = 0
    while common < min(len(b), len(pkg)) and b[common] == pkg[common]:
        common += 1
    return "." * (len(pkg) - common + 1) + ".".join(b[common:])


def rewrite_imports(path: str, text: str) -> str:
    """Each `from X import a, b` whose X is inside harness, for the new layout: grouped by
    the package each name now comes from, relative where it was relative."""
    mod = modname(path) if path.startswith("harness/") else None
    old_pkg = package_of(mod, path) if mod else None
    new_pkg = package_of(new_name(mod), new_path(path)) if mod else None
    lines = text.splitlines(keepends=True)
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))
    edits = []
    for node in ast.walk(ast.parse(text, path)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level and mod is None:
            continue  # a relative import outside harness/ (tests' helpers): not ours
        if node.level:
            base = ".".join(old_pkg[: len(old_pkg) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base != "harness" and not base.startswith("harness."):
            continue
        groups = {}  # new base -> [alias text]
        for a in node.names:
            full = f"{base}.{a.name}"
            if full in old_mods:
                nb, name = new_name(full).rsplit(".", 1)
            else:
                nb, name = new_name(base), a.name
            groups.setdefault(nb, []).append(name + (f" as {a.asname}" if a.asname else ""))
        stmts, frms = [], []
        for nb, names in groups.items():
            frms.append(relative(nb, new_pkg) if node.level else nb)
            stmts.append(f"from {frms[-1]} import {', '.join(names)}")
        if frms == ["." * node.level + (node.module or "")]:
            continue  # the same import in the new layout: left exactly as written
        start = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        old = text[start:end]
        line_start = text[starts[node.lineno - 1]:start]
        joiner = ("\n" + line_start) if not line_start.strip() else "; "
        new = joiner.join(stmts)
        if "#" in old:
            raise SystemExit(f"relayout: {path}:{node.lineno}: a comment inside an import; rewrite it by hand first")
        edits.append((start, end, new))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


names = "|".join(sorted(moves, key=len, reverse=True))
dotted = re.compile(r"(?<![\w.\-])harness\.(" + names + r")\b")
slashed = re.compile(r"(?<![\w.\-])harness/(" + names + r")(?=\.py\b|/)")
datafiles = re.compile(r"(?<![\w.\-])harness/(" + "|".join(map(re.escape, data)) + r")\b") if data else None

# `from harness import a, b` in a string or a text (a real statement was rewritten above)
from_harness = re.compile(r"\bfrom harness import ([A-Za-z_][\w]*(?:, *[A-Za-z_][\w]*)*)")


def split_from_harness(m) -> str:
    groups = {}
    for name in re.split(r", *", m.group(1)):
        groups.setdefault(f"harness.{moves[name]}" if name in moves else "harness", []).append(name)
    return "; ".join(f"from {base} import {', '.join(ns)}" for base, ns in groups.items())


# files whose bytes are build inputs: never rewritten, their stale mentions reported
FROZEN = re.compile(r"^(images/|labs/|" + "|".join(f"harness/{re.escape(d)}$" for d in data) + ")")
TEXT = re.compile(r"(^guest_tests/.*\.c|\.py|\.md|\.ya?ml|\.toml|\.sh|\.cfg|\.ini|\.txt|\.json)$|(^|/)(Makefile|run)$")

new_text, stale = {}, []
for f in files:
    if not TEXT.search(f) and not FROZEN.match(f):
        continue
    try:
        text = Path(f).read_text()
    except UnicodeDecodeError:
        continue
    if FROZEN.match(f):
        for m in list(dotted.finditer(text)) + list(slashed.finditer(text)):
            stale.append(f"{f}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}")
        continue
    out = rewrite_imports(f, text) if f.endswith(".py") else text
    if f == "docs/architecture.md":  # its note for the time before the move
        out = re.sub(r"\nUntil the layout move lands,[^\n]*\n[^\n]*\n", "", out)
    out = from_harness.sub(split_from_harness, out)
    out = dotted.sub(lambda m: f"harness.{moves[m.group(1)]}.{m.group(1)}", out)
    out = slashed.sub(lambda m: f"harness/{moves[m.group(1)]}/{m.group(1)}", out)
    if datafiles:
        out = datafiles.sub(lambda m: f"harness/{data[m.group(1)]}/{m.group(1)}", out)
    np = new_path(f)
    if np != f and f.endswith(".py") and np.count("/") > f.count("/"):
        # a module one level deeper: what it found two levels up is now three levels up
        out = out.replace("Path(__file__).resolve().parent.parent", "Path(__file__).resolve().parents[2]")
    if out != text:
        new_text[f] = out
# tests that climb from a moved module's file to the repository
for f in list(new_text) + [f for f in files if f.startswith("tests/") and f.endswith(".py")]:
    text = new_text.get(f) or Path(f).read_text()
    out = re.sub(r"Path\((" + names + r")\.__file__\)\.parent\.parent", r"Path(\1.__file__).parents[2]", text)
    if out != text:
        new_text[f] = out

Path(os.environ["PLAN"]).write_text(json.dumps({"text": new_text, "stale": stale}))
PYEOF

# ---- the moves ----------------------------------------------------------------------------
declare -A DOC
DOC[core]="The ground every stage stands on: configuration, typed errors naming the stage and whose fault,
bounded waits, Ctrl-C, the processes the harness started, the cache, disk and memory checks,
the distribution and the host architecture."
DOC[build]="Stage 1, build: kernel sources (tarball, tree, git), patches, kernel profiles, the
kernel build (worktrees, ccache and its preprocessor key), build-log reading and the sandbox for
untrusted builds."
DOC[stack]="Stage 2, the nested stack: L1's root filesystem and L2's initramfs, L1 under QEMU
(TCG or KVM), L2 under L1's KVM, serial consoles, SSH/SFTP."
DOC[observe]="Stage 3, observe: the workload in L2, its trace, L1's own trace (the ground truth),
the analysis of both, and references into the kernel tree used."
DOC[jobs]="Stage 4, the jobs that drive stages 1-3: the main run, the migration experiments with
their scenario library and report, the benchmark and the soak."
for pkg in core build stack observe jobs; do
    mkdir -p "harness/$pkg"
    printf '"""%s\n"""\n' "${DOC[$pkg]}" > "harness/$pkg/__init__.py"
    git add "harness/$pkg/__init__.py"
done
for m in "${!PKG_OF[@]}"; do
    if [ -d "harness/$m" ]; then git mv "harness/$m" "harness/${PKG_OF[$m]}/$m"
    else git mv "harness/$m.py" "harness/${PKG_OF[$m]}/$m.py"; fi
done
for d in $BUILD_DATA; do git mv "harness/$d" "harness/build/$d"; done

# ---- write the rewritten texts at their new paths -----------------------------------------
python3 - <<'PYEOF'
import json
import os
from pathlib import Path

moves = dict(item.split(":") for item in os.environ["MOVES"].split())
data = {name: "build" for name in os.environ["BUILD_DATA"].split()}
plan = json.loads(Path(os.environ["PLAN"]).read_text())


def new_path(path: str) -> str:
    parts = Path(path).parts
    if len(parts) >= 2 and parts[0] == "harness":
        top = parts[1][:-3] if parts[1].endswith(".py") else parts[1]
        pkg = moves.get(top) or data.get(parts[1])
        if pkg:
            return str(Path("harness", pkg, *parts[1:]))
    return path


for f, text in plan["text"].items():
    Path(new_path(f)).write_text(text)
print(f"relayout: {len(moves)} modules moved, {len(plan['text'])} files rewritten")
if plan["stale"]:
    print("relayout: left as they are (build inputs: changing their bytes changes build keys):")
    for s in plan["stale"]:
        print("  " + s)
PYEOF
git add -u
echo "relayout: done; check with: make setup-python && .venv/bin/python -m pytest -q"
echo "relayout: then: git commit -m 'layout: harness/{core,build,stack,observe,jobs}: pure moves, imports rewritten'"
