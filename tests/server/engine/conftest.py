"""One demo model for all engine tests; each test builds its own small engine (contexts are cheap, weights are not:
see `tests/support/engine.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.engine.llama_model import LlamaModel
from server.model_source.local import demo_model


@pytest.fixture(scope="session")
def model() -> Iterator[LlamaModel]:
    loaded = LlamaModel(demo_model(), n_gpu_layers=0)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session", params=["demo (BPE)", "gemma (SentencePiece)"])
def each_vocabulary(request: pytest.FixtureRequest, model: LlamaModel, gemma_gguf: Path) -> Iterator[LlamaModel]:
    """The two real vocabularies: the demo model's byte-level BPE and Gemma 3's SentencePiece."""
    if request.param.startswith("demo"):
        yield model
        return
    loaded = LlamaModel(gemma_gguf, n_gpu_layers=0)
    yield loaded
    loaded.close()
