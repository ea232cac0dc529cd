"""Errors named in the client's own API, for the endpoints served as chat completions.

The Messages and Responses APIs are served by building a chat request and running the chat preparation and the
pipeline, whose refusals name the chat request's fields (`messages`, `max_tokens`, `tools[0].function.parameters`,
`response_format.json_schema.schema`). A client of those APIs sent no such field: its error must name the field it
did send (`input`, `max_output_tokens`, `tools[0].parameters`, `text.format.schema`; for Messages, whose errors
carry the field in the message, `tools.0.input_schema`, `stop_sequences`). `renamed_fields` renames the field of a
refusal that leaves the chat machinery, whatever stage raised it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from server.errors import APIError, ForeseenError

# (a chat field, or a pattern of one, at the start of an error's param) -> what the client's API calls it. The first
# that matches renames the head of the param; what follows the head is kept ("...schema" + nothing, "tools[1]" ...).
Renames = tuple[tuple[re.Pattern[str], str], ...]

_TOOL = r"^tools\[(\d+)\]\.function\."

RESPONSES: Renames = (
    (re.compile(r"^messages(?:[.\[].*)?$"), "input"),  # the input items (and instructions) are the chat's messages
    (re.compile(r"^max_tokens$"), "max_output_tokens"),
    (re.compile(r"^response_format\.json_schema\.schema"), "text.format.schema"),
    (re.compile(r"^response_format"), "text.format"),
    (re.compile(_TOOL + "parameters"), r"tools[\1].parameters"),
    (re.compile(_TOOL + "name"), r"tools[\1].name"),
)

MESSAGES: Renames = (  # in the style of the Messages request's own validation errors ("tools.0.input_schema")
    (re.compile(_TOOL + "parameters"), r"tools.\1.input_schema"),
    (re.compile(_TOOL + "name"), r"tools.\1.name"),
    (re.compile(r"^stop(?=$|[.\[])"), "stop_sequences"),
)


def renamed(param: str, renames: Renames) -> str:
    for pattern, replacement in renames:
        if pattern.search(param):
            return pattern.sub(replacement, param, count=1)
    return param


@contextmanager
def renamed_fields(renames: Renames) -> Iterator[None]:
    """Within it, a refusal naming a chat field is raised again naming the client's field instead."""
    try:
        yield
    except (APIError, ForeseenError) as exc:
        if exc.param is not None:
            exc.param = renamed(exc.param, renames)
        raise
