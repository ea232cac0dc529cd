"""Schemas the grammar machinery cannot take are a 400 before they are converted: counts whose expansion would crash
llama.cpp's parser or build gigabytes, unions that would stall the engine thread, character classes that admit
nothing or carry raw control characters into the grammar. The bounds themselves convert, compile and generate."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.engine.base import TextDelta
from server.engine.llama_model import LlamaModel
from server.errors import APIError
from server.serving.constrain.grammar import json_schema_grammar
from server.serving.constrain.schema_limits import (
    MAX_ALTERNATIVES,
    MAX_GBNF_NESTING,
    MAX_REPEAT,
    check_gbnf_nesting,
)
from tests.support.engine import request, running_engine

PARAM = "response_format.json_schema.schema"


def _refused(schema: dict) -> str:
    with pytest.raises(APIError) as info:
        json_schema_grammar(schema, param=PARAM)
    assert info.value.status == 400
    assert info.value.param == PARAM
    return info.value.message


def _shared_enum_union(k: int) -> dict:
    """k branches that each start with the same k-value enum: llama.cpp holds k * k parse stacks after '['."""
    return {
        "$defs": {"B": {"enum": [f"x{i}" for i in range(k)]}},
        "anyOf": [{"type": "array", "prefixItems": [{"$ref": "#/$defs/B"}, {"const": i}]} for i in range(k)],
    }


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "string", "maxLength": 28000}, "maxLength 28000 at #"),
        ({"type": "string", "minLength": 100_000_000}, "minLength 100000000 at #"),
        ({"type": "string", "minLength": 1e8}, "minLength 100000000.0 at #"),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": MAX_REPEAT + 1}, "maxItems"),
        ({"type": "object", "properties": {"a": {"type": "array", "minItems": 5000}}}, "at #/properties/a"),
        ({"type": "string", "pattern": "^a{0,30000}$"}, "the pattern at #"),
        ({"type": "string", "pattern": "^[a-z]{0,25000}$"}, "the pattern at #"),
        ({"type": "string", "pattern": "^(ab){60000000}$"}, "the pattern at #"),
        ({"type": "string", "pattern": "^a{2000,}$"}, "the pattern at #"),
        ({"type": "string", "pattern": "^((ab){100}){100}$"}, "multiplied"),  # 10 000 copies, nested
        ({"type": "string", "pattern": "a" * 1001}, "limited to 1000 characters"),
        ({"type": "string", "pattern": "(" * 33 + "a" + ")" * 33}, "groups nest"),
        ({"type": "string", "pattern": "^[x\n]$"}, "control character"),
        ({"type": "string", "pattern": "^x\ty$"}, "control character"),
        ({"type": "string", "pattern": "^[^\\x00-\\U0010FFFF]$"}, "admits no character"),
        ({"type": "string", "pattern": "^[^\\D\\d]$"}, "admits no character"),
        ({"type": "string", "pattern": "^[^\\u0000-\\uffff\\U00010000-\\U0010FFFF]$"}, "admits no character"),
        (_shared_enum_union(300), "90000 alternatives"),
        (_shared_enum_union(200), "40000 alternatives"),
        ({"enum": list(range(MAX_ALTERNATIVES + 1))}, "alternatives"),
        ({"anyOf": [{"const": i} for i in range(MAX_ALTERNATIVES + 1)]}, "alternatives"),
    ],
)
def test_schemas_past_the_bounds_are_refused_before_conversion(schema: dict, fragment: str) -> None:
    assert fragment in _refused(schema)


def test_the_bounds_hold_inside_a_tool_s_parameters() -> None:
    with pytest.raises(APIError) as info:
        json_schema_grammar({"type": "object", "properties": {"s": {"type": "string", "maxLength": 28000}}},
                            param="tools.0.function.parameters")  # fmt: skip
    assert info.value.param == "tools.0.function.parameters"


def test_a_grammar_nested_past_the_last_guard_is_refused() -> None:
    deep = "root ::= " + "(" * (MAX_GBNF_NESTING + 1) + '"a"' + ")" * (MAX_GBNF_NESTING + 1)
    with pytest.raises(APIError, match="nests too deeply"):
        check_gbnf_nesting(deep, PARAM)
    check_gbnf_nesting('root ::= "((((" [(] ' + "(" * MAX_GBNF_NESTING + '"a"' + ")" * MAX_GBNF_NESTING, PARAM)


# The largest schemas the bounds let through: each must still convert, compile in llama.cpp and generate.
AT_THE_BOUNDS = [
    {"type": "string", "maxLength": MAX_REPEAT},
    {"type": "string", "minLength": MAX_REPEAT - 1, "maxLength": MAX_REPEAT},
    {"type": "string", "pattern": f"^a{{0,{MAX_REPEAT}}}$"},
    {"type": "string", "pattern": f"^[a-z]{{1,{MAX_REPEAT}}}$"},
    {"type": "string", "pattern": f"^((ab){{10}}){{{MAX_REPEAT // 10}}}$"},
    {"type": "array", "items": {"type": "integer"}, "maxItems": MAX_REPEAT},
    {"enum": [f"value {i}" for i in range(MAX_ALTERNATIVES)]},
    {"type": "string", "pattern": '^[^"\\\\\\x00-\\x1f]{1,8}$'},
]


@pytest.mark.asyncio
@pytest.mark.parametrize("schema", AT_THE_BOUNDS, ids=lambda s: json.dumps(s)[:48])
async def test_schemas_at_the_bounds_compile_and_generate(model: LlamaModel, schema: dict) -> None:
    gbnf = json_schema_grammar(schema, param=PARAM)
    async with running_engine(model) as engine:
        # Compiled off the event loop, as the server does: in a worker thread, with a worker thread's stack.
        grammar = await asyncio.to_thread(engine.compile_grammar, gbnf, param=PARAM)
        events = [e async for e in engine.generate(request(engine, "Answer in JSON:", 4, grammar=grammar))]
        assert "".join(e.text for e in events if isinstance(e, TextDelta))


def test_a_two_hundred_value_enum_in_a_union_still_converts() -> None:
    enum = {"enum": [f"v{i}" for i in range(200)]}
    assert "root ::=" in json_schema_grammar({"anyOf": [enum, {"type": "null"}]}, param=PARAM)


def _tool_calls(names: list[str], enum_size: int) -> dict:
    """The union of tool calls the tools grammar is built from: each call's name, a constant, comes first."""
    arguments = {"type": "object", "properties": {"c": {"enum": [f"c{i}" for i in range(enum_size)]}}}
    return {"anyOf": [{"type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
                       "required": ["name", "arguments"]} for name in names]}  # fmt: skip


def test_a_union_told_apart_by_its_first_constant_counts_one_branch_at_a_time() -> None:
    assert "root ::=" in json_schema_grammar(_tool_calls([f"tool_{i}" for i in range(5)], 250), param="tools")
    assert "alternatives" in _refused(_tool_calls(["same"] * 5, 250))
