"""The CI examples of docs/ci.md (docs/ci/*.yml) are valid YAML, run exactly the README's
commands, and keep what the page promises: a Debian 12 container, make setup, the unit,
e2e and fault suites, JUnit uploaded, the failed run's directories uploaded, the kernel
cache and ccache kept between runs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "docs" / "ci"
GITHUB = {"x86_64": CI / "github-x86.yml", "aarch64": CI / "github-arm64.yml"}
GITLAB = CI / "gitlab-ci.yml"
TOOLS = ("make", "pytest", "kvm-harness")  # a line starting with one of these is a harness command
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def readme_commands(text: str) -> set:
    """Every command the README shows: inline code spans and the lines of its code blocks,
    without comments."""
    found = set()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for line in [ln for b in blocks for ln in b.splitlines()] + inline:
        line = line.split(" #", 1)[0].strip()
        if line:
            found.add(" ".join(line.split()))
    return found


def harness_commands(lines) -> list:
    """The harness commands of CI shell lines, with leading VAR=value assignments (the
    JUnit and basetemp options go in PYTEST_ADDOPTS) taken off."""
    out = []
    for line in lines:
        for part in line.splitlines():
            words = shlex.split(part, comments=True)
            while words and ENV_ASSIGNMENT.match(words[0]):
                words.pop(0)
            if words and words[0] in TOOLS:
                out.append(" ".join(words))
    return out


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def github_steps(path: Path) -> list:
    return load(path)["jobs"]["e2e"]["steps"]


README = readme_commands((REPO / "README.md").read_text())


def test_readme_commands_are_found():
    """The extraction sees the README's own test commands (it can fail: a README without them)."""
    assert {"make setup", "make test", "pytest", "pytest -m e2e", "make faults"} <= README
    assert "make test" not in readme_commands("Run `make tests` or\n```sh\nmake check\n```\n")


@pytest.mark.parametrize("path", [*GITHUB.values(), GITLAB], ids=lambda p: p.name)
def test_ci_files_are_valid_yaml_and_run_the_readmes_commands(path):
    data = load(path)
    if path == GITLAB:
        lines = [ln for job in data.values() if isinstance(job, dict) for ln in job.get("script", [])]
    else:
        lines = [s["run"] for s in github_steps(path) if "run" in s]
    cmds = harness_commands(lines)
    assert cmds[0] == "make setup"
    assert [c for c in cmds if c not in README] == []  # exactly the README's commands
    assert {"pytest", "pytest -m e2e", "make faults"} <= set(cmds)  # make test's three suites


@pytest.mark.parametrize("arch,path", GITHUB.items())
def test_github_workflow_keeps_caches_and_uploads_reports(arch, path):
    data = load(path)
    job = data["jobs"]["e2e"]
    assert data.get("on", data.get(True))  # YAML 1.1 reads the key `on` as true
    assert job["container"]["image"] == "debian:12" and "--privileged" in job["container"]["options"]
    assert ("arm" in job["runs-on"]) == (arch == "aarch64")
    steps = job["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    cached = {s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache@")}
    assert cached == {".kvm-cache/kernels", ".kvm-cache/ccache"}
    assert any("KVM_HARNESS_CACHE=$PWD/.kvm-cache" in s.get("run", "") for s in steps)
    tests = [s for s in steps if harness_commands([s.get("run", "")])[:1] in (["pytest"], ["pytest -m e2e"],
                                                                            ["make faults"])]
    assert len(tests) == 3 and all("--junitxml=junit/" in s["env"]["PYTEST_ADDOPTS"] for s in tests)
    uploads = {s["with"]["name"]: s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")}
    assert uploads[f"junit-{arch}"]["if"] == "always()" and uploads[f"junit-{arch}"]["with"]["path"] == "junit/"
    runs = uploads[f"runs-{arch}"]
    assert runs["if"] == "failure()" and set(runs["with"]["path"].split()) == {"runs/", "pytest-tmp/"}


def test_gitlab_jobs_cache_and_report():
    data = load(GITLAB)
    base = data[".e2e"]
    assert base["image"] == "debian:12"
    assert {p for c in base["cache"] for p in c["paths"]} == {".kvm-cache/kernels", ".kvm-cache/ccache"}
    assert base["variables"]["KVM_HARNESS_CACHE"] == "$CI_PROJECT_DIR/.kvm-cache"
    assert base["artifacts"]["reports"]["junit"] == "junit/*.xml" and base["artifacts"]["when"] == "always"
    assert any("CI_JOB_STATUS" in ln and "rm -rf runs" in ln for ln in base["after_script"])
    jobs = {k: v for k, v in data.items() if not k.startswith(".") and isinstance(v, dict)}
    assert {k: v["extends"] for k, v in jobs.items()} == {"e2e-x86_64": ".e2e", "e2e-aarch64": ".e2e"}
    assert any("arm64" in t for t in jobs["e2e-aarch64"]["tags"])


def test_docs_page_links_every_ci_file():
    page = (REPO / "docs" / "ci.md").read_text()
    for path in (*GITHUB.values(), GITLAB):
        assert f"(ci/{path.name})" in page
