"""Every failure leaves the API as OpenAI's error JSON, {"error": {"message", "type", "param", "code"}}, except under
Anthropic's /v1/messages, where it is Anthropic's, {"type": "error", "error": {"type", "message"}}: the same
`APIError` (from the one mapping in `server/errors.py`), only worded for the client that path serves."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from server.api.error_locations import tag_positions
from server.errors import APIError, ForeseenError, known_error
from server.protocol.anthropic import AnthropicError, AnthropicErrorDetail, AnthropicErrorType
from server.protocol.base import MAX_JSON_DEPTH, ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)


def body(error: APIError) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code))


ANTHROPIC_PATH = "/v1/messages"
_ANTHROPIC_TYPES: dict[int, AnthropicErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def speaks_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def route_path(scope: Scope) -> str:
    """The path the app routes on: behind a proxy that mounts the app under a prefix (`root_path`), without it."""
    path: str = scope["path"]
    return path.removeprefix(scope.get("root_path", ""))


def anthropic_body(error: APIError) -> AnthropicError:
    """Anthropic names the kind by status; the field at fault is in the message, as Anthropic words it."""
    message = error.message
    if error.param is not None and error.param not in message:
        message = f"{error.param}: {message}"
    # A client error Anthropic names no type for (405, 409) is still the request's fault, never the server's.
    kind = _ANTHROPIC_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
    return AnthropicError(error=AnthropicErrorDetail(type=kind, message=message))


def response(error: APIError, path: str = "") -> JSONResponse:
    """The error as the client of `path` expects it."""
    content = anthropic_body(error) if speaks_anthropic(path) else body(error)
    return JSONResponse(content.model_dump(), status_code=error.status, headers=error.headers)


def from_exception(exc: Exception) -> APIError:
    """The API error a failure maps to; anything unforeseen is a 500 that names no internals."""
    known = known_error(exc)
    if known is not None:
        return known
    log.exception("unhandled error", exc_info=exc)
    return APIError(500, "internal error while handling the request", type="server_error")


# Names pydantic gives a union's members in an error's location ("str", "list[TextPart]", a model's class name), which
# are no field of the client's.
_MEMBER_NAMES = {"str", "int", "float", "bool", "none", "constrained-str", "constrained-int", "constrained-float"}


def _looks_like_member(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in _MEMBER_NAMES or part[:1].isupper())


def _members(errors: Sequence[Any]) -> set[tuple[object, ...]]:
    """The locations (up to and with the member's name) where a union's members part ways: a value that matches no
    member gets one error per member, each under its member's name. An object key that looks like a name, alone at
    its place, is not one."""
    # One pass, grouped by the place: a body of many invalid items has tens of thousands of errors, and comparing each
    # with every other held the event loop for minutes.
    names_at: dict[tuple[object, ...], set[object]] = {}
    for e in errors:
        loc = tuple(e.get("loc", ()))
        for i, part in enumerate(loc):
            if _looks_like_member(part):
                names_at.setdefault(loc[:i], set()).add(part)
    return {(*place, name) for place, names in names_at.items() if len(names) > 1 for name in names}


def _telling(errors: Sequence[Any], members: set[tuple[object, ...]]) -> Any:
    """The error to answer with. Of a union's errors the first is usually the mismatch with a member the client never
    meant: a list of content blocks, one of them unsupported, was "messages.0.content.str: Input should be a valid
    string". Among the first error's siblings (the errors of its union), the one that got furthest into the value
    names what the client meant and what is wrong with it."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    at = next((i for i in range(len(loc)) if loc[: i + 1] in members), None)
    if at is None:
        return first
    siblings = [e for e in errors if tuple(e.get("loc", ()))[:at] == loc[:at] and len(e.get("loc", ())) > at]
    return max(siblings, key=lambda e: len(e.get("loc", ())))  # max keeps the first of the furthest


def _body_model(scope: Scope) -> type[BaseModel] | None:
    """The model of the route's JSON body, if it has one."""
    route = scope.get("route")
    field = getattr(route, "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _validation_error(exc: RequestValidationError, model: type[BaseModel] | None = None) -> APIError:
    errors = exc.errors()
    members = _members(errors)
    first = _telling(errors, members)
    whole = tuple(first.get("loc", ()))
    in_body = 1 if whole[:1] == ("body",) else 0
    tags = {in_body + i for i in tag_positions(model, whole[in_body:])} if model is not None and in_body else set()
    # Shown without the names of union members ("stop", "str") or the tags of tagged unions ("text" in
    # messages.0.content.0.text.text); the client's field is the first element.
    loc = [str(p) for i, p in enumerate(whole) if p != "body" and whole[: i + 1] not in members and i not in tags]
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    param = loc[0] if loc else None
    context = first.get("ctx") or {}
    if not loc and context.get("param") is not None:  # a check of the whole body names the field it found at fault
        return APIError(400, first.get("msg", "invalid request"), param=str(context["param"]), code="invalid_value")
    where = ".".join(loc) if loc else "body"
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "missing":
        return APIError(400, f"missing required parameter: {where}", param=param, code="missing_required_parameter")
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {where}", param=param)
    return APIError(400, f"invalid value for {where}: {message}", param=param, code="invalid_value")


# FastAPI's own answer when reading a JSON body fails other than as malformed JSON; the cause says why.
_UNPARSED_BODY = "There was an error parsing the body"


def unparsed_body(cause: BaseException | None) -> APIError:
    """Why a body that is no malformed JSON could not be read, in OpenAI's words: FastAPI answers all of them with
    one sentence and no code, where a malformed body gets `invalid_json`."""
    if isinstance(cause, UnicodeDecodeError):
        message = "the request body is not valid UTF-8"
    elif isinstance(cause, RecursionError):
        message = f"the request body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep"
    elif isinstance(cause, ValueError):  # what else json.loads raises: past Python's limit on an integer's digits
        message = "the request body holds a number of more than 4300 digits"
    else:
        message = "the request body could not be read as JSON"
    return APIError(400, message, code="invalid_json")


def too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server accepts ({max_bytes} bytes, GGUFSTACK_MAX_REQUEST_BYTES)",
        code="request_too_large",
    )


class RequestTooLargeError(StarletteHTTPException):
    """Raised while a body is read, once it passes the limit: an HTTPException, so the route's body parsing passes
    it on to the error handlers instead of calling it a malformed body."""

    def __init__(self, max_bytes: int) -> None:
        self.error = too_large(max_bytes)
        super().__init__(413, self.error.message)


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types every handler as taking any Exception; each is registered for the class it narrows to.
    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        path = route_path(request.scope)
        if not isinstance(exc, RequestValidationError):
            return response(from_exception(exc), path)
        return response(_validation_error(exc, _body_model(request.scope)), path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        path = route_path(request.scope)
        if not isinstance(exc, StarletteHTTPException):
            return response(from_exception(exc), path)
        if isinstance(exc, RequestTooLargeError):
            return response(exc.error, path)
        if exc.status_code == 400 and exc.detail == _UNPARSED_BODY:
            return response(unparsed_body(exc.__cause__), path)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = APIError(exc.status_code, str(exc.detail), type=kind, headers=dict(exc.headers or {}))
        return response(error, path)

    async def on_any(request: Request, exc: Exception) -> JSONResponse:
        return response(from_exception(exc), route_path(request.scope))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for kind in (APIError, ForeseenError, Exception):
        app.add_exception_handler(kind, on_any)
