"""The lower bound on a text's tokens: pure arithmetic, and sound on the two real vocabularies (the demo model's
byte-level BPE and Gemma 3's SentencePiece): never more than the tokens llama.cpp makes of the text, with special
tokens parsed or not, on the texts that come closest to it (the longest token's own text, repeated) and on the ones
a client would choose to make tokenizing slow."""

from __future__ import annotations

import pytest

from server.engine.base import ContextOverflowError
from server.engine.llama_model import LlamaModel
from server.engine.token_bound import TokenBound


def test_a_text_holds_at_least_its_characters_over_the_longest_token() -> None:
    bound = TokenBound(longest_token_bytes=4)
    assert [bound.at_least(text) for text in ("", "a", "abcd", "abcde", "漢字漢字漢")] == [0, 1, 1, 2, 2]


def test_whitespace_a_token_may_strip_is_not_counted() -> None:
    assert TokenBound(2, whitespace_may_vanish=True).at_least("a \t\n\v\f\rb" + " " * 100) == 1


def test_a_vocabulary_without_a_bound_says_nothing() -> None:
    assert TokenBound().at_least("x" * 10_000) == 0
    TokenBound().check("x" * 10_000, n_ctx=8, param="prompt")


def test_a_text_certainly_past_the_context_is_refused_naming_the_field() -> None:
    bound = TokenBound(longest_token_bytes=10)
    bound.check("x" * 70, n_ctx=8, param="prompt")
    with pytest.raises(ContextOverflowError) as refused:
        bound.check("x" * 80, n_ctx=8, param="input", what="input 3")
    assert refused.value.param == "input" and refused.value.code == "context_length_exceeded"
    assert str(refused.value) == "this model's context is 8 tokens, but input 3 has at least 8"


def _longest_piece(model: LlamaModel) -> str:
    pieces = (model.piece(token) for token in range(model.info.n_vocab))
    return max((p.decode() for p in pieces if _decodes(p)), key=lambda text: len(text.encode()))


def _decodes(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_the_bound_never_exceeds_the_tokens(each_vocabulary: LlamaModel) -> None:
    model = each_vocabulary
    bound = model.token_bound
    assert bound.longest_token_bytes > 1 and not bound.whitespace_may_vanish
    control = next(iter(model.control_texts.tokens))
    texts = [
        _longest_piece(model) * 50,
        " " * 20_000,
        "\n" * 5_000 + "\t" * 5_000,
        "a" * 20_000,
        "The quick brown fox jumps over the lazy dog. " * 400,
        "漢字かな交じり文" * 500,
        "🙂👍🏽" * 500,
        "\u00a0\u2003\u3000" * 2_000,
        "\U000f0000\ue000" * 1_000,
        control * 500,
        (control + " ") * 500,
    ]
    for text in texts:
        for parse_special in (True, False):
            made = len(model.tokenize(text, add_special=False, parse_special=parse_special))
            assert bound.at_least(text) <= made, (text[:20], parse_special)
