"""A thinking model's constrained answer: the grammar lets the model think first, then holds only the answer.

As in llama.cpp's server (its grammars for thinking templates start with the thinking block) and vLLM's structured
outputs with a reasoning parser (the grammar waits for the end of the thinking): tool calls and `response_format`
apply to the answer after the thinking, never to the thinking itself. The thinking is any text without the close
marker; where the prompt did not open the block, the model may also answer at once.
"""

from __future__ import annotations

import re

from server.engine.chat_template import ReasoningSyntax
from server.errors import APIError
from server.serving.constrain.text_without import literal, text_without

ROOT = "thinking-root"
_ANSWER = "root"  # the answer grammar's own start rule


def after_thinking(answer: str, syntax: ReasoningSyntax, *, param: str) -> str:
    """`answer` (GBNF starting at `root`) behind the model's thinking block; the result starts at ROOT."""
    then = f"{literal(syntax.close)} thinking-gap {_ANSWER}"
    rules = {
        ROOT: "thinking-0" if syntax.starts_inside else f"thinking-gap {literal(syntax.open)} thinking-0 | {_ANSWER}",
        "thinking-gap": "[ \\t\\n]{0,4}",
    } | text_without(syntax.close, prefix="thinking", then=then, may_end=False)
    clash = set(re.findall(r"^([a-zA-Z0-9-]+) ::=", answer, re.MULTILINE)) & rules.keys()
    if clash:
        raise APIError(400, f"a name in the schema becomes the grammar rule {min(clash)!r}, which the grammar of "
                       "the model's thinking needs; rename it", param=param)  # fmt: skip
    return answer + "\n" + "\n".join(f"{name} ::= {body}" for name, body in rules.items())
