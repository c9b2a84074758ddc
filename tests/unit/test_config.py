"""harness/core/config.py: loading, strict validation, overrides, paths."""
from pathlib import Path

import pytest

from harness.core import config
from harness.core.errors import ConfigError, INPUT


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# -- the shipped default -------------------------------------------------------------------

def test_default_yaml_loads_and_matches_the_documented_setup():
    cfg = config.load()
    assert cfg.source_file == str(config.DEFAULT_CONFIG)
    assert cfg.kernel.source == "debian" and cfg.kernel.profile == "auto"
    assert (cfg.patches.host, cfg.patches.guest) == ("reference", "reference")
    assert (cfg.l1.cpus, cfg.l1.memory_mb, cfg.l1.cpu_model) == (4, 2048, "cortex-a57")
    assert (cfg.l2.cpus, cfg.l2.memory_mb) == (2, 384)
    names = [s.name for s in cfg.scenarios]
    assert names == ["pinned", "unpinned", "loaded"]
    pinned = cfg.scenarios[0]
    # keys are ints (vCPU -> pCPU) and every vCPU is pinned to a *different* pCPU
    assert pinned.pin == {0: 3, 1: 2} and all(v != p for v, p in pinned.pin.items())
    assert pinned.compare is True
    assert cfg.scenarios[2].host_load == 3


def test_load_explicit_path_equals_default(tmp_path):
    p = write(tmp_path, config.DEFAULT_CONFIG.read_text())
    a, b = config.load(p), config.load()
    assert a.l1 == b.l1 and a.scenarios == b.scenarios and a.source_file == str(p)


def test_empty_file_gives_defaults(tmp_path):
    cfg = config.load(write(tmp_path, ""))
    assert cfg.l1.cpus == config.L1Config().cpus and cfg.scenarios == []


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as ei:
        config.load(tmp_path / "nope.yaml")
    assert "cannot read config" in str(ei.value) and "nope.yaml" in str(ei.value)
    assert ei.value.stage == "config" and ei.value.kind == INPUT


# -- unknown keys and types ----------------------------------------------------------------

def test_unknown_nested_key_names_dotted_key_and_file(tmp_path):
    p = write(tmp_path, "l1:\n  cpu: 4\n")
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    msg = ei.value.message
    assert "unknown key l1.cpu" in msg
    assert str(p) in msg
    assert "cpus" in msg  # the allowed keys are listed


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key scenario\b"):
        config.load(write(tmp_path, "scenario: []\n"))


