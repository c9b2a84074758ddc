"""The untrusted-process runner: timeout kills the whole group, limits apply."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import time
from pathlib import Path

import pytest

from harness.build import sandbox as confinement
from harness.kvmlab import build as buildmod
from harness.kvmlab.sandbox import Limits, base_env, run_untrusted

# root, bubblewrap, prlimit, setpriv (the grading machine's setup), and a kernel that lets
# bubblewrap make its namespaces (qemu-user, an arm64 root on x86, does not)
_NO_SANDBOX = "needs root (the grading machine's setup)" if os.geteuid() != 0 else confinement.unusable()
needs_root_bwrap = pytest.mark.skipif(bool(_NO_SANDBOX), reason=f"no sandbox here: {_NO_SANDBOX}")


def _running(marker: str) -> list:
    """Host pids of processes whose command line holds ``marker`` (zombies excluded)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd.split(b"\0") and state not in ("Z", "X"):
            found.append(int(d.name))
    return found


@needs_root_bwrap
def test_timeout_kills_the_process_group(tmp_path):
    # the shell leaves a grandchild behind (in the sandbox's pid namespace, so it is
    # found by its unique argument, not by the pid it sees); the kill must take it too
    marker = f"60.{secrets.randbelow(10 ** 6):06d}"
    res = run_untrusted(["/bin/sh", "-c", f"sleep {marker} & wait"], cwd=tmp_path, stdout_path=tmp_path / "o",
                        stderr_path=tmp_path / "e", timeout=1.0)
    assert res.timed_out and res.returncode is None
    assert "timeout" in res.describe()
    for _ in range(100):
        if not _running(marker):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the grandchild survived the timeout: {_running(marker)}")


@needs_root_bwrap
def test_file_size_limit_and_signal_reporting(tmp_path):
    res = run_untrusted(["/bin/sh", "-c", "head -c 200000 /dev/zero > big"], cwd=tmp_path,
                        stdout_path=tmp_path / "o", stderr_path=tmp_path / "e", timeout=10,
                        limits=Limits(file_size=100000))
    assert (tmp_path / "big").stat().st_size <= 100000
    assert res.returncode != 0


@needs_root_bwrap
def test_crash_is_a_signal_not_a_timeout(tmp_path):
    res = run_untrusted(["/bin/sh", "-c", "kill -SEGV $$"], cwd=tmp_path, stdout_path=tmp_path / "o",
                        stderr_path=tmp_path / "e", timeout=10)
    assert res.crashed and res.signal == signal.SIGSEGV and not res.timed_out
    assert res.describe() == "killed by signal SIGSEGV"


def test_kvm_probe_names_what_is_wrong(tmp_path):
    import pytest

    from harness.kvmlab.errors import KvmUnavailable
    from harness.kvmlab.sandbox import probe_kvm

    with pytest.raises(KvmUnavailable, match="cannot open"):
        probe_kvm(str(tmp_path / "nope"))
    with pytest.raises(KvmUnavailable, match="KVM_GET_API_VERSION"):
        probe_kvm("/dev/null")


# -- the lab's untrusted steps are confined (issue 18 §2) --------------------------------------



@pytest.fixture
def sandbox_state(tmp_path, monkeypatch):
    """The sandbox's /etc, identities and device nodes under this test's directory."""
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(tmp_path / "cache"))


def _probe_script(tmp_path: Path, port: int) -> tuple:
    """What a hostile student's build or hypervisor would try, each attempt printed as
    LEAK or DENIED; and the files it must not reach."""
    other = tmp_path / "kvmlab-other" / "build-own" / "upstream"     # another submission's work dir
    other.mkdir(parents=True)
    (other / "kvm-hello-world.c").write_text("SECRET of group 2\n")
    batch = tmp_path / "out" / "group2"                               # the batch's output
    batch.mkdir(parents=True)
    (batch / "results.json").write_text('{"score": 100}\n')
    outside = tmp_path / "not-mine"                                   # a directory beside its own
    outside.mkdir()
    reads = ["/etc/shadow", str(other / "kvm-hello-world.c"), str(batch / "results.json")]
    lists = ["/root", "/home", str(other), str(batch.parent)]
    writes = [str(outside / "planted"), str(tmp_path / "planted"), "/usr/planted", "/etc/planted"]
    lines = [f'if cat {r} >/dev/null 2>&1; then echo "LEAK read {r}"; else echo "DENIED read {r}"; fi'
             for r in reads]
    lines += [f'if [ -n "$(ls -A {d} 2>/dev/null)" ]; then echo "LEAK list {d}"; else echo "DENIED list {d}"; fi'
              for d in lists]
    lines += [f'if echo x > {w} 2>/dev/null; then echo "LEAK write {w}"; else echo "DENIED write {w}"; fi'
              for w in writes]
    lines += [f'if timeout 5 bash -c "echo hi > /dev/tcp/127.0.0.1/{port}" 2>/dev/null; '
              f'then echo "LEAK net"; else echo "DENIED net"; fi',
              f'echo "SEES $(ls -A {tmp_path} | tr "\\n" " ")END"',
              'echo "UID=$(id -u)"', 'echo mine > own-file && echo "WROTE own"']
    hostile = len(reads) + len(lists) + len(writes) + 1
    return "\n".join(lines) + "\n", hostile, [outside / "planted", tmp_path / "planted"]


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    return srv


