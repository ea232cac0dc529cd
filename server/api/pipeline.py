"""The stages a generation request passes through, in order: pick the engine, build the prompt, run, shape.

Later stages (API keys, rate limits, the response cache, chat history) slot in between these as FastAPI dependencies
or wrappers around `run`, without the route handlers changing shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.api.errors import APIError
from server.api.schemas import ChatCompletionRequest, CompletionRequest, _SamplingFields
from server.engine.base import (
    ContextOverflowError,
    Engine,
    Finished,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from server.model_holder import ModelHolder

COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def select_engine(holder: ModelHolder, model: str) -> Engine:
    engine = holder.engine()
    if model != engine.model_id:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {engine.model_id!r}",
            param="model",
            code="model_not_found",
        )
    return engine


def _sampling(body: _SamplingFields, max_tokens: int) -> SamplingParams:
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


def _room(engine: Engine, prompt: list[int], param: str) -> int:
    room = engine.n_ctx - len(prompt)
    if room < 1:
        raise ContextOverflowError(
            f"this model's context is {engine.n_ctx} tokens, but the prompt has {len(prompt)}",
            param=param,
            code="context_length_exceeded",
        )
    return room


def prepare_completion(engine: Engine, body: CompletionRequest) -> GenerationRequest:
    if isinstance(body.prompt, str):
        prompt = engine.tokenize(body.prompt, add_special=True)
    elif body.prompt and isinstance(body.prompt[0], str):
        prompt = engine.tokenize(body.prompt[0], add_special=True)
    else:
        prompt = list(body.prompt)
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    _room(engine, prompt, "prompt")
    max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    return GenerationRequest(prompt_tokens=prompt, sampling=_sampling(body, max_tokens))


def prepare_chat(engine: Engine, body: ChatCompletionRequest) -> GenerationRequest:
    # The rendered template already carries the model's special tokens, so tokenizing must not add a second BOS.
    rendered = engine.render_chat([{"role": m.role, "content": m.text()} for m in body.messages])
    prompt = engine.tokenize(rendered, add_special=False)
    room = _room(engine, prompt, "messages")
    requested = body.requested_max_tokens()
    return GenerationRequest(
        prompt_tokens=prompt, sampling=_sampling(body, requested if requested is not None else room)
    )


@dataclass(frozen=True, slots=True)
class Collected:
    text: str
    finished: Finished


async def collect(events: AsyncIterator[GenerationEvent]) -> Collected:
    parts: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return Collected("".join(parts), event)
    raise RuntimeError("the engine ended a generation without a Finished event")
