import os
from pathlib import Path

import pytest

from harness import cache, profiles


def cached_tree(version: str):
    """A pristine tree of this version already in the harness cache, else None."""
    for mk in sorted((cache.cache_root() / "sources").glob("*/*/Makefile")):
        try:
            if "%d.%d" % profiles.tree_version(mk.parent)[:2] == version:
                return mk.parent
        except Exception:
            continue
    return None


@pytest.fixture(scope="session")
def tree61():
    t = cached_tree("6.1")
    if t is None:
        pytest.skip("no extracted 6.1 tree in the harness cache: run `make run` once (it extracts linux-source-6.1)")
    return t


@pytest.fixture(scope="session")
def tree54():
    env = os.environ.get("KVM_HARNESS_KERNEL_TREE")
    if not env:
        pytest.skip("set KVM_HARNESS_KERNEL_TREE to a v5.4 tree to check the 5.4 fixtures against it")
    return Path(env)
