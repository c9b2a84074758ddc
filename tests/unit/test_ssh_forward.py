"""The byte pump behind Session.open_socket (L2's QMP through the SSH session)."""
import socket
import threading

from harness.ssh import _pump


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
