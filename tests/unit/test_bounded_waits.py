"""Every wait on a peer a submission can wedge is bounded: fake peers that never answer
(a QMP socket that accepts and stays silent, one that greets but ignores commands, an
SSH channel that never closes, an SFTP read that never returns)."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from harness.core.errors import StageTimeout
from harness.stack.qmp import Monitor

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}


class FakeQMP:
    """A unix-socket peer: ``silent`` accepts and never writes; ``deaf`` greets, answers
    qmp_capabilities and then nothing; ``good`` answers every command with {}."""

    def __init__(self, path, mode):
        self.path, self.mode = str(path), mode
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(1)
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            c, _ = self.srv.accept()
        except OSError:
            return
        self.conns.append(c)
        if self.mode == "silent":
            return
        c.sendall(json.dumps(GREETING).encode() + b"\r\n")
        buf, dec = "", json.JSONDecoder()
        while True:
            data = c.recv(4096)
            if not data:
                return
            buf += data.decode()
            while buf.strip():  # QMP's client writes objects with no separator
                try:
                    msg, end = dec.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                if msg["execute"] == "qmp_capabilities" or self.mode == "good":
                    reply = {"return": {}, **({"id": msg["id"]} if "id" in msg else {})}
                    c.sendall(json.dumps(reply).encode() + b"\r\n")

    def close(self):
        for c in self.conns:
            c.close()
        self.srv.close()


def timed(fn):
    t0 = time.monotonic()
    try:
        fn()
    finally:
        timed.last = time.monotonic() - t0


def test_qmp_handshake_with_a_silent_peer_is_bounded(tmp_path):
    peer = FakeQMP(tmp_path / "q.sock", "silent")
    m = Monitor(str(tmp_path / "q.sock"), "l2", timeout=0.5)
    with pytest.raises(StageTimeout, match="did not answer the handshake within 0.5 s"):
        timed(m.connect)
    assert timed.last < 3
    m.close()
    peer.close()


def test_qmp_quit_to_a_peer_that_never_answers_is_bounded(tmp_path):
    peer = FakeQMP(tmp_path / "q.sock", "deaf")
    m = Monitor(str(tmp_path / "q.sock"), "l2", timeout=0.5)
    m.connect(timeout=5)
    with pytest.raises(StageTimeout, match="'quit' within 0.5 s"):
        timed(lambda: m.cmd("quit"))
    assert timed.last < 3
    with pytest.raises(StageTimeout, match="'query-kvm' within 0.2 s"):
        m.cmd("query-kvm", timeout=0.2)
    t0 = time.monotonic()
    m.close(timeout=0.5)
    assert time.monotonic() - t0 < 3
    peer.close()


def test_qmp_answers_come_back_over_a_socket_object(tmp_path):
    peer = FakeQMP(tmp_path / "q.sock", "good")
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(tmp_path / "q.sock"))
    with Monitor(s, "l2", timeout=2) as m:
        m.connect()
        assert m.cmd("query-kvm") == {}
    peer.close()


# -- SSH: a real paramiko server in this process that wedges on purpose --------------------

import paramiko  # noqa: E402

from harness.stack.ssh import Session  # noqa: E402


class WedgedServer(paramiko.ServerInterface):
    """``exec``: 'hang-exec' never answers the exec request (a guest whose sshd is stuck);
    any other command is accepted and never exits (a handler that spins under it).
    The sftp subsystem is accepted and never answers."""

    def __init__(self):
        self.release = threading.Event()

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        if command == b"hang-exec":
            self.release.wait(30)  # the server's transport thread stops answering
        return True


class SilentSubsystem(paramiko.SubsystemHandler):
    def start_subsystem(self, name, transport, channel):
        self.get_server().release.wait(30)


@pytest.fixture
def wedged_ssh(tmp_path):
    host_key = paramiko.RSAKey.generate(1024)
    client_key = paramiko.RSAKey.generate(1024)
    key_file = tmp_path / "id"
    client_key.write_private_key_file(str(key_file))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    server = WedgedServer()
    transports = []

    def serve():
        c, _ = srv.accept()
        t = paramiko.Transport(c)
        t.add_server_key(host_key)
        t.set_subsystem_handler("sftp", SilentSubsystem)
        transports.append(t)
        t.start_server(server=server)

    threading.Thread(target=serve, daemon=True).start()
    pub = f"{host_key.get_name()} {host_key.get_base64()}"
    s = Session.connect("l2", "127.0.0.1", srv.getsockname()[1], key_file, pub, timeout=5)
    yield s
    server.release.set()
    s.close()
    for t in transports:
        t.close()
    srv.close()


def test_ssh_finish_of_a_command_that_never_exits_is_bounded(wedged_ssh):
    chan = wedged_ssh.start(["spin"])
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match="did not finish within 1 s"):
        wedged_ssh.finish(chan, ["spin"], timeout=1, stage="workload")
    assert time.monotonic() - t0 < 3


def test_ssh_run_is_bounded_in_all(wedged_ssh):
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match="did not finish within 1 s"):
        wedged_ssh.run(["spin"], timeout=1)
    assert time.monotonic() - t0 < 3


def test_ssh_exec_request_without_an_answer_is_bounded(wedged_ssh):
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match="starting `hang-exec` got no answer within 1 s"):
        wedged_ssh.run(["hang-exec"], timeout=1)
    assert time.monotonic() - t0 < 3
    # the wedged session was closed: the next call fails at once instead of waiting again
    t0 = time.monotonic()
    with pytest.raises(Exception):
        wedged_ssh.run(["true"], timeout=30)
    assert time.monotonic() - t0 < 3


def test_sftp_fetch_from_a_silent_peer_is_bounded(wedged_ssh, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match="SFTP get /tmp/trace.bin got no answer within 1 s"):
        wedged_ssh.get("/tmp/trace.bin", tmp_path / "t.bin", timeout=1)
    assert time.monotonic() - t0 < 3


# -- L2 and L1 shutdown -----------------------------------------------------------------------

class FakeL1Shell:
    """L1's SSH as L2's shutdown sees it: a QEMU pid that ``kill -0`` finds alive until a
    ``kill -9`` (or forever, ``unkillable``: a vCPU thread stuck in L1's kernel)."""

    def __init__(self, unkillable=False):
        self.argvs, self.alive, self.unkillable = [], True, unkillable

    def run(self, argv, check=True, timeout=60, stage="guest-command"):
        from types import SimpleNamespace
        assert timeout <= 10, f"{argv}: an unbounded-looking wait ({timeout} s)"
        self.argvs.append(list(argv))
        if argv[:2] == ["kill", "-9"] and not self.unkillable:
            self.alive = False
        rc = 0 if (argv[:2] != ["kill", "-0"] or self.alive) else 1
        return SimpleNamespace(rc=rc, out="[ 30.1] rcu: INFO: rcu_preempt detected stalls\n" if argv[0] == "cat"
                               else "", err="")


@pytest.mark.parametrize("unkillable", [False, True])
def test_l2_that_does_not_quit_is_killed_from_l1_by_pid(tmp_path, unkillable):
    from harness.stack import nested
    peer = FakeQMP(tmp_path / "q.sock", "deaf")
    g = nested.Guest(nested.GuestSpec(), l1=None, l1_ssh=FakeL1Shell(unkillable), run_dir=tmp_path)
    g.pid = 4321
    g.qmp = Monitor(str(tmp_path / "q.sock"), "l2")
    g.qmp.connect()
    t0 = time.monotonic()
    g.shutdown()
    took = time.monotonic() - t0
    assert took < nested.QUIT_TIMEOUT_S + 8, took
    assert ["kill", "-9", "4321"] in g.l1_ssh.argvs
    assert any("did not answer QMP quit" in n for n in g.teardown)
    assert any(("survived kill -9" if unkillable else "killed from L1 (kill -9)") in n for n in g.teardown)
    assert "rcu_preempt detected stalls" in (tmp_path / "l2-console.log").read_text()
    peer.close()


def test_l1_that_does_not_answer_quit_is_killed_from_l0(tmp_path):
    import sys

    from harness.stack import machine
    from harness.core import procs
    from harness.stack.console import Console
    qmp = tmp_path / "l1-qmp.sock"
    # a "QEMU" that accepts QMP, greets, and then never answers (its main loop is stuck)
    script = (f"import socket,time,json\ns=socket.socket(socket.AF_UNIX);s.bind({str(qmp)!r});s.listen(1)\n"
              "c,_=s.accept();c.sendall(json.dumps({'QMP':{'version':{'qemu':{'micro':0,'minor':0,'major':7},"
              "'package':''},'capabilities':[]}}).encode()+b'\\r\\n')\n"
              "d=c.recv(4096);i=json.loads(d).get('id');c.sendall(json.dumps({'return':{},'id':i}).encode()+b'\\n')\n"
              "time.sleep(600)\n")
    spec = machine.MachineSpec(name="l1", kernel=tmp_path / "Image", rootfs=tmp_path / "root")
    m = machine.Machine(spec, tmp_path, identity=None)
    m.qmp_path = qmp
    m.console = Console([sys.executable, "-c", script], tmp_path / "l1-console.log", "l1")
    end = time.monotonic() + 10
    while not qmp.exists() and time.monotonic() < end:
        time.sleep(0.05)
    m.qmp = Monitor(str(qmp), "l1")
    m.qmp.connect(timeout=5)
    pid = m.console.pid
    t0 = time.monotonic()
    m.shutdown()
    took = time.monotonic() - t0
    assert took < machine.QUIT_TIMEOUT_S + 5, took
    assert procs._gone(pid)


# -- Ctrl-C with a worker stuck in a call ---------------------------------------------------

@pytest.fixture
def handlers():
    import signal

    from harness.core import interrupts
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    interrupts.install()
    yield
    for s, h in old.items():
        signal.signal(s, h)
    interrupts._requested = None


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_ends_the_batch_workers_with_one_stuck_in_a_call(handlers, sig):
    import os
    import signal

    from harness.grade.batch import WORKER_JOIN_S, run_workers
    stuck, killed = threading.Event(), []

    def fn(item):
        if item == 0:
            stuck.wait(60)  # a call that never checks for an interrupt (a peer that never answers)
        else:
            time.sleep(0.05)

    threading.Timer(0.5, lambda: os.kill(os.getpid(), getattr(signal, sig))).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_workers(fn, list(range(50)), 2, threading.Event(), lambda: killed.append(time.monotonic() - t0))
    took = time.monotonic() - t0
    stuck.set()
    assert killed and killed[0] < 2           # the children are killed at once, before any join
    assert WORKER_JOIN_S - 1 < took < 0.5 + WORKER_JOIN_S + 1.5, took  # the stuck one is waited for, boundedly
