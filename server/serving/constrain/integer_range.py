"""GBNF for the JSON integers within bounds (`minimum`, `maximum` and their exclusive forms on an integer schema).

llama-cpp-python's JSON-Schema converter leaves bounds out of its grammars, so a schema's `"maximum": 9` let the model
write 10. A range of decimal numbers is a union of digit patterns, as for a regular expression: 17..342 is
`1[7-9] | [2-9][0-9] | [1-2][0-9]{2} | 3[0-3][0-9] | 34[0-2]`. A side left open stops at 16 digits, the longest
integer the converter's own rule writes.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DIGITS = 16


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The smallest and largest integer `schema`'s bounds admit (None: that side is open)."""
    lows = [math.ceil(schema["minimum"])] if "minimum" in schema else []
    if "exclusiveMinimum" in schema:
        lows.append(math.floor(schema["exclusiveMinimum"]) + 1)
    highs = [math.floor(schema["maximum"])] if "maximum" in schema else []
    if "exclusiveMaximum" in schema:
        highs.append(math.ceil(schema["exclusiveMaximum"]) - 1)
    return (max(lows) if lows else None), (min(highs) if highs else None)


def integer_range_gbnf(low: int | None, high: int | None) -> str:
    """A GBNF expression matching exactly the JSON integers from `low` to `high` (None: open; at most MAX_DIGITS
    digits). ValueError when there are none."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"no integer is at least {low} and at most {high}")
    alternatives = []
    if low is None or low < 0:
        magnitude_low = 1 if high is None or high >= 0 else -high
        alternatives += [f'"-" {p}' for p in whole_number_patterns(magnitude_low, None if low is None else -low)]
    if high is None or high >= 0:
        alternatives += whole_number_patterns(max(low or 0, 0), high)
    if not alternatives:
        raise ValueError(f"no integer of at most {MAX_DIGITS} digits is within the bounds")
    return "(" + " | ".join(f"({a})" for a in alternatives) + ")"


def whole_number_patterns(low: int, high: int | None) -> list[str]:
    """Patterns for the non-negative integers low..high without leading zeros (high None: up to MAX_DIGITS digits)."""
    if high is None:
        # The numbers as long as `low` from it up, then every longer one.
        shortest = len(str(low))
        longer = [f"[1-9] [0-9]{{{shortest},{MAX_DIGITS - 1}}}"] if shortest < MAX_DIGITS else []
        return whole_number_patterns(low, 10**shortest - 1) + longer
    top = min(high, 10**MAX_DIGITS - 1)
    patterns = []
    for digits in range(len(str(low)), len(str(top)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(top, 10**digits - 1)
        if first <= last:
            patterns += _same_length(str(first), str(last))
    return patterns


def _same_length(first: str, last: str) -> list[str]:
    """Patterns for the digit strings from `first` to `last`, both of the same length (leading zeros allowed)."""
    if len(first) == 1:
        return [_digits(int(first), int(last))]
    if first[0] == last[0]:
        return [f'"{first[0]}" {p}' for p in _same_length(first[1:], last[1:])]
    rest = len(first) - 1
    patterns = []
    lead_low, lead_high = int(first[0]), int(last[0])
    if first[1:] != "0" * rest:
        patterns += [f'"{first[0]}" {p}' for p in _same_length(first[1:], "9" * rest)]
        lead_low += 1
    partial_last = last[1:] != "9" * rest
    if partial_last:
        lead_high -= 1
    if lead_low <= lead_high:
        patterns.append(f"{_digits(lead_low, lead_high)} [0-9]{{{rest}}}")
    if partial_last:
        patterns += [f'"{last[0]}" {p}' for p in _same_length("0" * rest, last[1:])]
    return patterns


def _digits(low: int, high: int) -> str:
    return f'"{low}"' if low == high else f"[{low}-{high}]"
