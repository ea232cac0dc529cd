"""What a request for a catalogue model may meet on the way to it, and how a failed load reads."""

from __future__ import annotations

import logging

from server.engine.llama_model import ModelLoadError
from server.errors import FailureKind, ForeseenError
from server.lifecycle.budget import NoRoomError
from server.model_source.errors import ModelSourceError, SourceUnavailableError, VerificationError

log = logging.getLogger(__name__)


class ModelUnavailableError(ForeseenError):
    """The model a request names is still loading past the load timeout, or its load failed: try again later."""

    kind = FailureKind.UNAVAILABLE
    code = "model_unavailable"


class ModelQueueFullError(ForeseenError):
    """More requests wait for this model to load than the queue holds (GGUFSTACK_MAX_QUEUE)."""

    kind = FailureKind.OVERLOADED
    code = "model_queue_full"


class PinnedModelError(Exception):
    """A pinned model cannot be unloaded."""


def describe_failure(exc: Exception) -> str:
    if isinstance(exc, SourceUnavailableError):
        return f"model source unavailable: {exc}"
    if isinstance(exc, VerificationError):
        return f"model rejected: {exc}"
    if isinstance(exc, ModelSourceError | ModelLoadError):
        return f"model cannot be loaded: {exc}"
    if isinstance(exc, NoRoomError):
        return str(exc)
    log.error("loading a model failed unexpectedly", exc_info=exc)
    return f"model cannot be loaded: {type(exc).__name__}: {exc}"
