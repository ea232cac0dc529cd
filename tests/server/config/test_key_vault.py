"""Secrets from a Key Vault stand-in over HTTPS, read by the real SDK with the managed-identity token flow: their
precedence, and that no secret shows in `ggufstack settings`, a log line, an error or a metric."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from server.config.key_vault import with_key_vault_secrets
from server.config.settings import KEY_VAULT_SECRETS, SettingsError, load_settings
from tests.support.cli import run_cli
from tests.support.keyvault import KeyVaultStandIn
from tests.support.msi import TokenEndpoint
from tests.support.server import start_server


@pytest.fixture(scope="module")
def msi() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def vault(tmp_path_factory, postgres, redis_server) -> Iterator[KeyVaultStandIn]:
    database = postgres.create_database("vault_" + uuid.uuid4().hex[:8])
    stand_in = KeyVaultStandIn(
        tmp_path_factory.mktemp("vault"),
        {"database-url": database, "redis-url": redis_server.url(), "admin-api-key": "adm-" + secrets.token_hex(16)},
    )
    yield stand_in
    stand_in.stop()


@pytest.fixture
def vault_env(vault: KeyVaultStandIn, msi: TokenEndpoint) -> dict[str, str]:
    return {**msi.env, **vault.env, "GGUFSTACK_KEY_VAULT_URL": vault.url}


def test_precedence_is_variable_then_mounted_file_then_vault(
    vault: KeyVaultStandIn, vault_env, monkeypatch, tmp_path
) -> None:
    for name, value in vault_env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "GGUFSTACK_REDIS_URL").write_text("redis://from-the-mount:6379/0")
    monkeypatch.setenv("GGUFSTACK_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("GGUFSTACK_ADMIN_API_KEY", "from-the-environment-0123")
    vault.reads.clear()
    settings = with_key_vault_secrets(load_settings())
    assert settings.admin_api_key.get_secret_value() == "from-the-environment-0123"
    assert settings.redis_url.get_secret_value() == "redis://from-the-mount:6379/0"
    assert settings.database_url.get_secret_value() == vault.secrets["database-url"]
    assert vault.reads == ["database-url"], "only what nothing else set is asked of the vault"


def test_settings_command_reads_the_vault_and_shows_no_secret(vault: KeyVaultStandIn, vault_env) -> None:
    vault.reads.clear()
    result = run_cli("settings", **vault_env)
    assert result.returncode == 0, result.stderr
    # Every mapped secret the vault holds; the stand-in holds no Application Insights connection string, which would
    # make the server tests that share it export telemetry.
    assert sorted(vault.reads) == sorted(set(KEY_VAULT_SECRETS.values()) & set(vault.secrets))
    for value in vault.secrets.values():
        assert value not in result.stdout + result.stderr
    assert result.stdout.count("**********") >= 3


def test_an_unreachable_vault_is_one_line_without_secrets(msi: TokenEndpoint, vault: KeyVaultStandIn) -> None:
    env = {**msi.env, **vault.env, "GGUFSTACK_KEY_VAULT_URL": "https://ggufstack.vault.test:1"}
    result = run_cli("settings", **env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "GGUFSTACK_KEY_VAULT_URL" in lines[0] and "database-url" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_an_invalid_vault_url_is_refused() -> None:
    with pytest.raises(SettingsError, match="GGUFSTACK_KEY_VAULT_URL"):
        load_settings(key_vault_url="http://insecure.example")


def test_a_server_configured_only_by_the_vault_never_shows_a_secret(
    vault: KeyVaultStandIn, vault_env, tmp_path_factory, demo_gguf, postgres, redis_server
) -> None:
    server = start_server(
        tmp_path_factory.mktemp("vault-server"), {**vault_env, "GGUFSTACK_MODEL_PATH": str(demo_gguf)}
    )
    try:
        server.wait_ready()
        admin = {"Authorization": f"Bearer {vault.secrets['admin-api-key']}"}
        created = httpx.post(f"{server.base_url}/admin/keys", json={"name": "v", "rpm": 9}, headers=admin, timeout=30)
        assert created.status_code == 201, created.text
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=created.json()["key"], max_retries=0)
        reply = client.chat.completions.with_raw_response.create(
            model=demo_gguf.name, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.headers["x-ratelimit-limit-requests"] == "9", "the Redis URL came from the vault"
        scrape = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    finally:
        server.stop()
    seen = server.log() + scrape
    for value in [*vault.secrets.values(), postgres.password, redis_server.password]:
        assert value not in seen
