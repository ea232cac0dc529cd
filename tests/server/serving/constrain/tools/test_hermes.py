"""The Hermes tool-call format: parsing answers, what the template is given, and the grammar's language, checked by
llama.cpp's own grammar engine on the demo model's vocabulary (token by token, as the sampler feeds it)."""

from __future__ import annotations

import json
import random

import pytest

from server.engine.llama_model import LlamaModel
from server.errors import APIError
from server.protocol.openai import ChatMessage, Tool
from server.serving.constrain.tools.hermes import HermesFormat
from server.serving.constrain.tools.plan import ParsedAnswer, ToolPlan
from tests.support.grammar import grammar_matches

HERMES = HermesFormat()
WEATHER = Tool.model_validate(
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    }
)
TIME = Tool.model_validate({"type": "function", "function": {"name": "get_time"}})


def _block(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


PARIS = _block("get_weather", {"city": "Paris", "unit": "celsius"})
ROME = _block("get_weather", {"city": "Rome", "unit": "fahrenheit"})


# ---- parsing ----


def test_several_calls_are_parsed_in_order_with_fresh_ids() -> None:
    answer = HERMES.parse(f"{PARIS}\n{ROME}")
    assert answer.content is None
    assert [(c.name, json.loads(c.arguments), c.complete) for c in answer.calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}, True),
        ("get_weather", {"city": "Rome", "unit": "fahrenheit"}, True),
    ]
    assert all(c.id.startswith("call_") for c in answer.calls) and answer.calls[0].id != answer.calls[1].id


def test_arguments_are_the_json_the_model_wrote_as_it_wrote_it() -> None:
    """What a stream sends of them, piece by piece, adds up to exactly this."""
    (call,) = HERMES.parse('<tool_call>\n{"name": "get_weather", "arguments": {"city" :"Paris",\n "unit": 1.50}}').calls
    assert call.arguments == '{"city" :"Paris",\n "unit": 1.50}' and call.complete


def test_the_content_is_the_text_before_the_first_call() -> None:
    """The grammar lets text come only before the calls, so nothing after them is read as content."""
    answer = HERMES.parse(f"Let me check.\n{PARIS}\n{ROME}\n")
    assert answer.content == "Let me check."
    assert [c.name for c in answer.calls] == ["get_weather", "get_weather"]


def test_text_before_the_first_call_keeps_its_leading_whitespace_as_an_answer_without_calls_does() -> None:
    """So the text a stream sends before it knows whether a call follows is the start of the content either way."""
    assert HERMES.parse(f" \n Let me check. \n{PARIS}\n").content == " \n Let me check."
    assert HERMES.parse(f" \n{PARIS}\n").content is None


def test_an_answer_without_calls_is_all_content_unchanged() -> None:
    assert HERMES.parse("  It is sunny.\n") == ParsedAnswer("  It is sunny.\n", ())


@pytest.mark.parametrize(
    "broken",
    [
        '<tool_call>\n{"name": "get_wea',  # cut short by max_tokens before the name is whole
        "<tool_call>\nnot json\n</tool_call>",
        '<tool_call>\n["get_weather"]\n</tool_call>',
        '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
    ],
)
def test_a_block_that_is_not_a_call_stays_content_and_ends_the_calls(broken: str) -> None:
    assert HERMES.parse(broken) == ParsedAnswer(broken, ())
    after_a_call = HERMES.parse(f"{PARIS}\n{broken}\n{ROME}")
    assert [c.name for c in after_a_call.calls] == ["get_weather"] and after_a_call.content is None


def test_a_call_cut_short_while_its_arguments_are_written_is_a_call_with_what_they_hold_so_far() -> None:
    """As OpenAI answers one max_tokens cut (finish_reason "length"): a stream has sent its name and arguments."""
    answer = HERMES.parse(f'Sure. {PARIS}\n<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "Ro')
    assert answer.content == "Sure."
    assert [(c.arguments, c.complete) for c in answer.calls][1:] == [('{"city": "Ro', False)]
    (closed_unmarked,) = HERMES.parse('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_').calls
    assert (closed_unmarked.arguments, closed_unmarked.complete) == ("{}", True)


