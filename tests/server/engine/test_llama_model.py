"""The weights' lifetime against the threads that read them: a request that outlived its model's unload (an admin's
drain ran out, a shutdown) is refused with a foreseen 503, never left to read freed memory, and freeing waits for a
thread still reading the vocabulary."""

from __future__ import annotations

import subprocess
import sys
import threading

import llama_cpp
import pytest

from server.engine.base import EngineClosedError
from server.engine.llama_model import LlamaModel, amx_kernels
from server.model_source.local import demo_model
from tests.support.engine import running_engine

# Run in a process of its own: read after the free, the vocabulary aborted the process (std::out_of_range, exit 134).
AFTER_CLOSE = """
from server.engine.base import EngineClosedError
from server.errors import known_error
from server.engine.llama_model import LlamaModel, amx_kernels
from server.model_source.local import demo_model
model = LlamaModel(demo_model(), n_gpu_layers=0)
model.close()
for use in (lambda: model.tokenize("the quick brown fox " * 20000, add_special=True), lambda: model.piece(300)):
    try:
        use()
    except EngineClosedError as exc:
        print("refused:", known_error(exc).status, exc.code)
"""


def test_the_vocabulary_refuses_every_use_once_the_weights_are_freed() -> None:
    ran = subprocess.run([sys.executable, "-c", AFTER_CLOSE], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.splitlines() == ["refused: 503 server_shutting_down"] * 2


def test_freeing_waits_for_a_thread_reading_the_vocabulary() -> None:
    model = LlamaModel(demo_model(), n_gpu_layers=0)
    with model.reading():
        closing = threading.Thread(target=model.close)
        closing.start()
        closing.join(0.3)
        assert closing.is_alive(), "freed under a reader"
        assert model.ptr is not None
        with pytest.raises(EngineClosedError):
            model.tokenize("after close began", add_special=False)  # a new reader is refused at once
    closing.join(30)
    assert not closing.is_alive() and model.ptr is None
    with pytest.raises(EngineClosedError):
        model.tokenize("gone", add_special=False)


@pytest.mark.asyncio
async def test_an_engine_whose_model_was_unloaded_refuses_grammars_and_embeddings() -> None:
    model = LlamaModel(demo_model(), n_gpu_layers=0)
    async with running_engine(model) as engine:
        pass
    model.close()
    with pytest.raises(EngineClosedError):
        engine.compile_grammar('root ::= "a"', param="response_format")
    with pytest.raises(EngineClosedError):
        await engine.embed([[1, 2, 3]])
    with pytest.raises(EngineClosedError):
        engine.detokenize([300])


def _llama_cpp_tokens(model: LlamaModel, text: str, *, add_special: bool) -> list[int]:
    """llama.cpp's own tokenizing of `text` with special tokens parsed, in one call."""
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(model.vocab, data, len(data), buf, len(buf), add_special, True)
    return list(buf[:n])


def test_control_texts_found_in_one_pass_give_llama_cpps_tokens(each_vocabulary: LlamaModel) -> None:
    """Text holding control tokens' texts is cut here rather than by llama.cpp (which looked for each of Gemma's 6250
    control tokens in turn over the whole text): the tokens are the ones llama.cpp makes."""
    model = each_vocabulary
    controls = sorted(model.control_texts.tokens, key=len)
    first, longest = controls[0], controls[-1]
    texts = [
        f"{first}hello{longest}",
        f"  {first}  spaced  {longest}\n\n",
        f"{first}{first}{longest}{first}",
        "<" * 200,
        "a < b <= c << d <" + first[:-1],
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "<bos><unused0><unused12>tail <unused1>",
        "漢字 <" + first + "> 🙂 [" + longest + "]",
        " " + first,
        first + " ",
    ]
    for text in texts:
        for add_special in (True, False):
            made = model.tokenize(text, add_special=add_special)
            assert made == _llama_cpp_tokens(model, text, add_special=add_special), (text[:40], add_special)


def test_the_llama_cpp_that_dev_installs_has_no_amx_kernels() -> None:
    # They crash the process at the first matrix product on the Xeons that run them (llama.cpp issue 20824); a native
    # build on such a machine compiled them in until scripts/llama_wheel.py left them out.
    assert not amx_kernels(llama_cpp.llama_print_system_info().decode(errors="replace"))


def test_a_build_with_amx_kernels_loads_its_weights_out_of_their_reach(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert amx_kernels("CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 | ")
    assert not amx_kernels("CPU : SSE3 = 1 | AVX2 = 1 | OPENMP = 1 | REPACK = 1 | ")
    real_load = llama_cpp.llama_model_load_from_file
    seen: list[bool] = []

    def load(path: bytes, params: llama_cpp.llama_model_params) -> object:
        seen.append(bool(params.use_extra_bufts))
        return real_load(path, params)

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", load)
    LlamaModel(demo_model(), n_gpu_layers=0).close()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AVX512 = 1 | AMX_INT8 = 1 | ")
    with caplog.at_level("WARNING", logger="server.engine.llama_model"):
        LlamaModel(demo_model(), n_gpu_layers=0).close()
    assert seen == [True, False]
    assert "issue 20824" in caplog.text
