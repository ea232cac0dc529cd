"""The grammar of a thinking model's constrained answer, run by llama.cpp on the demo model's vocabulary token by
token: any thinking without the close marker, then only an answer the answer's own grammar allows."""

from __future__ import annotations

import json

import pytest

from server.engine.chat_template import ReasoningSyntax
from server.engine.llama_model import LlamaModel
from server.errors import APIError
from server.serving.constrain.grammar import JSON_OBJECT_GBNF, json_schema_grammar
from server.serving.constrain.thinking import ROOT, after_thinking
from tests.support.grammar import grammar_matches

INSIDE = ReasoningSyntax(starts_inside=True)  # the prompt opened the block
OUTSIDE = ReasoningSyntax()  # the model may open one, or answer at once
ANSWER = '{"city": "Paris"}'


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        (f"Paris is the one.</think>\n\n{ANSWER}", True, False),
        (f"<think>Paris is the one.</think>\n\n{ANSWER}", True, True),  # inside, "<think>" is thinking text
        (f"\n<think>\nhm</think>{ANSWER}", True, True),
        (ANSWER, False, True),
        (f"A < b, </thin and <</think>{ANSWER}", True, False),
        (f"<think>A < b, </thin and <</think> {ANSWER}", True, True),
        (f"Thinking that never ends {ANSWER}", False, False),
        ("Thought.</think>\n\nnot JSON", False, False),
        (f"Thought.</think></think>{ANSWER}", False, False),
        (f"Thought.</think>{ANSWER} and more", False, False),
        (f"<think>Thought.</think>{ANSWER}</think>", False, False),
    ],
)  # fmt: skip
def test_thinking_then_only_the_answer(model: LlamaModel, text: str, inside: bool, outside: bool) -> None:
    assert grammar_matches(model, after_thinking(JSON_OBJECT_GBNF, INSIDE, param="p"), text, root=ROOT) is inside
    assert grammar_matches(model, after_thinking(JSON_OBJECT_GBNF, OUTSIDE, param="p"), text, root=ROOT) is outside


def test_the_answer_after_the_thinking_keeps_its_schema(model: LlamaModel) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    grammar = after_thinking(json_schema_grammar(schema, param="p"), INSIDE, param="p")
    assert grammar_matches(model, grammar, f"Seven.</think>\n{json.dumps({'n': 7})}", root=ROOT)
    assert not grammar_matches(model, grammar, f"Seven.</think>\n{json.dumps({'n': 'seven'})}", root=ROOT)


def test_a_schema_rule_that_takes_a_name_the_thinking_needs_is_refused() -> None:
    with pytest.raises(APIError, match="thinking-0") as refused:
        after_thinking('root ::= thinking-0\nthinking-0 ::= "x"', INSIDE, param="response_format")
    assert refused.value.param == "response_format"