def test_no_prefix_or_corruption_of_an_answer_makes_the_parser_raise() -> None:
    answer = f"Sure. {PARIS}\n{ROME} done"
    rng = random.Random(7)
    for end in range(len(answer) + 1):
        assert isinstance(HERMES.parse(answer[:end]), ParsedAnswer)
    for _ in range(300):
        chars = list(answer)
        for _ in range(3):
            chars[rng.randrange(len(chars))] = rng.choice('<>{}":/ x\n')
        assert isinstance(HERMES.parse("".join(chars)), ParsedAnswer)


# ---- what the template is given ----


def test_history_reaches_the_template_in_openai_shape() -> None:
    messages = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "call_2", "function": {"name": "get_time", "arguments": "not json"}},
                ],
            }
        ),
        ChatMessage(role="tool", tool_call_id="call_1", content='{"temp": 18}'),
    ]
    given = HERMES.template_input(messages, ToolPlan((WEATHER, TIME), (WEATHER,), True, 8))
    assert given.messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},  # an object, not its text
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}},
            ],
        },
        {"role": "tool", "content": '{"temp": 18}', "tool_call_id": "call_1"},
    ]
    assert given.tools == [WEATHER.model_dump(exclude_none=True), TIME.model_dump(exclude_none=True)]
    assert HERMES.template_input(messages, None).tools is None, "no plan (tool_choice none): history only"


# ---- the grammar, run by llama.cpp ----


_matches = grammar_matches


def _plan(*, auto: bool, parallel: bool, chosen: tuple[Tool, ...] = (WEATHER,)) -> ToolPlan:
    return ToolPlan((WEATHER, TIME), chosen, auto, 8 if parallel else 1)


@pytest.mark.parametrize(
    ("text", "auto", "required_one", "required_many"),
    [
        (PARIS, True, True, True),
        (f"{PARIS}\n{ROME}\n", True, False, True),
        (f"Checking.\n{PARIS}", True, False, False),
        (f"a <b> <<tool_call <tool_cal\n{PARIS}", True, False, False),
        ("Just text, with < and <tool_ca but no call.", True, False, False),
        ("It ends on a partial tag <tool_c", True, False, False),
        ("<tool_call> mentioned in passing", False, False, False),
        (f"{PARIS} then text after the calls", False, False, False),
        (_block("get_weather", {"city": "Paris", "unit": "kelvin"}), False, False, False),
        (_block("get_weather", {"city": "Paris"}), False, False, False),
        (_block("get_time", {}), False, False, False),  # a tool that is described but not chosen
        ('<tool_call>\n{"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}\n</tool_call>',
         False, False, False),  # name first, as models are trained to write it
    ],
)  # fmt: skip
def test_the_grammar_allows_exactly_text_then_valid_calls(
    model: LlamaModel, text: str, auto: bool, required_one: bool, required_many: bool
) -> None:
    assert _matches(model, HERMES.grammar(_plan(auto=True, parallel=True)), text) is auto
    assert _matches(model, HERMES.grammar(_plan(auto=False, parallel=False)), text) is required_one
    assert _matches(model, HERMES.grammar(_plan(auto=False, parallel=True)), text) is required_many


def test_a_named_choice_allows_only_that_tool(model: LlamaModel) -> None:
    grammar = HERMES.grammar(_plan(auto=False, parallel=False, chosen=(TIME,)))
    assert _matches(model, grammar, _block("get_time", {}))
    assert not _matches(model, grammar, PARIS)


def test_parallel_calls_are_bounded(model: LlamaModel) -> None:
    grammar = HERMES.grammar(_plan(auto=False, parallel=True))
    assert _matches(model, grammar, "\n".join([PARIS] * 8))
    assert not _matches(model, grammar, "\n".join([PARIS] * 9))


def test_a_defs_name_that_clashes_with_the_grammar_is_refused() -> None:
    clashing = Tool.model_validate(
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {"x": {"$ref": "#/$defs/hermes-calls"}},
                    "$defs": {"hermes-calls": {"type": "integer"}},
                },
            },
        }
    )
    with pytest.raises(APIError) as info:
        HERMES.grammar(ToolPlan((clashing,), (clashing,), False, 1))
    assert info.value.param == "tools" and "hermes-calls" in str(info.value)
