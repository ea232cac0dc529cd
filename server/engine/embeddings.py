"""Embeddings from the served model: a context of its own with embeddings on, fed batches of whole inputs.

Requests put their inputs on a queue of their own and a worker thread decodes as many as fit one batch at a time, so
concurrent requests share decode calls. A batch takes the requests' inputs in turn, one each, beginning with the
request served longest ago, so a request of a few inputs is answered within a batch or two however many inputs the
requests before it queued (first come, first served, one request of 2048 long inputs held every other back until it
was done). Each input is its own sequence; the pooled vector of each sequence is
L2-normalised, as OpenAI's are. The context is created on first use, so a server that never embeds pays nothing.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import llama_cpp

from server.engine.base import ContextOverflowError, EngineError
from server.engine.llama_model import LlamaModel

POOLING = {
    "model": llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}
MAX_SEQUENCES = 64


class EmbeddingsUnsupportedError(EngineError):
    """The model pools no embedding (a generative model whose GGUF names no pooling type)."""


@dataclass(eq=False)
class _Item:
    tokens: Sequence[int]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[list[float]] = field(init=False)

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()

    def settle(self, result: list[float] | BaseException) -> None:
        def apply() -> None:
            if self.done.done():
                return
            if isinstance(result, BaseException):
                self.done.set_exception(result)
            else:
                self.done.set_result(result)

        self.loop.call_soon_threadsafe(apply)


class Embedder:
    def __init__(self, model: LlamaModel, *, n_batch: int, n_threads: int, pooling: str) -> None:
        self._model = model
        params = llama_cpp.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = POOLING[pooling]
        params.n_ctx = params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = MAX_SEQUENCES
        # One KV cache for all sequences of a batch: split into a stream per sequence, each would get only
        # n_ctx / MAX_SEQUENCES cells, and longer inputs overwrote their own keys (measured: cosine 0.75 to the same
        # input embedded alone).
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create an embeddings context (out of memory?)")
        if llama_cpp.llama_pooling_type(self._ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            raise EmbeddingsUnsupportedError(
                "this model pools no embeddings (its GGUF names no pooling type); set GGUFSTACK_EMBEDDING_POOLING to "
                "mean, cls or last to pool its hidden states",
                param="model",
            )
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_batch = n_batch
        self._n_embd = llama_cpp.llama_model_n_embd(model.ptr)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._cond = threading.Condition()
        # Each waiting request's inputs, by request; the longest since it was last served first.
        self._queues: dict[object, collections.deque[_Item]] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="embeddings", daemon=True)
        self._thread.start()

    @property
    def max_tokens(self) -> int:
        return self._n_batch

    @property
    def waiting(self) -> int:
        """Inputs queued for a batch."""
        with self._cond:
            return sum(len(queue) for queue in self._queues.values())

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise EngineError(f"input {i} is empty", param="input")
            if len(tokens) > self._n_batch:
                raise ContextOverflowError(
                    f"input {i} has {len(tokens)} tokens; at most {self._n_batch} can be embedded",
                    param="input",
                    code="context_length_exceeded",
                )
            self._model.check_token_ids(tokens, param="input")
        loop = asyncio.get_running_loop()
        items = [_Item(tokens, loop) for tokens in inputs]
        request = object()
        with self._cond:
            if self._closing:
                raise EngineError("the embeddings engine is shutting down")
            self._queues[request] = collections.deque(items)
            self._cond.notify()
        try:
            return list(await asyncio.gather(*(item.done for item in items)))
        except BaseException:
            # Abandoned (the client went away) or failed: its inputs still queued are not decoded for nobody while
            # every other request waits behind them.
            with self._cond:
                self._queues.pop(request, None)
            raise

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queues and not self._closing:
                    self._cond.wait()
                if self._closing:
                    pending = [item for queue in self._queues.values() for item in queue]
                    self._queues = {}
                    break
                taken = self._take()
            self._decode(taken)
        for item in pending:
            item.settle(EngineError("the embeddings engine shut down"))

    def _take(self) -> list[_Item]:
        """Whole inputs, as many as fit one batch, one from each request in turn (each request's in order). A request
        served goes to the back of the turn; one whose next input did not fit stays ahead, so it comes first, with
        the whole batch free, next time. Caller holds _cond."""
        taken: list[_Item] = []
        budget = self._n_batch
        served = True
        while served and len(taken) < MAX_SEQUENCES:
            served = False
            for request in list(self._queues):
                queue = self._queues[request]
                if len(taken) == MAX_SEQUENCES or len(queue[0].tokens) > budget:
                    continue
                item = queue.popleft()
                budget -= len(item.tokens)
                taken.append(item)
                served = True
                del self._queues[request]  # to the back of the turn, or gone with its last input
                if queue:
                    self._queues[request] = queue
        return taken

    def _decode(self, items: list[_Item]) -> None:
        batch, i = self._batch, 0
        for seq, item in enumerate(items):
            for pos, token in enumerate(item.tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = pos == len(item.tokens) - 1
                i += 1
        batch.n_tokens = i
        llama_cpp.llama_memory_clear(self._mem, True)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        for seq, item in enumerate(items):
            if rc != 0:
                item.settle(EngineError(f"llama_decode failed with code {rc}"))
                continue
            vector = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)[: self._n_embd]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            item.settle([v / norm for v in vector])
