"""harness/build/sandbox.py: what a confined command sees, as whom, within which limits.

The argv tests read what confine() binds; the others run real bubblewrap with hostile
commands of our own (never a real fork bomb nor a real disk filler: every attempt is
bounded) and read the denial or the limit from what the command itself printed."""
import os
import shutil
import socket
import subprocess
import time

import pytest

from harness.build import sandbox

# root, bubblewrap, prlimit, setpriv (the grading machine's setup), and a kernel that lets
# bubblewrap make its namespaces (qemu-user, an arm64 root on x86, does not)
_NO_SANDBOX = "needs root (the grading machine's setup)" if os.geteuid() != 0 else sandbox.unusable()
needs_root_bwrap = pytest.mark.skipif(bool(_NO_SANDBOX), reason=f"no sandbox here: {_NO_SANDBOX}")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))


def binds(argv, how):
    return [argv[i + 1] for i, a in enumerate(argv) if a == how]


def test_only_the_system_dirs_a_synthesized_etc_and_the_given_dirs_are_bound(tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    ro.mkdir()
    argv = sandbox.confine(["true"], writable=[rw], readable=[ro])
    sources = binds(argv, "--bind") + binds(argv, "--ro-bind")
    assert "/" not in sources                                  # the weakness of issue 18
    system = [s for s in sources if s.startswith(("/usr", "/bin", "/sbin", "/lib"))]
    assert set(system) <= set(sandbox.SYSTEM_DIRS) and "/usr" in system
    assert binds(argv, "--bind") == [str(rw)] and str(ro) in binds(argv, "--ro-bind")
    etc_src = argv[argv.index("/etc") - 1]
    assert etc_src == str(sandbox.etc_dir()) and not (sandbox.etc_dir() / "shadow").exists()
    for d in ("/var", "/srv", "/opt", "/mnt", "/root", "/home", "/run", "/sys"):
        assert d not in sources
    assert "--unshare-net" in argv and "--clearenv" in argv and "--unshare-user" not in argv


def test_the_command_runs_as_an_unprivileged_uid_within_limits(tmp_path):
    limits = sandbox.Limits(wall_s=7, address_space=1 << 30, file_size=1 << 20, processes=9)
    argv = sandbox.confine(["make"], writable=[tmp_path / "w"], limits=limits)
    uid = sandbox.uid_for(str((tmp_path / "w").resolve()))
    assert uid >= sandbox.UID_BASE
    assert f"--reuid={uid}" in argv and f"--regid={uid}" in argv and "--clear-groups" in argv
    assert argv[argv.index("setpriv"):][-2:] == ["--", "make"]           # setpriv execs the command
    assert argv[:3] == ["timeout", "--kill-after=10", "7"]
    assert {"--as=1073741824", "--fsize=1048576", "--core=0", "--nproc=9"} <= set(argv)
    # the totals: guard.py runs the rest, with the processes, memory and bytes of the limits
    guard = argv[argv.index(str(sandbox.GUARD)):argv.index("prlimit")]
    assert guard == [str(sandbox.GUARD), "--pids=9", f"--memory={limits.memory}", f"--bytes={limits.written}",
                     f"--watch={tmp_path / 'w'}", "--"]
    assert argv[argv.index("--tmpfs") - 2:argv.index("--tmpfs")] == ["--size", str(limits.written)]
    assert os.stat(tmp_path / "w").st_uid == uid                          # the writable dir is its own
    assert f"build:x:{uid}:{uid}:" in sandbox.identity_files(uid)["passwd"].read_text()


def test_identity_directories_do_not_pile_up(monkeypatch):
    """Each build directory gets a uid and an id-<uid> directory; beyond IDENTITIES_KEPT,
    those unused for a day go, the recent ones stay."""
    monkeypatch.setattr(sandbox, "IDENTITIES_KEPT", 5)
    day_old = time.time() - 2 * sandbox.IDENTITY_MAX_AGE_S
    stale = [sandbox.identity_files(sandbox.UID_BASE + i)["passwd"].parent for i in range(8)]
    for d in stale:
        os.utime(d, (day_old, day_old))
    fresh = sandbox.identity_files(sandbox.UID_BASE + 100)["passwd"].parent
    left = sorted(p.name for p in fresh.parent.glob("id-*"))
    assert len(left) == 5 and fresh.name in left, left
    # recent directories are never removed, however many there are
    recent = [sandbox.identity_files(sandbox.UID_BASE + 200 + i)["passwd"].parent for i in range(6)]
    assert all((d / "group").exists() for d in recent + [fresh])


def test_the_limits_mechanism_is_named(monkeypatch):
    text = sandbox.limits_mechanism()
    assert text.startswith("limits: ") and "rlimits" in text and "bytes written: 8 GiB in all" in text
    assert f"processes: {sandbox.BUILD.processes}" in text and "cgroup" in text
    assert (sandbox.cgroups() in text) if sandbox.cgroups() else ("memory is bounded per process only" in text)
    monkeypatch.setattr(sandbox, "_MECHANISM", [""])
    assert "no cgroup can be made here" in sandbox.limits_mechanism()
    monkeypatch.setattr(sandbox, "_MECHANISM", ["cgroup v2"])
    assert "cgroup v2 per sandbox" in sandbox.limits_mechanism()


def run(argv, timeout=60):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@needs_root_bwrap
def test_a_hostile_build_reads_nothing_of_the_machine(tmp_path, monkeypatch):
    """/etc/shadow, other submissions, the batch's output, the cache's kernels, homes:
    none exists inside; a file the sandbox is given but whose mode excludes others stays
    unreadable (the uid meets file permissions)."""
    from harness.core import cache
    batch = tmp_path / "batch"
    other = batch / "submissions" / "g02" / "work"
    other.mkdir(parents=True)
    (other / "kvm.patch").write_text("SECRET PATCH of g02\n")
    (batch / "grades.csv").write_text("g02,80\n")
    kernel = cache.cache_root() / "kernels" / "k1"
    kernel.mkdir(parents=True)
    (kernel / "Image").write_text("an Image\n")
    mine = batch / "submissions" / "g01" / "work"
    mine.mkdir(parents=True)
    (mine / "private").write_text("root only\n")
    (mine / "private").chmod(0o600)
    script = ("for f in /etc/shadow /etc/gshadow /etc/ssh /etc/machine-id /root /home /var /srv /opt /mnt /run "
              f"{other}/kvm.patch {batch}/grades.csv {kernel}/Image {cache.cache_root()}; do "
              "if [ -e $f ]; then echo LEAK $f; else echo DENIED $f; fi; done; "
              f"cat {mine}/private || echo DENIED private; echo UID=$(id -u); ls {batch}/submissions")
    r = run(sandbox.confine(["sh", "-c", script], readable=[mine]))
    assert "LEAK" not in r.stdout, r.stdout
    assert r.stdout.count("DENIED") == 16
    assert "Permission denied" in r.stderr and "root only" not in r.stdout
    assert f"UID={sandbox.uid_for('sh -c ' + script)}" in r.stdout
    assert r.stdout.split()[-1] == "g01"           # the other group's directory is not there


@needs_root_bwrap
def test_a_hostile_build_reaches_no_network_and_writes_only_its_tree(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    ro.mkdir()
    script = (f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 3)' "
              "2>/dev/null && echo NET || echo NO-NET; "
              f"for f in /usr/x /etc/x {ro}/x {tmp_path}/x; do touch $f 2>/dev/null && echo WROTE $f || echo REFUSED $f; done; "
              f"touch {rw}/ok && echo WROTE-OWN")
    r = run(sandbox.confine(["sh", "-c", script], writable=[rw], readable=[ro]))
    srv.close()
    assert "NO-NET" in r.stdout and "\nNET" not in r.stdout
    assert r.stdout.count("REFUSED") == 4 and "WROTE-OWN" in r.stdout
    assert not (ro / "x").exists() and not (tmp_path / "x").exists() and (rw / "ok").exists()


@needs_root_bwrap
def test_a_hostile_build_leaves_no_process_behind(tmp_path):
    marker = f"h18-left-behind-{os.getpid()}"
    script = f"(setsid sh -c 'exec -a {marker} sleep 900' &) ; sleep 0.5; echo started"
    r = run(sandbox.confine(["sh", "-c", script], writable=[tmp_path / "w"]))
    assert "started" in r.stdout
    time.sleep(0.5)
    alive = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith(marker)]
    assert alive == []


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


