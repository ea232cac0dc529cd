"""The GPU kit's benchmark of one model (bench/gpu/measure.py): when our server cannot start, our engine in a plain
process takes its turns, so a GPU loan still measures the engine (on the first H200 runs the server process crashed
loading the model where a plain engine process did not)."""

from __future__ import annotations

from pathlib import Path

from bench.gpu.measure import ModelBench, bench_model

BROKEN_SERVER = {"GGUFSTACK_N_BATCH": "0"}  # refused by the settings: the server exits before it is ready


def bench(model: Path, logdir: Path, engine: str) -> ModelBench:
    return bench_model(
        model,
        llama_server=None,
        clients=[1, 2],
        repeat=1,
        max_tokens=8,
        n_ctx=256,
        threads=2,
        env=BROKEN_SERVER,
        logdir=logdir,
        time_left=lambda: 300.0,
        on_progress=lambda _: None,
        engine=engine,  # type: ignore[arg-type]
    )


def test_the_engine_takes_the_turns_of_a_server_that_cannot_start(demo_gguf: Path, tmp_path: Path) -> None:
    result = bench(demo_gguf, tmp_path, "fallback")
    assert "ours exited" in result.failed["ours"]
    assert [started.name for started in result.started] == ["ours-engine"]
    assert result.started[0].cold_start_s > 0
    assert "LOADED" not in result.started[0].log  # protocol lines are answers, not log
    rounds = [(r.server, r.clients, r.max_tokens) for r in result.rounds]
    assert rounds == [("ours-engine", 1, 8), ("ours-engine", 2, 8)]
    assert all(r.tok_s > 0 and len(r.ttfts_s) == r.clients for r in result.rounds)
    assert {row["server"] for row in result.summary()} == {"ours-engine"}


def test_without_the_fallback_a_failed_server_leaves_no_rounds(demo_gguf: Path, tmp_path: Path) -> None:
    result = bench(demo_gguf, tmp_path, "never")
    assert list(result.failed) == ["ours"]
    assert result.started == [] and result.rounds == []
    assert not (tmp_path / "ours-engine.log").exists()
