"""GGUF copies with another chat template: a real model whose template speaks a tool syntax, made from the demo model.

No GGUF small enough to ship in the tests has a template with native tool calls (or one that thinks), so the demo
model (SmolLM2, ChatML) is copied with its `tokenizer.chat_template` replaced; weights, vocabulary and every other key
are kept.
"""

from __future__ import annotations

from pathlib import Path

import gguf

# A short template in the Hermes / Qwen 2.5 style, written for these tests.
HERMES_TEMPLATE = (Path(__file__).parent / "hermes_template.jinja").read_text()
# A short template in the Qwen3 / DeepSeek-R1 style whose generation prompt opens a <think> block.
THINKING_TEMPLATE = (Path(__file__).parent / "thinking_template.jinja").read_text()


def with_chat_template(source: Path, target: Path, template: str) -> Path:
    """Copy the GGUF `source` to `target` with `template` as its chat template."""
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    writer = gguf.GGUFWriter(target, arch.contents())
    for field in reader.fields.values():
        # The writer adds the architecture itself; GGUF.* are the reader's view of the header, not keys.
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.Tokenizer.CHAT_TEMPLATE):
            continue
        if field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_kind = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_kind)
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
