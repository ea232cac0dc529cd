"""An engine that runs one generation at a time on a worker thread; later requests wait their turn in a queue."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import llama_cpp

from server.engine.base import (
    ContextOverflowError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from server.engine.llama_model import LlamaModel
from server.engine.text import TextAssembler

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[GenerationEvent | BaseException]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: GenerationEvent | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class SerialEngine:
    def __init__(self, model: LlamaModel, *, model_id: str, n_ctx: int, n_batch: int, n_threads: int) -> None:
        self._model = model
        self._model_id = model_id
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(n_batch, n_ctx)
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self._n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self._n_batch = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="serial-engine", daemon=True)
        self._thread.start()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def gpu_offload(self) -> bool:
        return self._model.gpu_offload

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self._model.tokenize(text, add_special=add_special)

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self._model.render_chat(messages)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        n_prompt = len(request.prompt_tokens)
        if n_prompt == 0:
            raise ContextOverflowError("the prompt is empty", param="prompt")
        if n_prompt + request.sampling.max_tokens > self._n_ctx:
            raise ContextOverflowError(
                f"this model's context is {self._n_ctx} tokens; the prompt has {n_prompt} and max_tokens asks for "
                f"{request.sampling.max_tokens} more",
                param="max_tokens" if n_prompt < self._n_ctx else "messages",
                code="context_length_exceeded",
            )
        self._model.check_token_ids(request.prompt_tokens, param="prompt")
        self._model.check_token_ids(list(request.sampling.logit_bias), param="logit_bias")
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            job.cancelled.set()

    async def close(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            try:
                self._generate(job)
            except Exception as exc:
                log.exception("generation failed")
                job.emit(exc)

    def _decode(self, tokens: Sequence[int], start_pos: int) -> None:
        """Feed tokens at positions start_pos.. in n_batch chunks, asking for logits of the last one only."""
        for offset in range(0, len(tokens), self._n_batch):
            chunk = tokens[offset : offset + self._n_batch]
            batch = self._batch
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start_pos + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = False
            is_last_chunk = offset + len(chunk) == len(tokens)
            batch.logits[len(chunk) - 1] = is_last_chunk
            rc = llama_cpp.llama_decode(self._ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")

    def _generate(self, job: _Job) -> None:
        request = job.request
        sampling = request.sampling
        prompt = list(request.prompt_tokens)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        sampler = self._model.new_sampler(sampling)
        text = TextAssembler(sampling.stop)
        generated = 0
        finish = "length"
        try:
            self._decode(prompt, 0)
            while generated < sampling.max_tokens and not job.cancelled.is_set():
                token = sampler.sample(self._ctx, -1)
                if self._model.is_end_of_generation(token):
                    finish = "stop"
                    break
                generated += 1
                delta = text.push(self._model.piece(token))
                if delta:
                    job.emit(TextDelta(delta))
                if text.stopped:
                    finish = "stop"
                    break
                if generated < sampling.max_tokens:
                    self._decode([token], len(prompt) + generated - 1)
        finally:
            sampler.close()
        tail = text.finish()
        if tail:
            job.emit(TextDelta(tail))
        job.emit(Finished(finish_reason=finish, prompt_tokens=len(prompt), completion_tokens=generated))
