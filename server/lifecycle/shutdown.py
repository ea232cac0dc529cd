"""Graceful shutdown on SIGTERM, the signal Kubernetes sends on every rollout, scale-in and node drain.

The first SIGTERM turns readiness to 503 and refuses new generations (503 with Retry-After) while the ones in flight
run to their end, for up to the drain timeout; then the server stops and the process exits 0. A second SIGTERM, or
the timeout, ends what is left: their engine closes, so each stream gets an error event in-band before `[DONE]`,
never a silently cut connection. SIGINT (Ctrl-C) keeps uvicorn's quick shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from types import FrameType

import uvicorn

from server.lifecycle.registry import ModelRegistry

log = logging.getLogger(__name__)

# Time for streams whose engine was closed to send their error event and [DONE] before the server stops.
_FLUSH_S = 0.5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, models: ModelRegistry, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._models = models
        self._drain_timeout_s = drain_timeout_s
        self._drain: asyncio.Task[None] | None = None
        self._abort = asyncio.Event()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)
            return
        # Not passed on to uvicorn: it would stop at once and re-raise the signal, so the exit status would be 143.
        # A signal handler may interrupt the loop anywhere: hand the work to the loop instead of doing it here.
        asyncio.get_event_loop().call_soon_threadsafe(self._on_sigterm)

    def _on_sigterm(self) -> None:
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit(), name="drain")
        else:
            log.warning("second SIGTERM: ending %d generations in flight now", self._models.in_flight)
            self._abort.set()

    async def _drain_then_exit(self) -> None:
        self._models.start_draining()
        in_flight = self._models.in_flight
        log.info("SIGTERM: draining %d generations in flight (up to %.0f s)", in_flight, self._drain_timeout_s)
        idle = asyncio.create_task(self._models.wait_idle())
        abort = asyncio.create_task(self._abort.wait())
        done, _ = await asyncio.wait({idle, abort}, timeout=self._drain_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        abort.cancel()
        if idle not in done:
            idle.cancel()
            log.warning("drain ended with %d generations in flight; ending them", self._models.in_flight)
            for served in self._models.take():
                await served.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._models.wait_idle(), _FLUSH_S)
        else:
            log.info("drained: no generation in flight")
        self.should_exit = True
