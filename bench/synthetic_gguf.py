"""A Llama-architecture GGUF of a real model's shape, with seeded random weights and a real tokenizer.

    python -m bench.synthetic_gguf --shape llama3-8b --vocab ggml-vocab-llama-bpe.gguf --out 8b-f16.gguf
    llama-quantize 8b-f16.gguf 8b-q4_k_m.gguf Q4_K_M

Random weights give the same arithmetic per token as trained ones, so throughput and memory are real; the text is
not. The tokenizer (and chat template, if any) comes from `--vocab`: any GGUF, such as the vocabulary-only files that
llama.cpp's sources keep under `models/`; its vocabulary size sets the embedding's rows. The weights are F16 (F32
with `--f32`), drawn once into a pool from `--seed` and cut from it per tensor at seeded offsets: a shape of eight
billion parameters is written at disk speed rather than at the speed of a random generator.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True, slots=True)
class Shape:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    tied_embeddings: bool
    rope_freq_base: float
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


SHAPES = {
    # Small enough to write and load in a second on a CPU: the dry run's model.
    "tiny": Shape(64, 2, 4, 2, 128, tied_embeddings=False, rope_freq_base=10000.0, context_length=4096),
    "smollm2-135m": Shape(576, 30, 9, 3, 1536, tied_embeddings=True, rope_freq_base=100000.0, context_length=8192),
    "llama3.2-1b": Shape(2048, 16, 32, 8, 8192, tied_embeddings=True, rope_freq_base=500000.0, context_length=8192),
    "llama3-8b": Shape(4096, 32, 32, 8, 14336, tied_embeddings=False, rope_freq_base=500000.0, context_length=8192),
}
_POOL = 1 << 22
_STD = 0.02


def tensor_shapes(shape: Shape, n_vocab: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Each tensor's name and shape in numpy order (rows are the output features), as llama.cpp names them."""
    q, kv = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    yield "token_embd.weight", (n_vocab, shape.n_embd)
    for i in range(shape.n_layer):
        yield f"blk.{i}.attn_norm.weight", (shape.n_embd,)
        yield f"blk.{i}.attn_q.weight", (q, shape.n_embd)
        yield f"blk.{i}.attn_k.weight", (kv, shape.n_embd)
        yield f"blk.{i}.attn_v.weight", (kv, shape.n_embd)
        yield f"blk.{i}.attn_output.weight", (shape.n_embd, q)
        yield f"blk.{i}.ffn_norm.weight", (shape.n_embd,)
        yield f"blk.{i}.ffn_gate.weight", (shape.n_ff, shape.n_embd)
        yield f"blk.{i}.ffn_up.weight", (shape.n_ff, shape.n_embd)
        yield f"blk.{i}.ffn_down.weight", (shape.n_embd, shape.n_ff)
    yield "output_norm.weight", (shape.n_embd,)
    if not shape.tied_embeddings:
        yield "output.weight", (n_vocab, shape.n_embd)


@functools.cache
def tokenizer_fields(vocab: Path) -> tuple[list[tuple[str, object, gguf.GGUFValueType, object]], int]:
    """The tokenizer.* key/values of `vocab` (to copy as they are) and its vocabulary size."""
    reader = gguf.GGUFReader(vocab)
    fields, n_vocab = [], 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.Tokenizer.LIST:
            n_vocab = len(value)
        fields.append((field.name, value, vtype, sub))
    if not n_vocab:
        raise SystemExit(f"error: {vocab} holds no tokenizer (no {gguf.Keys.Tokenizer.LIST})")
    return fields, n_vocab


def vocab_only(model: Path, out: Path) -> None:
    """A GGUF holding `model`'s tokenizer (and chat template) and no tensors: a vocabulary to give a synthetic model."""
    fields, _ = tokenizer_fields(model)
    writer = gguf.GGUFWriter(out, arch="llama")
    for name, value, vtype, sub in fields:
        writer.add_key_value(name, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def write(shape_name: str, vocab: Path, out: Path, *, seed: int = 0, f32: bool = False) -> int:
    """Write the model; returns its parameter count."""
    shape = SHAPES[shape_name]
    fields, n_vocab = tokenizer_fields(vocab)
    dtype = np.float32 if f32 else np.float16
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(_POOL, dtype=np.float32) * _STD).astype(dtype)
    arch = "llama"
    writer = gguf.GGUFWriter(out, arch=arch)
    writer.add_name(f"synthetic {shape_name} (random weights, seed {seed})")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    for name, value, vtype, sub in fields:
        writer.add_key_value(name, value, vtype, sub_type=sub)
    tensors = list(tensor_shapes(shape, n_vocab))
    for name, dims in tensors:
        norm = len(dims) == 1
        tensor_dtype = np.dtype(np.float32 if norm else dtype)
        writer.add_tensor_info(name, dims, tensor_dtype, int(np.prod(dims)) * tensor_dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    offsets = rng.integers(0, _POOL, size=len(tensors))
    n_params = 0
    for (_, dims), offset in zip(tensors, offsets, strict=True):
        n = int(np.prod(dims))
        n_params += n
        if len(dims) == 1:  # RMS norm weights: ones, as a trained model's are near one
            writer.write_tensor_data(np.ones(dims, dtype=np.float32))
        else:
            writer.write_tensor_data(np.resize(np.roll(pool, -int(offset)), dims))
    writer.close()
    return n_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--vocab", type=Path, required=True, help="a GGUF whose tokenizer the model gets")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--f32", action="store_true", help="F32 weights instead of F16")
    args = parser.parse_args()
    if not args.vocab.is_file():
        parser.error(f"--vocab {args.vocab}: no such file")
    n_params = write(args.shape, args.vocab, args.out, seed=args.seed, f32=args.f32)
    print(f"{args.out}: {args.shape}, {n_params / 1e6:,.0f} M parameters", file=sys.stderr)


if __name__ == "__main__":
    main()
