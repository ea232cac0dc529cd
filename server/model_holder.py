"""The one place that knows which engine is serving and whether the server is ready.

A hot model swap replaces the engine here; request handlers ask for the current engine per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.base import Engine


class ModelNotReadyError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    state: str
    reason: str


class ModelHolder:
    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._state = "starting"
        self._reason = "the server is starting"

    def readiness(self) -> Readiness:
        return Readiness(self._engine is not None and self._state == "ready", self._state, self._reason)

    def set_state(self, state: str, reason: str) -> None:
        self._state = state
        self._reason = reason

    def engine(self) -> Engine:
        if self._engine is None or self._state != "ready":
            raise ModelNotReadyError(self._reason)
        return self._engine

    def install(self, engine: Engine) -> Engine | None:
        """Make `engine` the serving one; return the previous engine so the caller can drain and close it."""
        previous, self._engine = self._engine, engine
        self._state, self._reason = "ready", f"serving {engine.model_id}"
        return previous

    def take(self) -> Engine | None:
        engine, self._engine = self._engine, None
        self._state, self._reason = "stopped", "the server is shutting down"
        return engine
