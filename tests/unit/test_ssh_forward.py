"""The byte pump behind Session.open_socket (L2's QMP through the SSH session)."""
import socket
import threading

from harness.stack.ssh import _pump


def test_pump_copies_both_ways_and_closes_on_eof():
    local, theirs = socket.socketpair()      # what QMP gets / what the pump holds
    chan, remote = socket.socketpair()       # stands in for the SSH channel / QEMU's end
    t = threading.Thread(target=_pump, args=(theirs, chan), daemon=True)
    t.start()
    local.sendall(b'{"execute": "qmp_capabilities"}\n')
    assert remote.recv(100) == b'{"execute": "qmp_capabilities"}\n'
    remote.sendall(b'{"return": {}}\n')
    assert local.recv(100) == b'{"return": {}}\n'
    local.close()                            # QMP closes: the channel is closed too
    t.join(5)
    assert not t.is_alive()
    assert remote.recv(100) == b""


def test_a_failed_inline_script_is_named_in_one_line():
    from harness.stack.ssh import _short

    script = "sh -c '\nT=$1; out=$2\necho 0 > \"$T/tracing_on\"\n" + "cat x\n" * 30 + "' hosttrace-stop /sys/kernel/tracing /tmp/h.txt"
    short = _short(script)
    assert "\n" not in short and len(short) <= 100
    assert short.startswith("sh -c ' T=$1; out=$2") and short.endswith("/tmp/h.txt")
    assert _short("taskset -p 3 42") == "taskset -p 3 42"
