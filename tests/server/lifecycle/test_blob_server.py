"""The server pulling the real GGUF from Blob storage (Azurite) at startup, as it does in AKS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.support.azurite import Azurite, start_azurite
from tests.support.msi import TokenEndpoint
from tests.support.server import ServerProcess, start_server

MODEL_BLOB = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1.gguf"


def blob_env(azurite: Azurite, container: ContainerClient, name: str = MODEL_BLOB) -> dict[str, str]:
    return {
        "GGUFSTACK_BLOB_CONNECTION_STRING": azurite.connection_string,
        "GGUFSTACK_BLOB_CONTAINER": container.container_name,
        "GGUFSTACK_BLOB_NAME": name,
        "GGUFSTACK_SOURCE_RETRY_INITIAL_S": "0.5",
        "GGUFSTACK_SOURCE_RETRY_MAX_S": "1",
    }


def upload_model(container: ContainerClient, gguf: Path, sha256: str, name: str = MODEL_BLOB) -> None:
    with gguf.open("rb") as f:
        container.upload_blob(name, f, overwrite=True, metadata={"sha256": sha256}, max_concurrency=4)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def test_not_ready_until_the_blob_exists_then_serves_and_restarts_from_cache(
    azurite: Azurite,
    container: ContainerClient,
    demo_gguf: Path,
    demo_sha256: str,
    tmp_path: Path,
    servers: list[ServerProcess],
) -> None:
    first = start_server(tmp_path, blob_env(azurite, container))
    servers.append(first)
    waiting = first.wait_for(lambda r: r.status_code == 503 and "does not exist" in r.json()["reason"], 60, "waiting")
    assert waiting.json()["status"] == "not_ready"
    models = httpx.get(f"{first.base_url}/v1/models")
    assert models.status_code == 503 and models.json()["error"]["code"] == "model_not_ready"

    upload_model(container, demo_gguf, demo_sha256)
    first.wait_ready(120)
    client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content
    log = first.log()
    assert "sha256 verified" in log and "MiB/s" in log
    assert log.index("loaded ") < log.index("ready: serving"), "ready must come only after load and warm-up"
    first.stop()
    assert "Application shutdown complete" in first.log(), "SIGTERM must shut the server down gracefully"

    second = start_server(tmp_path, blob_env(azurite, container))
    servers.append(second)
    second.wait_ready(120)
    assert "cache hit" in second.log() and "(0 bytes downloaded)" in second.log()
    assert "downloading" not in second.log()


def test_corrupted_blob_is_refused_and_the_server_stays_up_not_ready(
    azurite: Azurite, container: ContainerClient, demo_gguf: Path, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    upload_model(container, demo_gguf, "ab" * 32)
    server = start_server(tmp_path, blob_env(azurite, container))
    servers.append(server)
    refused = server.wait_for(lambda r: "model rejected" in r.json().get("reason", ""), 60, "refusing the model")
    assert refused.status_code == 503
    assert "sha256" in refused.json()["reason"]
    time.sleep(2)
    assert server.process.poll() is None
    assert server.ready().status_code == 503
    chat = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": MODEL_ID, "messages": []})
    assert chat.status_code in {400, 503} and "error" in chat.json()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "nothing unverified may stay in cache"


def test_non_gguf_blob_is_refused(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    container.upload_blob("notes.gguf", b"this is a text file, not a model\n" * 100)
    server = start_server(tmp_path, blob_env(azurite, container, "notes.gguf"))
    servers.append(server)
    refused = server.wait_for(lambda r: "model rejected" in r.json().get("reason", ""), 60, "refusing the model")
    assert "not a GGUF file" in refused.json()["reason"]
    assert server.process.poll() is None


def test_unreachable_blob_endpoint_keeps_retrying_not_ready(tmp_path: Path, servers: list[ServerProcess]) -> None:
    dead = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/a;"
    env = {
        "GGUFSTACK_BLOB_CONNECTION_STRING": dead,
        "GGUFSTACK_BLOB_NAME": "m.gguf",
        "GGUFSTACK_SOURCE_RETRY_INITIAL_S": "0.2",
        "GGUFSTACK_SOURCE_RETRY_MAX_S": "0.5",
    }
    server = start_server(tmp_path, env)
    servers.append(server)
    r = server.wait_for(lambda r: r.status_code == 503 and "unavailable" in r.json()["reason"], 60, "reporting")
    assert r.json()["state"] == "waiting"
    time.sleep(2)
    assert server.process.poll() is None
    assert server.log().count("retrying in") >= 2


def test_credential_that_cannot_be_built_is_a_readiness_reason_not_a_crash(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    env = {
        "GGUFSTACK_BLOB_ACCOUNT_URL": "https://127.0.0.1:9/devstoreaccount1",
        "GGUFSTACK_BLOB_NAME": "m.gguf",
        "AZURE_AUTHORITY_HOST": "http://not-tls.invalid",
    }
    server = start_server(tmp_path, env)
    servers.append(server)
    r = server.wait_for(lambda r: r.status_code == 503 and "cannot set up access" in r.json()["reason"], 60, "set")
    assert "https" in r.json()["reason"]
    assert server.process.poll() is None


@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    emulator = start_azurite(tmp_path_factory.mktemp("azurite-oauth"), https=True)
    try:
        yield emulator
    finally:
        emulator.stop()


def test_token_auth_through_default_azure_credential(
    azurite_oauth: Azurite, demo_gguf: Path, demo_sha256: str, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """The same DefaultAzureCredential path as workload identity in AKS: a token from a managed-identity endpoint,
    sent over HTTPS to a storage endpoint that checks it."""
    service = BlobServiceClient.from_connection_string(
        azurite_oauth.connection_string, connection_verify=str(azurite_oauth.cert)
    )
    container = service.create_container("models")
    upload_model(container, demo_gguf, demo_sha256)
    tokens = TokenEndpoint()
    try:
        env = {
            **tokens.env,
            "GGUFSTACK_BLOB_ACCOUNT_URL": azurite_oauth.account_url,
            "GGUFSTACK_BLOB_NAME": MODEL_BLOB,
            "REQUESTS_CA_BUNDLE": str(azurite_oauth.cert),
        }
        server = start_server(tmp_path, env)
        servers.append(server)
        server.wait_ready(120)
        assert tokens.requests and all(r.startswith("https://storage.azure.com") for r in tokens.requests)
        assert "sha256 verified" in server.log()
    finally:
        tokens.stop()


def test_token_auth_is_really_checked(azurite_oauth: Azurite, tmp_path: Path, servers: list[ServerProcess]) -> None:
    """Without a token source the request is refused: the previous test passed because of the token."""
    env = {
        "GGUFSTACK_BLOB_ACCOUNT_URL": azurite_oauth.account_url,
        "GGUFSTACK_BLOB_NAME": MODEL_BLOB,
        "REQUESTS_CA_BUNDLE": str(azurite_oauth.cert),
        "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential",
        "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token",
        "IDENTITY_HEADER": "x",
        "GGUFSTACK_SOURCE_RETRY_INITIAL_S": "0.5",
    }
    server = start_server(tmp_path, env)
    servers.append(server)
    r = server.wait_for(lambda r: r.status_code == 503 and "authenticate" in r.json()["reason"], 90, "auth failure")
    assert r.json()["state"] == "waiting"
