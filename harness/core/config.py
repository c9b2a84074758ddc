"""The run configuration: a YAML file validated against typed dataclasses.

Every mistake is reported with the file and the dotted key (``l1.cpus``), and an
unknown key is an error, not silently ignored (a typo must not run the defaults).
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
DEFAULT_CONFIG = CONFIGS / "default.yaml"


@dataclass
class GitSource:
    url: str
    ref: str = "HEAD"


@dataclass
class KernelConfig:
    # debian: Debian's linux-source tarball; path: a tree on disk; git: url + ref
    source: str = "debian"
    path: Optional[str] = None
    git: Optional[GitSource] = None
    # auto: this Debian release's own /usr/src/linux-source-X.Y.tar.xz (6.1 on Debian 12,
    # 6.12 on Debian 13), else the newest one there with a kernel profile (harness/core/distro.py)
    tarball: str = "auto"
    # auto: chosen from the tree's version; or a profile name ("6.1", "5.4")
    profile: str = "auto"
    jobs: int = 0  # 0 = number of CPUs
    ccache: bool = True
    sandbox: bool = False  # build under bubblewrap (no network, writes to the worktree only)
    # sandboxed builds write ccache under this directory (one per worktree) and read the shared
    # one read-only, so untrusted code cannot poison objects that trusted builds and later
    # batches reuse (kvm-harness grade: <out>/.ccache)
    sandbox_ccache: Optional[str] = None

    def validate(self, where: str) -> None:
        if self.source not in ("debian", "path", "git"):
            raise ConfigError(f"{where}kernel.source: must be debian, path or git, not {self.source!r}")
        if self.source == "path" and not self.path:
            raise ConfigError(f"{where}kernel.path: required when kernel.source is 'path'")
        if self.source == "git" and not self.git:
            raise ConfigError(f"{where}kernel.git: required (url, ref) when kernel.source is 'git'")
        if self.jobs < 0:
            raise ConfigError(f"{where}kernel.jobs: must be >= 0")


@dataclass
class PatchConfig:
    # "reference": the profile's own patch; "none": unpatched; else a path to a .patch file
    host: str = "reference"
    guest: str = "reference"


@dataclass
class L1Config:
    cpus: int = 4
    memory_mb: int = 2048
    cpu_model: str = "cortex-a57"
    accel: str = "auto"  # auto | tcg | kvm
    append: str = ""     # extra kernel command line
    restrict_net: bool = False  # L1's user-mode network without outside access (restrict=on)
    confine: bool = False       # L0's QEMU under bubblewrap (it boots an untrusted kernel: grading)

    def validate(self, where: str) -> None:
        if not 1 <= self.cpus <= 64:
            raise ConfigError(f"{where}l1.cpus: must be in 1..64, got {self.cpus}")
        if self.memory_mb < 512:
            raise ConfigError(f"{where}l1.memory_mb: at least 512 (L2 lives inside it), got {self.memory_mb}")
        if self.accel not in ("auto", "tcg", "kvm"):
            raise ConfigError(f"{where}l1.accel: must be auto, tcg or kvm, not {self.accel!r}")


@dataclass
class L2Config:
    cpus: int = 2
    memory_mb: int = 384
    append: str = ""

    def validate(self, where: str) -> None:
        if not 1 <= self.cpus <= 16:
            raise ConfigError(f"{where}l2.cpus: must be in 1..16, got {self.cpus}")
        if self.memory_mb < 128:
            raise ConfigError(f"{where}l2.memory_mb: at least 128, got {self.memory_mb}")


KINDS = ("pinned", "unpinned", "loaded", "overcommit", "repin", "hotplug")
ACTIONS = ("repin", "offline", "online")


@dataclass
class Action:
    """Something the harness does in L1 while the workload runs (scenario kinds repin, hotplug)."""
    at_s: float              # seconds after the workload started
    do: str                  # repin: move vCPU `vcpu`'s thread to pCPU `cpu`; offline/online: L1 CPU `cpu`
    cpu: int
    vcpu: Optional[int] = None


@dataclass
class Scenario:
    name: str
    # what the scenario demonstrates; its expectation is checked (harness/jobs/scenarios.py).
    # "" = derived: loaded with host_load, pinned with pins, else unpinned
    kind: str = ""
    # vCPU index -> L1 CPU its thread is pinned to with taskset; empty = not pinned
    pin: Dict[int, int] = field(default_factory=dict)
    # vCPUs the workload runs on (one pinned process each, concurrently); empty = all
    vcpus: List[int] = field(default_factory=list)
    calls: int = 2000
    duration_s: Optional[float] = None
    # number of busy loops started in L1 for the duration of the scenario
    host_load: int = 0
    # also run the workload in getppid mode and bare (unrecorded) mode for comparison
    compare: bool = False
    # mid-run actions in L1, in time order
    actions: List[Action] = field(default_factory=list)
    # measure the L1 tracer's cost: calls/s with tracing on and off, interleaved
    trace_overhead: bool = False

    @property
    def resolved_kind(self) -> str:
        if self.kind:
            return self.kind
        return "loaded" if self.host_load else "pinned" if self.pin else "unpinned"

    def validate(self, where: str, l1: L1Config, l2: L2Config) -> None:
        key = f"{where}scenarios[{self.name}]"
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{key}.name: letters, digits, '-' and '_' only")
        for v, p in self.pin.items():
            if not 0 <= v < l2.cpus:
                raise ConfigError(f"{key}.pin: vCPU {v} does not exist (l2.cpus = {l2.cpus})")
            if not 0 <= p < l1.cpus:
                raise ConfigError(f"{key}.pin: pCPU {p} does not exist (l1.cpus = {l1.cpus})")
        for v in self.vcpus:
            if not 0 <= v < l2.cpus:
                raise ConfigError(f"{key}.vcpus: vCPU {v} does not exist (l2.cpus = {l2.cpus})")
        if self.calls < 1 and self.duration_s is None:
            raise ConfigError(f"{key}.calls: must be >= 1 (or give duration_s)")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"{key}.duration_s: must be > 0")
        if self.host_load < 0:
            raise ConfigError(f"{key}.host_load: must be >= 0")
        if self.kind and self.kind not in KINDS:
            raise ConfigError(f"{key}.kind: must be one of {', '.join(KINDS)}, not {self.kind!r}")
        last = 0.0
        for i, a in enumerate(self.actions):
            akey = f"{key}.actions[{i}]"
            if a.do not in ACTIONS:
                raise ConfigError(f"{akey}.do: must be one of {', '.join(ACTIONS)}, not {a.do!r}")
            if a.at_s < last:
                raise ConfigError(f"{akey}.at_s: actions must be in time order ({a.at_s} < {last})")
            last = a.at_s
            if not 0 <= a.cpu < l1.cpus:
                raise ConfigError(f"{akey}.cpu: pCPU {a.cpu} does not exist (l1.cpus = {l1.cpus})")
            if a.do == "repin" and (a.vcpu is None or not 0 <= a.vcpu < l2.cpus):
                raise ConfigError(f"{akey}.vcpu: a repin needs an existing vCPU (l2.cpus = {l2.cpus})")
            if a.do != "repin" and a.vcpu is not None:
                raise ConfigError(f"{akey}.vcpu: only a repin names a vCPU")
            if a.do == "offline" and a.cpu == 0:
                raise ConfigError(f"{akey}.cpu: CPU 0 cannot be taken offline on arm64")
        if self.actions and (self.duration_s is None or self.duration_s <= last):
            raise ConfigError(f"{key}.duration_s: actions need the workload to run longer than the last "
                              f"action (at {last} s)")
        kind = self.resolved_kind
        need = {
            "pinned": (bool(self.pin), "needs pin"),
            "loaded": (self.host_load > 0, "needs host_load > 0"),
            "overcommit": (len(self.pin) >= 2 and len(set(self.pin.values())) < len(self.pin)
                           or l2.cpus > l1.cpus, "needs two vCPUs pinned to one pCPU (or l2.cpus > l1.cpus)"),
            "repin": ([a.do for a in self.actions] == ["repin"] and self.actions[0].vcpu in self.pin,
                      "needs its vCPU pinned first and exactly one repin action"),
            "hotplug": ("offline" in [a.do for a in self.actions], "needs an offline action"),
        }
        ok, why = need.get(kind, (True, ""))
        if not ok:
            raise ConfigError(f"{key}: kind {kind} {why}")


@dataclass
class TraceConfig:
    """Which HVCs L1's tracer counts as host_cpuid calls.  Default: the kernel profile's
    function ID.  A submission with its own design: its x0 value and/or HVC immediate."""
    func_id: Optional[int] = None
    imm: Optional[int] = None

    def validate(self, where: str) -> None:
        if self.func_id is not None and not 0 <= self.func_id <= 0xFFFFFFFF:
            raise ConfigError(f"{where}trace.func_id: a 32-bit function ID, got {self.func_id:#x}")
        if self.imm is not None and not 0 <= self.imm <= 0xFFFF:
            raise ConfigError(f"{where}trace.imm: an HVC immediate is 16 bits, got {self.imm}")


@dataclass
class Config:
    kernel: KernelConfig = field(default_factory=KernelConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    l1: L1Config = field(default_factory=L1Config)
    l2: L2Config = field(default_factory=L2Config)
    trace: TraceConfig = field(default_factory=TraceConfig)
    scenarios: List[Scenario] = field(default_factory=list)
    output: str = "runs"  # run directories go here (relative to the current directory)
    source_file: Optional[str] = None  # where it was loaded from (not a YAML key)

    def validate(self) -> "Config":
        where = f"{self.source_file}: " if self.source_file else ""
        self.kernel.validate(where)
        self.l1.validate(where)
        self.l2.validate(where)
        self.trace.validate(where)
        names = set()
        for s in self.scenarios:
            s.validate(where, self.l1, self.l2)
            if s.name in names:
                raise ConfigError(f"{where}scenarios: duplicate name {s.name!r}")
            names.add(s.name)
        return self

    def resolve_path(self, value: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(value).expanduser()
        if not p.is_absolute() and self.source_file:
            p = Path(self.source_file).resolve().parent / p
        return p


# ---------------------------------------------------------------------------
# Generic, strict conversion of plain YAML data into the dataclasses above.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}", stage="config")
        return _build(tp, value, key)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_convert(k, args[0], f"{key}.{k}"): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. profile: 6.1
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "source_file"}
    unknown = sorted(set(map(str, data)) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}.{name}" if prefix else name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def from_dict(data: Optional[dict], source_file: Optional[str] = None) -> Config:
    where = f"{source_file}: " if source_file else ""
    try:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError("the top level must be a mapping")
        cfg = _build(Config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}{e.message}") from None
    cfg.source_file = source_file
    return cfg.validate()


def load(path: Union[str, Path, None] = None) -> Config:
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{loc} not valid YAML: {getattr(e, 'problem', e)}") from None
    return from_dict(data, str(path))


def tree_assignments(tree: Union[str, Path]) -> List[str]:
    """The override() assignments that point the kernel source at a directory (absolute)."""
    return ["kernel.source=path", f"kernel.path={json.dumps(str(Path(tree).expanduser().resolve()))}"]


def is_local_repository(url: str) -> bool:
    """A git "URL" that is a directory on this machine (to be made absolute), not a remote."""
    return "://" not in url and not url.startswith("git@") and Path(url).expanduser().exists()


ENV_TREE = "KVM_HARNESS_KERNEL_TREE"


def from_args(args, default_config: bool = False) -> Config:
    """The config of a command from its parsed arguments (``-c``, ``--set``, ``--kernel-tree``,
    ``--kernel-git``/``--kernel-ref``, ``--kvm-patch``/``--vm-patch``, ``-o``).
    $KVM_HARNESS_KERNEL_TREE applies when the config is the command's default
    (``default_config``: the command filled in ``args.config`` itself), never over a config
    the user named."""
    cfg = load(args.config)
    sets = list(args.set or [])
    use_env = default_config or not args.config
    tree = args.kernel_tree or (os.environ.get(ENV_TREE) if use_env else None)
    if tree and args.kernel_git:
        raise ConfigError("--kernel-tree and --kernel-git name two different trees: give one")
    if tree:
        sets += tree_assignments(tree)
    if args.kernel_git:
        if not args.kernel_ref:
            raise ConfigError("--kernel-git needs --kernel-ref (a tag, branch or commit, e.g. v5.4)")
        url = args.kernel_git
        if is_local_repository(url):
            url = str(Path(url).expanduser().resolve())
        sets += ["kernel.source=git", "kernel.git=" + json.dumps({"url": url, "ref": args.kernel_ref})]
    elif args.kernel_ref:
        raise ConfigError("--kernel-ref goes with --kernel-git URL")
    if getattr(args, "kvm_patch", None):
        sets.append(f"patches.host={json.dumps(str(Path(args.kvm_patch).resolve()))}")
    if getattr(args, "vm_patch", None):
        sets.append(f"patches.guest={json.dumps(str(Path(args.vm_patch).resolve()))}")
    if getattr(args, "output", None):
        sets.append(f"output={json.dumps(str(args.output))}")
    return override(cfg, sets) if sets else cfg


def override(cfg: Config, assignments: List[str]) -> Config:
    """Apply ``key.sub=value`` overrides from the command line (value parsed as YAML)."""
    data = dataclasses.asdict(cfg)
    data.pop("source_file", None)
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                if node.get(p) is None and p in node:
                    node[p] = {}
                else:
                    raise ConfigError(f"--set {key}: no such section {p!r}")
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(data, cfg.source_file)
