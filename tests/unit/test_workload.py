"""Workload command-line construction and summary parsing (no compiler needed)."""
import pytest

from harness.core.errors import WorkloadError
from harness.observe import workload as wl


def test_argv_full():
    argv = wl.workload_argv(count=1000, duration=2.5, vcpu=1, syscall_nr=451, out="/tmp/x.bin")
    assert argv == ["/usr/bin/hostcpuid-trace", "-m", "hostcpuid", "-n", "1000", "-d", "2.5", "-c", "1",
                    "-s", "451", "-o", "/tmp/x.bin"]


def test_argv_interleaved_bare():
    argv = wl.workload_argv(count=4000, syscall_nr=436, interleave_bare=500, out="/tmp/o.bin")
    assert argv[-4:] == ["--interleave-bare", "500", "-o", "/tmp/o.bin"]


def test_argv_getppid_and_bare():
    assert wl.workload_argv(count=10, mode="getppid", bare=True, out=None) == [
        "/usr/bin/hostcpuid-trace", "-m", "getppid", "-n", "10", "--bare"]
    assert wl.workload_argv(count=10, mode="getppid", getcpu_syscall=True)[-3:] == ["--getcpu", "-o", "/tmp/trace.bin"]


@pytest.mark.parametrize("kw,match", [
    (dict(count=10), "syscall_nr"),
    (dict(syscall_nr=451), "count and/or a duration"),
    (dict(count=0, syscall_nr=451), "count"),
    (dict(count=-5, syscall_nr=451), "count"),
    (dict(count=2**32, syscall_nr=451), "count"),
    (dict(count=1.5, syscall_nr=451), "count"),
    (dict(count=True, syscall_nr=451), "count"),
    (dict(duration=0, syscall_nr=451), "duration"),
    (dict(duration=float("nan"), syscall_nr=451), "duration"),
    (dict(count=5, vcpu=-1, syscall_nr=451), "vcpu"),
    (dict(count=5, syscall_nr=5000), "syscall_nr"),
    (dict(count=5, mode="getpid"), "mode"),
    (dict(count=5, mode="getppid", syscall_nr=451), "contradicts"),
    (dict(count=5, syscall_nr=451, out=None), "out is required"),
    (dict(count=5, syscall_nr=451, interleave_bare=0), "interleave_bare"),
    (dict(count=5, syscall_nr=451, interleave_bare=True), "interleave_bare"),
    (dict(count=5, syscall_nr=451, interleave_bare=2, duration=1.0), "neither a duration"),
    (dict(count=5, syscall_nr=451, interleave_bare=2, bare=True, out=None), "neither a duration nor bare"),
    (dict(duration=1.0, syscall_nr=451, interleave_bare=2), "needs a count"),
])
def test_argv_rejects(kw, match):
    with pytest.raises(WorkloadError, match=match) as e:
        wl.workload_argv(**kw)
    assert e.value.stage == "workload-args"


def test_parse_summary():
    out = "noise\n" + '{"calls": 1000, "elapsed_ns": 5000000, "calls_per_s": 200000.0, "mode": "getppid", ' \
          '"bare": false, "syscall_nr": 173, "vcpu": -1, "stopped_by_time": false}\n'
    s = wl.parse_summary_line(out)
    assert s["calls"] == 1000 and s["mode"] == "getppid" and s["bare"] is False and s["calls_per_s"] == 200000.0


@pytest.mark.parametrize("out,match", [
    ("", "no JSON"),
    ("{not json}\n", "bad workload summary"),
    ('{"calls": 1, "elapsed_ns": 1, "calls_per_s": 1.0, "mode": "x", "bare": false}', "unknown mode"),
    ('{"calls": "1", "elapsed_ns": 1, "calls_per_s": 1.0, "mode": "getppid", "bare": false}', "wrong type"),
    ('{"elapsed_ns": 1, "calls_per_s": 1.0, "mode": "getppid", "bare": false}', "lacks 'calls'"),
])
def test_parse_summary_rejects(out, match):
    with pytest.raises(WorkloadError, match=match):
        wl.parse_summary_line(out)


def test_source_uses_raw_svc_not_glibc_syscall():
    src = wl.SOURCE.read_text()
    assert "svc #0" in src
    import re
    assert not re.search(r"(?<![_\w])syscall\(\s*\w", src)  # no glibc syscall(nr, ...) calls


def test_workload_that_does_not_build_names_its_first_error(tmp_path, monkeypatch):
    import shutil
    from harness.observe import workload
    if shutil.which(workload.CC) is None:
        pytest.skip(f"missing {workload.CC} (run `make setup`)")
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "broken.c"
    src.write_text("int main(void)\n{\n\treturn not_declared;\n}\n")
    with pytest.raises(workload.WorkloadError) as ei:
        workload.build_workload(tmp_path / "logs", source=src)
    e = ei.value
    assert e.kind == "infra" and e.stage == "workload-build"
    assert e.message == (f"the harness's workload does not build: {src}:3: compiler: "
                         "'not_declared' undeclared (first use in this function)")
