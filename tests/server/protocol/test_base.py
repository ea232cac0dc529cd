"""The protocol's base: per-request caps that match the settings, and bodies that refuse what is not text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.middleware import request_limits_of
from server.config.settings import Settings
from server.protocol.base import DEFAULT_LIMITS, RequestLimits, request_limits
from server.protocol.openai import ChatCompletionRequest
from server.protocol.ops import TokenizeRequest


def test_the_protocols_default_limits_are_the_settings_defaults() -> None:
    # The protocol imports nothing of the server, so it writes the defaults out; this keeps the two copies equal.
    defaults = {name: Settings.model_fields[name].default for name in RequestLimits.__dataclass_fields__}
    assert RequestLimits(**defaults) == DEFAULT_LIMITS


def test_the_api_builds_its_limits_from_the_settings() -> None:
    settings = Settings(max_messages=3, max_stop_chars=5, max_tokenize_input=7, max_embedding_inputs=9)
    assert request_limits_of(settings) == RequestLimits(3, 5, 7, 9)


def test_a_body_is_checked_against_the_limits_of_its_request() -> None:
    token = request_limits.set(RequestLimits(max_tokenize_input=4))
    try:
        with pytest.raises(ValidationError, match="at most 4 characters"):
            TokenizeRequest(content="hello")
    finally:
        request_limits.reset(token)
    assert TokenizeRequest(content="hello").content == "hello"


def test_a_lone_surrogate_anywhere_in_a_body_is_refused_naming_where() -> None:
    with pytest.raises(ValidationError, match=r"messages\.0\.content holds a lone UTF-16 surrogate"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "a\ud800"}]})
