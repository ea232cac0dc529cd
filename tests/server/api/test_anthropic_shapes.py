"""Under /v1/messages the one failure mapping (`server/errors.py`) is worded as Anthropic's error body, in a response
and in a stream that already said 200; every other path keeps OpenAI's."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import pytest
from pydantic import BaseModel

from server.api.errors import response, route_path
from server.api.streaming import _named_events
from server.errors import APIError, FailureKind, ForeseenError
from server.lifecycle.holder import ServerDrainingError
from server.protocol.anthropic import MessageStopEvent, PingEvent


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),  # was api_error: a wrong method read as the server's failure
        (409, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
    ],
)
def test_each_status_has_anthropics_type(status: int, kind: str) -> None:
    error = APIError(status, "no", param="max_tokens", headers={"Retry-After": "3"})
    answered = response(error, "/v1/messages/count_tokens")
    assert answered.status_code == status and answered.headers["Retry-After"] == "3"
    assert json.loads(answered.body) == {"type": "error", "error": {"type": kind, "message": "max_tokens: no"}}


def test_other_paths_keep_openais_shape() -> None:
    for path in ("/v1/chat/completions", "/v1/messagesx", ""):
        body = json.loads(response(APIError(404, "no", type="not_found_error"), path).body)
        assert body["error"]["type"] == "not_found_error" and body["error"]["message"] == "no" and "type" not in body


class _OverloadedError(ForeseenError):
    kind = FailureKind.OVERLOADED


@pytest.mark.parametrize(
    ("failure", "kind"),
    [(_OverloadedError("queue full"), "rate_limit_error"), (ServerDrainingError("drain"), "overloaded_error")],
)
async def test_a_failure_mid_stream_is_an_error_event(failure: Exception, kind: str) -> None:
    async def events() -> AsyncGenerator[BaseModel, None]:
        yield PingEvent()
        raise failure
        yield MessageStopEvent()  # never reached

    sent = [event async for event in _named_events(events())]
    assert sent[0] == {"event": "ping", "data": '{"type":"ping"}'}
    assert sent[1]["event"] == "error" and json.loads(sent[1]["data"])["error"]["type"] == kind
    assert len(sent) == 2


def test_the_path_is_the_one_routed_on_behind_a_prefix() -> None:
    assert route_path({"path": "/llm/v1/messages", "root_path": "/llm"}) == "/v1/messages"
    assert route_path({"path": "/v1/messages"}) == "/v1/messages"
