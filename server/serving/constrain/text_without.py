"""GBNF rules for free text that does not contain a marker: the text a model may write before its tool calls
(`<tool_call>`), or its thinking before the answer (`</think>`).

A state machine over how much of the marker the text ends with: `{prefix}-k` means its last k characters are the
marker's first k. Each state goes on with a character, or starts `then` (which begins with the marker), or, where the
text may end there, ends. The marker's first character occurs nowhere else in it, so after a mismatch only that
character starts a new partial match. Every token is checked by the grammar before it is accepted, so this is the
same language as llama.cpp's lazy grammar triggers without its failure mode (hermes.py says which).
"""

from __future__ import annotations

import json

_SAFE = set("<>_/|")


def text_without(marker: str, *, prefix: str, then: str, may_end: bool) -> dict[str, str]:
    """Rules in which `{prefix}-0` matches text without `marker`, then `then`; with `may_end`, `then` is optional."""
    first = marker[0]
    if first in marker[1:] or not all(c.isalnum() or c in _SAFE for c in marker):
        raise ValueError(f"{marker!r}: its first character recurs or a character needs escaping in a class")
    rules: dict[str, str] = {}
    for k in range(len(marker)):
        steps = [f"[^{marker[k]}{first}] {prefix}-0" if k else f"[^{first}] {prefix}-0"]
        if k:
            steps.append(f"{literal(first)} {prefix}-1")
        if k + 1 < len(marker):
            steps.append(f"{literal(marker[k])} {prefix}-{k + 1}")
        steps.append(then)
        rules[f"{prefix}-{k}"] = f"( {' | '.join(steps)} ){'?' if may_end else ''}"
    return rules


def literal(text: str) -> str:
    """A GBNF string literal (JSON's escapes are GBNF's)."""
    return json.dumps(text)
