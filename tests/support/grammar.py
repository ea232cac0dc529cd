"""Running a GBNF grammar with llama.cpp over a text's tokens, as the engine's sampler would."""

from __future__ import annotations

import ctypes

import llama_cpp

from server.engine.llama_model import LlamaModel


def grammar_matches(model: LlamaModel, grammar: str, text: str, *, root: str = "root") -> bool:
    """Whether llama.cpp's grammar lets the tokens of `text` through one by one, then lets the answer end."""
    sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(), root.encode())
    assert sampler, "the grammar does not parse"
    one = (llama_cpp.llama_token_data * 1)()
    candidates = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)

    def allowed(token: int) -> bool:
        one[0].id, one[0].logit = token, 0.0
        candidates.size, candidates.selected = 1, -1
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return one[0].logit != float("-inf")

    try:
        for token in model.tokenize(text, add_special=False):
            if not allowed(token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(llama_cpp.llama_vocab_eos(model.vocab))
    finally:
        llama_cpp.llama_sampler_free(sampler)
