"""The error a request ends with, as the client sees it: an HTTP status and OpenAI's error fields.

Stages raise it; `server/api/errors.py` turns it (and every other failure) into OpenAI's error JSON.
"""

from __future__ import annotations


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
