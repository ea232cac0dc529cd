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
