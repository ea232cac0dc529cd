"""The model holder's states and leases (pure logic: a stand-in engine, no model)."""

from __future__ import annotations

import asyncio

import pytest

from server.lifecycle.holder import ModelHolder, ModelNotReadyError, ModelState, ServedModel, ServerDrainingError


class _Engine:
    model_id = "m"


def _served() -> ServedModel:
    return ServedModel(_Engine(), sha256="0" * 64, source_version=None, loaded_at=0)  # type: ignore[arg-type]


def test_no_lease_before_a_model_serves() -> None:
    holder = ModelHolder()
    with pytest.raises(ModelNotReadyError):
        holder.lease()
    holder.install(_served())
    lease = holder.lease()
    assert holder.in_flight == 1 and lease.model.model_id == "m"
    lease.release()
    lease.release()
    assert holder.in_flight == 0, "a lease returns once"


async def test_draining_refuses_new_leases_and_waits_for_the_last() -> None:
    holder = ModelHolder()
    holder.install(_served())
    first, second = holder.lease(), holder.lease()
    holder.start_draining()
    assert holder.readiness().state is ModelState.DRAINING and not holder.readiness().ready
    with pytest.raises(ServerDrainingError):
        holder.lease()
    holder.set_state(ModelState.READY, "a late loader cannot undo a drain")
    assert holder.readiness().state is ModelState.DRAINING
    idle = asyncio.create_task(holder.wait_idle())
    first.release()
    await asyncio.sleep(0)
    assert not idle.done()
    second.release()
    await asyncio.wait_for(idle, 1)


async def test_leases_are_counted_per_model_so_a_swapped_out_model_is_released_on_its_own() -> None:
    holder = ModelHolder()
    old, new = _served(), _served()
    holder.install(old)
    on_old = holder.lease()
    assert holder.install(new) is old
    on_new = holder.lease()
    assert on_new.model is new and holder.leases_on(old) == 1 and holder.leases_on(new) == 1
    released = asyncio.create_task(holder.wait_released(old))
    await asyncio.sleep(0)
    assert not released.done(), "the old model is still in use"
    on_old.release()
    await asyncio.wait_for(released, 1)
    assert holder.in_flight == 1 and holder.leases_on(old) == 0
    on_new.release()
    await asyncio.wait_for(holder.wait_released(new), 1)


async def test_swapping_refuses_new_generations_with_the_reason() -> None:
    holder = ModelHolder()
    holder.install(_served())
    holder.set_state(ModelState.SWAPPING, "swapping to b.gguf: 1 requests in flight finish on the old model first")
    with pytest.raises(ModelNotReadyError, match="swapping"):
        holder.lease()
    assert not holder.readiness().ready
