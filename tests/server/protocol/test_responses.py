"""The Responses request's items have a shape and bounds, also where the model never reads them: a reasoning item
(free-form summary entries and any unknown field used to be kept as sent), replayed logprobs, and item ids are
what a stored conversation would otherwise fill with whatever a client sends."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.protocol.responses import ResponseRequest


def _request(*items: dict) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "m", "input": [*items, {"role": "user", "content": "hi"}]})


def _reasoning(**fields: object) -> dict:
    return {"type": "reasoning", "id": "rs_1", **fields}


def test_a_reasoning_item_in_openais_shape_is_accepted() -> None:
    summary = [{"type": "summary_text", "text": "s"}]
    content = [{"type": "reasoning_text", "text": "t"}]
    item = _request(_reasoning(summary=summary, content=content, encrypted_content="e", status="completed")).input
    assert isinstance(item, list) and item[0].model_dump(exclude_none=True) == _reasoning(
        summary=summary, content=content, encrypted_content="e", status="completed"
    )


@pytest.mark.parametrize(
    "item",
    [
        _reasoning(summary=[{"x": [[[]]]}]),
        _reasoning(summary=[{"type": "summary_text", "text": "s", "extra": 1}]),
        _reasoning(content=[{"type": "reasoning_text", "text": "t", "extra": 1}]),
        _reasoning(anything="else"),
        _reasoning(id="r" * 129),
        _reasoning(id=""),
        {"role": "user", "content": "x", "id": "m" * 129},
        {"type": "function_call", "id": "f" * 129, "call_id": "c", "name": "n", "arguments": "{}"},
        {"type": "function_call_output", "id": "o" * 129, "call_id": "c", "output": "x"},
    ],
)
def test_a_free_form_or_oversized_field_is_refused(item: dict) -> None:
    with pytest.raises(ValidationError):
        _request(item)


def _replayed(logprobs: list[dict]) -> dict:
    part = {"type": "output_text", "text": "hi", "logprobs": logprobs}
    return {"type": "message", "role": "assistant", "content": [part]}


def test_replayed_logprobs_are_openais_shape_with_at_most_20_alternatives() -> None:
    top = {"token": "a", "logprob": -0.5, "bytes": [97]}
    _request(_replayed([{**top, "top_logprobs": [top] * 20}]))
    with pytest.raises(ValidationError):
        _request(_replayed([{**top, "top_logprobs": [top] * 21}]))
    with pytest.raises(ValidationError):
        _request(_replayed([{**top, "nested": {"deep": [[]]}}]))
    with pytest.raises(ValidationError):
        _request(_replayed([{**top, "bytes": [256]}]))
