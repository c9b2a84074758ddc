"""docs/performance.md as `make bench` writes it: one row per figure, with its date,
machine, load average and commit; a partial bench replaces only the rows it measured."""
import subprocess

from harness.jobs import bench

WARM = {"seconds": 14.2, "verdict": "ok", "timings": {}, "builds": {}, "l1_accel": "tcg"}
REBUILD = {"seconds": 8.1, "cpu_seconds": 9.0, "compiled_files": 1, "ccache": {}, "cached": False, "same_image": False}
RATES = {"boot": {"l1_ssh_s": 1.6, "l2_ssh_s": 6.2},
         "median_calls_per_s": {"hostcpuid_recorded": 7400.0, "hostcpuid_bare": 7700.0,
                                "getppid_recorded": 9100.0, "getppid_bare": 9500.0},
         "recording_overhead_pct": {"hostcpuid": 3.9, "getppid": 4.2}, "samples": {}}


def _table(path):
    return [line for line in path.read_text().splitlines() if line.startswith("| ")]


def test_rows_name_each_figure():
    rows = bench.rows({"warm_run": WARM, "rebuild_one_line": REBUILD, "rates": RATES})
    assert [part for part, _w, _f in rows] == ["warm", "rebuild", "rates", "rates", "rates", "rates"]
    figures = dict((what, fig) for _p, what, fig in rows)
    assert figures["default run, warm (everything cached)"] == "14.2 s, verdict ok"
    assert figures["host kernel rebuild after a one-line kvm.patch change"] == "8.1 s (1 files through make)"
    assert figures["host_cpuid calls/s in L2 (recorded; bare)"] == "7400.0; 7700.0 (recording overhead 3.9 %)"
    assert bench.rows({}) == []


def test_the_table_has_its_columns_and_a_partial_bench_keeps_the_other_rows(tmp_path):
    doc = tmp_path / "docs" / "performance.md"
    first = {p: {"date": "2026-12-01 10:00 UTC", "load": "0.3-0.5"} for p in ("warm", "rates")}
    bench.write_performance(doc, bench.rows({"warm_run": WARM, "rates": RATES}), first, "x86_64, 2 CPUs", "abc1234")
    lines = _table(doc)
    assert lines[0] == "| what | figure | date | machine | load average | commit |"
    assert len(lines) == 1 + 5  # the header, then a row per figure
    assert lines[1] == ("| default run, warm (everything cached) | 14.2 s, verdict ok | 2026-12-01 10:00 UTC | "
                        "x86_64, 2 CPUs | 0.3-0.5 | abc1234 |")
    # a later bench of the warm part only: that row is new, the rates rows stay as they were
    later = {"warm": {"date": "2026-12-03 17:00 UTC", "load": "4.1-5.0"}}
    bench.write_performance(doc, bench.rows({"warm_run": dict(WARM, seconds=31.0)}), later, "x86_64, 2 CPUs",
                            "def5678+changes")
    again = _table(doc)
    assert len(again) == len(lines)
    assert again[1].startswith("| default run, warm (everything cached) | 31.0 s, verdict ok | 2026-12-03 17:00 UTC")
    assert again[1].endswith("| 4.1-5.0 | def5678+changes |")
    assert again[2:] == lines[2:]
    # a part never measured before is added at the end
    bench.write_performance(doc, bench.rows({"rebuild_one_line": REBUILD}), {"rebuild": later["warm"]}, "m", "c")
    assert _table(doc)[-1].startswith("| host kernel rebuild after a one-line kvm.patch change | 8.1 s")


def test_timed_part_notes_date_and_load():
    when = {}
    assert bench.timed_part(when, "warm", lambda x: x * 2, 21) == 42
    start, end = when["warm"]["load"].split("-")
    assert float(start) >= 0 and float(end) >= 0
    assert when["warm"]["date"].endswith(" UTC") and when["warm"]["date"][:2] == "20"


def test_machine_and_commit(tmp_path):
    import platform
    m = bench.machine("tcg")
    assert m.startswith(platform.machine() + ", ") and "CPUs" in m and m.endswith("L1 on TCG")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "f").write_text("1")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert bench.commit(repo) == head
    (repo / "f").write_text("2")
    assert bench.commit(repo) == head + "+changes"
    assert bench.commit(tmp_path / "not-a-repo") == "unknown"
