"""What a GGUF file is (architecture, size, quantization, context) and how much memory serving it takes.

The facts are read with the `gguf` package, which memory-maps the file: a multi-gigabyte model is never read into
memory. `model push` stores them as blob metadata, so `model list`/`model info` can show them without a download.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf
from gguf import Keys, LlamaFileType

from server.model_source.errors import VerificationError
from server.model_source.gguf import check_gguf_header

# llama.cpp's KV cache holds keys and values as f16 unless told otherwise; the server does not change that.
_KV_BYTES_PER_ELEMENT = 2
_META_PREFIX = "gguf_"
_UNSAFE_METADATA = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class GGUFFacts:
    architecture: str
    name: str
    parameters: int
    quantization: str
    context_length: int
    layers: int
    kv_bytes_per_token: int
    weights_bytes: int

    def to_metadata(self) -> dict[str, str]:
        """Blob metadata values: ASCII header values, so a model name in another script is made safe."""
        return {
            f"{_META_PREFIX}{field}": _UNSAFE_METADATA.sub("?", str(getattr(self, field)))
            for field in self.__dataclass_fields__
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> GGUFFacts | None:
        """The facts a push stored, or None for a blob uploaded some other way (or by an older push)."""
        values = {field: metadata.get(f"{_META_PREFIX}{field}") for field in cls.__dataclass_fields__}
        if any(value is None for value in values.values()):
            return None
        try:
            return cls(
                architecture=str(values["architecture"]),
                name=str(values["name"]),
                quantization=str(values["quantization"]),
                parameters=int(str(values["parameters"])),
                context_length=int(str(values["context_length"])),
                layers=int(str(values["layers"])),
                kv_bytes_per_token=int(str(values["kv_bytes_per_token"])),
                weights_bytes=int(str(values["weights_bytes"])),
            )
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    n_ctx: int
    n_slots: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes


def memory_estimate(facts: GGUFFacts, *, n_ctx: int, n_slots: int) -> MemoryEstimate:
    """Weights plus an f16 KV cache of n_ctx cells for each slot, as the server allocates it (kv_unified off).

    An upper bound for models with sliding-window layers (Gemma 3), whose cache llama.cpp keeps smaller; the compute
    buffers (some hundreds of MiB, growing with n_batch) come on top.
    """
    return MemoryEstimate(facts.weights_bytes, n_ctx * n_slots * facts.kv_bytes_per_token, n_ctx, n_slots)


def read_facts(path: Path) -> GGUFFacts:
    """Read the facts of a GGUF file; VerificationError (one line) if it is not one or its header is damaged."""
    check_gguf_header(path)
    try:
        reader = gguf.GGUFReader(path)
        return _facts(reader)
    except VerificationError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        raise VerificationError(f"{path.name} is not a readable GGUF file: {exc}") from None


def _facts(reader: gguf.GGUFReader) -> GGUFFacts:
    def field(key: str, default: object = None) -> object:
        found = reader.fields.get(key)
        if found is None:
            if default is None:
                raise VerificationError(f"GGUF metadata lacks {key}")
            return default
        return found.contents()

    arch = str(field(Keys.General.ARCHITECTURE))
    layers = int(_scalar(field(Keys.LLM.BLOCK_COUNT.format(arch=arch))))
    n_embd = int(_scalar(field(Keys.LLM.EMBEDDING_LENGTH.format(arch=arch))))
    n_head = _per_layer(field(Keys.Attention.HEAD_COUNT.format(arch=arch)), layers)
    n_head_kv = _per_layer(field(Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head), layers)
    kv_per_token = 0
    for heads, kv_heads in zip(n_head, n_head_kv, strict=True):
        head_dim = n_embd // heads if heads else 0
        key_len = int(_scalar(field(Keys.Attention.KEY_LENGTH.format(arch=arch), head_dim)))
        value_len = int(_scalar(field(Keys.Attention.VALUE_LENGTH.format(arch=arch), head_dim)))
        kv_per_token += kv_heads * (key_len + value_len) * _KV_BYTES_PER_ELEMENT
    return GGUFFacts(
        architecture=arch,
        name=str(field(Keys.General.NAME, "")),
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        quantization=_quantization(reader, field(Keys.General.FILE_TYPE, -1)),
        context_length=int(_scalar(field(Keys.LLM.CONTEXT_LENGTH.format(arch=arch)))),
        layers=layers,
        kv_bytes_per_token=kv_per_token,
        weights_bytes=sum(int(t.n_bytes) for t in reader.tensors),
    )


def _scalar(value: object) -> int | float:
    if isinstance(value, list):
        value = max(value) if value else 0
    if not isinstance(value, int | float):
        raise VerificationError(f"GGUF metadata value {value!r} is not a number")
    return value


def _per_layer(value: object, layers: int) -> list[int]:
    """Head counts are one number for most architectures, one per layer for some (OpenELM, hybrid models)."""
    if isinstance(value, list):
        if len(value) != layers:
            raise VerificationError(f"GGUF metadata has {len(value)} per-layer head counts for {layers} layers")
        return [int(v) for v in value]
    return [int(_scalar(value))] * layers


def _quantization(reader: gguf.GGUFReader, file_type: object) -> str:
    try:
        return LlamaFileType(int(_scalar(file_type))).name.removeprefix("MOSTLY_")
    except ValueError:
        # No (or an unknown) file type: name the tensor type holding most of the weights.
        by_bytes: Counter[str] = Counter()
        for tensor in reader.tensors:
            by_bytes[tensor.tensor_type.name] += int(tensor.n_bytes)
        return by_bytes.most_common(1)[0][0] if by_bytes else "unknown"
