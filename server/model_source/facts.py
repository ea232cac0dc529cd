"""What a GGUF file is (architecture, size, quantization, context) and how much memory serving it takes.

Only the header is read (the `gguf` package's constants name its layout, value types and quantization block sizes):
a multi-gigabyte model costs a few megabytes of reading. `model push` stores the facts as blob metadata, so
`model list`/`model info` can show them without a download.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys, LlamaFileType

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


# Bounds on what a header may claim, far above any real model's (llama.cpp's own GGML_MAX_DIMS is 4): a damaged or
# hostile header is refused in one line instead of allocating its claims or recursing into them.
MAX_TENSORS = 1_000_000
MAX_FIELDS = 1_000_000
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 16 * 1024 * 1024  # vocabularies have some hundred thousand entries
MAX_ARRAY_DEPTH = 2
MAX_DIMS = 8


def read_facts(path: Path) -> GGUFFacts:
    """Read the facts of a GGUF file; VerificationError (one line) if it is not one or its header is damaged."""
    check_gguf_header(path)
    try:
        with path.open("rb") as f:
            fields, tensors = _read_header(f)
    except (struct.error, ValueError, OverflowError, KeyError, OSError, MemoryError, RecursionError) as exc:
        raise VerificationError(f"{path.name} is not a readable GGUF file: {str(exc) or type(exc).__name__}") from None
    return _facts(fields, tensors)


def _bounded(count: int, most: int, what: str) -> int:
    if count > most:
        raise ValueError(f"the header claims {count} {what}, more than the {most} accepted")
    return count


def _read_header(f: BinaryIO) -> tuple[dict[str, object], list[tuple[int, int]]]:
    """The metadata (large arrays such as the vocabulary skipped, not read) and each tensor's (elements, bytes).

    `gguf.GGUFReader` materialises every vocabulary entry as a numpy array: for a 262k-token vocabulary that is 15 s
    and 600 MiB before the first fact. The layout is the one `gguf` documents and its constants name.
    """
    f.seek(8)  # magic and version, checked already
    n_tensors, n_fields = _unpack(f, "<QQ")
    _bounded(n_tensors, MAX_TENSORS, "tensors")
    _bounded(n_fields, MAX_FIELDS, "metadata fields")
    fields: dict[str, object] = {}
    for _ in range(n_fields):
        key = _string(f)
        (value_type,) = _unpack(f, "<I")
        fields[key] = _value(f, GGUFValueType(value_type))
    tensors = []
    for _ in range(n_tensors):
        _string(f)
        (n_dims,) = _unpack(f, "<I")
        _bounded(n_dims, MAX_DIMS, "dimensions in one tensor")
        dims = _unpack(f, f"<{n_dims}Q")
        tensor_type, _offset = _unpack(f, "<IQ")
        elements = math.prod(dims)
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(tensor_type)]
        tensors.append((elements, elements // block * block_bytes))
    return fields, tensors


_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
# Arrays longer than this (vocabularies, merges, token scores) carry no fact we need: skipped, never read.
_MAX_ARRAY_READ = 4096


def _value(f: BinaryIO, value_type: GGUFValueType, depth: int = 0) -> object:
    if value_type is GGUFValueType.STRING:
        return _string(f)
    if value_type is not GGUFValueType.ARRAY:
        return _unpack(f, _SCALARS[value_type])[0]
    _bounded(depth + 1, MAX_ARRAY_DEPTH, "levels of nested arrays")
    item_type, count = _unpack(f, "<IQ")
    item_type = GGUFValueType(item_type)
    _bounded(count, MAX_ARRAY_ITEMS, "items in one array")
    if count <= _MAX_ARRAY_READ:
        return [_value(f, item_type, depth + 1) for _ in range(count)]
    if item_type is GGUFValueType.STRING:
        for _ in range(count):
            (length,) = _unpack(f, "<Q")
            f.seek(_bounded(length, MAX_STRING_BYTES, "bytes in one string"), os.SEEK_CUR)
    elif item_type is GGUFValueType.ARRAY:
        raise ValueError("nested GGUF arrays of this size are not supported")
    else:
        f.seek(count * struct.calcsize(_SCALARS[item_type]), os.SEEK_CUR)
    return None


def _string(f: BinaryIO) -> str:
    (length,) = _unpack(f, "<Q")
    data = f.read(_bounded(length, MAX_STRING_BYTES, "bytes in one string"))
    if len(data) != length:
        raise ValueError("the header ends early")
    return data.decode()


def _unpack(f: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("the header ends early")
    return struct.unpack(fmt, data)


def _facts(fields: dict[str, object], tensors: list[tuple[int, int]]) -> GGUFFacts:
    def field(key: str, default: object = None) -> object:
        found = fields.get(key)
        if found is None:
            if default is None:
                raise VerificationError(f"GGUF metadata lacks {key}")
            return default
        return found

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
        parameters=sum(elements for elements, _ in tensors),
        quantization=_quantization(fields.get(Keys.General.FILE_TYPE)),
        context_length=int(_scalar(field(Keys.LLM.CONTEXT_LENGTH.format(arch=arch)))),
        layers=layers,
        kv_bytes_per_token=kv_per_token,
        weights_bytes=sum(n_bytes for _, n_bytes in tensors),
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


def _quantization(file_type: object) -> str:
    try:
        return LlamaFileType(int(_scalar(file_type))).name.removeprefix("MOSTLY_")
    except (ValueError, VerificationError):
        return "unknown"
