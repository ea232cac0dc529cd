"""What a generation request must satisfy before the engine queues it, checked in one place.

Everything here is refused with the request field at fault named: the context window (admission keeps prompt plus
max_tokens within each slot's n_ctx cells, so a running generation never runs out of room), the number of choices,
and token ids outside the vocabulary (one of those makes llama_decode fail for the whole batch, every other stream
included).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.engine.base import ContextOverflowError, EngineError, GenerationRequest


def validate(request: GenerationRequest, *, n_ctx: int, n_vocab: int, max_choices: int) -> None:
    n_prompt = len(request.prompt_tokens)
    max_tokens = request.sampling.max_tokens
    if n_prompt == 0:
        raise ContextOverflowError("the prompt is empty", param=request.prompt_param)
    if n_prompt >= n_ctx:
        raise ContextOverflowError(
            f"this model's context is {n_ctx} tokens, but the prompt has {n_prompt}",
            param=request.prompt_param,
            code="context_length_exceeded",
        )
    if request.n < 1:
        raise EngineError(f"n is {request.n}; a request asks for at least one choice", param="n")
    if request.n > max_choices:
        raise EngineError(
            f"n is {request.n}, but this server generates at most {max_choices} choices per request", param="n"
        )
    if n_prompt + max_tokens > n_ctx:
        raise ContextOverflowError(
            f"this model's context is {n_ctx} tokens; the prompt has {n_prompt} and max_tokens asks for {max_tokens} "
            "more",
            param="max_tokens",
            code="context_length_exceeded",
        )
    check_token_ids(request.prompt_tokens, n_vocab=n_vocab, param=request.prompt_param)
    check_token_ids(list(request.sampling.logit_bias), n_vocab=n_vocab, param="logit_bias")


def check_token_ids(token_ids: Sequence[int], *, n_vocab: int, param: str) -> None:
    bad = next((t for t in token_ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise EngineError(f"token id {bad} is outside the vocabulary (0..{n_vocab - 1})", param=param)
