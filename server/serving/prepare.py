"""Request bodies to engine requests: the prompt's tokens and the sampling parameters.

The context window is checked in one place, the engine's `generate`; here chat only needs it to default max_tokens to
the room the prompt leaves.
"""

from __future__ import annotations

from server.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from server.engine.base import Engine, GenerationRequest, SamplingParams
from server.serving.errors import APIError

COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def _sampling(body: SamplingFields, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=body.seed,
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()},
        stop=tuple(body.stop_list()),
    )


def completion_request(engine: Engine, body: CompletionRequest) -> GenerationRequest:
    if isinstance(body.prompt, str):
        prompt = engine.tokenize(body.prompt, add_special=True)
    elif body.prompt and isinstance(body.prompt[0], str):
        prompt = engine.tokenize(body.prompt[0], add_special=True)
    else:
        prompt = list(body.prompt)
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    return GenerationRequest(prompt, _sampling(body, max_tokens), prompt_param="prompt")


def chat_request(engine: Engine, body: ChatCompletionRequest) -> GenerationRequest:
    # The rendered template already carries the model's special tokens, so tokenizing must not add a second BOS.
    rendered = engine.render_chat([{"role": m.role, "content": m.text()} for m in body.messages])
    prompt = engine.tokenize(rendered, add_special=False)
    requested = body.requested_max_tokens()
    max_tokens = requested if requested is not None else max(1, engine.n_ctx - len(prompt))
    return GenerationRequest(prompt, _sampling(body, max_tokens), prompt_param="messages")
