"""The model registry's decisions on stand-in models: load on demand (once per model however many ask), the memory
budget and who it evicts, idle unloads, pins, admin loads and unloads. No llama.cpp, no sleeping: loads wait on
events the tests set, and the clock is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from server.config.settings import load_settings
from server.engine.base import EngineStats
from server.engine.llama_model import ModelLoadError
from server.errors import APIError, known_error
from server.lifecycle.budget import Budget
from server.lifecycle.catalogue import ModelSpec
from server.lifecycle.failures import ModelQueueFullError, ModelUnavailableError, PinnedModelError
from server.lifecycle.holder import Lease, ModelHolder, ModelNotReadyError, ModelState, ServedModel
from server.lifecycle.registry import ModelRegistry, StartingLoad
from server.model_source.base import FetchResult
from server.model_source.local import FileModelSource

MIB = 2**20


class FakeEngine:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.closed = False
        self.gpu_offload = False

    def stats(self) -> EngineStats:
        return EngineStats(4, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 512)

    async def close(self) -> None:
        self.closed = True


class FakeLoading:
    """Loads stand-in models of the given sizes; a model in `gates` loads only once its event is set."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.gates: dict[str, asyncio.Event] = {}
        self.loads: list[str] = []
        self.failing: dict[str, Exception] = {}
        self.engines: dict[str, list[FakeEngine]] = {}

    async def fetch(self, spec: ModelSpec, *, beside_serving: bool) -> FetchResult:
        return FetchResult(Path(f"/models/{spec.id}.gguf"), 0, 0.0)

    async def estimate(self, spec: ModelSpec, fetched: FetchResult) -> int:
        return self.sizes[spec.id]

    async def load(
        self, spec: ModelSpec, fetched: FetchResult, report: Callable[[ModelState, str], None]
    ) -> ServedModel:
        self.loads.append(spec.id)
        if spec.id in self.gates:
            await self.gates[spec.id].wait()
        if spec.id in self.failing:
            raise self.failing[spec.id]
        engine = FakeEngine(spec.id)
        self.engines.setdefault(spec.id, []).append(engine)
        return ServedModel(engine, f"sha-{spec.id}", None, 0)  # type: ignore[arg-type]  # a stand-in engine

    async def watch(
        self, spec: ModelSpec, holder: ModelHolder, fetched: FetchResult, on_swapped: object = None
    ) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(model_id: str, *, pin: bool = False, ttl_s: float | None = None, alias: tuple[str, ...] = ()) -> ModelSpec:
    return ModelSpec(model_id, alias, FileModelSource(Path(f"/models/{model_id}.gguf")), load_settings(), pin, ttl_s)


def registry(
    specs: list[ModelSpec], sizes: dict[str, int], budget_mib: int | None, **options: float
) -> tuple[ModelRegistry, FakeLoading, Clock]:
    loading, clock = FakeLoading({k: v * MIB for k, v in sizes.items()}), Clock()
    total = budget_mib * MIB if budget_mib is not None else None
    budget: Budget = Budget(total, wait_s=options.pop("wait_s", 60.0), clock=clock)
    models = ModelRegistry(specs, budget, loading=loading, clock=clock, **options)  # type: ignore[arg-type]
    return models, loading, clock


async def lease(models: ModelRegistry, name: str, *, admitted: bool = True) -> Lease:
    """A lease as a request holds it; `admitted`: the request got past every stage (admission marks it so)."""
    found = models.resolve(name)
    assert found is not None
    held = await models.lease(found)
    held.admitted = admitted
    return held


def state(models: ModelRegistry, name: str) -> str:
    found = models.resolve(name)
    assert found is not None
    return models.status(found).state


