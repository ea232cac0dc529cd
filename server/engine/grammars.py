"""Grammars compiled for one model's vocabulary: llama.cpp grammar samplers, made, cloned and freed in one place.

A GBNF is parsed once, by `compile`, in the thread that prepares the request (never on the engine thread); a request
for n choices clones the parsed grammar for every choice after the first. `live` counts the grammars not freed yet,
so tests can prove that none leaks on any path.
"""

from __future__ import annotations

import ctypes
import threading
from typing import cast

import llama_cpp

from server.engine.base import EngineError, Grammar


class Grammars:
    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self._lock = threading.Lock()
        self._live = 0

    @property
    def live(self) -> int:
        return self._live

    def compile(self, gbnf: str, *, param: str, root: str = "root") -> Grammar:
        handle = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), root.encode())
        if not handle:
            raise EngineError("the grammar built from this request could not be parsed", param=param)
        self._count(1)
        return Grammar(handle, self.free, param=param, origin=self)

    def clone(self, handle: llama_cpp.llama_sampler_p) -> llama_cpp.llama_sampler_p:
        """A copy of a grammar in the state `handle` is in (its start, when nothing was sampled under it yet)."""
        copy: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_clone(handle)
        if ctypes.cast(copy, ctypes.c_void_p).value is None:  # a NULL pointer
            raise MemoryError("llama.cpp could not clone a grammar")
        self._count(1)
        return copy

    def free(self, handle: object) -> None:
        llama_cpp.llama_sampler_free(handle)
        self._count(-1)

    def _count(self, change: int) -> None:
        with self._lock:
            self._live += change


def take_handle(grammar: Grammar) -> llama_cpp.llama_sampler_p:
    """Take the llama.cpp sampler out of a grammar this engine's `Grammars` compiled (the caller checked its origin):
    the engine protocol's handle is opaque, so it says nothing of the type."""
    return cast("llama_cpp.llama_sampler_p", grammar.take())