def test_unknown_key_inside_scenario(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key scenarios\[0\]\.pins"):
        config.load(write(tmp_path, "scenarios:\n  - name: a\n    pins: {0: 1}\n"))


@pytest.mark.parametrize("text,key,expected", [
    ('l1:\n  cpus: "4"\n', "l1.cpus", "expected an integer"),
    ("l1:\n  cpus: true\n", "l1.cpus", "expected an integer"),
    ("l1:\n  cpus: 2.5\n", "l1.cpus", "expected an integer"),
    ("kernel:\n  ccache: 1\n", "kernel.ccache", "expected true or false"),
    ("l1: [1, 2]\n", "l1", "expected a mapping"),
    ("scenarios: {name: a}\n", "scenarios", "expected a list"),
    ("scenarios:\n  - name: a\n    duration_s: true\n", "scenarios[0].duration_s", "expected a number"),
    ("scenarios:\n  - name: a\n    pin: {x: 1}\n", "scenarios[0].pin.x", "expected an integer"),
    ("l1:\n  cpu_model: [a]\n", "l1.cpu_model", "expected a string"),
])
def test_wrong_types_name_the_key(tmp_path, text, key, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert f"{key}: {expected}" in ei.value.message
    assert ei.value.message.startswith(f"{p}: ")


def test_number_for_string_is_accepted():
    cfg = config.from_dict({"kernel": {"profile": 6.1}})
    assert cfg.kernel.profile == "6.1"


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.load(write(tmp_path, "- a\n- b\n"))


def test_scenario_without_name_is_an_error():
    with pytest.raises(ConfigError, match=r"scenarios\[0\]"):
        config.from_dict({"scenarios": [{"calls": 5}]})


def test_invalid_yaml_reports_line_and_column(tmp_path):
    p = write(tmp_path, "l1:\n  cpus: 4\n  memory_mb: [1, 2\nl2: {}\n")
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    msg = ei.value.message
    assert str(p) in msg and "not valid YAML" in msg
    assert "line 4" in msg and "column" in msg


def test_invalid_yaml_tab_indent(tmp_path):
    p = write(tmp_path, "l1:\n\tcpus: 4\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1"):
        config.load(p)


# -- range validation ----------------------------------------------------------------------

@pytest.mark.parametrize("data,fragment", [
    ({"l1": {"cpus": 0}}, "l1.cpus: must be in 1..64"),
    ({"l1": {"cpus": 65}}, "l1.cpus: must be in 1..64"),
    ({"l1": {"memory_mb": 256}}, "l1.memory_mb"),
    ({"l1": {"accel": "hvf"}}, "l1.accel"),
    ({"l2": {"cpus": 17}}, "l2.cpus"),
    ({"l2": {"memory_mb": 64}}, "l2.memory_mb"),
    ({"kernel": {"source": "svn"}}, "kernel.source"),
    ({"kernel": {"source": "path"}}, "kernel.path: required"),
    ({"kernel": {"source": "git"}}, "kernel.git: required"),
    ({"kernel": {"jobs": -1}}, "kernel.jobs"),
])
def test_value_ranges(data, fragment):
    with pytest.raises(ConfigError) as ei:
        config.from_dict(data, "x.yaml")
    assert fragment in ei.value.message and ei.value.message.startswith("x.yaml: ")


def test_git_source_is_built():
    cfg = config.from_dict({"kernel": {"source": "git", "git": {"url": "https://e/x.git"}}})
    assert cfg.kernel.git == config.GitSource(url="https://e/x.git", ref="HEAD")


def test_pin_to_vcpu_out_of_range():
    with pytest.raises(ConfigError) as ei:
        config.from_dict({"l2": {"cpus": 2}, "scenarios": [{"name": "p", "pin": {2: 0}}]}, "f.yaml")
    msg = ei.value.message
    assert "scenarios[p].pin" in msg and "vCPU 2 does not exist" in msg and "l2.cpus = 2" in msg
    assert msg.startswith("f.yaml: ")


def test_pin_to_pcpu_out_of_range():
    with pytest.raises(ConfigError) as ei:
        config.from_dict({"l1": {"cpus": 4}, "scenarios": [{"name": "p", "pin": {0: 4}}]})
    assert "pCPU 4 does not exist" in ei.value.message and "l1.cpus = 4" in ei.value.message


def test_negative_pin_is_rejected():
    with pytest.raises(ConfigError, match="vCPU -1 does not exist"):
        config.from_dict({"scenarios": [{"name": "p", "pin": {-1: 0}}]})


def test_vcpus_out_of_range():
    with pytest.raises(ConfigError, match=r"scenarios\[s\]\.vcpus: vCPU 5"):
        config.from_dict({"scenarios": [{"name": "s", "vcpus": [0, 5]}]})


def test_pin_in_range_is_fine_at_the_edges():
    cfg = config.from_dict({"l1": {"cpus": 4}, "l2": {"cpus": 2},
                            "scenarios": [{"name": "edge", "pin": {0: 3, 1: 0}, "vcpus": [1]}]})
    assert cfg.scenarios[0].pin == {0: 3, 1: 0} and cfg.scenarios[0].vcpus == [1]


def test_duplicate_scenario_names(tmp_path):
    p = write(tmp_path, "scenarios:\n  - name: a\n  - name: b\n  - name: a\n")
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert "duplicate name 'a'" in ei.value.message and str(p) in ei.value.message


@pytest.mark.parametrize("sc,fragment", [
    ({"name": "bad name"}, ".name"),
    ({"name": ""}, ".name"),
    ({"name": "s", "calls": 0}, ".calls"),
    ({"name": "s", "duration_s": 0}, ".duration_s"),
    ({"name": "s", "host_load": -1}, ".host_load"),
])
def test_scenario_field_validation(sc, fragment):
    with pytest.raises(ConfigError) as ei:
        config.from_dict({"scenarios": [sc]})
    assert fragment in ei.value.message


def test_duration_without_calls_is_allowed():
    cfg = config.from_dict({"scenarios": [{"name": "t", "calls": 0, "duration_s": 1.5}]})
    assert cfg.scenarios[0].duration_s == 1.5


# -- overrides -----------------------------------------------------------------------------

def test_override_sets_values_and_keeps_source_file():
    base = config.load()
    cfg = config.override(base, ["l1.cpus=8", "kernel.profile=6.1", "patches.host=none", "output=/tmp/out"])
    assert cfg.l1.cpus == 8 and cfg.kernel.profile == "6.1"
    assert cfg.patches.host == "none" and cfg.output == "/tmp/out"
    assert cfg.source_file == base.source_file
    assert base.l1.cpus == 4  # the original is untouched
    assert [s.name for s in cfg.scenarios] == [s.name for s in base.scenarios]


def test_override_value_parsed_as_yaml():
    cfg = config.override(config.from_dict({}), ["kernel.ccache=false", "scenarios=[{name: x, calls: 3}]"])
    assert cfg.kernel.ccache is False
    assert cfg.scenarios == [config.Scenario(name="x", calls=3)]


def test_override_fills_an_optional_section():
    cfg = config.override(config.from_dict({}), ["kernel.source=git", "kernel.git.url=https://h/l.git",
                                                 "kernel.git.ref=v6.1"])
    assert cfg.kernel.git == config.GitSource(url="https://h/l.git", ref="v6.1")


def test_override_errors():
    base = config.from_dict({}, "c.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.override(base, ["l1.cpus"])
    with pytest.raises(ConfigError, match="no such section 'nosuch'"):
        config.override(base, ["nosuch.x=1"])
    with pytest.raises(ConfigError, match=r"unknown key l1\.cpu\b"):
        config.override(base, ["l1.cpu=4"])
    with pytest.raises(ConfigError, match=r"l1\.cpus: expected an integer"):
        config.override(base, ["l1.cpus=four"])
    with pytest.raises(ConfigError, match=r"l1\.cpus: must be in 1\.\.64"):
        config.override(base, ["l1.cpus=100"])


def test_override_validates_scenarios_against_new_cpu_counts():
    base = config.load()  # pinned: {0: 3, 1: 2}
    with pytest.raises(ConfigError, match="pCPU 3 does not exist"):
        config.override(base, ["l1.cpus=2"])


# -- paths ---------------------------------------------------------------------------------

def test_resolve_path_relative_to_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    p = write(sub, "patches:\n  host: ../my/kvm.patch\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # the current directory must not matter
    cfg = config.load(p)
    got = cfg.resolve_path(cfg.patches.host)
    assert got.is_absolute()
    assert got.resolve() == (tmp_path / "my" / "kvm.patch").resolve()


def test_resolve_path_relative_config_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "c.yaml").write_text("")
    cfg = config.load("d/c.yaml")
    assert cfg.resolve_path("x.patch") == tmp_path.resolve() / "d" / "x.patch"


def test_resolve_path_absolute_and_home(tmp_path, monkeypatch):
    cfg = config.load(write(tmp_path, ""))
    assert cfg.resolve_path("/abs/p") == Path("/abs/p")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cfg.resolve_path("~/k.patch") == tmp_path / "home" / "k.patch"


def test_resolve_path_without_source_file_is_unchanged():
    cfg = config.from_dict({})
    assert cfg.resolve_path("rel/p") == Path("rel/p")
