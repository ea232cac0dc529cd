"""Grammars that constrain generation: JSON objects, JSON Schemas, tool calls.

JSON Schemas are converted to GBNF with llama-cpp-python's converter after a check of our own, because the converter
silently drops what it cannot express: an unknown keyword, and keywords beside the one it builds a subschema's rule
from (a `pattern` wins over `maxLength`, `anyOf` over `properties`, a list of types over everything). A schema that
relies on one is refused with the keyword and its place named, never answered unconstrained. Bounds on integers and
numbers, which the converter drops too, are built here (`integer_range`, `number_range`).

Conversions are cached by the schema's compact JSON, keys in the schema's order: that is the order the grammar writes
an object's properties in, as llama.cpp's server does (a tool call's "name" comes before its "arguments", as models
were trained to write them).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from llama_cpp.llama_grammar import JSON_GBNF, RESERVED_NAMES, SchemaConverter

from server.errors import APIError
from server.serving.constrain.integer_range import integer_bounds, integer_range_gbnf
from server.serving.constrain.number_range import number_bounds, number_range_gbnf
from server.serving.constrain.schema_limits import check_ambiguity, check_bounds, check_gbnf_nesting

MAX_SCHEMA_BYTES = 64 * 1024
MAX_GRAMMAR_BYTES = 256 * 1024

# Keywords the converter turns into grammar rules, and those that only annotate.
_CONSTRAINING = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "pattern", "minLength", "maxLength", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "$defs", "definitions",
}  # fmt: skip
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly"}
_FORMATS = {"date", "time", "date-time", "uuid"}
_BOUNDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_BOUNDED_TYPES = {"integer", "number"}
# Keywords whose value maps names to subschemas, and those whose value is one subschema or a list of them.
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}
_SUBSCHEMAS = {"items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"}

JSON_OBJECT_GBNF = JSON_GBNF
# What a GBNF literal must escape to match itself.
_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"}


def json_schema_grammar(schema: dict[str, Any], *, param: str) -> str:
    """GBNF for JSON that validates against `schema`; APIError(400) naming what cannot be expressed."""
    return json_schema_rules(schema, rule="", param=param)


def json_schema_rules(schema: dict[str, Any], *, rule: str, param: str) -> str:
    """GBNF rules in which `rule` matches JSON that validates against `schema`, to embed in a larger grammar: the
    other rules are named after `rule` or are the converter's shared ones (`space`, `string`, ...). `rule=""` names
    it `root`, a whole grammar."""
    try:
        canonical = json.dumps(schema, separators=(",", ":"))
        if len(canonical) > MAX_SCHEMA_BYTES:
            raise APIError(400, f"the JSON schema is larger than {MAX_SCHEMA_BYTES} bytes", param=param)
        return _convert(canonical, param, rule)
    except RecursionError:
        # The JSON encoder, the schema check and the converter all recurse: a schema nested deeper than the stack
        # allows is refused, not a 500. Request bodies are capped shallower than this (MAX_JSON_DEPTH); this holds
        # for a schema that reaches here some other way.
        raise APIError(400, "the JSON schema is nested too deeply", param=param) from None


@functools.lru_cache(maxsize=256)
def _convert(canonical: str, param: str, rule: str) -> str:
    schema = json.loads(canonical)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the root"
        raise APIError(400, f"invalid JSON schema at {where}: {exc.message}", param=param) from None
    _check_supported(schema, "#", param)
    check_ambiguity(schema, param)
    try:
        # What llama-cpp-python's json_schema_to_gbnf does, with the top rule's name chosen.
        converter = _Converter()
        top = converter.visit(converter.resolve_refs(schema, "stdin"), rule)
        grammar = converter.format_grammar()
    except Exception as exc:  # the converter raises bare Exceptions too (an unresolvable $ref)
        raise APIError(400, f"the JSON schema cannot be turned into a grammar: {exc}", param=param) from None
    if top != (rule or "root"):  # the converter renamed it because a $defs entry took its name
        taken = rule or "root"
        raise APIError(400, f"a $defs entry of the JSON schema takes the name {taken!r}; rename it", param=param)
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise APIError(400, "the JSON schema's grammar is too large; simplify the schema", param=param)
    check_gbnf_nesting(grammar, param)
    return grammar


def _check_supported(schema: Any, where: str, param: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise _unsupported(f"a subschema that is not an object at {where}", param)
    check_bounds(schema, where, param)
    for key, value in schema.items():
        if key not in _CONSTRAINING and key not in _ANNOTATIONS:
            raise _unsupported(f"the keyword {key!r} at {where}", param)
        if key in _BOUNDS and _bounded_kind(schema) is None:
            raise _unsupported(f"the keyword {key!r} at {where} (bounds need the type integer or number)", param)
        if key == "format" and value not in _FORMATS:
            raise _unsupported(f"the format {value!r} at {where}", param)
        if key == "enum" and value == []:
            # Valid JSON Schema (no value validates), but the converter writes it as an empty rule, which llama.cpp
            # cannot parse: a 400 that named nothing, and an error-level log line for each such request.
            raise _unsupported(f"an enum with no values at {where} (no value could be generated)", param)
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            raise _unsupported(f"the reference {value!r} at {where} (only local references are resolved)", param)
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                _check_supported(sub, f"{where}/{key}/{name}", param)
        elif key in _SUBSCHEMAS:
            for i, sub in enumerate(value if isinstance(value, list) else [value]):
                _check_supported(sub, f"{where}/{key}/{i}" if isinstance(value, list) else f"{where}/{key}", param)
    dropped = sorted(_constraints(schema) - _honoured(schema))
    if dropped:
        raise _unsupported(f"the keyword {dropped[0]!r} beside {_rule_keyword(schema)!r} at {where}", param)
    missing = [name for name in schema.get("required", []) if name not in schema.get("properties", {})]
    if missing:
        raise _unsupported(f"a required property without a schema ({missing[0]!r}) at {where}", param)


def _constraints(schema: dict[str, Any]) -> set[str]:
    return {key for key in schema if key in _CONSTRAINING} - {"$defs", "definitions"}


def _rule_keyword(schema: dict[str, Any]) -> str:
    """The keyword the converter builds this subschema's rule from (its `visit` tries them in this order)."""
    kind = schema.get("type")
    for keyword in ("$ref", "oneOf", "anyOf"):
        if keyword in schema:
            return keyword
    if isinstance(kind, list):
        return "type"
    for keyword in ("const", "enum"):
        if keyword in schema:
            return keyword
    if kind in (None, "object"):
        if "properties" in schema or schema.get("additionalProperties", True) is not True:
            return "properties"
        if "allOf" in schema:
            return "allOf"
    if kind in (None, "array") and ("items" in schema or "prefixItems" in schema):
        return "items" if "items" in schema else "prefixItems"
    if kind in (None, "string"):
        for keyword in ("pattern", "format"):
            if keyword in schema:
                return keyword
    return "type"


