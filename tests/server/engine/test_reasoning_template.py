"""Which chat templates think, and whether their generation prompt opens the block: decided once per model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from server.engine.chat_template import ReasoningSyntax, Render, TemplateMessage, TemplateTool, detect_reasoning
from server.engine.llama_model import LlamaModel
from tests.support.chat_templates import HERMES_TEMPLATE, THINKING_TEMPLATE

# Qwen3's generation prompt, shortened: the block is opened only to write it empty when thinking is off.
QWEN3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.split('</think>')[-1] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _render(template: str) -> Render:
    formatter = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")

    def render(messages: list[TemplateMessage], tools: list[TemplateTool] | None) -> str:
        return formatter(messages=[dict(m) for m in messages], tools=tools).prompt

    return render


@pytest.fixture(scope="module")
def thinking_model(thinking_gguf: Path) -> Iterator[LlamaModel]:
    loaded = LlamaModel(thinking_gguf, n_gpu_layers=0)
    yield loaded
    loaded.close()


def test_the_model_tells_a_thinking_template_from_others(thinking_model: LlamaModel, model: LlamaModel) -> None:
    assert thinking_model.reasoning == ReasoningSyntax(starts_inside=True, switch=True)
    assert model.reasoning is None, "SmolLM2's ChatML template does not think"


def test_a_template_that_leaves_the_block_to_the_model_does_not_start_inside_it() -> None:
    assert detect_reasoning(QWEN3_STYLE, _render(QWEN3_STYLE)) == ReasoningSyntax(starts_inside=False, switch=True)


def test_templates_without_the_markers_do_not_think() -> None:
    assert detect_reasoning(HERMES_TEMPLATE, _render(HERMES_TEMPLATE)) is None


def test_a_template_that_cannot_render_a_question_still_thinks_from_the_output() -> None:
    template = "{{ raise_exception('no') }}</think>"
    assert detect_reasoning(template, _render(template)) == ReasoningSyntax(starts_inside=False)


def test_the_test_template_opens_the_block_in_its_generation_prompt() -> None:
    assert _render(THINKING_TEMPLATE)([{"role": "user", "content": "hi"}], None).endswith("<think>\n")


def test_the_test_template_writes_an_empty_block_when_thinking_is_off(thinking_model: LlamaModel) -> None:
    prompt = thinking_model.render_chat([{"role": "user", "content": "hi"}], None, {"enable_thinking": False})
    assert prompt.endswith("<think>\n\n</think>\n\n")
