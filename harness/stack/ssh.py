"""SSH and SFTP sessions (paramiko) with hermetic host-key checking: the harness made
the guests' host key, so it knows exactly which key to accept and rejects any other."""
from __future__ import annotations

import base64
import shlex
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import paramiko

from ..core import interrupts
from ..core.deadline import Deadline, scaled
from ..core.errors import BootError, GuestCommandError, InfraError, StageTimeout

# a peer that takes longer than this to accept a command has stopped answering
EXEC_TIMEOUT_S = 15
# copying a trace out (a few MB over a local forward: well under a second when well)
FETCH_TIMEOUT_S = 120


# budgets (reference machine; scaled by the slowdown factor, harness/core/deadline.py)
CONNECT_S = 10   # one SSH connection attempt, or one forwarded channel
COMMAND_S = 60   # a guest command without a budget of its own


@dataclass
class Result:
    argv: List[str]
    rc: int
    out: str
    err: str


def _short(cmd: str, limit: int = 100) -> str:
    """A command for a one-line message: an inline script becomes its first words and its
    arguments (``sh -c '...' name args``), the rest is in ssh.log."""
    one = " ".join(cmd.split())
    return one if len(one) <= limit else one[:limit - 20] + " ... " + one[-15:]


def _host_key(pub_line: str) -> paramiko.PKey:
    kind, b64 = pub_line.split()[:2]
    data = base64.b64decode(b64)
    if kind == "ssh-ed25519":
        return paramiko.Ed25519Key(data=data)
    if kind == "ssh-rsa":
        return paramiko.RSAKey(data=data)
    return paramiko.ECDSAKey(data=data)