FORKS = """
import os, sys, time
n = 0
for i in range(5000):
    try:
        pid = os.fork()
    except OSError as e:
        print("REFUSED", n, e.strerror); break
    if pid == 0:
        time.sleep(2); os._exit(0)
    n += 1
else:
    print("STARTED", n)
"""


@needs_root_bwrap
def test_five_thousand_processes_meet_the_process_limit(tmp_path):
    limits = sandbox.Limits(wall_s=30, processes=40)
    r = run(sandbox.confine(["python3", "-c", FORKS], writable=[tmp_path / "w"], limits=limits))
    words = r.stdout.split()
    assert words[0] == "REFUSED", r.stdout + r.stderr
    assert int(words[1]) < 40 and "Resource temporarily unavailable" in r.stdout


@needs_root_bwrap
def test_writing_3_gb_meets_the_file_size_limit(tmp_path):
    w = tmp_path / "w"
    limits = sandbox.Limits(wall_s=30, file_size=8 << 20)
    r = run(sandbox.confine(["sh", "-c", f"head -c 3G /dev/zero > {w}/big; echo rc=$?"], writable=[w], limits=limits))
    assert (w / "big").stat().st_size == 8 << 20
    assert "rc=153" in r.stdout or "File size limit exceeded" in r.stderr   # 128 + SIGXFSZ


