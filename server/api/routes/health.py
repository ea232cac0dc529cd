"""Kubernetes' probes: live while the process runs, ready only while every pinned model serves (warmed up) and no
drain began."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.api.cards import refused_version
from server.api.deps import ModelsDep, SettingsDep
from server.protocol.ops import Liveness, ReadinessReport

router = APIRouter(prefix="/health")


@router.get(
    "/live",
    response_model=Liveness,
    response_model_exclude_none=True,
    responses={503: {"model": Liveness, "description": "Failing: restart the server."}},
)
async def live(models: ModelsDep, settings: SettingsDep) -> Liveness | JSONResponse:
    lost_for = models.lost_for()
    if lost_for > settings.lost_model_restart_s:
        reason = f"no model for {lost_for:.0f} s after a failed swap in place: {models.readiness().reason}"
        return JSONResponse(Liveness(status="failing", reason=reason).model_dump(), status_code=503)
    return Liveness()


@router.get(
    "/ready",
    response_model=ReadinessReport,
    responses={503: {"model": ReadinessReport, "description": "Not ready, with the reason."}},
)
async def ready(models: ModelsDep) -> ReadinessReport | JSONResponse:
    state = models.readiness()
    report = ReadinessReport(
        status="ready" if state.ready else "not_ready",
        state=state.state,
        reason=state.reason,
        refused=refused_version(state.refused),
    )
    if state.ready:
        return report
    return JSONResponse(report.model_dump(), status_code=503)
