"""Keys are checked before bodies are read.

FastAPI reads and parses a route's JSON body before it resolves the route's dependencies, so a key checked only by a
dependency let a client without one make the server read and parse, on the event loop, every body it sent (up to
GGUFSTACK_MAX_REQUEST_BYTES): no answer for it, a pause for every stream on the replica. The routers that need a key
build their routes from the classes here, whose handlers check the key before the body is touched and leave what they
found on `request.state` for the dependencies. A refusal is answered without parsing the body, with `Connection:
close`, so the server closes the connection rather than read (and discard) the rest of a body that may be large.
The same holds for a keyed request its body could not save: the pipeline's body gates (a key at its cap on requests in
flight, a key whose rate-limit window refuses any request) run before the body is parsed too, and their refusal is
audited; the connection stays open (the protocol drops the body's bytes as they come), so a client with a large body
reads its 429 rather than a reset. A keyed body that fails validation is counted against its key's RPM and audited
(`charge_refused_body`), as the pipeline it never reaches would have.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from server.access.authenticate import authorization_of, bearer_token
from server.access.caller import Authenticator, Caller
from server.errors import APIError
from server.serving.pipeline.assemble import DataPlane
from server.serving.pipeline.errand import counted
from server.serving.pipeline.job import Endpoint, Errand
from server.store.keys import same_secret

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


async def authenticate(request: Request) -> Caller:
    """The caller the request's key names (401 for a missing or unknown key), found once per request."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        authenticator: Authenticator = request.app.state.authenticator
        headers = request.headers
        caller = await authenticator(authorization_of(headers.getlist("authorization"), headers.getlist("x-api-key")))
        request.state.caller = caller
    return caller


def check_admin_key(request: Request) -> None:
    """Refuse a request without the admin key (401; 429 for an address that failed too often)."""
    if getattr(request.state, "admin", False):
        return
    plane: DataPlane = request.app.state.plane
    if plane.admin_key is None:
        raise APIError(401, "the admin API is off: set GGUFSTACK_ADMIN_API_KEY", code="invalid_api_key")
    address = request.client.host if request.client is not None else "unknown"
    wait_s = plane.admin_attempts.retry_after_s(address)
    if wait_s is not None:
        raise APIError(
            429,
            f"too many failed admin API key attempts from this address; retry in {wait_s} s",
            type="rate_limit_error",
            code="too_many_failed_attempts",
            headers={"Retry-After": str(wait_s)},
        )
    authorizations = request.headers.getlist("authorization")
    key = bearer_token(authorizations[0]) if len(authorizations) == 1 else None  # two: refused, as on every route
    if key is None or not same_secret(key, plane.admin_key):
        plane.admin_attempts.count(address)
        raise APIError(401, "Incorrect admin API key provided.", code="invalid_api_key")
    request.state.admin = True


@contextmanager
def closing_on_refusal() -> Iterator[None]:
    try:
        yield
    except APIError as refused:
        refused.headers = {**(refused.headers or {}), "Connection": "close"}
        raise


# What the audit row of each route with a body names its request, for a refusal before the body is read.
BODY_ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "messages.count_tokens",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
}


def refuse_before_body(request: Request, caller: Caller, endpoint: Endpoint) -> None:
    """Refuse, audited, a request the pipeline's body gates would refuse whatever its body holds (a key at its cap
    on requests in flight, a key whose rate-limit window refuses any request), before its body is parsed."""
    pipeline = request.app.state.plane.pipeline
    try:
        pipeline.before_body(caller)
    except APIError as refused:
        state = request.state
        pipeline.record(Errand(state.request_id, endpoint, caller, state.client_request_id, 0.0, refused.status))
        raise


async def charge_refused_body(request: Request, caller: Caller, endpoint: Endpoint, arrived: float) -> None:
    """Count a request whose body failed validation against its key's RPM, and audit it; raise the limiter's
    refusal (429) if the key was past its limit. FastAPI validates a body before the pipeline runs, so such requests
    reached neither the rate limit nor the audit log: a key could send invalid bodies as fast as it liked, each one
    parsed and validated on the event loop (docs/security.md), unseen. Counted, they meet the limit as valid ones do,
    and once past it the key's next bodies are refused before they are parsed."""
    state = request.state
    pipeline = request.app.state.plane.pipeline
    async with counted(
        pipeline, caller, state.request_id, state.client_request_id, endpoint, status=400, arrived=arrived
    ):
        pass


class KeyFirstRoute(APIRoute):
    """A route whose caller is authenticated before its body is read, and, for a route with a body, refused before
    it is read when the body could not change the answer."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        endpoint = BODY_ENDPOINTS.get(self.path) if self.body_field is not None else None

        async def key_first(request: Request) -> Response:
            with closing_on_refusal():
                caller = await authenticate(request)
            if endpoint is None:
                return await handler(request)
            # Not closing: the protocol drops the body's bytes unparsed, and a client still sending a large body
            # reads its 429 instead of a connection reset (what it does with its Retry-After depends on that). A
            # chunked body has no length the body limit could hold it to: that connection is closed.
            with closing_on_refusal() if "content-length" not in request.headers else contextlib.nullcontext():
                refuse_before_body(request, caller, endpoint)
            arrived = time.monotonic()
            try:
                return await handler(request)
            except RequestValidationError:
                await charge_refused_body(request, caller, endpoint, arrived)
                raise

        return key_first


class AdminKeyFirstRoute(APIRoute):
    """A route whose admin key is checked before its body is read."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def admin_key_first(request: Request) -> Response:
            with closing_on_refusal():
                check_admin_key(request)
            return await handler(request)

        return admin_key_first
