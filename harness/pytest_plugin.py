"""Reusable pytest fixtures for end-to-end tests of the nested stack.

Use them from your own tests with, in a conftest.py:

    pytest_plugins = ["harness.pytest_plugin"]

    @pytest.mark.e2e
    def test_mine(nested_stack):
        out = nested_stack.l2_ssh.run(["uname", "-r"]).out      # L2 over SSH
        nested_stack.l1_ssh.run(["cat", "/proc/cpuinfo"])       # L1 over SSH

Fixtures:
  harness_config   the Config (``--harness-config FILE`` or $KVM_HARNESS_CONFIG, else
                   configs/default.yaml); ``--harness-set KEY=VALUE`` overrides keys
  artefacts        kernels, images and workload for that config (built once, cached)
  nested_stack     L1 booted + L2 running inside it (one per test module); its logs
                   stay in the printed run directory
  l1_ssh, l2_ssh   the SSH sessions of that stack
  stack_factory    boot another stack with config overrides: stack_factory(**{"patches.host": "none"})
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .core import config as config_mod
from .jobs import run as run_mod


def pytest_addoption(parser):
    g = parser.getgroup("kvm-harness")
    g.addoption("--harness-config", default=os.environ.get("KVM_HARNESS_CONFIG"),
                help="harness YAML config for e2e fixtures (default: configs/default.yaml)")
    g.addoption("--harness-set", action="append", default=[], metavar="KEY=VALUE",
                help="override a config key for e2e fixtures (repeatable)")
    g.addoption("--harness-runs", default=os.environ.get("KVM_HARNESS_RUNS", "runs/e2e"),
                help="where e2e run directories are kept (default: runs/e2e)")


_capture = None          # pytest's capture manager, set in pytest_configure
_mid_line = False        # pytest may have written a '.' since our last line


def pytest_configure(config):
    global _capture
    _capture = config.pluginmanager.getplugin("capturemanager")


def pytest_runtest_logreport(report):
    global _mid_line
    _mid_line = True


def _progress(msg: str) -> None:
    """Progress straight to the terminal: pytest captures fixture output, and a cold e2e
    session spends minutes building kernels that a CI log should show as they go."""
    global _mid_line
    line = f"[harness {time.strftime('%H:%M:%S')}] {msg}"
    if _capture is None:
        print(line, flush=True)
        return
    with _capture.global_and_fixture_disabled():
        print(("\n" if _mid_line else "") + line, flush=True)
    _mid_line = False


@pytest.fixture(scope="session")
def harness_config(pytestconfig) -> config_mod.Config:
    cfg = config_mod.load(pytestconfig.getoption("harness_config"))
    sets = list(pytestconfig.getoption("harness_set"))
    sets.append(f"output={Path(pytestconfig.getoption('harness_runs')).resolve()}")
    return config_mod.override(cfg, sets)


@pytest.fixture(scope="session")
def e2e_runs(harness_config) -> Path:
    p = Path(harness_config.output)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _run_dir(cfg, name: str) -> Path:
    d = run_mod.new_run_dir(cfg, name)
    _progress(f"run directory: {d}")
    return d


@pytest.fixture(scope="session")
def artefacts(harness_config, e2e_runs):
    log_dir = e2e_runs / "build-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    return run_mod.prepare(harness_config, log_dir, _progress)


class StackFactory:
    def __init__(self, cfg, runs: Path):
        self.cfg = cfg
        self.runs = runs
        self.stacks = []

    def __call__(self, name: str = "stack", **overrides) -> "run_mod.Stack":
        cfg = config_mod.override(self.cfg, [f"{k}={v}" for k, v in overrides.items()]) if overrides else self.cfg
        run_dir = _run_dir(cfg, name)
        art = run_mod.prepare(cfg, run_dir / "logs", _progress)
        stack = run_mod.Stack(cfg, art, run_dir, _progress)
        self.stacks.append(stack)
        return stack.__enter__()

    def close(self) -> None:
        while self.stacks:
            self.stacks.pop().close()


@pytest.fixture
def stack_factory(harness_config, e2e_runs):
    f = StackFactory(harness_config, e2e_runs)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def nested_stack(harness_config, artefacts, e2e_runs, request):
    name = request.module.__name__.rsplit(".", 1)[-1]
    stack = run_mod.Stack(harness_config, artefacts, _run_dir(harness_config, name), _progress)
    with stack:
        yield stack


@pytest.fixture
def l1_ssh(nested_stack):
    return nested_stack.l1_ssh


@pytest.fixture
def l2_ssh(nested_stack):
    return nested_stack.l2_ssh
