from pathlib import Path

import pytest

from server.config.settings import ModelSourceKind, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("GGUFSTACK_"):
            monkeypatch.delenv(key)


def test_defaults_serve_the_demo_model_on_loopback() -> None:
    s = load_settings()
    assert s.model_source_kind is ModelSourceKind.DEMO
    assert (s.host, s.port, s.n_gpu_layers) == ("127.0.0.1", 8000, -1)


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFSTACK_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("GGUFSTACK_BLOB_NAME", "m.gguf")
    monkeypatch.setenv("GGUFSTACK_N_CTX", "8192")
    s = load_settings()
    assert s.model_source_kind is ModelSourceKind.BLOB
    assert s.n_ctx == 8192
    assert "UseDevelopment" not in repr(s), "the connection string is a secret and must not show in reprs"


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFSTACK_PORT", "9000")
    assert load_settings(port=9100).port == 9100
    assert load_settings(port=None).port == 9000


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GGUFSTACK_N_CTX": "lots"}, "GGUFSTACK_N_CTX: Input should be a valid integer"),
        ({"GGUFSTACK_PORT": "70000"}, "GGUFSTACK_PORT: Input should be less than or equal to 65535"),
        ({"GGUFSTACK_N_GPU_LAYERS": "-2"}, "GGUFSTACK_N_GPU_LAYERS: Input should be greater than or equal to -1"),
        ({"GGUFSTACK_LOG_LEVEL": "loud"}, "GGUFSTACK_LOG_LEVEL: Input should be 'debug', 'info'"),
        ({"GGUFSTACK_BLOB_NAME": "m.gguf"}, "GGUFSTACK_BLOB_NAME needs GGUFSTACK_BLOB_ACCOUNT_URL"),
        ({"GGUFSTACK_BLOB_ACCOUNT_URL": "https://a.blob.core.windows.net"}, "GGUFSTACK_BLOB_NAME is required"),
        (
            {"GGUFSTACK_BLOB_ACCOUNT_URL": "https://a.blob.core.windows.net", "GGUFSTACK_BLOB_NAME": ".."},
            "GGUFSTACK_BLOB_NAME: must name a blob, not a directory",
        ),
        ({"GGUFSTACK_MODEL_PATH": ""}, "GGUFSTACK_MODEL_PATH: must name a GGUF file, not a directory"),
        ({"GGUFSTACK_MODEL_PATH": "/models/.."}, "GGUFSTACK_MODEL_PATH: must name a GGUF file, not a directory"),
        (
            {"GGUFSTACK_MODEL_PATH": "/m.gguf", "GGUFSTACK_BLOB_NAME": "m", "GGUFSTACK_BLOB_CONNECTION_STRING": "x"},
            "set GGUFSTACK_MODEL_PATH or the GGUFSTACK_BLOB_* settings, not both",
        ),
        (
            {"GGUFSTACK_BLOB_ACCOUNT_URL": "ftp://x", "GGUFSTACK_BLOB_NAME": "m"},
            "GGUFSTACK_BLOB_ACCOUNT_URL must be an http(s) URL",
        ),
        (
            {"GGUFSTACK_SOURCE_RETRY_INITIAL_S": "10", "GGUFSTACK_SOURCE_RETRY_MAX_S": "1"},
            "GGUFSTACK_SOURCE_RETRY_MAX_S must not be below",
        ),
    ],
)
def test_invalid_settings_fail_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_env_name_is_the_contract_infra_uses() -> None:
    assert Settings.env_name("n_gpu_layers") == "GGUFSTACK_N_GPU_LAYERS"
    with pytest.raises(KeyError):
        Settings.env_name("n_gpu_layer")


def test_to_env_validates_and_renders_only_given_fields() -> None:
    env = Settings.to_env(blob_account_url="https://a.blob.core.windows.net", blob_name="m.gguf", port=8000)
    assert env == {
        "GGUFSTACK_BLOB_ACCOUNT_URL": "https://a.blob.core.windows.net",
        "GGUFSTACK_BLOB_NAME": "m.gguf",
        "GGUFSTACK_PORT": "8000",
    }
    assert Settings.to_env(cache_dir=Path("/models"))["GGUFSTACK_CACHE_DIR"] == "/models"


def test_to_env_rejects_bad_values_unknown_fields_and_inlined_secrets() -> None:
    with pytest.raises(SettingsError, match="GGUFSTACK_N_CTX"):
        Settings.to_env(n_ctx=0)
    with pytest.raises(KeyError):
        Settings.to_env(context=4096)
    with pytest.raises(ValueError, match="secret"):
        Settings.to_env(blob_connection_string="DefaultEndpointsProtocol=https;AccountKey=k", blob_name="m")


def test_secrets_are_read_from_files_named_like_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "GGUFSTACK_DATABASE_URL").write_text("postgresql://app:pw@db:5432/app")
    (tmp_path / "GGUFSTACK_ADMIN_API_KEY").write_text("k" * 32)
    monkeypatch.setenv("GGUFSTACK_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("GGUFSTACK_REDIS_URL", "rediss://:key@cache:10000/0")
    s = load_settings()
    assert s.database_url.get_secret_value() == "postgresql://app:pw@db:5432/app"
    assert s.admin_api_key.get_secret_value() == "k" * 32
    assert s.redis_url.get_secret_value() == "rediss://:key@cache:10000/0"
    assert "pw@db" not in repr(s)


def test_missing_secrets_dir_is_fine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GGUFSTACK_SECRETS_DIR", str(tmp_path / "absent"))
    assert load_settings().database_url is None


def test_a_bad_secret_file_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "GGUFSTACK_ADMIN_API_KEY").write_text("short")
    monkeypatch.setenv("GGUFSTACK_SECRETS_DIR", str(tmp_path))
    with pytest.raises(SettingsError, match="GGUFSTACK_ADMIN_API_KEY") as info:
        load_settings()
    assert "short" not in str(info.value), "a secret's value must never appear in an error"
