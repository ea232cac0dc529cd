"""The watcher's loads, cancelled halfway (an admin unload, a shutdown): the load's threads cannot be stopped, so the
watcher waits for the load and frees what it loaded before it ends; nothing is left loaded that nobody holds."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from server.config.settings import load_settings
from server.lifecycle import watcher
from server.lifecycle.holder import ModelHolder, ServedModel
from server.model_source.base import FetchResult
from tests.support.fake_engine import FakeEngine

FETCHED = FetchResult(Path("/models/m.gguf"), 0, 0.0)


class Loaded:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_load_cut_by_a_cancellation_is_waited_for_and_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    started, finish, loaded = asyncio.Event(), asyncio.Event(), Loaded()

    async def slow_load(*_: Any) -> Loaded:
        started.set()
        await finish.wait()  # the weights still loading in their thread
        return loaded

    monkeypatch.setattr(watcher, "load_served", slow_load)
    loading = asyncio.create_task(watcher.load_or_free(FETCHED, load_settings(), "m"))
    await started.wait()
    loading.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not loading.done(), "the cancelled watcher waits for the load it started"
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await loading
    assert loaded.closed, "what the cut load made is freed, not leaked"


async def test_a_load_that_is_not_cancelled_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = Loaded()

    async def load(*_: Any) -> Loaded:
        return loaded

    monkeypatch.setattr(watcher, "load_served", load)
    assert await watcher.load_or_free(FETCHED, load_settings(), "m") is loaded and not loaded.closed


async def test_each_version_a_swap_installs_is_told_to_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    new = ServedModel(FakeEngine(), "b" * 64, "v2", 0)  # type: ignore[arg-type]  # a scripted engine
    told: list[FetchResult] = []

    async def load(*_: Any) -> ServedModel:
        return new

    async def on_swapped(fetched: FetchResult) -> None:
        told.append(fetched)

    monkeypatch.setattr(watcher, "load_or_free", load)
    holder = ModelHolder()
    holder.install(ServedModel(FakeEngine(), "a" * 64, "v1", 0))  # type: ignore[arg-type]  # a scripted engine
    swapping = watcher.ModelWatcher(load_settings(), holder, None, FETCHED, model_id="m", on_swapped=on_swapped)  # type: ignore[arg-type]  # no blob is read
    await swapping._swap_beside(FETCHED, noticed=0.0)
    assert holder.current is new and told == [FETCHED], "the registry charges the version installed"


async def test_a_swap_cancelled_while_the_registry_is_told_still_frees_the_model_it_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unload cancels the watcher while it tells the registry of a swap it has just installed: the replaced model
    is out of the holder already, so nothing but the swap itself can free it."""
    freed = threading.Event()
    old = ServedModel(FakeEngine(), "a" * 64, "v1", 0, free_weights=freed.set)  # type: ignore[arg-type]  # a scripted engine
    new = ServedModel(FakeEngine(), "b" * 64, "v2", 0)  # type: ignore[arg-type]  # a scripted engine
    telling = asyncio.Event()

    async def load(*_: Any) -> ServedModel:
        return new

    async def on_swapped(_: FetchResult) -> None:
        telling.set()
        await asyncio.Event().wait()  # the registry, slow to answer

    monkeypatch.setattr(watcher, "load_or_free", load)
    holder = ModelHolder()
    holder.install(old)
    swapping = watcher.ModelWatcher(load_settings(), holder, None, FETCHED, model_id="m", on_swapped=on_swapped)  # type: ignore[arg-type]  # no blob is read
    swap = asyncio.create_task(swapping._swap_beside(FETCHED, noticed=0.0))
    await telling.wait()
    swap.cancel()
    with pytest.raises(asyncio.CancelledError):
        await swap
    for _ in range(100):
        if freed.is_set():
            break
        await asyncio.sleep(0.02)
    assert freed.is_set(), "the model the swap replaced is freed, not leaked"
