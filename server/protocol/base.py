"""What every request and reply body shares: valid Unicode in every string, the server's per-request caps, OpenAI's
error body.

The protocol package is a base layer: it imports nothing of the server, so every layer above can speak it.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass

from pydantic import (
    BaseModel,
    Field,
    model_validator,
)

# A JSON escape such as "\\ud800" decodes to a lone surrogate: a str that no UTF-8 encoder accepts. Let in, it fails
# far from its source (the tokenizer, a log line, or PostgreSQL in the audit writer), so every request body refuses it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate_at(value: object, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in a parsed JSON body a string (or an object's key) holds a lone surrogate; None when none does."""
    if isinstance(value, str):
        return path if _LONE_SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate_at(key, (*path, str(key))) or _lone_surrogate_at(item, (*path, str(key)))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate_at(item, (*path, str(i)))
            if found is not None:
                return found
    return None


class RequestBody(BaseModel):
    """A request body: its text, wherever it sits, is valid Unicode (a 400 naming the field otherwise)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, value: object) -> object:
        where = _lone_surrogate_at(value)
        if where is not None:
            field = ".".join(where) or "the body"
            raise ValueError(f"{field} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): not text")
        return value


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The server's caps on what one request may carry, checked while its body is validated: before a byte of it
    is tokenized or rendered, so an oversized request costs only its parsing. The API builds them from the settings;
    the defaults here equal the settings' defaults (a test keeps them so)."""

    max_messages: int = 1024
    max_stop_chars: int = 256
    max_tokenize_input: int = 262_144
    max_embedding_inputs: int = 2048


DEFAULT_LIMITS = RequestLimits()
# The server sets its limits per request (the API's middleware); a body validated elsewhere gets the defaults.
request_limits: ContextVar[RequestLimits | None] = ContextVar("request_limits", default=None)


def current_limits() -> RequestLimits:
    return request_limits.get() or DEFAULT_LIMITS


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body, for every 4xx and 5xx."""

    error: ErrorDetail


class RefusedVersion(BaseModel):
    """A new model version the server refused to serve; the previous model serves on."""

    version: str = Field(description="The blob version (or ETag) refused.")
    reason: str
    refused_at: int = Field(description="Unix time.")
