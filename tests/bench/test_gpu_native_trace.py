"""Native stacks of crashed processes (bench/gpu/native_trace.py): built, preloaded, found in a log and named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import native_trace

# A crash in a Python process with faulthandler on: our handler, the trampoline, faulthandler's re-raise, the
# trampoline again, then the crash site.
LOG = """Fatal Python error: Segmentation fault
=== native stack (bench/gpu/native_trace.c): signal 0xb, address 0x40 ===
/tmp/k/native_trace.so(+0x1243)[0x7f9c9b4ef243]
/lib/x86_64-linux-gnu/libc.so.6(+0x3c050)[0x7f9c9ac5a050]
/lib/x86_64-linux-gnu/libc.so.6(gsignal+0x12)[0x7f9c9ac59fb2]
/usr/lib/libpython3.12.so.1.0(+0x2b1c0)[0x7f9c9af5861d]
/lib/x86_64-linux-gnu/libc.so.6(+0x3c050)[0x7f9c9ac5a050]
/tmp/k/build/bin/libggml-cuda.so(_ZN4ggml4cuda4initEv+0x2a)[0x7f9c9a226190]
/tmp/k/build/bin/libllama.so(llama_model_load_from_file+0x10)[0x7f9c9a226190]
=== end of native stack ===
"""


def test_a_stack_is_named_from_the_crash_site_down() -> None:
    (block,) = native_trace.stacks(LOG)
    assert native_trace.symbolize(block) == [
        "signal 0xb, address 0x40",
        "libggml-cuda.so: ggml::cuda::init()",
        "libllama.so: llama_model_load_from_file",
    ]


def test_preloading_keeps_what_was_preloaded() -> None:
    env = native_trace.preload({"LD_PRELOAD": "/x/other.so"}, Path("/k/native_trace.so"))
    assert env["LD_PRELOAD"] == "/k/native_trace.so /x/other.so"
    assert native_trace.preload({}, None) == {}


def test_a_crash_inside_libllama_is_named(tmp_path: Path) -> None:
    library = native_trace.build(tmp_path)
    if library is None:
        pytest.skip("no C compiler")
    crash = "import ctypes, llama_cpp; llama_cpp.llama_model_n_layer(ctypes.c_void_p(64))"
    env = native_trace.preload({"PATH": "/usr/bin:/bin"}, library)
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", crash], env=env, capture_output=True, text=True)
    assert done.returncode == -11
    assert "Fatal Python error: Segmentation fault" in done.stderr  # Python's own frames are still written
    (tmp_path / "crash.log").write_text(done.stderr)
    (stack,) = native_trace.from_logs(tmp_path)["crash.log"]
    assert stack[1] == "libllama.so: llama_hparams::n_layer() const", stack
