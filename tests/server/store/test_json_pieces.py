"""JSON made and read a piece at a time is the JSON the json module makes and reads whole."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.store import json_pieces

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)
CONTAINERS = st.lists(VALUES) | st.dictionaries(st.text(), VALUES)


@settings(max_examples=200, deadline=None)
@given(CONTAINERS)
def test_dumps_is_json_dumps(value) -> None:
    assert json_pieces.dumps(value) == json.dumps(value)
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    assert json_pieces.dumps(value, **compact) == json.dumps(value, **compact)
    size = len(json.dumps(value, **compact).encode("utf-8", "surrogatepass"))
    assert json_pieces.compact_size(value) == size


@settings(max_examples=200, deadline=None)
@given(CONTAINERS, st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_loads_is_json_loads_whatever_the_whitespace(value, space: str) -> None:
    spaced = json.dumps(value, separators=(space + "," + space, space + ":" + space))
    for text in (json.dumps(value), json.dumps(value, indent=1), spaced):
        padded = space + text + space
        assert json_pieces.loads(padded) == json.loads(padded) == value


def test_loads_reads_postgresqls_jsonb_text() -> None:
    text = '[{"id": "rs_1", "type": "reasoning", "summary": []}, {"role": "user", "content": "h\\u00e9 \\"x\\""}]'
    assert json_pieces.loads(text) == json.loads(text)
    assert json_pieces.loads('{"a": [1, 2], "b": {"c": null}}') == {"a": [1, 2], "b": {"c": None}}
    assert json_pieces.loads("[]") == [] and json_pieces.loads(" { } ") == {}
    assert json_pieces.loads('"just a string"') == "just a string"


@pytest.mark.parametrize(
    "text", ["", "[", "[1,]", "[1 2]", "[1]]", "[1] x", '{"a" 1}', "{1: 2}", '{"a": 1,}', '{"a": 1', "[1, 2"]
)
def test_loads_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        json_pieces.loads(text)
