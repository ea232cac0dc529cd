"""Bounds on what a JSON schema may ask of the grammar machinery, checked before the schema is converted.

llama-cpp-python's converter writes a repetition of up to N items as N nested optional groups, and a fixed count as N
copies: a count of a few bytes becomes a grammar of millions (built with the GIL held), and llama.cpp's GBNF parser
recurses once per nesting level, so tens of thousands of levels overflow the thread's stack and kill the process.
llama.cpp itself refuses repetitions past roughly a thousand items, so counts are bounded at `MAX_REPEAT` here,
and a pattern's counts nested in one another by their product. As a last guard, a grammar whose parentheses nest
deeper than any accepted schema produces is refused before it reaches llama.cpp.

Unions cost at run time: llama.cpp keeps one parse stack per way the text so far can be read, and accepting a token
costs in the square of those. An enum's values, or a union's branches that each reference the same enum, can all stay
open at once, so the schema's ambiguity (an enum's size, a union's branches summed, through `$ref`s) is bounded at
`MAX_ALTERNATIVES`: a step on the engine thread, which every other request waits for, stays short.
"""

from __future__ import annotations

import json
import re
from typing import Any

from server.errors import APIError

MAX_REPEAT = 1000  # llama.cpp refused 1200 optional items in a row, as "exceeding sane defaults"
MAX_PATTERN_CHARS = 1000
MAX_PATTERN_GROUPS = 32  # groups nested in a pattern
# Enums of real schemas (countries, currencies, languages) stay under it. At the bound, a step whose sampled token the
# grammar refuses (the whole vocabulary is then filtered) costs the engine thread about a second in the worst shape
# (31 branches sharing a 31-value enum), a tenth of that for one flat enum; 90000 alternatives cost a minute.
MAX_ALTERNATIVES = 1000
# The deepest parentheses an accepted schema produces: a repetition's `MAX_REPEAT` levels inside a pattern's groups.
MAX_GBNF_NESTING = MAX_REPEAT + 2 * MAX_PATTERN_GROUPS + 8

_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_UNIONS = ("anyOf", "oneOf")
_PARTS = ("items", "additionalProperties", "allOf", "prefixItems")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LAST_CODE_POINT = 0x10FFFF
_SHORTHANDS = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x09, 0x0D), (0x20, 0x20)],
}
_SIMPLE_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "v": 0x0B, "0": 0x00}


def check_bounds(schema: dict[str, Any], where: str, param: str) -> None:
    """Refuse counts and patterns of one subschema (not its subschemas) that the grammar machinery cannot take."""
    for key in _COUNTS:
        value = schema.get(key)
        if isinstance(value, (int, float)) and value > MAX_REPEAT:  # JSON Schema takes 28000.0 for an integer
            raise _refused(f"{key} {value} at {where}: counts are limited to {MAX_REPEAT}", param)
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        _check_pattern(pattern, f"the pattern at {where}", param)


def check_ambiguity(schema: dict[str, Any], param: str) -> None:
    """Refuse a schema whose grammar could keep more than `MAX_ALTERNATIVES` readings of the text open at once."""
    found = _Ambiguity(schema).of(schema)
    if found > MAX_ALTERNATIVES:
        raise _refused(
            f"a schema whose enums and unions leave {found} alternatives open at once (at most {MAX_ALTERNATIVES}; "
            "an enum's values, summed over the branches of anyOf/oneOf that reach it)",
            param,
        )


def check_gbnf_nesting(gbnf: str, param: str) -> None:
    """Refuse a grammar whose parentheses nest deeper than llama.cpp's recursive parser is let to go."""
    depth = deepest = 0
    i, end = 0, len(gbnf)
    while i < end:
        c = gbnf[i]
        if c in '"[':  # a literal or a character class: parentheses inside are text
            close = '"' if c == '"' else "]"
            i += 1
            while i < end and gbnf[i] != close:
                i += 2 if gbnf[i] == "\\" else 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        elif c == "\n":
            depth = 0
        i += 1
    if deepest > MAX_GBNF_NESTING:
        raise APIError(400, "the JSON schema's grammar nests too deeply; simplify the schema", param=param)


