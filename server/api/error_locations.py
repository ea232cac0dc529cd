"""Which parts of a validation error's location are a tagged union's tag, not a field of the client's.

pydantic puts the tag a discriminated union chose into the location: a content part without its text is at
`messages.0.content.0.text.text`, a Responses input item at `input.0.message.content.0.input_text.text`, a
`response_format` at `response_format.json_schema.json_schema`. The client wrote `messages.0.content.0.text`. Nothing
in the error says which part is the tag, and looking at the body cannot tell either: a chat tool's `function` is a real
field named as its type. So the request model's core schema is walked along the location, and the parts that select a
tagged union's member are the tags. A union's other members ("str", "list[TextPart]") are named the same way and are
left to the caller, which drops them already; the walk only steps through them to reach the tags under them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel


def tag_positions(model: type[BaseModel], loc: Sequence[object]) -> set[int]:
    """Positions in `loc` (a location in a body of `model`, without FastAPI's leading "body") that hold a tag."""
    schema: Mapping[str, Any] | None = model.__pydantic_core_schema__
    definitions: dict[str, Mapping[str, Any]] = {}
    tags: set[int] = set()
    for position, part in enumerate(loc):
        schema = _unwrapped(schema, definitions)
        if schema is None:
            break
        kind = schema.get("type")
        if kind == "tagged-union":
            tags.add(position)
            schema = _choice(schema["choices"], part)
        elif kind == "union":
            schema = _member(schema["choices"], part, definitions)
        elif kind == "model-fields":
            schema = _field(schema["fields"], part)
        elif kind in ("list", "set", "frozenset", "generator"):
            schema = schema.get("items_schema") if isinstance(part, int) else None
        elif kind == "dict":
            schema = schema.get("values_schema")
        else:
            break
    return tags


def _unwrapped(schema: Mapping[str, Any] | None, definitions: dict[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The schema that gives `schema`'s children: through validators, defaults, nullables, models and references."""
    while schema is not None:
        kind = schema.get("type")
        if kind == "definitions":
            definitions.update((d["ref"], d) for d in schema["definitions"] if "ref" in d)
        if kind == "definition-ref":
            schema = definitions.get(schema["schema_ref"])
        elif kind in ("union", "tagged-union", "model-fields", "list", "set", "frozenset", "generator", "dict"):
            return schema
        elif isinstance(schema.get("schema"), Mapping):
            schema = schema["schema"]
        else:
            return None
    return None


def _choice(choices: Mapping[Any, Any], tag: object) -> Mapping[str, Any] | None:
    chosen = choices.get(tag)
    while isinstance(chosen, str | int):  # a tag may name another tag's schema
        chosen = choices.get(chosen)
    return chosen if isinstance(chosen, Mapping) else None


def _member(
    choices: Sequence[Any], label: object, definitions: dict[str, Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The union member pydantic named `label` in the location: by an explicit label, else by its kind."""
    if not isinstance(label, str):
        return None
    for choice in choices:
        member: Mapping[str, Any] = choice[0] if isinstance(choice, tuple) else choice
        if isinstance(choice, tuple):
            if choice[1] == label:
                return member
            continue
        inner = _unwrapped(member, definitions)
        if inner is None:
            continue
        if inner.get("type") == "model-fields" and label == inner.get("model_name"):
            return member
        if label.startswith(f"{inner.get('type')}["):  # list[...], dict[...], tagged-union[...]
            return member
    return None


def _field(fields: Mapping[str, Any], name: object) -> Mapping[str, Any] | None:
    for field_name, field in fields.items():
        if name in (field_name, field.get("validation_alias")):
            schema: Mapping[str, Any] = field["schema"]
            return schema
    return None
