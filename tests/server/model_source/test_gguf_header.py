import struct
from pathlib import Path

import pytest

from server.model_source.errors import VerificationError
from server.model_source.gguf import check_gguf_header


def test_real_model_is_gguf_v3(demo_gguf: Path) -> None:
    assert check_gguf_header(demo_gguf) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a GGUF file"),
        (b"GGU", "not a GGUF file"),
        (b"PK\x03\x04" + b"\0" * 100, "not a GGUF file"),
        (b"GGUF" + struct.pack("<I", 99), "unsupported GGUF version 99"),
    ],
)
def test_non_gguf_is_rejected(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(VerificationError, match=message):
        check_gguf_header(path)