def _honoured(schema: dict[str, Any]) -> set[str]:
    """The constraining keywords of this subschema that its grammar rule enforces."""
    keyword = _rule_keyword(schema)
    honoured = {keyword, "type"} if keyword not in ("$ref", "oneOf", "anyOf") else {keyword}
    if keyword in ("const", "enum"):
        return _constraints(schema)  # the grammar writes one of the listed values: stricter than the rest
    if keyword == "properties":
        honoured |= {"properties", "required", "additionalProperties"}
    elif keyword == "items":
        honoured |= {"minItems", "maxItems"}
    elif keyword == "type" and schema.get("type") == "string":
        honoured |= {"minLength", "maxLength"}
    elif keyword == "type" and _bounded_kind(schema) is not None:
        honoured |= _BOUNDS
    return honoured


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, with bounds on integers and numbers; the methods this module calls are typed
    here, as the converter has no annotations."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]  # the converter has no annotations

    def format_grammar(self) -> str:
        grammar: str = super().format_grammar()  # type: ignore[no-untyped-call]  # the converter has no annotations
        return grammar

    def _format_literal(self, literal: str) -> str:
        """A GBNF literal matching `literal` exactly. The converter escapes quotes and line breaks but not the
        backslash, GBNF's escape character, and what it writes as literals is JSON (a `const` or `enum` value, a
        property name), whose every quote and backslash is escaped with one: the grammar read `"C:\\\\new"` as
        `"C:\\new"`, so a forced value broke out of its JSON string (a line break where the schema said `\\n`, an
        unterminated string for a value ending in `\\`, a tool call the client never got), and a quote in a
        property name made a grammar llama.cpp could not parse."""
        return '"' + "".join(_LITERAL_ESCAPES.get(c, c) for c in literal) + '"'

    def visit(self, schema: dict[str, Any], name: str) -> str:
        kind = _bounded_kind(schema)
        if kind is not None and _BOUNDS & schema.keys() and _rule_keyword(schema) == "type":
            rule = name + "-" if name in RESERVED_NAMES else name or "root"
            try:
                if kind == "integer":
                    pattern = integer_range_gbnf(*integer_bounds(schema))
                else:
                    pattern = number_range_gbnf(*number_bounds(schema))
            except ValueError as exc:
                raise ValueError(f"{exc} (a{'n' if kind == 'integer' else ''} {kind}'s bounds)") from None
            added: str = self._add_rule(rule, f"{pattern} space")  # type: ignore[no-untyped-call]  # the converter has no annotations
            return added
        visited: str = super().visit(schema, name)  # type: ignore[no-untyped-call]  # the converter has no annotations
        return visited


def _bounded_kind(schema: dict[str, Any]) -> str | None:
    """The type, integer or number, where bounds on this subschema can be built (its type is one of them alone)."""
    kind = schema.get("type")
    return kind if isinstance(kind, str) and kind in _BOUNDED_TYPES else None


def _unsupported(what: str, param: str) -> APIError:
    return APIError(400, f"structured outputs do not support {what}", param=param)
