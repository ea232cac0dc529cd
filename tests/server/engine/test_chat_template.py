"""Chat templates with tools: which templates speak the Hermes syntax, and how the model renders tools and history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from server.engine.chat_template import Render, TemplateMessage, TemplateTool, detect_tool_syntax
from server.engine.llama_model import LlamaModel
from server.protocol.openai import ChatMessage, Tool
from server.serving.constrain.tools.hermes import HermesFormat
from server.serving.constrain.tools.plan import ToolPlan
from tests.support.chat_templates import HERMES_TEMPLATE, THINKING_TEMPLATE, with_chat_template

WEATHER = Tool.model_validate(
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
)


@pytest.fixture(scope="module")
def hermes_model(hermes_gguf: Path) -> Iterator[LlamaModel]:
    loaded = LlamaModel(hermes_gguf, n_gpu_layers=0)
    yield loaded
    loaded.close()


def _render(template: str) -> Render:
    formatter = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")

    def render(messages: list[TemplateMessage], tools: list[TemplateTool] | None) -> str:
        return formatter(messages=[dict(m) for m in messages], tools=tools).prompt

    return render


def test_the_model_tells_which_templates_speak_hermes(hermes_model: LlamaModel, model: LlamaModel) -> None:
    assert hermes_model.tool_syntax == "hermes"
    assert model.tool_syntax is None, "SmolLM2's ChatML template has no tool syntax"


@pytest.mark.parametrize(
    "template",
    [
        # <tool_call> in the source, but the calls hold XML arguments (Qwen3-Coder style).
        HERMES_TEMPLATE.replace("\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' }}",
                                "\\n<tool_call>\\n<function=' + call.name + '>' }}"),
        # The tag only in the instructions: the tools are never described.
        "{# answer with <tool_call> #}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
        # A template that refuses the probe conversation.
        "{{ raise_exception('no tools here') }}<tool_call>{{ tools }}",
    ],
)  # fmt: skip
def test_other_templates_with_the_tag_are_not_taken_for_hermes(template: str) -> None:
    assert detect_tool_syntax(template, _render(template)) is None


def test_tools_and_history_render_the_native_way(hermes_model: LlamaModel) -> None:
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
            }
        ),
        ChatMessage(role="tool", tool_call_id="call_1", content='{"temp": 18}'),
    ]
    given = HermesFormat().template_input(messages, ToolPlan((WEATHER,), (WEATHER,), True, 8))
    assert hermes_model.render_chat(given.messages, given.tools) == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Current weather.", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"temp": 18}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_tags_a_vocabulary_makes_control_tokens_are_written_as_text(demo_gguf: Path, tmp_path: Path) -> None:
    """Control tokens render as nothing; where `<tool_call>` is one, the calls came back as bare JSON in the content.
    Here SmolLM2's `<repo_name>` and `<reponame>` (3, 4) become the Hermes tags, as control tokens."""
    tags = {3: "<tool_call>", 4: "</tool_call>"}
    answer = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    hermes = with_chat_template(demo_gguf, tmp_path / "hermes.gguf", HERMES_TEMPLATE, control_tokens=tags)
    plain = with_chat_template(demo_gguf, tmp_path / "plain.gguf", None, control_tokens=tags)
    models = [LlamaModel(path, n_gpu_layers=0) for path in (hermes, plain)]
    try:
        speaks_hermes, speaks_none = models
        assert speaks_hermes.tool_syntax == "hermes" and speaks_none.tool_syntax is None
        tokens = speaks_hermes.tokenize(answer, add_special=False)
        assert tokens[0] == 3 and tokens[-1] == 4, "the tags are the control tokens, as the model writes them"
        written = b"".join(speaks_hermes.piece(t) for t in tokens).decode()
        assert written == answer
        parsed = HermesFormat().parse(written)
        assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city": "Paris"}')]
        assert speaks_hermes.piece(2) == b"", "<|im_end|>, a control token the output is not read by"
        assert speaks_none.piece(3) == b"", "a model that does not speak Hermes: its tags are not read"
    finally:
        for model in models:
            model.close()


def test_thinking_tags_a_vocabulary_makes_control_tokens_are_written_as_text(demo_gguf: Path, tmp_path: Path) -> None:
    tags = {3: "<think>", 4: "</think>"}
    path = with_chat_template(demo_gguf, tmp_path / "thinking.gguf", THINKING_TEMPLATE, control_tokens=tags)
    model = LlamaModel(path, n_gpu_layers=0)
    try:
        assert model.reasoning is not None
        assert (model.piece(3), model.piece(4), model.piece(2)) == (b"<think>", b"</think>", b"")
    finally:
        model.close()
