"""Cheap structural check that a file is GGUF, done before anything hands it to llama.cpp."""

from __future__ import annotations

import struct
from pathlib import Path

from server.model_source.errors import VerificationError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = frozenset({2, 3})


def check_gguf_header(path: Path) -> int:
    """Return the GGUF version of `path`, or raise VerificationError if it is not a GGUF file llama.cpp can read."""
    with path.open("rb") as f:
        header = f.read(8)
    if len(header) < 8 or header[:4] != GGUF_MAGIC:
        raise VerificationError(f"{path.name} is not a GGUF file (bad magic {header[:4]!r})")
    version: int
    (version,) = struct.unpack("<I", header[4:8])
    if version not in SUPPORTED_VERSIONS:
        raise VerificationError(f"{path.name} has unsupported GGUF version {version}")
    return version
