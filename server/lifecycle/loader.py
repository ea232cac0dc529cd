"""Loading a model: fetch it, estimate its memory, load it, warm it up (the registry runs the steps and retries).

`load_served` is also how a hot swap loads the next model (see `watcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from server.config.settings import Settings
from server.engine.factory import engine_for, open_model, warm_up
from server.lifecycle.holder import ModelState, ServedModel
from server.model_source.base import FetchResult, ModelSource
from server.telemetry import prometheus

log = logging.getLogger(__name__)
T = TypeVar("T")
Ts = TypeVarTuple("Ts")
_BACKGROUND_NICE = 10


async def in_daemon_thread(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Like asyncio.to_thread, but a shutdown need not wait for a multi-gigabyte download to finish."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def succeed(result: T) -> None:
        if not future.done():
            future.set_result(result)

    def fail(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, which decides
            loop.call_soon_threadsafe(fail, exc)
        else:
            loop.call_soon_threadsafe(succeed, result)

    threading.Thread(target=target, name=f"loader-{getattr(fn, '__name__', 'task')}", daemon=True).start()
    return await future


async def fetch(source: ModelSource, *, beside_serving: bool = False) -> FetchResult:
    """Fetch in a daemon thread, counting what was downloaded.

    `beside_serving`: a model serves meanwhile, so the download and its verification run at a lower CPU priority
    (the SDK's download threads inherit it) and leave the cores to the streams in flight.
    """
    fetched = await in_daemon_thread(_yielding_cpu if beside_serving else _as_is, source.fetch)
    if fetched.bytes_downloaded:
        prometheus.model_download_bytes.inc(fetched.bytes_downloaded)
        prometheus.model_download_duration.observe(fetched.seconds)
    return fetched


async def load_served(
    fetched: FetchResult,
    settings: Settings,
    model_id: str,
    report: Callable[[ModelState, str], None] = lambda _state, _reason: None,
) -> ServedModel:
    """Load the weights, build the engine and warm it up; on any failure free what was built and raise."""
    started = time.monotonic()
    sha256 = fetched.sha256
    if not sha256:
        sha256 = await in_daemon_thread(_sha256, fetched.path)
    weights = await in_daemon_thread(open_model, fetched.path, settings)
    try:
        engine = await in_daemon_thread(engine_for, weights, settings, model_id)
        try:
            report(ModelState.WARMING_UP, f"warming up {model_id}")
            await warm_up(engine)
        except BaseException:
            await engine.close()
            raise
    except BaseException:
        weights.close()
        raise
    return ServedModel(
        engine,
        sha256,
        fetched.version,
        int(time.time()),
        load_seconds=round(time.monotonic() - started, 3),
        path=fetched.path,
        free_weights=weights.close,
    )


def publish_model_info(served: ServedModel) -> None:
    prometheus.model_info.labels(served.model_id).info(
        {
            "model_id": served.model_id,
            "sha256": served.sha256,
            "version": served.source_version or "",
            "gpu_offload": str(served.engine.gpu_offload).lower(),
        }
    )


def _as_is(fn: Callable[[], T]) -> T:
    return fn()


def _yielding_cpu(fn: Callable[[], T]) -> T:
    # Per thread on Linux; this thread (a fresh daemon thread) ends with the fetch, so nothing else keeps the nice.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)
    return fn()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
