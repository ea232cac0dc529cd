"""Embeddings inputs meet the embeddings batch as they are tokenized: a request of many inputs, each under the
context's bound but none small enough to embed, is refused after its first input, not tokenized whole."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from server.engine.base import ContextOverflowError
from server.engine.token_bound import TokenBound
from server.protocol.openai import EmbeddingRequest
from server.serving.endpoints.embeddings import _tokens
from tests.support.fake_engine import FakeEngine


@dataclass(eq=False)
class CountingEngine(FakeEngine):
    tokenized: list[str] = field(default_factory=list)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        self.tokenized.append(text)
        return super().tokenize(text, add_special=add_special, parse_special=parse_special)


def _engine() -> CountingEngine:
    # Tokens are characters; a token holds at most 4 bytes, so 60 characters hold at least 15 tokens.
    return CountingEngine(n_ctx=4096, embedding_max_tokens=16, token_bound=TokenBound(longest_token_bytes=4))


def test_inputs_under_the_context_but_too_long_to_embed_stop_at_the_first() -> None:
    engine = _engine()
    body = EmbeddingRequest(model="m", input=["x" * 60] * 50)
    with pytest.raises(ContextOverflowError) as refused:
        _tokens(engine, body)
    assert refused.value.param == "input" and str(refused.value) == "input 0 has 60 tokens; at most 16 can be embedded"
    assert len(engine.tokenized) == 1


def test_an_input_certainly_too_long_to_embed_is_refused_before_any_is_tokenized() -> None:
    engine = _engine()
    with pytest.raises(ContextOverflowError) as refused:
        _tokens(engine, EmbeddingRequest(model="m", input=["ok", "x" * 68]))
    assert str(refused.value) == "input 1 has at least 17 tokens; at most 16 can be embedded"
    assert engine.tokenized == []


def test_inputs_that_fit_are_all_tokenized() -> None:
    engine = _engine()
    assert _tokens(engine, EmbeddingRequest(model="m", input=["ab", "cd"])) == [[97, 98], [99, 100]]
