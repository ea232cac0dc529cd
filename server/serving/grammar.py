"""Grammars that constrain generation: JSON objects, JSON Schemas, tool calls.

JSON Schemas are converted to GBNF with llama-cpp-python's converter after a check of our own, because the converter
silently drops keywords it cannot express: a schema that uses one is refused with the keyword and its place named,
never answered unconstrained. Conversions are cached by the schema's compact JSON, keys in the schema's order: that is
the order the grammar writes an object's properties in, as llama.cpp's server does (a tool call's "name" comes before
its "arguments", as models were trained to write them).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from llama_cpp.llama_grammar import JSON_GBNF, SchemaConverter

from server.serving.errors import APIError

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
# Keywords whose value maps names to subschemas, and those whose value is one subschema or a list of them.
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}
_SUBSCHEMAS = {"items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"}

JSON_OBJECT_GBNF = JSON_GBNF


def json_schema_grammar(schema: dict[str, Any], *, param: str) -> str:
    """GBNF for JSON that validates against `schema`; APIError(400) naming what cannot be expressed."""
    return json_schema_rules(schema, rule="", param=param)


def json_schema_rules(schema: dict[str, Any], *, rule: str, param: str) -> str:
    """GBNF rules in which `rule` matches JSON that validates against `schema`, to embed in a larger grammar: the
    other rules are named after `rule` or are the converter's shared ones (`space`, `string`, ...). `rule=""` names
    it `root`, a whole grammar."""
    canonical = json.dumps(schema, separators=(",", ":"))
    if len(canonical) > MAX_SCHEMA_BYTES:
        raise APIError(400, f"the JSON schema is larger than {MAX_SCHEMA_BYTES} bytes", param=param)
    return _convert(canonical, param, rule)


@functools.lru_cache(maxsize=256)
def _convert(canonical: str, param: str, rule: str) -> str:
    schema = json.loads(canonical)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the root"
        raise APIError(400, f"invalid JSON schema at {where}: {exc.message}", param=param) from None
    _check_supported(schema, "#", param)
    try:
        # What llama-cpp-python's json_schema_to_gbnf does, with the top rule's name chosen.
        converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        top = converter.visit(converter.resolve_refs(schema, "stdin"), rule)
        grammar = converter.format_grammar()
    except Exception as exc:  # the converter raises bare Exceptions too (an unresolvable $ref)
        raise APIError(400, f"the JSON schema cannot be turned into a grammar: {exc}", param=param) from None
    if top != (rule or "root"):  # the converter renamed it because a $defs entry took its name
        taken = rule or "root"
        raise APIError(400, f"a $defs entry of the JSON schema takes the name {taken!r}; rename it", param=param)
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise APIError(400, "the JSON schema's grammar is too large; simplify the schema", param=param)
    return grammar


def _check_supported(schema: Any, where: str, param: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise _unsupported(f"a subschema that is not an object at {where}", param)
    for key, value in schema.items():
        if key not in _CONSTRAINING and key not in _ANNOTATIONS:
            raise _unsupported(f"the keyword {key!r} at {where}", param)
        if key == "format" and value not in _FORMATS:
            raise _unsupported(f"the format {value!r} at {where}", param)
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            raise _unsupported(f"the reference {value!r} at {where} (only local references are resolved)", param)
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                _check_supported(sub, f"{where}/{key}/{name}", param)
        elif key in _SUBSCHEMAS:
            for i, sub in enumerate(value if isinstance(value, list) else [value]):
                _check_supported(sub, f"{where}/{key}/{i}" if isinstance(value, list) else f"{where}/{key}", param)


def _unsupported(what: str, param: str) -> APIError:
    return APIError(400, f"structured outputs do not support {what}", param=param)
