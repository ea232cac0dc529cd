"""The error a request ends with, as the client sees it, and the one mapping of foreseen failures onto it.

This is the base layer: it imports nothing of the server. Lower layers (the engine, the model holder) raise
`ForeseenError`s that say what kind of failure they are, never an HTTP status; `known_error` is the one place a kind
becomes a status, so the API's error JSON and the audit row's status always agree.
"""

from __future__ import annotations

from enum import Enum


class FailureKind(Enum):
    INVALID = "invalid"  # the request cannot be served as sent
    OVERLOADED = "overloaded"  # no room now; the same request may succeed after Retry-After
    UNAVAILABLE = "unavailable"  # this server cannot serve now (shutting down, no model yet)


class ForeseenError(Exception):
    """A failure whose answer to the client is known where it is raised.

    `param` names the request field at fault, `code` is the machine-readable reason, `retry_after_s` (when set) says
    when to try again. Subclasses set `kind`."""

    kind: FailureKind = FailureKind.INVALID
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


_STATUS = {
    FailureKind.INVALID: (400, "invalid_request_error"),
    FailureKind.OVERLOADED: (429, "rate_limit_error"),
    FailureKind.UNAVAILABLE: (503, "service_unavailable"),
}


def known_error(exc: BaseException) -> APIError | None:
    """The API error a foreseen failure maps to; None for anything else (a 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ForeseenError):
        status, kind = _STATUS[exc.kind]
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return APIError(status, str(exc), type=kind, param=exc.param, code=exc.code, headers=headers)
    return None
