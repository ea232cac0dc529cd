"""Choosing the model source and naming the model, for each way of configuring it."""

from pathlib import Path

import pytest

from server.config.settings import Settings
from server.model_source.errors import ModelSourceError, VerificationError
from server.model_source.resolve import model_source


def test_demo_model_is_served_under_its_file_name(demo_gguf: Path) -> None:
    source = model_source(Settings())
    assert source.default_model_id() == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.fetch().path == demo_gguf


def test_local_file_is_served_under_its_file_name(demo_gguf: Path, tmp_path: Path) -> None:
    local = tmp_path / "my-model.gguf"
    local.symlink_to(demo_gguf)
    source = model_source(Settings(model_path=local))
    assert source.default_model_id() == "my-model.gguf"
    result = source.fetch()
    assert result.path == local and result.cache_hit


def test_blob_model_id_is_the_blob_name_without_folders() -> None:
    settings = Settings(blob_connection_string="UseDevelopmentStorage=true", blob_name="team/llama/q4.gguf")
    assert model_source(settings).default_model_id() == "q4.gguf"


def test_missing_local_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        model_source(Settings(model_path=tmp_path / "absent.gguf")).fetch()


def test_local_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(VerificationError, match="not a GGUF file"):
        model_source(Settings(model_path=text)).fetch()
