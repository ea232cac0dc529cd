"""The engine's token log-probabilities in OpenAI's two shapes: chat's `content` list and completions' legacy one."""

from __future__ import annotations

from collections.abc import Sequence

from server.engine.base import TokenLogprob
from server.protocol.openai_replies import ChatTokenLogprob, CompletionLogprobs, TopLogprob


def _text(piece: bytes) -> str:
    return piece.decode(errors="replace")


def chat(tokens: Sequence[TokenLogprob]) -> list[ChatTokenLogprob]:
    return [
        ChatTokenLogprob(
            token=_text(t.piece),
            logprob=t.logprob,
            bytes=list(t.piece),
            top_logprobs=[TopLogprob(token=_text(p), logprob=lp, bytes=list(p)) for _, p, lp in t.top],
        )
        for t in tokens
    ]


def completion(tokens: Sequence[TokenLogprob], offset: int, with_top: bool) -> CompletionLogprobs:
    """`offset` is where the first token's text starts in the completion."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(_text(t.piece))
    return CompletionLogprobs(
        tokens=[_text(t.piece) for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{_text(p): lp for _, p, lp in t.top} for t in tokens] if with_top else None,
        text_offset=offsets,
    )
