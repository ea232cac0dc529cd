"""Request bodies to engine requests: the prompt's tokens, the sampling parameters, the tool-call format and the
compiled grammar, each decided once, here.

The context window is checked in one place, the engine's `generate`; here chat only needs it to default max_tokens to
the room the prompt leaves. The grammar is compiled last, after everything here that can refuse the request, so a
refusal never strands one; from then on the `prepare` stage closes it unless the engine took it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from server.engine.base import Engine, GenerationRequest, Grammar, SamplingParams
from server.engine.chat_template import RESERVED_VARIABLES, ReasoningSyntax
from server.engine.thinking import ThinkingBudget
from server.errors import APIError
from server.protocol.openai import ChatCompletionRequest, CompletionRequest, SamplingFields
from server.serving.constrain.grammar import JSON_OBJECT_GBNF, json_schema_grammar
from server.serving.constrain.thinking import ROOT as THINKING_ROOT
from server.serving.constrain.thinking import after_thinking
from server.serving.constrain.tools import formats as tools
from server.serving.constrain.tools import plan as tool_calls
from server.serving.pipeline.job import PreparedGeneration

COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def response_grammar(body: SamplingFields) -> tuple[str, str] | None:
    """The GBNF `response_format` asks for (any JSON object, or JSON that validates against a schema), and the
    request field it came from; None for text."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema.schema_ is not None:
        param = "response_format.json_schema.schema"
        return json_schema_grammar(fmt.json_schema.schema_, param=param), param
    return JSON_OBJECT_GBNF, "response_format"


def _compile(engine: Engine, gbnf: tuple[str, str] | None, thinking: ReasoningSyntax | None = None) -> Grammar | None:
    """The answer's grammar; behind the thinking block where the model thinks first (`constrain/thinking.py`)."""
    if gbnf is None:
        return None
    text, param = gbnf
    if thinking is None:
        return engine.compile_grammar(text, param=param)
    return engine.compile_grammar(after_thinking(text, thinking, param=param), param=param, root=THINKING_ROOT)


def _sampling(body: SamplingFields, max_tokens: int, *, logprobs: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=body.seed,
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()},
        stop=tuple(body.stop_list()),
        logprobs=logprobs,
    )


def completion_request(engine: Engine, body: CompletionRequest) -> PreparedGeneration:
    text = body.prompt if isinstance(body.prompt, str) else body.prompt[0] if body.prompt else None
    if isinstance(text, str):
        engine.token_bound.check(text, n_ctx=engine.n_ctx, param="prompt")
        prompt = engine.tokenize(text, add_special=True)
    else:
        prompt = [t for t in body.prompt if isinstance(t, int)]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    sampling = _sampling(body, max_tokens, logprobs=body.logprobs)
    gbnf = response_grammar(body)
    grammar = _compile(engine, gbnf)
    return PreparedGeneration(GenerationRequest(prompt, sampling, prompt_param="prompt", n=body.n, grammar=grammar))


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    tokens: list[int]
    plan: tool_calls.ToolPlan | None
    tool_format: tools.ToolFormat
    reasoning: ReasoningSyntax | None  # how this answer's thinking is split off; None: it is all answer


def chat_prompt(engine: Engine, body: ChatCompletionRequest, *, prefill: bool = False) -> ChatPrompt:
    """The prompt's tokens, the request's tool plan, the tool format its answer is parsed in and how its thinking is
    told from its answer. With `prefill`, the last message is the start of the answer (Anthropic's prefill): the
    model continues its text."""
    plan = tool_calls.plan(body)
    messages, start = body.messages, ""
    if prefill:
        if plan is not None:  # the tool grammar describes a whole answer, not the rest of one
            raise APIError(400, "an assistant prefill cannot be combined with tools the answer may call",
                           param="tool_choice")  # fmt: skip
        messages, start = messages[:-1], messages[-1].text()
    # The format the model's template speaks also renders earlier tool calls in the history, tools offered or not.
    tool_format = tools.format_for(engine)
    template_input = tool_format.template_input(messages, plan)
    variables = _template_variables(engine.reasoning, body)
    # Everything the client wrote reaches the template quoted: a control token's text in it stays text.
    quoting = engine.control_texts.quoting(template_input.messages, template_input.tools, variables, start)
    rendered = engine.render_chat(
        quoting.shield(template_input.messages), quoting.shield(template_input.tools), quoting.shield(variables)
    ) + quoting.shield(start)
    reasoning = engine.reasoning
    if reasoning is not None:
        # Whether this prompt opened the block is read from the prompt itself: `enable_thinking: false` makes Qwen3's
        # template write an empty block, the default an open one in some templates. A prefilled answer is past its
        # start, and thinking the template turned off is not written: neither holds thinking to split off.
        inside = rendered.rstrip().endswith(reasoning.open)
        turned_off = reasoning.switch and body.thinking_off()
        reasoning = None if prefill or turned_off else replace(reasoning, starts_inside=inside)
    engine.token_bound.check(quoting.restored(rendered), n_ctx=engine.n_ctx, param="messages")
    # The rendered template already carries the model's special tokens, so tokenizing must not add a second BOS.
    tokens = quoting.tokens(
        rendered,
        whole=lambda text: engine.tokenize(text, add_special=False),
        text=lambda text: engine.tokenize(text, add_special=False, parse_special=False),
    )
    return ChatPrompt(tokens, plan, tool_format, reasoning)


def _template_variables(syntax: ReasoningSyntax | None, body: ChatCompletionRequest) -> dict[str, Any]:
    """`chat_template_kwargs` as given, with the thinking turned off where the request asks (docs/api.md,
    Reasoning)."""
    variables = dict(body.chat_template_kwargs or {})
    if reserved := sorted(RESERVED_VARIABLES & variables.keys()):
        raise APIError(400, f"chat_template_kwargs cannot set {', '.join(reserved)}: the server sets them",
                       param="chat_template_kwargs")  # fmt: skip
    if syntax is not None and syntax.switch and body.thinking_off():
        variables["enable_thinking"] = False
    return variables


def chat_request(engine: Engine, body: ChatCompletionRequest, *, prefill: bool = False) -> PreparedGeneration:
    chat = chat_prompt(engine, body, prefill=prefill)
    prompt, plan, tool_format = chat.tokens, chat.plan, chat.tool_format
    requested = body.requested_max_tokens()
    max_tokens = requested if requested is not None else max(1, engine.n_ctx - len(prompt))
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    sampling = _sampling(body, max_tokens, logprobs=logprobs)
    gbnf = (tools.grammar(tool_format, plan), "tools") if plan is not None else response_grammar(body)
    # Thinking turned off on a template that cannot turn it off (DeepSeek-R1's): closed at once, as llama.cpp's
    # --reasoning-budget 0 does. With the switch, the template wrote an empty block and `chat.reasoning` is None.
    budget = 0 if body.thinking_off() else body.thinking_budget_tokens
    thinking = _thinking_budget(engine, chat.reasoning, budget)
    grammar = _compile(engine, gbnf, chat.reasoning)
    generation = GenerationRequest(
        prompt, sampling, prompt_param="messages", n=body.n, grammar=grammar, thinking=thinking
    )
    return PreparedGeneration(generation, tool_format if plan is not None else None, chat.reasoning)


def _thinking_budget(engine: Engine, syntax: ReasoningSyntax | None, tokens: int | None) -> ThinkingBudget | None:
    """The budget of a model that thinks in this answer; none for one that does not (nothing to close)."""
    if syntax is None or tokens is None:
        return None
    return ThinkingBudget(syntax, tokens, tuple(engine.tokenize(syntax.close, add_special=False)))
