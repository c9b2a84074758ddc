import os
from pathlib import Path
from typing import Optional, Tuple

import pytest

from harness.core import cache, distro
from harness.build import profiles, sandbox, sources
from harness.core.errors import HarnessError, SourceError

@pytest.fixture(scope="session")
def needs_sandbox():
    """Skip (naming why) where bubblewrap cannot make a sandbox: e.g. an arm64 userland
    under qemu-user, which cannot create user namespaces (tools/arm64-check.sh)."""
    why = sandbox.unusable()
    if why:
        pytest.skip(f"needs a working bubblewrap sandbox: {why}")


# grade another Debian tarball than this machine's default (the profile follows its version)
ENV_GRADE_TARBALL = "KVM_HARNESS_GRADE_TARBALL"


def cached_tree(version: str):
    """A pristine tree of this version already in the harness cache, else None."""
    for mk in sorted((cache.cache_root() / "sources").glob("*/*/Makefile")):
        try:
            if "%d.%d" % profiles.tree_version(mk.parent)[:2] == version:
                return mk.parent
        except Exception:
            continue
    return None


def tarball_profile(tarball: Path) -> str:
    """The profile that grades a linux-source-X.Y.tar.xz (what the grader selects once extracted)."""
    m = distro.TARBALL.match(tarball.name)
    if not m:
        raise ValueError(f"{tarball}: not named linux-source-X.Y.tar.xz")
    return profiles.select((int(m.group(1)), int(m.group(2)), 0)).name


def machine_default() -> Optional[str]:
    """The profile of the tarball `kernel.tarball: auto` picks here (6.1 on Debian 12, 6.12 on
    Debian 13), None when /usr/src has none."""
    try:
        return tarball_profile(sources.auto_tarball()[0])
    except (SourceError, ValueError):
        return None


def grading_source() -> Tuple[Optional[Path], str]:
    """(tarball, profile) the grading e2e tests grade on: $KVM_HARNESS_GRADE_TARBALL (tarball
    given), else this machine's default (tarball None: configs/grade.yaml's `auto` picks it)."""
    env = os.environ.get(ENV_GRADE_TARBALL)
    if env:
        tarball = Path(env).expanduser().resolve()
        if not tarball.is_file():
            pytest.fail(f"{ENV_GRADE_TARBALL}={env}: no such file")
        try:
            return tarball, tarball_profile(tarball)
        except (ValueError, HarnessError) as e:
            pytest.fail(f"{ENV_GRADE_TARBALL}={env}: {getattr(e, 'message', e)}")
    try:
        tarball, _ = sources.auto_tarball()
    except SourceError as e:
        pytest.skip(f"no kernel source to grade on: {e.message}")
    return None, tarball_profile(tarball)


def tree_or_skip(version: str) -> Path:
    t = cached_tree(version)
    if t is None:
        default = machine_default()
        if version == default:
            how = f"run `make run` once (it extracts linux-source-{version})"
        else:
            how = (f"run `kvm-harness build --set kernel.tarball=/usr/src/linux-source-{version}.tar.xz` once "
                   f"(it extracts it first; `make run` extracts "
                   f"{'linux-source-' + default if default else 'the default tarball'} on this machine)")
        pytest.skip(f"no extracted {version} tree in the harness cache: {how}")
    return t


@pytest.fixture(scope="session")
def tree54():
    env = os.environ.get("KVM_HARNESS_KERNEL_TREE")
    if not env:
        pytest.skip("set KVM_HARNESS_KERNEL_TREE to a v5.4 tree to check the 5.4 fixtures against it")
    return Path(env)
