"""What every request and reply body shares: valid Unicode in every string, the server's per-request caps, OpenAI's
error body.

The protocol package is a base layer: it imports nothing of the server, so every layer above can speak it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    FailFast,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

# A JSON escape such as "\\ud800" decodes to a lone surrogate: a str that no UTF-8 encoder accepts. Let in, it fails
# far from its source (the tokenizer, a log line, or PostgreSQL in the audit writer), so every request body refuses it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# How deeply a request body may nest objects and arrays (the body itself is level 1). Deeper JSON breaks what walks it
# recursively, far from the request: the JSON Schema check and pydantic's serialisation (which refuses values past
# 255 levels: the cache key, a stored response's input, a reply echoing the tools) fail with a 500 after the request
# was admitted, sometimes after it generated. Structured output needs some depth: OpenAI's own limit is 10 levels of
# schema objects (20 JSON levels, a schema and its `properties` per level), which sits 5 levels into a chat body; 64
# leaves room for 29 such levels, and far more for any body that is not a schema.
MAX_JSON_DEPTH = 64


class BodyFault(NamedTuple):
    """What is wrong where in a parsed JSON body: the path to the value (object keys and array indexes)."""

    code: str
    path: tuple[str, ...]


def body_fault(value: object, max_containers: int | None = None) -> BodyFault | None:
    """The first string (or object key) in a parsed JSON body that holds a lone surrogate, the first number that is
    NaN or infinite, the first object or array nested past MAX_JSON_DEPTH, or the first one past `max_containers` in
    all (the body itself counts; None: no bound); None when there is none of these. Iterative (a stack of the
    containers being read), so no depth of input can exhaust the stack that checks it."""
    if isinstance(value, str):
        return BodyFault("lone_surrogate", ()) if _LONE_SURROGATE.search(value) else None
    if not isinstance(value, dict | list):
        return None
    frames: list[tuple[tuple[str, ...], Iterator[tuple[object, object]]]] = [((), _members(value))]
    containers = 1
    while frames:
        path, members = frames[-1]
        for key, child in members:
            if isinstance(key, str) and _LONE_SURROGATE.search(key):  # an object's key is text too
                return BodyFault("lone_surrogate", (*path, key))
            if isinstance(child, str):
                if _LONE_SURROGATE.search(child):
                    return BodyFault("lone_surrogate", (*path, str(key)))
            elif isinstance(child, float):
                # Python's parser reads NaN, Infinity and numbers past a double's range (1e400), which JSON has no
                # value for: serialised again (a cache key, a stored input) they came back as null, so a request
                # asking for NaN shared its cached answer with one asking for null, and a schema's `const: NaN` let
                # a structured output write NaN, which no JSON client reads.
                if not math.isfinite(child):
                    return BodyFault("not_finite", (*path, str(key)))
            elif isinstance(child, dict | list):
                if len(frames) >= MAX_JSON_DEPTH:
                    return BodyFault("too_deep", (*path, str(key)))
                containers += 1
                if max_containers is not None and containers > max_containers:
                    return BodyFault("too_many_containers", (*path, str(key)))
                frames.append(((*path, str(key)), _members(child)))
                break  # read the child first; this container's iterator goes on where it stopped
        else:
            frames.pop()
    return None


def _members(container: dict[Any, object] | list[object]) -> Iterator[tuple[object, object]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _shown(path: tuple[str, ...]) -> str:
    """A path as the error names it; a deep one with long keys is cut, as the message is not the place to echo it."""
    where = _escaped(".".join(path)) or "the body"
    return where if len(where) <= 200 else where[:200] + "..."


def _escaped(text: str) -> str:
    """`text` with each lone surrogate written as its JSON escape. The path to a fault may pass through an object key
    that holds one (`{"\\ud800": 1}`), and the error naming it must be text: pydantic renders an error's message and
    context as UTF-8, so an unescaped key made the 400 itself fail, a 500 with a traceback (or a dropped connection)."""
    return _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


_Item = TypeVar("_Item")
_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


# pydantic validates every item of a list (every value of an object) and lists an error for each invalid one before the
# first is answered: a body within the size limit held a million invalid items, and listing them held the event loop
# for seconds and took gigabytes. A request's lists and objects stop at their first invalid item, the one the 400 names.
class _FailFast(FailFast):
    """pydantic's FailFast, hashable: typing hashes the metadata of annotated types it puts in a union
    (`str | Items[str]`), and pydantic's is an unhashable dataclass."""

    def __hash__(self) -> int:
        return hash((FailFast, self.fail_fast))


Items = Annotated[list[_Item], _FailFast()]
Entries = Annotated[dict[_Key, _Value], _FailFast()]


class ClosedModel(BaseModel):
    """An object of a request body, which refuses fields it does not know (OpenAI's "Unrecognized request argument")
    and names the first. pydantic would list one error per unknown key, hundreds of thousands in a body within the size
    limit; only the first unknown key is left for it to find."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _one_unknown_field(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        known = _known_keys(cls)
        if value.keys() <= known:
            return value
        first = next(key for key in value if key not in known)
        return {key: item for key, item in value.items() if key in known or key == first}


@cache
def _known_keys(model: type[BaseModel]) -> frozenset[object]:
    """The keys an object of `model` may hold: each field's name and alias (whichever the model accepts is kept)."""
    keys: set[object] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                keys.add(alias)
    return frozenset(keys)


class RequestBody(ClosedModel):
    """A request body: its text, wherever it sits, is valid Unicode, and it nests at most MAX_JSON_DEPTH levels (a
    400 naming the field otherwise: its path in the message, its top-level field as `param`)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_json_text(cls, value: object) -> object:
        most = current_limits().max_body_containers
        fault = body_fault(value, most)
        if fault is None:
            return value
        context = {"where": _shown(fault.path), "param": _escaped(fault.path[0]) if fault.path else None}
        if fault.code == "lone_surrogate":
            message = "{where} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): not text"
        elif fault.code == "too_deep":
            message = f"{{where}} nests objects and arrays more than {MAX_JSON_DEPTH} levels deep"
        elif fault.code == "not_finite":
            message = "{where} is NaN or infinite (NaN, Infinity, or a number past 1.8e308): not a JSON number"
        else:
            message = (
                f"the body holds more than {most} objects and arrays (GGUFSTACK_MAX_BODY_CONTAINERS); "
                "{where} is the first past that"
            )
        raise PydanticCustomError(fault.code, message, context)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The server's caps on what one request may carry, checked while its body is validated: before a byte of it
    is tokenized or rendered, so an oversized request costs only its parsing. The API builds them from the settings;
    the defaults here equal the settings' defaults (a test keeps them so)."""

    max_messages: int = 1024
    max_stop_chars: int = 256
    max_tokenize_input: int = 262_144
    max_embedding_inputs: int = 2048
    max_body_containers: int = 32_768


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
