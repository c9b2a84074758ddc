"""QMP with a deadline on every call.

qemu.qmp's synchronous shim waits without bound in ``connect`` (the greeting) and
``close``, and in every command unless told otherwise; a QEMU whose vCPU thread spins
inside its host's kernel never answers ``quit``.  ``Monitor`` drives qemu.qmp's own
client on a private event loop and bounds each call: a peer that accepts and never
replies costs ``timeout`` seconds and a ``StageTimeout``, never the batch."""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Optional, Union

from qemu.qmp import QMPClient

from ..core.errors import InfraError, StageTimeout

TIMEOUT_S = 5.0  # a query or quit: QEMU answers in milliseconds when its main loop runs


class Monitor:
    def __init__(self, address: Union[str, socket.socket], name: str, timeout: float = TIMEOUT_S,
                 stage: str = "qmp"):
        self.address = address
        self.name = name
        self.timeout = timeout
        self.stage = stage
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)

    def _run(self, coro, what: str, timeout: Optional[float]) -> Any:
        t = self.timeout if timeout is None else timeout
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, t))
        except asyncio.TimeoutError:
            raise StageTimeout(f"{self.name}'s QMP did not answer {what} within {t:g} s",
                               stage=self.stage) from None

    def connect(self, timeout: Optional[float] = None) -> None:
        """Connect and negotiate (the greeting must arrive within the timeout)."""
        try:
            self._run(self._client.connect(self.address), "the handshake", timeout)
        except StageTimeout:
            self.close(timeout=1)
            raise
        except Exception as e:  # noqa: BLE001 - refused, reset, bad greeting: the caller retries or reports
            self.close(timeout=1)
            raise InfraError(f"{self.name}: QMP handshake failed: {type(e).__name__}: {e}", stage=self.stage) \
                from None

    def cmd(self, name: str, timeout: Optional[float] = None, **args) -> Any:
        """Execute a command; its return value (QMP errors raise InfraError)."""
        try:
            return self._run(self._client.execute(name, args or None), f"'{name}'", timeout)
        except StageTimeout:
            raise
        except Exception as e:  # noqa: BLE001 - disconnected, an ExecuteError: one typed failure
            raise InfraError(f"{self.name}: QMP '{name}' failed: {type(e).__name__}: {e}", stage=self.stage) \
                from None

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect (bounded), then drop the loop; never raises."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.disconnect(), "the disconnect", timeout)
        except BaseException:  # noqa: BLE001 - teardown: a peer that does not close is abandoned
            pass
        try:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()
        except BaseException:  # noqa: BLE001
            pass

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