def _assert_denied(text: str, hostile: int, planted, srv):
    assert "LEAK" not in text, text
    assert text.count("DENIED") == hostile, text
    assert "WROTE own" in text, text            # the control: its own directory is writable
    # of the directory holding both submissions, the output and the rest: only the path to its own
    assert text.split("SEES ")[1].split("END")[0].split() == ["kvmlab-mine"], text
    uid = int(text.split("UID=")[1].split()[0])
    assert uid >= confinement.UID_BASE, text    # neither root nor the harness's uid
    assert not any(p.exists() for p in planted)
    with pytest.raises(BlockingIOError):
        srv.accept()                             # nothing connected to the host's loopback


@needs_root_bwrap
def test_a_hostile_makefile_reaches_nothing_of_the_machine(tmp_path, sandbox_state):
    srv = _listener()
    script, hostile, planted = _probe_script(tmp_path, srv.getsockname()[1])
    d = tmp_path / "kvmlab-mine" / "build-own" / "upstream"
    d.mkdir(parents=True)
    (d / "probe.sh").write_text(script)
    (d / "Makefile").write_text("kvm-hello-world:\n\tsh probe.sh\n\ttouch kvm-hello-world\n")
    built = buildmod.make(d)
    log = built.log.read_text()
    assert built.ok, log
    _assert_denied(log, hostile, planted, srv)


@needs_root_bwrap
@pytest.mark.kvm
def test_a_hostile_hypervisor_reaches_nothing_but_kvm_and_its_run_dir(tmp_path, sandbox_state, kvmlab_cache):
    """Through the grader's own run: it opens /dev/kvm as its unprivileged uid, the
    oracle shim loads and its records reach the grader, the run directory (where the
    confinement check looks) is writable, and nothing else is reachable."""
    from harness.kvmlab.grade import Grader

    srv = _listener()
    script, hostile, planted = _probe_script(tmp_path, srv.getsockname()[1])
    bindir = tmp_path / "kvmlab-mine" / "build-own" / "upstream"
    bindir.mkdir(parents=True)
    binary = bindir / "kvm-hello-world"
    binary.write_text("#!/bin/bash\n" + script +
                      "/usr/bin/python3 -c 'import fcntl, os; "
                      "print(\"KVM_API\", fcntl.ioctl(os.open(\"/dev/kvm\", os.O_RDWR), 0xAE00, 0))'\n"
                      "echo escaped > ../outside-probe.txt && echo 'WROTE run dir'\n")
    binary.chmod(0o755)
    g = Grader(tmp_path / "sub", tmp_path / "out" / "mine", work=tmp_path / "kvmlab-mine")
    g.input_text = "input\n"
    run = g._run("own", binary, buildmod.build_oracle())
    text = run.stdout.decode()
    _assert_denied(text, hostile, planted, srv)
    assert "KVM_API 12" in text, (text, run.stderr)
    assert "WROTE run dir" in text and (run.dir / "outside-probe.txt").exists()
    records = (g.logs / "own" / "oracle.jsonl").read_text()
    assert '"rec":"start"' in records and '"exe":"/usr/bin/bash"' in records


def test_the_hypervisor_gets_its_own_kvm_node_and_the_shim_only_after_the_drop(tmp_path, sandbox_state):
    from harness.kvmlab.sandbox import confined_argv

    run_dir, bindir, shim = tmp_path / "run", tmp_path / "bin", tmp_path / "shim.so"
    bindir.mkdir()
    shim.write_bytes(b"")
    env = base_env({"LD_PRELOAD": str(shim), "KVMLAB_ORACLE_OUT": str(run_dir / "rec")})
    argv = confined_argv([str(bindir / "hv"), "-l"], cwd=run_dir, timeout=10, env=env,
                         limits=Limits(),
                         writable=[run_dir], readable=[bindir, shim], devices=["/dev/null"], uid=None)
    uid = confinement.uid_for(str(run_dir.resolve()))
    i = argv.index("--dev-bind")
    node = Path(argv[i + 1])
    assert argv[i + 2] == "/dev/null"
    st = os.stat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat("/dev/null").st_rdev
    assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(node.parent).st_mode) == 0o700   # nobody outside reaches it
    assert f"--reuid={uid}" in argv and "--bounding-set=-all" in argv
    # LD_PRELOAD is given by env(1) after setpriv: only the hypervisor loads the shim
    assert "LD_PRELOAD" not in argv[:argv.index("setpriv")]
    assert argv[-5:] == ["/usr/bin/env", "--", f"LD_PRELOAD={shim}", str(bindir / "hv"), "-l"]
    j = argv.index(str(run_dir))
    assert argv[j - 1:j + 2] == ["--bind", str(run_dir), str(run_dir)]
    assert ["--ro-bind", str(shim), str(shim)] == argv[argv.index(str(shim)) - 1:argv.index(str(shim)) + 2]
    confinement.drop_device_nodes(uid)                           # once its sandboxes are done
    assert not node.exists() and not node.parent.exists()