class _Ambiguity:
    """Alternatives a subschema's grammar can hold open at once: an enum's values, a union's branches summed, the
    largest of the parts of a sequence (an object's properties, an array's items are read one after another)."""

    def __init__(self, root: dict[str, Any]) -> None:
        self._root = root
        self._refs: dict[str, int] = {}

    def of(self, schema: Any) -> int:
        if not isinstance(schema, dict):
            return 1
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref not in self._refs:
                self._refs[ref] = 1  # a recursive reference counts once
                self._refs[ref] = self.of(self._target(ref))
            return self._refs[ref]
        for key in _UNIONS:
            if isinstance(schema.get(key), list):
                branches = [self.of(branch) for branch in schema[key]]
                if _discriminated(schema[key]):  # once its first value is read, one branch is left open
                    return max([len(branches), *branches])
                return sum(branches)
        if isinstance(schema.get("enum"), list):
            return len(schema["enum"])
        if isinstance(schema.get("type"), list):
            return len(schema["type"])
        if isinstance(schema.get("pattern"), str):
            return str(schema["pattern"]).count("|") + 1
        parts = [schema[key] for key in _PARTS if key in schema]
        parts += list(schema["properties"].values()) if isinstance(schema.get("properties"), dict) else []
        flat = [p for part in parts for p in (part if isinstance(part, list) else [part])]
        return max([1, *(self.of(part) for part in flat)])

    def _target(self, ref: str) -> Any:
        node: Any = self._root
        for name in ref[2:].split("/"):
            node = node.get(name.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        return node


def _discriminated(branches: list[Any]) -> bool:
    """Whether every branch is an object whose first property written (the first required one) is a constant, a
    different one in each: a tool call's `name` before its `arguments`."""
    firsts = set()
    for branch in branches:
        properties = branch.get("properties") if isinstance(branch, dict) else None
        required = branch.get("required", []) if isinstance(branch, dict) else []
        if not isinstance(properties, dict) or not isinstance(required, list):
            return False
        first = next((name for name in properties if name in required), None)
        if first is None or not isinstance(properties[first], dict) or "const" not in properties[first]:
            return False
        firsts.add((first, json.dumps(properties[first]["const"], sort_keys=True)))
    return len(firsts) == len(branches)


def _check_pattern(pattern: str, what: str, param: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise _refused(f"{what}: patterns are limited to {MAX_PATTERN_CHARS} characters", param)
    if _CONTROL.search(pattern):
        raise _refused(f"{what}: a control character written as itself (escape it, as \\xNN)", param)
    groups: list[int] = [1]  # per open group, the largest product of counts nested in it so far
    last = 1  # the product of counts nested in the atom just read
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i, last = i + 2, 1
        elif c == "[":
            i = _check_class(pattern, i, what, param)
            last = 1
        elif c == "(":
            groups.append(1)
            if len(groups) - 1 > MAX_PATTERN_GROUPS:
                raise _refused(f"{what}: groups nest at most {MAX_PATTERN_GROUPS} deep", param)
            i += 1
            continue
        elif c == ")":
            last = groups.pop() if len(groups) > 1 else 1
            i += 1
        elif c == "{":
            close = pattern.find("}", i)
            counts = [n for n in pattern[i + 1 : close].split(",") if n.strip().isdigit()] if close > 0 else []
            count = max([1, *(int(n) for n in counts)])
            if count * last > MAX_REPEAT:
                raise _refused(f"{what}: counts, and counts nested in one another multiplied, are at most "
                               f"{MAX_REPEAT}", param)  # fmt: skip
            last *= count
            i = close + 1 if close > 0 else i + 1
        else:
            i, last = i + 1, 1
        groups[-1] = max(groups[-1], last)


def _check_class(pattern: str, start: int, what: str, param: str) -> int:
    """Refuse a character class that admits nothing; the index after it."""
    i = start + 1
    negated = i < len(pattern) and pattern[i] == "^"
    i += negated
    ranges: list[tuple[int, int]] = []
    while i < len(pattern) and pattern[i] != "]":
        low, i, shorthand = _class_char(pattern, i)
        if shorthand:
            ranges += shorthand
            continue
        high = low
        if pattern[i : i + 1] == "-" and pattern[i + 1 : i + 2] not in ("]", ""):
            high, i, _ = _class_char(pattern, i + 1)
        if high < low:
            raise _refused(f"{what}: the range {pattern[start:i]!r}... runs backwards", param)
        ranges.append((low, high))
    admits_nothing = _covers_all(ranges) if negated else not ranges
    if admits_nothing:
        raise _refused(f"{what}: a character class that admits no character", param)
    return i + 1


def _class_char(pattern: str, i: int) -> tuple[int, int, list[tuple[int, int]]]:
    """One character of a class (its code point), the index after it, and the ranges of a shorthand such as \\d."""
    if pattern[i] != "\\" or i + 1 >= len(pattern):
        return ord(pattern[i]), i + 1, []
    e = pattern[i + 1]
    digits = {"x": 2, "u": 4, "U": 8}.get(e)
    if digits and re.fullmatch(r"[0-9a-fA-F]+", pattern[i + 2 : i + 2 + digits] or "-"):
        return int(pattern[i + 2 : i + 2 + digits], 16), i + 2 + digits, []
    if e.lower() in _SHORTHANDS:  # a negated shorthand (\D) is taken as admitting everything
        return 0, i + 2, _SHORTHANDS[e] if e.islower() else [(0, _LAST_CODE_POINT)]
    return _SIMPLE_ESCAPES.get(e, ord(e)), i + 2, []


def _covers_all(ranges: list[tuple[int, int]]) -> bool:
    reached = -1
    for low, high in sorted(ranges):
        if low > reached + 1:
            return False
        reached = max(reached, high)
    return reached >= _LAST_CODE_POINT


def _refused(what: str, param: str) -> APIError:
    return APIError(400, f"structured outputs do not support {what}", param=param)
