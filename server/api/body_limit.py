"""The request body limit, counted as the bytes arrive: a Content-Length above it is refused before the body is
read, and a body without one (chunked) is cut off once it passes the limit, so no request is buffered whole before
it is refused. Both answer 413 with the error JSON of the API the path serves.

Starlette has a body-limit middleware of its own, but it answers a Content-Length above the limit with a plain-text
413 whatever the app says, and OpenAI's clients expect the error JSON.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import RequestTooLargeError, response, route_path, too_large


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # Answered without reading the body; the server closes the connection rather than read what follows.
            await response(too_large(self.max_bytes), route_path(scope))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLargeError(self.max_bytes)
            return message

        await self.app(scope, counted, send)
