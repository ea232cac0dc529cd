"""Which JSON Schemas become grammars: llama-cpp-python's converter drops keywords beside the one it builds a rule
from, and a schema relying on one must be refused by name, never answered unconstrained."""

from __future__ import annotations

import json

import pytest

from server.engine.llama_model import LlamaModel
from server.errors import APIError
from server.serving.constrain.grammar import json_schema_grammar
from server.serving.constrain.integer_range import integer_range_gbnf
from server.serving.constrain.number_range import number_bounds, number_range_gbnf
from tests.support.grammar import grammar_matches


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "'maxLength' beside 'pattern' at #"),
        ({"type": "string", "format": "date", "minLength": 3}, "'minLength' beside 'format'"),
        ({"minimum": 0}, "'minimum' at # (bounds need the type integer or number)"),
        ({"type": "string", "maximum": 3}, "'maximum' at # (bounds need the type integer or number)"),
        ({"type": ["integer", "null"], "maximum": 3}, "'maximum' at #"),
        ({"type": ["string", "null"], "maxLength": 3}, "'maxLength' beside 'type'"),
        ({"anyOf": [{"type": "string"}], "properties": {"a": {}}}, "'properties' beside 'anyOf'"),
        ({"$ref": "#/$defs/a", "maxLength": 2, "$defs": {"a": {"type": "string"}}}, "'maxLength' beside '$ref'"),
        ({"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]}, "'allOf' beside"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required property"),
        ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, "'prefixItems'"),
        ({"type": "object", "properties": {"n": {"maximum": 3}}}, "at #/properties/n"),
        ({"type": ["number", "null"], "maximum": 3}, "'maximum' at #"),
        # An empty enum became an empty rule, which llama.cpp could not parse (a 400 naming nothing, an error logged).
        ({"type": "object", "properties": {"e": {"enum": []}}}, "an enum with no values at #/properties/e"),
        ({"anyOf": [{"type": "string"}, {"enum": []}]}, "an enum with no values at #/anyOf/1"),
    ],
)
def test_keywords_the_converter_would_drop_are_refused_by_name(schema: dict, fragment: str) -> None:
    with pytest.raises(APIError) as info:
        json_schema_grammar(schema, param="response_format.json_schema.schema")
    assert info.value.status == 400
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "schema",
    [
        {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Nickname"},
        {"$ref": "#/$defs/Color", "description": "a color", "$defs": {"Color": {"enum": ["red", "blue"]}}},
        {"type": "integer", "enum": [1, 2, 3], "minimum": 1},
        {"type": "array", "items": {"type": "integer", "exclusiveMinimum": 0}, "minItems": 1, "maxItems": 4},
        {"type": "string", "minLength": 1, "maxLength": 8},
        {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
    ],
)
def test_schemas_the_grammar_enforces_whole_are_accepted(schema: dict) -> None:
    assert "root ::=" in json_schema_grammar(schema, param="p")


def test_integer_bounds_become_part_of_the_grammar() -> None:
    grammar = json_schema_grammar({"type": "object", "properties": {"q": {"type": "integer", "maximum": 9}}}, param="p")
    assert f"q ::= {integer_range_gbnf(None, 9)} space" in grammar.splitlines()


def test_bounds_no_integer_meets_are_refused() -> None:
    with pytest.raises(APIError, match="no integer is at least 5 and at most 3"):
        json_schema_grammar({"type": "integer", "minimum": 5, "maximum": 3}, param="p")


def test_number_bounds_become_part_of_the_grammar() -> None:
    schema = {"type": "object", "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1}}}
    grammar = json_schema_grammar(schema, param="p")
    assert f"p ::= {number_range_gbnf(*number_bounds(schema['properties']['p']))} space" in grammar.splitlines()
    with pytest.raises(APIError, match=r"is above 1 and below 1 \(a number's bounds\)"):
        json_schema_grammar({"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1}, param="p")


@pytest.mark.parametrize(
    ("schema", "inside", "outside"),
    [
        ({"type": "number", "minimum": 0, "maximum": 1}, ["0", "0.5", "1", "1.000", "0.0001"], ["1.5", "-0.1", "1e0"]),
        ({"type": "number", "exclusiveMinimum": -2.5, "maximum": -0.25}, ["-2.4", "-0.25", "-1"], ["-2.5", "-0.2"]),
        ({"type": "number", "exclusiveMaximum": 10}, ["9.999999999999998", "-3"], ["10", "9.9999999999999999"]),
    ],
)
def test_number_bounds_hold_in_llama_cpp(model: LlamaModel, schema: dict, inside: list, outside: list) -> None:
    """The grammar as llama.cpp parses and runs it over the demo model's tokens, not only as a regular expression."""
    grammar = json_schema_grammar(schema, param="p")
    for text in inside:
        assert grammar_matches(model, grammar, text), text
    for text in outside:
        assert not grammar_matches(model, grammar, text), text


def _nested_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize("levels", [200, 600])  # past the schema check's recursion; past the JSON encoder's too
def test_a_schema_nested_past_the_stack_is_a_400_not_a_recursion_error(levels: int) -> None:
    """Request bodies are capped shallower (MAX_JSON_DEPTH); this holds for a schema that reaches here another way."""
    with pytest.raises(APIError) as info:
        json_schema_grammar(_nested_schema(levels), param="tools")
    assert (info.value.status, info.value.param) == (400, "tools") and "nested too deeply" in info.value.message
    assert "root ::=" in json_schema_grammar(_nested_schema(25), param="tools")  # as deep as a body may hold


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"const": "C:\\new"}, "C:\\new"),
        ({"enum": ["a\\", "b"]}, "a\\"),
        ({"const": 'say "hi"\n'}, 'say "hi"\n'),
        ({"type": "object", "properties": {'a"b\\': {"type": "integer"}}, "required": ['a"b\\']}, {'a"b\\': 1}),
    ],
)
def test_values_and_names_with_quotes_and_backslashes_are_written_as_json(
    model: LlamaModel, schema: dict, value: object
) -> None:
    # The converter's literals did not escape the backslash, so a const of `C:\\new` let the model write the JSON
    # "C:\new" (a line break), a value ending in a backslash an unterminated string, and a quote in a property name
    # made a grammar llama.cpp could not parse (a 400 for a valid schema).
    grammar = json_schema_grammar(schema, param="p")
    written = json.dumps(value)
    assert grammar_matches(model, grammar, written)
    if "\\\\" in written:  # what the grammar let through before: the JSON's escaped backslash as a bare one
        assert not grammar_matches(model, grammar, written.replace("\\\\", "\\"))
