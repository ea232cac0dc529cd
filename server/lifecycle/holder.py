"""The one place that knows which engine serves, whether the server is ready, and who is still using an engine.

Every generation holds a `Lease` on the engine it runs on, from admission to its last event. The lease count is what
graceful shutdown waits for, and what a hot swap waits for before it frees the engine it replaced: leases are counted
per served model, so the old model is freed when its own last generation ends, while the new one already serves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from server.engine.base import Engine, EngineStats
from server.errors import FailureKind, ForeseenError


class ModelState(StrEnum):
    STARTING = "starting"
    FETCHING = "fetching"
    LOADING = "loading"
    WARMING_UP = "warming_up"
    WAITING = "waiting"
    READY = "ready"
    SWAPPING = "swapping"  # not ready: the old model drains before a new one that does not fit beside it loads
    DRAINING = "draining"
    STOPPED = "stopped"
    UNLOADED = "unloaded"  # a catalogue model not loaded (yet, or any more): the next request for it loads it
    FAILED = "failed"  # its last load on demand failed; the next request after a pause tries again


class ModelNotReadyError(ForeseenError):
    """No model serves yet (loading, or the last load failed)."""

    kind = FailureKind.UNAVAILABLE
    code = "model_not_ready"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the model is not ready: {reason}")
        self.reason = reason


class ServerDrainingError(ForeseenError):
    """The server is shutting down and takes no new generations; `retry_after_s` says when another replica may."""

    kind = FailureKind.UNAVAILABLE
    code = "server_shutting_down"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


@dataclass(frozen=True, slots=True, eq=False)
class ServedModel:
    """A loaded engine and what identifies the model it runs; the one owner of both the engine and the weights."""

    engine: Engine
    sha256: str  # of the GGUF file: what names this exact model everywhere (responses, metrics, cache keys)
    source_version: str | None  # the blob's version id or ETag; None for a local file
    loaded_at: int  # unix time
    load_seconds: float = 0.0  # fetch excluded: load and warm-up
    path: Path | None = None  # the GGUF file, to load it again if a swap in place fails
    # Frees the weights (the LlamaModel) once the engine, which decodes with them, has stopped.
    free_weights: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    async def close(self) -> None:
        await self.engine.close()
        # In a thread: freeing waits for the threads still reading the weights (a prompt being tokenized).
        await asyncio.to_thread(self.free_weights)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A new model version the server would not serve, and why (verification, load or warm-up failed)."""

    version: str
    reason: str
    at: int  # unix time


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    state: ModelState
    reason: str
    refused: Refusal | None = None


class Lease:
    """A generation's hold on its engine; release it exactly once (it is an async context manager too).

    `admitted` says the request got past every stage that may refuse it: only such a lease counts as a use of the
    model (its idle clock, the order of eviction), so requests that are refused cannot keep a model loaded."""

    def __init__(self, holder: ModelHolder, model: ServedModel) -> None:
        self.model = model
        self.admitted = False
        self._holder = holder
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._holder._returned(self)

    async def __aenter__(self) -> ServedModel:
        return self.model

    async def __aexit__(self, *_: object) -> None:
        self.release()


class ModelHolder:
    def __init__(self, state: ModelState = ModelState.STARTING, reason: str = "the server is starting") -> None:
        self._model: ServedModel | None = None
        self._state = state
        self._reason = reason
        self._leases = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._by_model: dict[ServedModel, int] = {}
        self._released: dict[ServedModel, asyncio.Event] = {}
        self.refused: Refusal | None = None
        # Why the model watcher stopped, if it did: the model serves on, but new versions are no longer picked up.
        self.watcher_stopped: str | None = None
        self._lost_at: float | None = None  # when a swap in place left no model (monotonic)
        # Called with each lease that returns: the registry's clock for idle models and its wake-up for loads waiting
        # for memory.
        self.on_release: Callable[[Lease], None] = lambda _lease: None

    def readiness(self) -> Readiness:
        ready = self._model is not None and self._state is ModelState.READY
        reason = self._reason
        if self.watcher_stopped is not None:
            reason = f"{reason}; the model watcher stopped ({self.watcher_stopped}): new versions are not picked up"
        return Readiness(ready, self._state, reason, self.refused)

    @property
    def current(self) -> ServedModel | None:
        """The installed model, whatever the state (for the watcher and response headers, not for generating)."""
        return self._model

    def set_state(self, state: ModelState, reason: str) -> None:
        if self._state is not ModelState.DRAINING:
            self._state, self._reason = state, reason

    def serving(self) -> ServedModel:
        """The serving model, for requests that do not generate (model cards, tokenizing)."""
        if self._model is None or self._state not in (ModelState.READY, ModelState.DRAINING):
            raise ModelNotReadyError(self._reason)
        return self._model

    def engine(self) -> Engine:
        return self.serving().engine

    def engine_stats(self) -> EngineStats | None:
        """The serving engine's load; None while no model serves."""
        try:
            return self.engine().stats()
        except ModelNotReadyError:
            return None

    def lease(self) -> Lease:
        """Admit one generation on the serving engine."""
        if self._state is ModelState.DRAINING:
            raise ServerDrainingError("the server is shutting down and takes no new requests")
        if self._model is None or self._state is not ModelState.READY:
            raise ModelNotReadyError(self._reason)
        self._leases += 1
        self._idle.clear()
        self._by_model[self._model] = self._by_model.get(self._model, 0) + 1
        return Lease(self, self._model)

    @property
    def in_flight(self) -> int:
        return self._leases

    def install(self, model: ServedModel) -> ServedModel | None:
        """Make `model` the serving one; return the previous one so the caller can drain and close it."""
        previous, self._model = self._model, model
        self._lost_at = None
        self.set_state(ModelState.READY, f"serving {model.model_id}")
        return previous

    def lost(self, reason: str) -> None:
        """A swap in place freed the serving model and nothing replaced it: not ready, and timed for liveness."""
        self._model = None
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        self.set_state(ModelState.WAITING, reason)

    def lost_for(self) -> float:
        """Seconds since a swap in place left the server without a model; 0 while one serves."""
        return 0.0 if self._lost_at is None else time.monotonic() - self._lost_at

    async def wait_released(self, model: ServedModel) -> None:
        """Return once no generation holds a lease on `model` (one that is no longer installed, after a swap)."""
        if self._by_model.get(model, 0) == 0:
            return
        await self._released.setdefault(model, asyncio.Event()).wait()

    def leases_on(self, model: ServedModel) -> int:
        return self._by_model.get(model, 0)

    def start_draining(self) -> None:
        """Readiness turns 503 and new generations are refused; those in flight go on."""
        self._state, self._reason = ModelState.DRAINING, "the server is shutting down"

    async def wait_idle(self) -> None:
        """Return once no generation holds a lease."""
        await self._idle.wait()

    def unload(self, reason: str) -> ServedModel | None:
        """Stop serving the model (evicted, idle, or unloaded by an admin) and return it, for the caller to free once
        the leases still on it are returned."""
        model, self._model = self._model, None
        self.refused = None
        self.set_state(ModelState.UNLOADED, reason)
        return model

    def take(self) -> ServedModel | None:
        model, self._model = self._model, None
        self._state, self._reason = ModelState.STOPPED, "the server is shutting down"
        return model

    def _returned(self, lease: Lease) -> None:
        self._leases -= 1
        left = self._by_model[lease.model] - 1
        if left:
            self._by_model[lease.model] = left
        else:
            del self._by_model[lease.model]
            if (released := self._released.pop(lease.model, None)) is not None:
                released.set()
        if self._leases == 0:
            self._idle.set()
        self.on_release(lease)
