"""KVM-API lab tests.  Tests marked ``kvm`` need a usable /dev/kvm (opened and
asked KVM_GET_API_VERSION); elsewhere they are skipped with the probe's reason."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from harness.kvmlab.sandbox import kvm_usable

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import variants  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm on this machine (x86 KVM-API lab)")


def pytest_collection_modifyitems(config, items):
    reason = None
    checked = False
    for item in items:
        if item.get_closest_marker("kvm") is None:
            continue
        if not checked:
            reason, checked = kvm_usable(), True
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"/dev/kvm not usable: {reason}"))


def _grade(args):
    from harness.kvmlab.grade import grade
    path, out = args
    return grade(Path(path), Path(out))


@pytest.fixture(scope="session")
def kvmlab_cache(tmp_path_factory):
    """A private build cache, so tests never depend on (or fill) the user's cache."""
    d = tmp_path_factory.mktemp("kvmlab-cache")
    old = os.environ.get("KVMLAB_CACHE")
    os.environ["KVMLAB_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("KVMLAB_CACHE", None)
    else:
        os.environ["KVMLAB_CACHE"] = old


@pytest.fixture(scope="session")
def graded(tmp_path_factory, kvmlab_cache):
    """Every fixture submission and the reference, graded once (in parallel)."""
    from harness.kvmlab import LAB_DIR
    from harness.kvmlab.build import build_oracle

    build_oracle()
    src = tmp_path_factory.mktemp("kvmlab-subs")
    out = tmp_path_factory.mktemp("kvmlab-out")
    subs = {"reference": LAB_DIR / "reference", "student_ok": FIXTURES / "student_ok"}
    for name, v in {**variants.VARIANTS, **variants.FAIR}.items():
        subs[name] = variants.materialise(name, v["edits"], src)
    subs["fs_stdio"] = FIXTURES / "fs_stdio"
    for name, v in variants.STDIO_TEXT.items():
        subs[name] = variants.materialise(name, v["edits"], src, base=variants.STDIO)
    for name, edits in variants.SPECIAL.items():
        subs[name] = variants.materialise(name, edits, src)
    for name, v in variants.HANDIN.items():
        subs[name] = variants.materialise(name, v["edits"], src, files=v["files"])
    for name in variants.HANDIN_DIRS:
        subs[name] = FIXTURES / name
    jobs = [(str(p), str(out / n)) for n, p in subs.items()]
    with ProcessPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as ex:
        results = list(ex.map(_grade, jobs))
    return dict(zip(subs, results))
