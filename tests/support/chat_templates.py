"""GGUF copies with another chat template: a real model whose template speaks a tool syntax, made from the demo model.

No GGUF small enough to ship in the tests has a template with native tool calls (or one that thinks), so the demo
model (SmolLM2, ChatML) is copied with its `tokenizer.chat_template` replaced; weights, vocabulary and every other key
are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import gguf

# A short template in the Hermes / Qwen 2.5 style, written for these tests.
HERMES_TEMPLATE = (Path(__file__).parent / "hermes_template.jinja").read_text()
# A short template in the Qwen3 / DeepSeek-R1 style whose generation prompt opens a <think> block.
THINKING_TEMPLATE = (Path(__file__).parent / "thinking_template.jinja").read_text()


def with_chat_template(
    source: Path, target: Path, template: str | None, *, control_tokens: Mapping[int, str] | None = None
) -> Path:
    """Copy the GGUF `source` to `target` with `template` as its chat template (None: its own), and the tokens
    `control_tokens` names by id renamed to its texts as control tokens (as a vocabulary that makes `<tool_call>`
    one has it)."""
    renames = dict(control_tokens or {})
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    writer = gguf.GGUFWriter(target, arch.contents())
    for field in reader.fields.values():
        # The writer adds the architecture itself; GGUF.* are the reader's view of the header, not keys.
        if field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        if field.name == gguf.Keys.Tokenizer.CHAT_TEMPLATE and template is not None:
            continue
        if field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_kind = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.Tokenizer.LIST and renames:
            value = [renames.get(i, text) for i, text in enumerate(value)]
        elif field.name == gguf.Keys.Tokenizer.TOKEN_TYPE and renames:
            value = [gguf.TokenType.CONTROL if i in renames else kind for i, kind in enumerate(value)]
        writer.add_key_value(field.name, value, kind, sub_type=sub_kind)
    if template is not None:
        writer.add_chat_template(template)
    for tensor in reader.tensors:
        data = tensor.data
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return target
