"""Every e2e test runs once per kernel:

  configured   the harness config (configs/default.yaml: Debian's own linux-source, 6.1 or 6.12,
               or whatever --harness-config / $KVM_HARNESS_CONFIG names)
  own-tree     a kernel tree of yours, e.g. a Linux v5.4 checkout:
                   KVM_HARNESS_KERNEL_TREE=~/linux-5.4 pytest -m e2e
               skipped, with that instruction, when the variable is not set

The profile (syscall number, reference patches, config fragments, compiler
workarounds) is picked from the tree's Makefile, so the same assertions hold on both.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.core import config as config_mod
from harness.core.config import ENV_TREE


@pytest.fixture(scope="session", params=["configured", "own-tree"])
def harness_config(request, harness_config):
    if request.param == "configured":
        return harness_config
    tree = os.environ.get(ENV_TREE)
    if not tree:
        pytest.skip(f"no kernel tree of your own: set {ENV_TREE}=/path/to/linux (e.g. a v5.4 checkout) "
                    "to run the e2e tests against it")
    tree = Path(tree).expanduser().resolve()
    if not (tree / "Makefile").is_file():
        pytest.fail(f"{ENV_TREE}={tree}: not a kernel tree (no Makefile)")
    output = Path(harness_config.output) / "own-tree"
    return config_mod.override(harness_config, config_mod.tree_assignments(tree) + [
        "kernel.profile=auto", f"output='{output}'",
    ])