@needs_root_bwrap
def test_writing_many_files_meets_the_total_bytes_limit(tmp_path):
    """Each file under the per-file limit, together over the total: the guard stops it."""
    w = tmp_path / "w"
    limits = sandbox.Limits(wall_s=60, file_size=1 << 30, written=48 << 20)
    r = run(sandbox.confine(["sh", "-c", f"for i in 1 2 3 4 5 6 7 8; do head -c 20M /dev/zero > {w}/f$i; "
                                         f"sleep 1; done; echo WROTE-ALL"], writable=[w], limits=limits))
    assert "WROTE-ALL" not in r.stdout and r.returncode == 153, r
    assert "over the limit of 48 MiB in all (a disk filler)" in r.stderr
    assert len(list(w.glob("f*"))) < 8
    # /tmp inside is a tmpfs of that size, not of half the machine's memory
    r = run(sandbox.confine(["sh", "-c", "head -c 100M /dev/zero > /tmp/big; echo rc=$?"], writable=[w],
                            limits=limits))
    assert "rc=1" in r.stdout and "No space left on device" in r.stderr


needs_cgroup = pytest.mark.skipif(not _NO_SANDBOX and not sandbox.cgroups(),
                                  reason="no cgroup can be made here (neither v2 with pids and memory nor v1)")


@needs_root_bwrap
@needs_cgroup
def test_processes_together_meet_the_memory_limit_in_all(tmp_path):
    """Four processes of 160 MiB each, each under its address-space limit, 300 MiB in all:
    the OOM killer ends some inside the sandbox's cgroup, and the guard says so."""
    hog = ("import os, time\n"
           "for i in range(4):\n"
           "    if os.fork() == 0:\n"
           "        b = bytearray(160 << 20); time.sleep(2); os._exit(0)\n"
           "print('EXITS', sorted(os.wait()[1] for _ in range(4)))")
    limits = sandbox.Limits(wall_s=60, address_space=1 << 30, memory=300 << 20)
    r = run(sandbox.confine(["python3", "-c", hog], writable=[tmp_path / "w"], limits=limits))
    assert "EXITS" in r.stdout and "9" in r.stdout.split("EXITS")[1], r     # some were SIGKILLed
    v = sandbox.cgroups().split()[-1]
    assert f"the memory limit (300 MiB in all, cgroup {v}) was reached" in r.stderr and "OOM killer" in r.stderr


@needs_root_bwrap
@needs_cgroup
def test_the_sandbox_cgroup_bounds_processes_and_is_removed(tmp_path):
    from harness.build import guard
    limits = sandbox.Limits(wall_s=30, processes=40)
    r = run(sandbox.confine(["python3", "-c", FORKS], writable=[tmp_path / "w"], limits=limits))
    assert r.stdout.split()[0] == "REFUSED" and "forks refused at the process limit (40 in all" in r.stderr, r
    bases = [guard._v2_base()] if sandbox.cgroups() == "cgroup v2" else list(guard._v1_bases().values())
    def dead(d):     # a guard's cgroup is named by its pid: ours is gone, others may be running
        try:
            os.kill(int(d.name.split("-")[1]), 0)
            return False
        except ProcessLookupError:
            return True
    assert bases and not [d for b in bases for d in b.glob("sb-*") if dead(d)]


@needs_root_bwrap
def test_memory_and_wall_time_are_bounded(tmp_path):
    mem = sandbox.Limits(wall_s=30, address_space=256 << 20)
    r = run(sandbox.confine(["python3", "-c", "b = bytearray(1 << 30); print('ALLOCATED')"],
                            writable=[tmp_path / "w"], limits=mem))
    assert "ALLOCATED" not in r.stdout and "MemoryError" in r.stderr
    t0 = time.monotonic()
    r = run(sandbox.confine(["sleep", "60"], writable=[tmp_path / "w"], limits=sandbox.Limits(wall_s=2)))
    assert r.returncode == 124 and time.monotonic() - t0 < 15


@needs_root_bwrap
def test_the_environment_inside_is_the_sandbox_own(tmp_path, monkeypatch):
    monkeypatch.setenv("H18_SECRET_TOKEN", "do-not-leak")
    r = run(sandbox.confine(["sh", "-c", "env; awk 'BEGIN { print \"awk works\" }'"], writable=[tmp_path / "w"],
                            env={"KEPT": "1"}))
    assert "do-not-leak" not in r.stdout and "KEPT=1" in r.stdout and "awk works" in r.stdout
    assert shutil.which("bwrap")
