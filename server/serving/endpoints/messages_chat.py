"""An Anthropic Messages request as the chat request the pipeline serves, so keys, model permission, limits, cache,
audit rows, the chat template and the tool-call formats apply to it unchanged.

Content blocks become OpenAI's turns: an assistant's `tool_use` blocks its `tool_calls`, a user's `tool_result` blocks
role "tool" messages (before the user's text, where Anthropic puts them), the system prompt a system message first. A
last assistant message is a prefill: the preparation renders it as the start of the answer (`chat_prompt`).
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from server.errors import APIError
from server.protocol.anthropic import (
    MessageParam,
    MessagesInput,
    MessagesRequest,
    TextBlockParam,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from server.protocol.openai import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionDefinition,
    FunctionName,
    NamedToolChoice,
    Tool,
    ToolCall,
    ToolCallFunction,
    ToolChoice,
)


def chat_body(body: MessagesInput) -> ChatCompletionRequest:
    """The chat request `body` asks for; a 400 naming the Anthropic field where the two cannot agree."""
    if prefilled(body) and any(not isinstance(b, TextBlockParam) for b in body.messages[-1].blocks()):
        raise APIError(400, "a last assistant message (a prefill) may hold only text",
                       param=f"messages.{len(body.messages) - 1}.content")  # fmt: skip
    messages: list[ChatMessage] = []
    system = body.system_text()
    if system is not None:
        messages.append(ChatMessage(role="system", content=system))
    for i, message in enumerate(body.messages):
        messages.extend(_turns(message, i))
    fields: dict[str, object] = {"model": body.model, "messages": messages}
    if body.tools is not None:
        fields["tools"] = [
            Tool(
                type="function",
                function=FunctionDefinition(name=t.name, description=t.description, parameters=t.input_schema),
            )
            for t in body.tools
        ]
    if body.tool_choice is not None:
        fields["tool_choice"] = _tool_choice(body)
        if not isinstance(body.tool_choice, ToolChoiceNone) and body.tool_choice.disable_parallel_tool_use:
            fields["parallel_tool_calls"] = False
    if isinstance(body, MessagesRequest):
        fields |= {
            "max_tokens": body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "stop": body.stop_sequences,
            "user": body.metadata.user_id if body.metadata is not None else None,
            "stream": body.stream,
        }
    # Anthropic's default is no thinking: a model that thinks is asked not to unless the request enables it.
    if not isinstance(body.thinking, ThinkingEnabled):
        fields["reasoning_effort"] = "none"
    else:
        fields["thinking_budget_tokens"] = body.thinking.budget_tokens
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:  # a cap chat has and Anthropic's body does not (the system turn adds a message)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise APIError(400, f"invalid value for {where}: {first.get('msg', 'invalid')}", param=where) from None


def prefilled(body: MessagesInput) -> bool:
    """Whether the last message is the assistant's: the start of the answer, which the model continues. The chat
    request keeps it as its last message (so the cache key and the conversation record carry it)."""
    return body.messages[-1].role == "assistant"


def _tool_choice(body: MessagesInput) -> ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceTool):
        return NamedToolChoice(type="function", function=FunctionName(name=choice.name))
    if isinstance(choice, ToolChoiceAny):
        return "required"
    if isinstance(choice, ToolChoiceNone):
        return "none"
    return "auto"


def _turns(message: MessageParam, index: int) -> list[ChatMessage]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(message.blocks()):
        where = f"messages.{index}.content.{j}"
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlockParam):
            if message.role != "assistant":
                raise APIError(400, "tool_use blocks belong in assistant messages", param=where)
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall(id=block.id, function=ToolCallFunction(name=block.name, arguments=arguments)))
        elif isinstance(block, ToolResultBlockParam):
            if message.role != "user":
                raise APIError(400, "tool_result blocks belong in user messages", param=where)
            content = f"Error: {block.text()}" if block.is_error else block.text()
            results.append(ChatMessage(role="tool", content=content, tool_call_id=block.tool_use_id))
    text = "".join(texts)
    if message.role == "assistant":
        return [ChatMessage(role="assistant", content=text, tool_calls=calls or None)]
    if results and not texts:
        return results
    return [*results, ChatMessage(role="user", content=text)]
