"""The continuous batching engine: what the event loop calls. One engine thread owns the llama context and runs the
decode loop (`scheduler.py`); requests reach it through the queue in `admission.py`, and their events come back
through `handoff.py`.

Every slot has its own KV stream of n_ctx cells (kv_unified off), for two reasons. Determinism: in a unified cache a
sequence's cells land at positions that depend on its neighbours, and attention then sums in a different order, so
greedy output changed with the batch (measured: 6 of 8 sequences diverged within 24 tokens); with one stream per
sequence the results are bit-identical alone and batched. Bounds: admission keeps prompt + max_tokens within n_ctx, so
a stream can never run out of room and no generation ever waits for another to free cells.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import llama_cpp

from server.engine.admission import BURST_MAX_S, BURST_QUIET_S, Admission
from server.engine.base import EngineClosedError, EngineStats, GenerationRequest, GenerationStream, Grammar
from server.engine.chat_template import ReasoningSyntax, TemplateMessage, TemplateTool, TemplateVariables, ToolSyntax
from server.engine.control_text import ControlTexts
from server.engine.embeddings import Embedder, EmbeddingsUnsupportedError
from server.engine.grammars import Grammars, take_handle
from server.engine.handoff import Job, JobStream
from server.engine.llama_model import LlamaModel
from server.engine.probe import EngineProbe
from server.engine.scheduler import DEFAULT_PREFILL_CHUNK, Scheduler
from server.engine.sizing import default_slot_count
from server.engine.stats import EngineMetrics
from server.engine.token_bound import TokenBound
from server.engine.validation import validate


class BatchingEngine:
    def __init__(
        self,
        model: LlamaModel,
        *,
        model_id: str,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        n_slots: int = 0,
        max_queue: int = 64,
        max_choices: int = 4,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        reuse_prefix: bool = True,
        embedding_pooling: str = "model",
        burst: tuple[float, float] = (BURST_QUIET_S, BURST_MAX_S),
    ) -> None:
        self._model = model
        self._model_id = model_id
        self._embedding_pooling = embedding_pooling
        self._embedder: Embedder | None = None
        self._embeddings_refused: EmbeddingsUnsupportedError | None = None
        n_slots = n_slots or default_slot_count(model, n_ctx)
        params = llama_cpp.llama_context_default_params()
        # Without kv_unified llama.cpp splits n_ctx evenly into n_seq_max streams: ask for n_ctx per slot.
        params.n_ctx = n_ctx * n_slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self._n_threads = n_threads
        self._n_batch = params.n_batch
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self._max_choices = max(1, min(max_choices, n_slots))
        self.metrics = EngineMetrics(n_slots)
        self._grammars = Grammars(model.vocab)
        self._admission = Admission(n_slots, max_queue, self.metrics, burst)
        self._scheduler = Scheduler(
            model,
            self._ctx,
            n_slots=n_slots,
            n_batch=self._n_batch,
            prefill_chunk=prefill_chunk,
            reuse_prefix=reuse_prefix,
            admission=self._admission,
            grammars=self._grammars,
            metrics=self.metrics,
        )
        self._n_ctx: int = self._scheduler.n_ctx
        self.probe = EngineProbe(self._admission, self._scheduler, self._grammars)
        self._thread = threading.Thread(target=self._scheduler.run, name="batching-engine", daemon=True)
        self._thread.start()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def embedding_max_tokens(self) -> int:
        return int(self._n_batch)  # the embeddings context's size and batch (Embedder.max_tokens)

    @property
    def n_slots(self) -> int:
        return len(self._scheduler.slots)

    @property
    def gpu_offload(self) -> bool:
        return self._model.gpu_offload

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special)

    @property
    def control_texts(self) -> ControlTexts:
        return self._model.control_texts

    @property
    def token_bound(self) -> TokenBound:
        return self._model.token_bound

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._model.check_token_ids(tokens, param="tokens")
        return b"".join(self._model.piece(t) for t in tokens).decode(errors="replace")

    def token_piece(self, token: int) -> bytes:
        return self._model.piece(token)

    @property
    def tool_syntax(self) -> ToolSyntax | None:
        return self._model.tool_syntax

    @property
    def reasoning(self) -> ReasoningSyntax | None:
        return self._model.reasoning

    def render_chat(
        self,
        messages: Sequence[TemplateMessage],
        tools: Sequence[TemplateTool] | None = None,
        variables: TemplateVariables | None = None,
    ) -> str:
        return self._model.render_chat(messages, tools, variables)

    def compile_grammar(self, gbnf: str, *, param: str, root: str = "root") -> Grammar:
        with self._model.reading():  # compiled against the vocabulary: not freed under it by an unload
            return self._grammars.compile(gbnf, param=param, root=root)

    def generate(self, request: GenerationRequest) -> GenerationStream:
        grammar = request.grammar
        if grammar is not None and grammar.origin is not self._grammars:
            raise ValueError("a grammar compiled by another engine")  # another vocabulary: its token ids mean nothing
        handle = take_handle(grammar) if grammar is not None else None
        try:
            validate(request, n_ctx=self._n_ctx, n_vocab=self._model.info.n_vocab, max_choices=self._max_choices)
            job = Job(request, asyncio.get_running_loop(), grammar=handle)
            self._admission.submit(job)
        except BaseException:
            if handle is not None:
                self._grammars.free(handle)
            raise
        return JobStream(job, self._admission.cancel)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        if self._ctx is None:  # closed, and the weights an embeddings context would be built on may be freed
            raise EngineClosedError("the model was unloaded before this request reached it; try again")
        if self._embedder is None:
            if self._embeddings_refused is not None:
                raise self._embeddings_refused
            try:
                self._embedder = Embedder(
                    self._model, n_batch=self._n_batch, n_threads=self._n_threads, pooling=self._embedding_pooling
                )
            except EmbeddingsUnsupportedError as exc:
                self._embeddings_refused = exc  # the model won't change its mind: don't build a context per request
                raise
        return await self._embedder.embed(inputs)

    def stats(self) -> EngineStats:
        busy, waiting = self._admission.load()
        slots = self._scheduler.slots
        # n_past is written by the engine thread; a read one step stale is good enough for a gauge.
        cells = sum(slot.n_past for slot in slots)
        return self.metrics.snapshot(
            slots_busy=busy, queue_depth=waiting, kv_cells_used=cells, kv_cells_total=self._n_ctx * len(slots)
        )

    async def close(self) -> None:
        """Stop the engine thread (failing what still runs or waits) and free the context; the weights stay."""
        if self._ctx is None:
            return
        self._admission.close()
        await asyncio.to_thread(self._thread.join)
        if self._embedder is not None:
            await self._embedder.close()
        llama_cpp.llama_free(self._ctx)
        self._ctx = None