async def settle() -> None:
    """Let every task that can run, run (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_names_resolve_by_id_and_alias() -> None:
    models, _, _ = registry([spec("smol", alias=("small",)), spec("gemma")], {"smol": 100, "gemma": 200}, None)
    assert models.resolve("small") is models.resolve("smol") is models.default
    assert models.resolve("gemma") is not None and models.resolve("gpt-4o") is None
    assert models.sole is None


async def test_a_model_loads_once_however_many_requests_wait_for_it() -> None:
    models, loading, _ = registry([spec("smol"), spec("gemma")], {"smol": 100, "gemma": 200}, None)
    loading.gates["smol"] = asyncio.Event()
    waiting = [asyncio.create_task(lease(models, "smol")) for _ in range(5)]
    await settle()
    assert state(models, "smol") == "loading" and state(models, "gemma") == "unloaded"
    loading.gates["smol"].set()
    leases = await asyncio.gather(*waiting)
    assert loading.loads == ["smol"], "single flight"
    assert {lease.model.model_id for lease in leases} == {"smol"} and state(models, "smol") == "loaded"
    for held in leases:
        held.release()


async def test_only_the_request_that_starts_a_load_is_told_so_and_may_refuse_it() -> None:
    models, loading, _ = registry([spec("smol")], {"smol": 100}, None)
    found = models.resolve("smol")
    assert found is not None
    loading.gates["smol"] = asyncio.Event()
    started: list[int] = []

    def starting(i: int) -> StartingLoad:
        return lambda evicted_by: started.append(i) or f"owner-{i}"

    waiting = [asyncio.create_task(models.lease(found, starting(i))) for i in range(3)]
    await settle()
    assert started == [0], "the requests that joined the load under way started none"
    loading.gates["smol"].set()
    for held in await asyncio.gather(*waiting):
        held.release()
    (await models.lease(found, starting(99))).release()
    assert started == [0], "a loaded model starts no load"

    def refuse(evicted_by: str | None) -> str:
        raise APIError(429, "too many loads")

    await models.unload(found, 0)
    with pytest.raises(APIError, match="too many loads"):
        await models.lease(found, refuse)
    assert loading.loads == ["smol"] and found.waiting == 0 and state(models, "smol") == "unloaded"


async def test_a_model_evicted_to_make_room_names_whose_load_evicted_it() -> None:
    models, _, _ = registry([spec("x"), spec("y")], {"x": 60, "y": 60}, 100)
    x, y = models.resolve("x"), models.resolve("y")
    assert x is not None and y is not None
    told: list[str | None] = []

    def owner(name: str) -> StartingLoad:
        return lambda evicted_by: told.append(evicted_by) or name

    (await models.lease(y, owner("b"))).release()
    (await models.lease(x, owner("a"))).release()  # evicts y
    (await models.lease(y, owner("b"))).release()  # evicts x
    assert told == [None, None, "a"], "y came back after a's load pushed it out"
    assert x.evicted_by == "b" and y.evicted_by is None


async def test_a_load_that_does_not_fit_evicts_the_least_recently_used_idle_model() -> None:
    models, loading, clock = registry([spec("a"), spec("b"), spec("c")], {"a": 100, "b": 100, "c": 100}, 250)
    (await lease(models, "a")).release()
    clock.now += 1
    (await lease(models, "b")).release()
    clock.now += 1
    (await lease(models, "a")).release()  # a is now the more recently used
    clock.now += 1
    (await lease(models, "c")).release()
    assert [state(models, m) for m in "abc"] == ["loaded", "unloaded", "loaded"]
    assert loading.engines["b"][0].closed, "the evicted model's engine is freed"
    assert models.budget.used_bytes == 200 * MIB
    (await lease(models, "b")).release()  # loaded again on demand, evicting a (c is more recent)
    assert loading.loads == ["a", "b", "c", "b"] and state(models, "a") == "unloaded"


async def test_a_pinned_model_is_never_evicted() -> None:
    models, _, _ = registry([spec("p", pin=True), spec("a"), spec("b")], {"p": 100, "a": 100, "b": 100}, 250)
    models.start()
    await settle()
    assert state(models, "p") == "loaded" and models.readiness().ready
    (await lease(models, "a")).release()
    (await lease(models, "b")).release()
    assert [state(models, m) for m in ("p", "a", "b")] == ["loaded", "unloaded", "loaded"]
    with pytest.raises(PinnedModelError):
        await models.unload(models.default, drain_s=0)
    await models.close()


async def test_a_model_with_a_generation_in_flight_is_not_evicted_the_load_waits_for_it() -> None:
    models, _, _ = registry([spec("a"), spec("b")], {"a": 100, "b": 100}, 150)
    streaming = await lease(models, "a")
    b = asyncio.create_task(lease(models, "b"))
    await settle()
    assert not b.done() and state(models, "a") == "loaded" and state(models, "b") == "loading"
    streaming.release()  # the stream ends: now a may go
    on_b = await b
    assert state(models, "a") == "unloaded" and on_b.model.model_id == "b"
    on_b.release()


async def test_a_model_kept_busy_is_closed_to_new_requests_until_the_load_waiting_for_it_evicted_it() -> None:
    """One key kept its model busy, each new stream starting before the last ended: the other key's load waited for
    a moment with no generation that never came, and its requests got 503 for as long as the first key went on
    (found by a review, 2026-12-08). The busy model now takes no new request while a load waits to evict it."""
    models, loading, _ = registry([spec("a"), spec("b")], {"a": 100, "b": 100}, 150)
    first = await lease(models, "a")
    b = asyncio.create_task(lease(models, "b"))
    await settle()
    a_found = models.resolve("a")
    assert a_found is not None and models.closed(a_found) and state(models, "b") == "loading"
    second = asyncio.create_task(lease(models, "a"))  # the next stream, before the first ends
    await settle()
    assert not second.done(), "a closed model takes no new request"
    first.release()
    on_b = await b
    assert on_b.model.model_id == "b" and loading.engines["a"][0].closed, "a was evicted"
    assert state(models, "a") == "loading" and not second.done(), "the waiting request loads a again, in turn"
    on_b.release()
    on_a = await second
    assert on_a.model.model_id == "a" and loading.loads == ["a", "b", "a"]
    on_a.release()


async def _d_waiting_for_busy_a_and_b() -> tuple[ModelRegistry, FakeLoading, Lease, Lease, asyncio.Task[Lease]]:
    """a and b run a generation each (a the less recently used); d, which needs both gone, waits for memory."""
    models, loading, clock = registry([spec("a"), spec("b"), spec("d")], dict(a=100, b=100, d=200), 250)
    on_a = await lease(models, "a")
    clock.now += 1
    on_b = await lease(models, "b")
    d = asyncio.create_task(lease(models, "d"))
    await settle()
    return models, loading, on_a, on_b, d


async def test_a_load_that_needs_two_busy_models_keeps_the_first_closed_once_idle() -> None:
    """Found reviewing the change: each victim reopened as soon as it went idle (it counted as freeable, not busy), so
    traffic on both kept one of them busy at every moment and the load waited for ever."""
    models, loading, on_a, on_b, d = await _d_waiting_for_busy_a_and_b()
    a, b = models.resolve("a"), models.resolve("b")
    assert a is not None and b is not None and models.closed(a) and models.closed(b)
    on_a.release()
    await settle()
    assert models.closed(a), "idle, but the load still needs it gone"
    again = asyncio.create_task(lease(models, "a"))
    await settle()
    assert not again.done()
    on_b.release()
    (await d).release()
    assert loading.loads == ["a", "b", "d"] and state(models, "d") == "loaded"
    (await again).release()


async def test_a_model_closed_for_one_load_is_not_evicted_by_another() -> None:
    """Between a load's two evictions, the requests held by the first model it evicted reloaded it, and their load
    evicted the second with the room the first load was making (found reviewing the change)."""
    models, loading, on_a, on_b, d = await _d_waiting_for_busy_a_and_b()
    on_b.release()
    a_found = models.resolve("a")
    assert a_found is not None and a_found.holder.current is not None
    assert models._victims.evictable(a_found) == [], "b is closed for d's load: only d's to evict"
    on_a.release()
    (await d).release()
    assert loading.loads == ["a", "b", "d"] and state(models, "d") == "loaded"


async def test_an_idle_model_the_load_needs_beside_a_busy_one_is_closed_too() -> None:
    models, _, clock = registry([spec("a"), spec("b"), spec("d")], dict(a=100, b=100, d=200), 250)
    (await lease(models, "a")).release()
    clock.now += 1
    on_b = await lease(models, "b")
    d = asyncio.create_task(lease(models, "d"))
    await settle()
    a = models.resolve("a")
    assert a is not None and models.closed(a) and state(models, "a") == "loaded", "not evicted before it helps"
    held = asyncio.create_task(lease(models, "a"))
    await settle()
    assert not held.done()
    on_b.release()
    (await d).release()
    (await held).release()


async def test_a_model_reopened_after_a_load_gave_up_is_not_closed_again_for_as_long() -> None:
    """A key whose load could not succeed in time (the other model's generations outlasted the wait) asked again at
    once and closed the model again: another key's requests on it were held wait after wait."""
    models, _, clock = registry([spec("a"), spec("b")], {"a": 100, "b": 100}, 150, wait_s=30)
    streaming = await lease(models, "a")
    b = asyncio.create_task(lease(models, "b"))
    await settle()
    a = models.resolve("a")
    assert a is not None and models.closed(a)
    clock.now += 31
    models.budget.changed()
    with pytest.raises(ModelUnavailableError, match="not enough memory"):
        await b
    assert not models.closed(a)
    again = asyncio.create_task(lease(models, "b"))
    await settle()
    assert not models.closed(a), "it was closed 31 s: it serves at least as long before it is closed again"
    (await lease(models, "a")).release()
    clock.now += 31
    models.budget.changed()
    with pytest.raises(ModelUnavailableError):
        await again
    third = asyncio.create_task(lease(models, "b"))
    await settle()
    assert models.closed(a), "served as long as it was held: it may be closed again"
    streaming.release()
    (await third).release()


async def test_requests_held_by_a_closed_model_are_bounded_by_the_queue() -> None:
    models, _, _ = registry([spec("a"), spec("b")], {"a": 100, "b": 100}, 150, max_waiting=2)
    streaming = await lease(models, "a")
    b = asyncio.create_task(lease(models, "b"))
    await settle()
    held = [asyncio.create_task(lease(models, "a")) for _ in range(2)]
    await settle()
    with pytest.raises(ModelQueueFullError):
        await lease(models, "a")
    streaming.release()
    (await b).release()
    for task in held:
        (await task).release()


async def test_a_load_nobody_waits_for_any_more_gives_up_before_evicting_and_reopens_what_it_closed() -> None:
    """Found by a review (2026-12-08): the load went on after its requests left, and would have evicted other keys'
    models for nobody; with closing, it would also have held their requests."""
    models, loading, _ = registry([spec("a"), spec("b")], {"a": 100, "b": 100}, 150)
    streaming = await lease(models, "a")
    b = asyncio.create_task(lease(models, "b"))
    await settle()
    a_found = models.resolve("a")
    assert a_found is not None and models.closed(a_found)
    b.cancel()  # its client left
    await settle()
    assert not models.closed(a_found) and state(models, "b") == "unloaded"
    streaming.release()
    await settle()
    assert state(models, "a") == "loaded" and loading.loads == ["a"], "a stays: nothing asks for b"
    (await lease(models, "b")).release()  # the next request loads it, no backoff
    assert state(models, "b") == "loaded" and loading.loads == ["a", "b"]


async def test_a_closed_model_reopens_when_the_load_gives_up() -> None:
    models, _, clock = registry([spec("a"), spec("b")], {"a": 100, "b": 100}, 150, wait_s=5)
    streaming = await lease(models, "a")
    b = asyncio.create_task(lease(models, "b"))
    await settle()
    waiting = asyncio.create_task(lease(models, "a"))
    await settle()
    assert not waiting.done()
    clock.now += 6
    models.budget.changed()  # the wait's timer is real time: wake it to read the clock
    with pytest.raises(ModelUnavailableError, match="not enough memory"):
        await b
    on_a = await waiting
    assert on_a.model.model_id == "a" and state(models, "a") == "loaded"
    on_a.release()
    streaming.release()


async def test_only_the_busy_models_that_make_room_are_closed_least_recently_used_first() -> None:
    models, _, clock = registry([spec("a"), spec("b"), spec("c"), spec("d")], dict(a=100, b=100, c=100, d=150), 300)
    held = {}
    for name in "abc":
        held[name] = await lease(models, name)
        clock.now += 1
    d = asyncio.create_task(lease(models, "d"))
    await settle()
    closed = [m.id for m in models.models if models.closed(m)]
    assert closed == ["a", "b"], "150 MiB short: the two least recently used"
    for lease_held in held.values():
        lease_held.release()
    (await d).release()
    assert [state(models, m) for m in "abcd"] == ["unloaded", "unloaded", "loaded", "loaded"]


async def test_when_nothing_can_be_evicted_in_time_the_request_gets_503_with_retry_after() -> None:
    models, _, _ = registry([spec("a"), spec("b")], {"a": 100, "b": 100}, 150, wait_s=0)
    held = await lease(models, "a")
    with pytest.raises(ModelUnavailableError) as caught:
        await lease(models, "b")
    error = known_error(caught.value)
    assert error is not None and error.status == 503 and int(error.headers["Retry-After"]) >= 1
    assert "not enough memory" in error.message and state(models, "a") == "loaded"
    held.release()
    (await lease(models, "b")).release()  # no backoff after a lack of room: memory may free any moment
    assert state(models, "b") == "loaded"


async def test_a_model_larger_than_the_whole_budget_fails_with_the_reason() -> None:
    models, _, _ = registry([spec("big")], {"big": 500}, 100)
    with pytest.raises(ModelUnavailableError, match="more than the whole memory budget"):
        await lease(models, "big")
    status = models.status(models.default)
    assert status.state == "failed" and status.reason is not None and "500 MiB" in status.reason


async def test_a_model_that_cannot_fit_beside_the_pinned_ones_fails_at_once_and_evicts_nothing() -> None:
    # It evicted every idle model, waited the load timeout, and did it again on the next request.
    models, loading, _ = registry([spec("p", pin=True), spec("a"), spec("big")], dict(p=600, a=300, big=500), 1000)
    models.start()
    await settle()
    (await lease(models, "a")).release()
    waiting = asyncio.create_task(lease(models, "big"))
    await settle()
    assert waiting.done(), "no wait: no generation ending can make room"
    with pytest.raises(ModelUnavailableError, match="pinned models hold 600 of the 1,000 MiB"):
        waiting.result()
    assert state(models, "a") == "loaded" and loading.loads == ["p", "a"]
    await models.close()


async def test_a_load_that_evicting_the_idle_models_cannot_make_room_for_evicts_none_of_them() -> None:
    models, _, _ = registry([spec("a"), spec("b"), spec("c")], dict(a=600, b=300, c=500), 1000, wait_s=0)
    streaming = await lease(models, "a")
    (await lease(models, "b")).release()
    with pytest.raises(ModelUnavailableError, match="not enough memory"):
        await lease(models, "c")  # b alone is not enough, and a streams
    assert state(models, "b") == "loaded", "evicted for nothing"
    streaming.release()
    (await lease(models, "c")).release()
    assert state(models, "a") == "unloaded" and state(models, "c") == "loaded"


async def test_a_failed_load_is_not_retried_before_its_backoff() -> None:
    models, loading, clock = registry([spec("a")], {"a": 100}, None, retry_initial_s=5)
    loading.failing["a"] = ModelLoadError("bad tensor")
    for _ in range(2):
        with pytest.raises(ModelUnavailableError, match="bad tensor"):
            await lease(models, "a")
    assert loading.loads == ["a"]
    del loading.failing["a"]
    clock.now += 5
    (await lease(models, "a")).release()
    assert loading.loads == ["a", "a"] and state(models, "a") == "loaded"


async def test_a_request_waits_at_most_the_load_timeout() -> None:
    models, loading, _ = registry([spec("a")], {"a": 100}, None, load_timeout_s=0)
    loading.gates["a"] = asyncio.Event()
    with pytest.raises(ModelUnavailableError) as caught:
        await lease(models, "a")
    assert caught.value.code == "model_loading" and caught.value.retry_after_s
    loading.gates["a"].set()
    await settle()
    assert state(models, "a") == "loaded", "the load went on for the next request"


async def test_waiting_requests_are_bounded_by_the_queue() -> None:
    models, loading, _ = registry([spec("a")], {"a": 100}, None, max_waiting=2)
    loading.gates["a"] = asyncio.Event()
    waiting = [asyncio.create_task(lease(models, "a")) for _ in range(2)]
    await settle()
    with pytest.raises(ModelQueueFullError):
        await lease(models, "a")
    loading.gates["a"].set()
    for held in await asyncio.gather(*waiting):
        held.release()


async def test_idle_models_unload_after_their_ttl() -> None:
    models, _, clock = registry([spec("a", ttl_s=60), spec("b")], {"a": 100, "b": 100}, None)
    (await lease(models, "a")).release()
    (await lease(models, "b")).release()
    clock.now += 59
    await models.reap()
    assert state(models, "a") == "loaded"
    held = await lease(models, "a")
    clock.now += 120
    await models.reap()
    assert state(models, "a") == "loaded", "never while a generation runs"
    held.release()
    clock.now += 60
    await models.reap()
    assert state(models, "a") == "unloaded" and state(models, "b") == "loaded"


async def test_a_request_refused_after_its_lease_does_not_count_as_use() -> None:
    # A key over its limit, or with a bad prompt, asking again and again must not move a model back in the order of
    # eviction, nor keep it loaded past its ttl_s for the keys that use it.
    models, loading, clock = registry([spec("a", ttl_s=60), spec("b"), spec("c")], dict(a=100, b=100, c=100), 250)
    (await lease(models, "a")).release()
    clock.now += 1
    (await lease(models, "b")).release()
    clock.now += 1
    (await lease(models, "a", admitted=False)).release()
    (await lease(models, "c")).release()
    assert state(models, "a") == "unloaded" and state(models, "b") == "loaded", "a was the least recently used"
    (await lease(models, "a")).release()
    for _ in range(6):
        clock.now += 10
        (await lease(models, "a", admitted=False)).release()
    await models.reap()
    assert state(models, "a") == "unloaded" and loading.loads == ["a", "b", "c", "a"]


async def test_an_admin_unload_lets_the_generation_in_flight_finish_first() -> None:
    models, loading, _ = registry([spec("a")], {"a": 100}, 100)
    held = await lease(models, "a")
    unloading = asyncio.create_task(models.unload(models.default, drain_s=60))
    await settle()
    assert not unloading.done() and not loading.engines["a"][0].closed
    assert models.budget.used_bytes == 100 * MIB, "its memory counts until it is freed"
    held.release()
    await unloading
    assert loading.engines["a"][0].closed and state(models, "a") == "unloaded" and models.budget.used_bytes == 0
    await models.load(models.default)
    assert state(models, "a") == "loaded"


async def test_readiness_waits_for_every_pinned_model_and_only_those() -> None:
    models, loading, _ = registry([spec("p", pin=True), spec("q", pin=True), spec("a")], dict(p=1, q=1, a=1), None)
    loading.gates["q"] = asyncio.Event()
    models.start()
    await settle()
    readiness = models.readiness()
    assert not readiness.ready and readiness.reason.startswith("q: ")
    with pytest.raises(ModelNotReadyError):
        await lease(models, "q")  # a pinned model its own task loads: 503 at once, as a single model always did
    loading.gates["q"].set()
    await settle()
    assert models.readiness().ready and state(models, "a") == "unloaded"
    await models.close()
    assert all(engine.closed for engines in loading.engines.values() for engine in engines)


async def test_a_pinned_model_that_fails_retries_and_shows_failed() -> None:
    models, loading, _ = registry([spec("p", pin=True)], {"p": 1}, None, retry_initial_s=3600, retry_max_s=3600)
    loading.failing["p"] = ModelLoadError("no such file")
    models.start()
    await settle()
    status = models.status(models.default)
    assert status.state == "failed" and status.reason is not None and "next try in 3600 s" in status.reason
    assert models.readiness().state is ModelState.WAITING
    await models.close()


class WatchedSpec(ModelSpec):
    @property
    def watched(self) -> bool:  # a blob's model, as far as the registry can tell
        return True


async def test_an_unload_waits_for_the_swap_its_watcher_is_in_the_middle_of() -> None:
    models, loading, _ = registry([WatchedSpec("a", (), FileModelSource(Path("/a.gguf")), load_settings())],
                                  {"a": 100}, 100)  # fmt: skip
    cancelled, swapped = asyncio.Event(), asyncio.Event()

    async def mid_swap(spec: ModelSpec, holder: ModelHolder, fetched: FetchResult, on_swapped: object) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await swapped.wait()  # as watcher.load_or_free waits for a load it cannot stop
            raise

    loading.watch = mid_swap  # type: ignore[method-assign]  # this test's watcher
    await models.load(models.default)
    unloading = asyncio.create_task(models.unload(models.default, drain_s=0))
    await cancelled.wait()
    await settle()
    assert not unloading.done() and not loading.engines["a"][0].closed, "the unload waits for the swap to end"
    swapped.set()
    await unloading
    assert loading.engines["a"][0].closed and state(models, "a") == "unloaded"


async def test_a_hot_swap_is_charged_what_the_new_version_needs() -> None:
    models, loading, _ = registry([WatchedSpec("a", (), FileModelSource(Path("/a.gguf")), load_settings())],
                                  {"a": 100}, 1000)  # fmt: skip
    told: list[Callable[[FetchResult], Awaitable[None]]] = []

    async def watch(spec: ModelSpec, holder: ModelHolder, fetched: FetchResult, on_swapped: Any) -> None:
        told.append(on_swapped)

    loading.watch = watch  # type: ignore[method-assign]  # this test's watcher
    await models.load(models.default)
    await settle()
    assert models.budget.charged(models.default) == 100 * MIB
    loading.sizes["a"] = 300 * MIB  # the blob's new version is larger
    await told[0](FetchResult(Path("/a-v2.gguf"), 0, 0.0))
    assert models.budget.charged(models.default) == 300 * MIB and models.budget.used_bytes == 300 * MIB


def winding_down(wound_down: asyncio.Event) -> Callable[..., Awaitable[None]]:
    """A watcher in the middle of a swap: cancelled, it waits for the load it cannot stop (watcher.load_or_free)."""

    async def watch(spec: ModelSpec, holder: ModelHolder, fetched: FetchResult, on_swapped: object = None) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await wound_down.wait()
            raise

    return watch


def watched(model_id: str, ttl_s: float | None = None) -> ModelSpec:
    return WatchedSpec(model_id, (), FileModelSource(Path(f"/{model_id}.gguf")), load_settings(), False, ttl_s)


async def test_a_model_being_evicted_is_not_leased_while_its_watcher_winds_down() -> None:
    # It stayed installed and ready while the eviction waited for its watcher, so a request leased it, and the
    # eviction then closed the engine under that request.
    models, loading, clock = registry([watched("a"), spec("b")], {"a": 100, "b": 100}, 150)
    wound_down = asyncio.Event()
    loading.watch = winding_down(wound_down)  # type: ignore[method-assign]  # this test's watcher
    (await lease(models, "a")).release()
    clock.now += 1
    b = asyncio.create_task(lease(models, "b"))  # evicts a, which waits for its watcher
    await settle()
    again = asyncio.create_task(lease(models, "a"))
    await settle()
    assert not again.done() and models.default.holder.in_flight == 0, "nothing leases the model being evicted"
    assert loading.loads == ["a"], "its next copy waits for this one to be freed (and b for the room)"
    wound_down.set()
    on_b = await b
    assert loading.engines["a"][0].closed
    on_b.release()  # now b may go: a loads again, as a new copy
    on_a = await again
    assert on_a.model.engine is loading.engines["a"][1] and not loading.engines["a"][1].closed
    on_a.release()


async def test_an_idle_unload_spares_a_model_leased_while_another_one_was_being_unloaded() -> None:
    models, loading, clock = registry([watched("a", ttl_s=60), spec("b", ttl_s=60)], {"a": 100, "b": 100}, None)
    wound_down = asyncio.Event()
    loading.watch = winding_down(wound_down)  # type: ignore[method-assign]  # this test's watcher
    (await lease(models, "a")).release()
    (await lease(models, "b")).release()
    clock.now += 60
    reaping = asyncio.create_task(models.reap())  # both are idle: a first, which waits for its watcher
    await settle()
    held = await lease(models, "b")
    wound_down.set()
    await reaping
    assert state(models, "a") == "unloaded" and state(models, "b") == "loaded"
    assert not loading.engines["b"][0].closed, "b was leased since the reaper listed it"
    held.release()
