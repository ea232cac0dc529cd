"""GGUFSTACK_MODELS: the catalogue's validation, one readable line per problem, and its way into a pod's env."""

from __future__ import annotations

import json

import pytest

from server.config.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("GGUFSTACK_"):
            monkeypatch.delenv(key)


def test_a_catalogue_is_read_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    catalogue = [
        {"id": "smol", "path": "/m/smol.gguf", "pin": True, "alias": ["small"]},
        {"id": "gemma", "blob": "gemma.gguf", "ttl_s": 60, "n_ctx": 2048, "slots": 2, "n_gpu_layers": 0},
    ]
    monkeypatch.setenv("GGUFSTACK_MODELS", json.dumps(catalogue))
    monkeypatch.setenv("GGUFSTACK_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    models = load_settings().models
    assert models is not None and [m.id for m in models] == ["smol", "gemma"]
    assert models[0].names == ("smol", "small") and models[0].pin
    assert (models[1].ttl_s, models[1].n_ctx, models[1].slots, models[1].n_gpu_layers) == (60, 2048, 2, 0)


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ("[{", "GGUFSTACK_MODELS: not valid JSON"),
        ("[]", "GGUFSTACK_MODELS lists no model"),
        ('{"id": "a"}', "GGUFSTACK_MODELS: Input should be a valid list"),
        ('[{"id": "a", "path": "/a", "blob": "a"}]', "GGUFSTACK_MODELS[0]: model 'a': set exactly one of path or blob"),
        ('[{"id": "a"}]', "GGUFSTACK_MODELS[0]: model 'a': set exactly one of path or blob"),
        ('[{"id": "a", "path": "/a", "n_ctx": 8}]', "GGUFSTACK_MODELS[0].n_ctx: Input should be greater than"),
        ('[{"id": "a", "path": "/a", "sizee": 1}]', "GGUFSTACK_MODELS[0].sizee: Extra inputs are not permitted"),
        ('[{"id": "a b", "path": "/a"}]', "GGUFSTACK_MODELS[0].id: String should match pattern"),
        ('[{"id": "a", "path": "/a", "version": "v1"}]', "version pins a version of a blob: it needs blob"),
        ('[{"id": "a", "path": "/a", "pin": true, "ttl_s": 5}]', "a pinned model is never unloaded"),
        ('[{"id": "a", "blob": "a.gguf"}]', "GGUFSTACK_MODELS: a come from blobs: set GGUFSTACK_BLOB_ACCOUNT_URL"),
        ('[{"id": "a", "path": ""}]', "GGUFSTACK_MODELS[0].path: must name a GGUF file, not a directory (got '')"),
        (
            '[{"id": "a", "path": "/models/.."}]',
            "[0].path: must name a GGUF file, not a directory (got '/models/..')",
        ),
        ('[{"id": "a", "blob": ".."}]', "GGUFSTACK_MODELS[0].blob: must name a blob, not a directory (got '..')"),
        ('[{"id": "a", "blob": "."}]', "GGUFSTACK_MODELS[0].blob: must name a blob, not a directory (got '.')"),
        (
            '[{"id": "a", "path": "/a", "ttl_s": Infinity}]',
            "GGUFSTACK_MODELS[0].ttl_s: Input should be a finite number",
        ),
        ('[{"id": "a", "path": "/a", "ttl_s": NaN}]', "GGUFSTACK_MODELS[0].ttl_s: Input should be a finite number"),
        (
            '[{"id": "a", "path": "/a"}, {"id": "b", "path": "/b", "alias": ["a"]}]',
            "GGUFSTACK_MODELS: the name 'a' is used by both 'a' and 'b'",
        ),
    ],
)
def test_a_bad_catalogue_is_one_readable_line(monkeypatch: pytest.MonkeyPatch, models: str, expected: str) -> None:
    monkeypatch.setenv("GGUFSTACK_MODELS", models)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_catalogue_excludes_the_single_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFSTACK_MODELS", '[{"id": "a", "path": "/a"}]')
    monkeypatch.setenv("GGUFSTACK_MODEL_PATH", "/b")
    monkeypatch.setenv("GGUFSTACK_MODEL_ALIAS", "b")
    with pytest.raises(SettingsError, match="set GGUFSTACK_MODELS or GGUFSTACK_MODEL_PATH, GGUFSTACK_MODEL_ALIAS"):
        load_settings()


def test_to_env_writes_the_catalogue_as_the_server_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    env = Settings.to_env(models=[{"id": "a", "path": "/a", "pin": True}], model_memory_budget_mib=2048)
    assert json.loads(env["GGUFSTACK_MODELS"]) == [{"id": "a", "path": "/a", "pin": True}]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.models is not None and settings.models[0].pin and settings.model_memory_budget_mib == 2048
