"""Request bodies to engine requests: the prompt's tokens and the sampling parameters.

The context window is checked in one place, the engine's `generate`; here chat only needs it to default max_tokens to
the room the prompt leaves.
"""

from __future__ import annotations

from server.engine.base import Engine, GenerationRequest, SamplingParams
from server.errors import APIError
from server.protocol.openai import ChatCompletionRequest, CompletionRequest, SamplingFields
from server.serving.constrain.grammar import JSON_OBJECT_GBNF, json_schema_grammar
from server.serving.constrain.tools import formats as tools
from server.serving.constrain.tools.plan import ToolPlan

COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def response_grammar(body: SamplingFields) -> str | None:
    """The grammar `response_format` asks for: any JSON object, or JSON that validates against a schema."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema.schema_ is not None:
        return json_schema_grammar(fmt.json_schema.schema_, param="response_format.json_schema.schema")
    return JSON_OBJECT_GBNF


def _sampling(body: SamplingFields, max_tokens: int, *, grammar: str | None, logprobs: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=body.seed,
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()},
        stop=tuple(body.stop_list()),
        grammar=grammar,
        logprobs=logprobs,
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
    sampling = _sampling(body, max_tokens, grammar=response_grammar(body), logprobs=body.logprobs)
    return GenerationRequest(prompt, sampling, prompt_param="prompt", n=body.n)


def chat_request(engine: Engine, body: ChatCompletionRequest, tool_plan: ToolPlan | None) -> GenerationRequest:
    tool_format = tools.format_for(engine)
    template_input = tool_format.template_input(body.messages, tool_plan)
    # The rendered template already carries the model's special tokens, so tokenizing must not add a second BOS.
    rendered = engine.render_chat(template_input.messages, template_input.tools)
    prompt = engine.tokenize(rendered, add_special=False)
    requested = body.requested_max_tokens()
    max_tokens = requested if requested is not None else max(1, engine.n_ctx - len(prompt))
    grammar = tool_format.grammar(tool_plan) if tool_plan is not None else response_grammar(body)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    sampling = _sampling(body, max_tokens, grammar=grammar, logprobs=logprobs)
    return GenerationRequest(prompt, sampling, prompt_param="messages", n=body.n)
