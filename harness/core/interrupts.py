"""Ctrl-C and SIGTERM that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the
signal arrives.  Inside a destructor or a weakref callback (paramiko's ``__del__``
closing a transport, the logging lock released at garbage collection) the exception is
printed as "Exception ignored in ..." and dropped, and the run went on waiting, e.g. 60 s
for an SSH answer, then failed as if the machine were broken.

So the handler also *remembers* the signal.  Every wait of the harness (``Deadline``,
the SSH poll) calls :func:`check`, which raises again; the CLI asks :func:`requested`
before it reports any failure.  A Ctrl-C is therefore always reported as an interrupt
(exit 130), however the first raise was swallowed.
"""
from __future__ import annotations

import signal
from typing import Optional

_requested: Optional[str] = None


def _handler(signum, frame) -> None:
    global _requested
    _requested = signal.Signals(signum).name
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered.  Installing also
    turns Ctrl-C back on for a process started with SIGINT ignored (a shell's background
    job): every QEMU must go with the run."""
    global _requested
    _requested = None
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def requested() -> Optional[str]:
    """The name of the signal that asked this process to stop, or None."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt again if a stop was asked (the first raise may have been
    swallowed by a destructor)."""
    if _requested:
        raise KeyboardInterrupt(_requested)
