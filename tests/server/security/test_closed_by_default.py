"""Threat: a server reachable from the network that nobody has to authenticate to. The images bind 0.0.0.0; with no
database (API keys) and no admin key the server used to start with the API open to anyone who could reach it and only
a warning said so. Now it refuses to start on a non-loopback address without authentication unless
GGUFSTACK_ALLOW_UNAUTHENTICATED=true says the operator means it; loopback (`./dev serve`) stays open.

A secret missing from Key Vault (so keys, limits or the admin API silently turn off) is a warning in the server's log.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.config.exposure import is_loopback, open_to_the_network
from server.config.settings import KEY_VAULT_SECRETS, load_settings
from tests.support.keyvault import KeyVaultStandIn
from tests.support.msi import TokenEndpoint
from tests.support.server import ServerProcess, start_server


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "my-host.example"])
def test_addresses_others_can_reach(host: str) -> None:
    assert not is_loopback(host)


def test_only_an_open_api_on_a_reachable_address_is_refused() -> None:
    assert open_to_the_network(load_settings(host="0.0.0.0")) is not None
    assert open_to_the_network(load_settings(host="127.0.0.1")) is None
    assert open_to_the_network(load_settings(host="0.0.0.0", allow_unauthenticated=True)) is None
    assert open_to_the_network(load_settings(host="0.0.0.0", admin_api_key="a" * 20)) is None
    assert open_to_the_network(load_settings(host="0.0.0.0", database_url="postgresql://x@db/x")) is None


def _wait_live(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.base_url}/health/live", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"server not live after {timeout} s:\n{server.log()[-3000:]}")


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()


def test_a_reachable_server_without_authentication_refuses_to_start(tmp_path: Path, demo_gguf: Path) -> None:
    server = start_server(tmp_path, {"GGUFSTACK_HOST": "0.0.0.0", "GGUFSTACK_MODEL_PATH": str(demo_gguf)})
    try:
        status = server.process.wait(60)
    finally:
        server.stop()
    output = server.log()
    assert status == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "GGUFSTACK_ALLOW_UNAUTHENTICATED=true" in lines[0] and "GGUFSTACK_ADMIN_API_KEY" in lines[0]


def test_allow_unauthenticated_starts_it_open(tmp_path: Path, demo_gguf: Path, started: list[ServerProcess]) -> None:
    env = {
        "GGUFSTACK_HOST": "0.0.0.0",
        "GGUFSTACK_ALLOW_UNAUTHENTICATED": "true",
        "GGUFSTACK_MODEL_PATH": str(demo_gguf),
    }
    server = start_server(tmp_path, env, n_threads=1)
    started.append(server)
    _wait_live(server)
    assert "the API is open to anyone" in server.log()


def test_an_admin_key_is_enough_to_start_reachable_and_closed(
    tmp_path: Path, demo_gguf: Path, started: list[ServerProcess]
) -> None:
    env = {
        "GGUFSTACK_HOST": "0.0.0.0",
        "GGUFSTACK_ADMIN_API_KEY": "adm-" + secrets.token_hex(16),
        "GGUFSTACK_MODEL_PATH": str(demo_gguf),
    }
    server = start_server(tmp_path, env, n_threads=1)
    started.append(server)
    _wait_live(server)
    r = httpx.get(f"{server.base_url}/v1/models", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_loopback_stays_open(demo_server: ServerProcess) -> None:
    assert httpx.get(f"{demo_server.base_url}/v1/models", timeout=10).status_code == 200


def test_a_secret_missing_from_key_vault_is_a_warning_in_the_servers_log(
    tmp_path: Path, demo_gguf: Path, started: list[ServerProcess]
) -> None:
    vault = KeyVaultStandIn(tmp_path / "vault", {"admin-api-key": "adm-" + secrets.token_hex(16)})
    msi = TokenEndpoint()
    try:
        env = {
            **msi.env,
            **vault.env,
            "GGUFSTACK_KEY_VAULT_URL": vault.url,
            "GGUFSTACK_LOG_FORMAT": "json",
            "GGUFSTACK_MODEL_PATH": str(demo_gguf),
        }
        server = start_server(tmp_path / "server", env, n_threads=1)
        started.append(server)
        _wait_live(server)
    finally:
        vault.stop()
        msi.stop()
    missing = [line for line in server.log().splitlines() if "has no secret" in line]
    # Every secret setting but the admin key: database-url, redis-url, applicationinsights-connection-string.
    assert len(missing) == len(KEY_VAULT_SECRETS) - 1, server.log()
    assert all('"level": "warning"' in line or '"level":"warning"' in line for line in missing), missing
