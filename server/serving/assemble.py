"""The serving pipeline the settings ask for: which stages run, in which order, around the engine."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from server.serving.job import Authenticator, open_access
from server.serving.observe import observe
from server.serving.stages import Pipeline, Stage
from server.settings import Settings


@dataclass(frozen=True, slots=True)
class DataPlane:
    authenticator: Authenticator
    pipeline: Pipeline


async def assemble(settings: Settings, resources: AsyncExitStack) -> DataPlane:
    """Open what the stages need (closed with `resources`) and compose them: observe wraps everything, then
    limit → cache → generate → record as the data plane adds them."""
    stages: list[Stage] = [observe]
    return DataPlane(authenticator=open_access, pipeline=Pipeline(stages))
