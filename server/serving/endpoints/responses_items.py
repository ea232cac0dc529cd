"""Responses API items to chat and back: a request's input items (and those `previous_response_id` chains in) become
the chat messages the chat preparation renders; the answer becomes output items; stored responses are read here."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import TypeAdapter, ValidationError

from server.access.caller import Caller
from server.engine.base import FinishReason
from server.engine.thinking import Split
from server.errors import APIError
from server.protocol.openai import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionDefinition,
    FunctionName,
    JsonSchemaFormat,
    NamedToolChoice,
    ResponseFormat,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    Tool,
    ToolCall,
    ToolCallFunction,
    ToolChoice,
)
from server.protocol.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputItem,
    MessageItem,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ResponseRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)
from server.protocol.responses_replies import FunctionCall, OutputItem, OutputMessage
from server.serving.constrain.tools.formats import ToolFormat
from server.store.errors import StoreUnavailableError

_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])
_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def item_id(kind: str) -> str:
    return f"{_PREFIXES[kind]}_{uuid.uuid4().hex}"


def owner_of(caller: Caller) -> str:
    """Who a stored response belongs to: its API key; the admin key and open access are one owner each."""
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    return "admin" if caller.name == "admin" else "anonymous"


def unavailable(exc: StoreUnavailableError) -> APIError:
    return APIError(
        503, str(exc), type="service_unavailable", code="database_unavailable", headers={"Retry-After": "5"}
    )


def not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"no response with id {response_id!r}", type="not_found_error", param=param, code="response_not_found"
    )


def stored_input(body: ResponseRequest) -> list[dict[str, Any]]:
    """The request's input items as kept with the response: every one with an id, messages' text as parts."""
    stored: list[dict[str, Any]] = []
    for item in body.input_items():
        entry = item.model_dump(mode="json", exclude_none=True, by_alias=True)
        entry["id"] = item.id or item_id(item.type)
        if isinstance(item, MessageItem):
            kind = "output_text" if item.role == "assistant" else "input_text"
            parts = [{"type": kind, "text": item.content}] if isinstance(item.content, str) else entry["content"]
            entry = {"type": "message", "id": entry["id"], "role": item.role, "status": "completed", "content": parts}
        stored.append(entry)
    return stored


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[ChatMessage]:
    """A conversation of items as chat messages: an assistant's function calls join its turn, each output is a tool
    message."""
    messages = [ChatMessage(role="system", content=instructions)] if instructions else []
    for item in _ITEMS.validate_python(items):
        if isinstance(item, MessageItem):
            messages.append(ChatMessage(role=item.role, content=item.text()))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, function=ToolCallFunction(name=item.name, arguments=item.arguments))
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.text()))
    return messages


def _response_format(body: ResponseRequest) -> ResponseFormat | None:
    fmt = body.text.format if body.text is not None else None
    if isinstance(fmt, TextFormatJsonSchema):
        schema = JsonSchemaFormat(name=fmt.name, description=fmt.description, schema_=fmt.schema_, strict=fmt.strict)
        return ResponseFormatJsonSchema(type="json_schema", json_schema=schema)
    if isinstance(fmt, TextFormatJsonObject):
        return ResponseFormatJsonObject(type="json_object")
    return None


def _tool_choice(body: ResponseRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if isinstance(choice, FunctionToolChoice):
        return NamedToolChoice(type="function", function=FunctionName(name=choice.name))
    return choice


def chat_body(body: ResponseRequest, items: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request a response is generated as, so keys, limits, the cache, tools and grammars apply as for
    chat."""
    tools = [
        Tool(
            type="function",
            function=FunctionDefinition(
                name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
            ),
        )
        for t in body.tools or []
    ]
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=chat_messages(body.instructions, items),
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            user=body.user,
            tools=tools or None,
            tool_choice=_tool_choice(body),
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=_response_format(body),
            reasoning_effort=body.reasoning.effort if body.reasoning is not None else None,
        )
    except ValidationError as exc:
        # The chained conversation breaks a rule no single request did (too many messages, a tool call's order).
        message = exc.errors()[0].get("msg", "invalid input").removeprefix("Value error, ")
        raise APIError(400, f"invalid input: {message}", param="input") from None


def message_item(text: str, status: str) -> OutputMessage:
    return OutputMessage(
        id=item_id("message"),
        status="completed" if status == "completed" else "incomplete",
        content=[OutputText(type="output_text", text=text)],
    )


def reasoning_item(text: str, status: str) -> ReasoningItem:
    return ReasoningItem(
        id=item_id("reasoning"),
        content=[ReasoningText(text=text)],
        status="completed" if status == "completed" else "incomplete",
    )


def output_items(output: Split, finish_reason: FinishReason, tool_format: ToolFormat | None) -> list[OutputItem]:
    """The answer as output items: the thinking (a thinking model's), a message with its text, then one item per
    function call parsed from the answer after the thinking."""
    status = "completed" if finish_reason == "stop" else "incomplete"
    # Thinking followed by answer text was closed by the model, whatever cut the answer (as a stream says when the
    # message opens).
    thought = "completed" if output.content else status
    thinking: list[OutputItem] = [reasoning_item(output.reasoning, thought)] if output.reasoning else []
    answer = tool_format.parse(output.content) if tool_format is not None else None
    if answer is None:
        return [*thinking, message_item(output.content, status)]
    # Text before calls is whole when they begin (a stream closes its message there), and each call is whole unless
    # max_tokens cut its arguments.
    message_status = "completed" if answer.calls else status
    items: list[OutputItem] = (
        [*thinking, message_item(answer.content, message_status)] if answer.content else [*thinking]
    )
    for call in answer.calls:
        items.append(
            FunctionCall(
                id=item_id("function_call"),
                call_id=call.id,
                name=call.name,
                arguments=call.arguments,
                status="completed" if call.complete else "incomplete",
            )
        )
    return items if len(items) > len(thinking) else [*items, message_item("", status)]
