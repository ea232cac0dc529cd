"""The demo model's vocabulary, loaded once, for running grammars with llama.cpp as the sampler does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.llama_model import LlamaModel
from server.model_source.local import demo_model


@pytest.fixture(scope="session")
def model() -> Iterator[LlamaModel]:
    loaded = LlamaModel(demo_model(), n_gpu_layers=0)
    yield loaded
    loaded.close()
