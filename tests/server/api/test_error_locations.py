"""The parts of a validation error's location that are a tagged union's tag, found from the request model's schema."""

from __future__ import annotations

from server.api.error_locations import tag_positions
from server.protocol.anthropic import MessagesRequest
from server.protocol.openai import ChatCompletionRequest
from server.protocol.responses import ResponseRequest


def test_a_tag_under_a_union_member_and_a_list_is_found() -> None:
    loc = ("messages", 0, "content", "list[tagged-union[TextBlockParam,ToolUseBlockParam]]", 0, "text", "text")
    assert tag_positions(MessagesRequest, loc) == {5}, "the first 'text' is the tag, the second the field"


def test_tags_nested_in_tags_are_each_found() -> None:
    loc = ("input", "list[tagged-union[MessageItem]]", 0, "message", "content", "list[...]", 0, "input_text", "text")
    assert tag_positions(ResponseRequest, loc) == {3, 7}


def test_a_field_named_as_its_objects_type_is_no_tag() -> None:
    assert tag_positions(ChatCompletionRequest, ("tools", 0, "function", "name")) == set()
    assert tag_positions(ChatCompletionRequest, ("response_format", "json_schema", "json_schema")) == {1}


def test_a_location_the_schema_does_not_have_ends_the_walk() -> None:
    assert tag_positions(ChatCompletionRequest, ("no_such_field", 0, "text")) == set()
    assert tag_positions(ChatCompletionRequest, ("messages", "zero", "content")) == set()
    assert tag_positions(MessagesRequest, ("messages", 0, "content", "Unheard[Of]", 0, "text")) == set()