class Session:
    def __init__(self, name: str, client: paramiko.SSHClient, log: Optional[Path] = None):
        self.name = name
        self.client = client
        self.log = log
        self._sftp: Optional[paramiko.SFTPClient] = None

    @classmethod
    def connect(cls, name: str, host: str, port: int, key_file: Path, host_pub: str,
                timeout: Optional[float] = None, log: Optional[Path] = None) -> "Session":
        timeout = scaled(CONNECT_S) if timeout is None else timeout
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[{host}]:{port}", host_pub.split()[0], _host_key(host_pub))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(host, port=port, username="root", key_filename=str(key_file), timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, allow_agent=False, look_for_keys=False)
        client.get_transport().set_keepalive(5)
        return cls(name, client, log)

    @classmethod
    def wait(cls, name: str, host: str, port: int, key_file: Path, host_pub: str, deadline: Deadline,
             abort: Optional[Callable[[], Optional[str]]] = None, tail: Callable[[], str] = lambda: "",
             log: Optional[Path] = None) -> "Session":
        """Poll until SSH answers; stop early when ``abort()`` gives a reason (QEMU exited, crash)."""
        last = "no attempt"
        while True:
            if abort:
                reason = abort()
                if reason:
                    raise BootError(f"{deadline.stage}: {reason}", stage=deadline.stage, tail=tail())
            try:
                return cls.connect(name, host, port, key_file, host_pub,
                                   timeout=min(scaled(CONNECT_S), max(1, deadline.remaining())), log=log)
            except paramiko.BadHostKeyException as e:
                raise InfraError(f"{name}: host key mismatch on port {port}: {e}", stage=deadline.stage) from None
            except (OSError, paramiko.SSHException, EOFError) as e:
                last = f"{type(e).__name__}: {e}"
            if deadline.expired():
                raise StageTimeout(f"{deadline.stage}: {name} did not answer SSH on port {port} after "
                                   f"{deadline.elapsed():.0f} s (last error: {last})", stage=deadline.stage,
                                   tail=tail())
            time.sleep(0.3)

    def _record(self, text: str) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(text)

    def run(self, argv: Sequence[Union[str, int]], timeout: Optional[float] = None, check: bool = True,
            stage: str = "guest-command") -> Result:
        """Run argv on the guest (quoted for its shell); raise GuestCommandError on failure.
        ``timeout``: seconds, already scaled; default COMMAND_S through the slowdown factor."""
        timeout = scaled(COMMAND_S) if timeout is None else timeout
        argv = [str(a) for a in argv]
        chan = self.start(argv, stage=stage, timeout=timeout)
        res = self.finish(chan, argv, timeout=timeout, stage=stage)
        if check and res.rc != 0:
            raise GuestCommandError(f"{self.name}: `{_short(shlex.join(argv))}` exited {res.rc}", stage=stage,
                                    tail=(res.out + res.err)[-3000:])
        return res

    def _within(self, fn: Callable, timeout: float, what: str, stage: str):
        """``fn()`` (a paramiko call that waits for the peer without a bound of its own),
        given ``timeout`` seconds.  A peer that does not answer in time is wedged: the
        session is closed (which also wakes the abandoned call) and StageTimeout raised."""
        interrupts.check()  # a stopped run asks nothing more of its guests
        box: dict = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e

        t = threading.Thread(target=target, daemon=True, name=f"ssh-{self.name}")
        t.start()
        t.join(timeout)
        if t.is_alive():
            self.close()
            raise StageTimeout(f"{self.name}: {what} got no answer within {timeout:.0f} s "
                               "(the SSH session was closed)", stage=stage)
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def start(self, argv: Sequence[Union[str, int]], stage: str = "guest-command",
              timeout: float = EXEC_TIMEOUT_S) -> paramiko.Channel:
        """Start argv without waiting for it; read it later with ``finish``.  The exec
        request itself gets at most ``timeout`` (and EXEC_TIMEOUT_S) seconds."""
        cmd = shlex.join(str(a) for a in argv)
        self._record(f"[{self.name}]$ {cmd} &\n")

        def exec_() -> paramiko.Channel:
            chan = self.client.get_transport().open_session(timeout=EXEC_TIMEOUT_S)
            chan.exec_command(cmd)
            return chan

        try:
            return self._within(exec_, min(timeout, EXEC_TIMEOUT_S), f"starting `{_short(cmd)}`", stage)
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
            raise InfraError(f"{self.name}: SSH failed while starting `{_short(cmd)}`: {type(e).__name__} {e}",
                             stage=stage) from None

    def finish(self, chan: paramiko.Channel, argv: Sequence, timeout: float, stage: str = "guest-command") -> Result:
        """Read a started command to its end, within ``timeout`` seconds in all."""
        end = time.monotonic() + timeout
        cmd = _short(shlex.join(map(str, argv)))
        out, err = [], []
        while True:
            interrupts.check()
            try:
                while chan.recv_ready():
                    out.append(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise InfraError(f"{self.name}: the SSH connection failed while `{cmd}` ran: "
                                 f"{type(e).__name__} {e}", stage=stage) from None
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            transport = self.client.get_transport()
            if chan.closed or transport is None or not transport.is_active():
                raise InfraError(f"{self.name}: the SSH connection was lost while `{cmd}` ran (the guest, its SSH "
                                 "server or QEMU went away)", stage=stage)
            if time.monotonic() > end:
                try:
                    chan.close()
                except Exception:  # noqa: BLE001 - a dead transport: nothing to close
                    pass
                raise StageTimeout(f"{self.name}: `{cmd}` did not finish within "
                                   f"{timeout:.0f} s", stage=stage)
            chan.status_event.wait(0.02)  # wakes at once when the exit status arrives
        rc = chan.recv_exit_status()
        res = Result([str(a) for a in argv], rc, b"".join(out).decode("utf-8", "replace"),
                     b"".join(err).decode("utf-8", "replace"))
        self._record(res.out + res.err + (f"[exit {rc}]\n" if rc else ""))
        return res

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def get(self, remote: str, local: Path, timeout: float = FETCH_TIMEOUT_S) -> Path:
        """Copy a file out of the guest, within ``timeout`` seconds in all."""
        try:
            self._within(lambda: self.sftp.get(remote, str(local)), timeout, f"SFTP get {remote}", "sftp")
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise InfraError(f"{self.name}: SFTP get {remote} failed: {e}", stage="sftp") from None
        return local

    def put(self, local: Path, remote: str, timeout: float = FETCH_TIMEOUT_S) -> None:
        try:
            self._within(lambda: self.sftp.put(str(local), remote), timeout, f"SFTP put {remote}", "sftp")
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise InfraError(f"{self.name}: SFTP put {remote} failed: {e}", stage="sftp") from None

    def open_socket(self, host: str, port: int) -> socket.socket:
        """A local socket connected, through this authenticated session, to host:port as
        seen from the guest (an SSH direct-tcpip channel; nothing listens on the host).
        A thread pumps bytes until either side closes."""
        try:
            chan = self.client.get_transport().open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0),
                                                            timeout=scaled(CONNECT_S))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise InfraError(f"{self.name}: cannot reach {host}:{port} through SSH: {e}", stage="ssh-forward") \
                from None
        mine, theirs = socket.socketpair()
        threading.Thread(target=_pump, args=(theirs, chan), daemon=True, name=f"ssh-fwd-{port}").start()
        return mine

    def close(self) -> None:
        try:
            if self._sftp:
                self._sftp.close()
            self.client.close()
        except Exception:  # noqa: BLE001 - teardown
            pass


def _pump(sock: socket.socket, chan: paramiko.Channel) -> None:
    """Copy bytes both ways between a local socket and an SSH channel until one closes."""
    try:
        while True:
            ready, _, _ = select.select([sock, chan], [], [], 1.0)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(65536)
                if not data:
                    break
                sock.sendall(data)
    except (OSError, paramiko.SSHException, EOFError):
        pass
    finally:
        for end in (chan, sock):
            try:
                end.close()
            except Exception:  # noqa: BLE001 - teardown
                pass
