"""Risk: trading limits, the kill switch and risk alerts (the gate itself runs inside the order path)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from cival.api.deps import CurrentUser, Registry
from cival.api.routing import CivalRoute
from cival.models.risk_models import (
    AlertOut,
    AlertPage,
    KillSwitchIn,
    KillSwitchOut,
    LimitIn,
    LimitOut,
    LimitUpdateIn,
    Severity,
)
from cival.models.system_models import ErrorOut
from cival.services.risk_limits import RiskLimitService

router = APIRouter(prefix="/api/v1/risk", tags=["risk"], route_class=CivalRoute)


async def _risk(registry: Registry) -> RiskLimitService:
    return registry.risk_limits


Risk = Annotated[RiskLimitService, Depends(_risk)]


@router.get("/limits")
async def list_limits(principal: CurrentUser, risk: Risk) -> list[LimitOut]:
    """Your limits, each with `current_value`: where you stand against it now."""
    return await risk.list_limits(principal)


@router.post("/limits", status_code=201, responses={409: {"model": ErrorOut, "description": "The limit exists"}})
async def create_limit(body: LimitIn, principal: CurrentUser, risk: Risk) -> LimitOut:
    """Add a limit, global (no `symbol`) or for one symbol; one per type and symbol (409 `limit_exists`)."""
    return await risk.create_limit(principal, body)


@router.get("/limits/{limit_id}")
async def get_limit(limit_id: uuid.UUID, principal: CurrentUser, risk: Risk) -> LimitOut:
    return await risk.get_limit(principal, limit_id)


@router.patch("/limits/{limit_id}")
async def update_limit(limit_id: uuid.UUID, body: LimitUpdateIn, principal: CurrentUser, risk: Risk) -> LimitOut:
    """Change a limit's value and/or switch it off (`is_active: false`) without deleting it."""
    return await risk.update_limit(principal, limit_id, body)


@router.delete("/limits/{limit_id}", status_code=204)
async def delete_limit(limit_id: uuid.UUID, principal: CurrentUser, risk: Risk) -> Response:
    await risk.delete_limit(principal, limit_id)
    return Response(status_code=204)


@router.get("/kill-switch")
async def get_kill_switch(principal: CurrentUser, risk: Risk) -> KillSwitchOut:
    return await risk.kill_switch(principal)


@router.post("/kill-switch", responses={403: {"model": ErrorOut, "description": "`all_users` needs the admin role"}})
async def set_kill_switch(body: KillSwitchIn, principal: CurrentUser, risk: Risk) -> KillSwitchOut:
    """Engage the kill switch (every working order is cancelled; only orders that reduce a position pass until it
    is released) or release it; `trip_on_daily_loss` makes a daily loss breach engage it. Admins: `all_users`."""
    return await risk.set_kill_switch(principal, body)


@router.get("/alerts")
async def list_alerts(
    principal: CurrentUser,
    risk: Risk,
    severity: Severity | None = None,
    acknowledged: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AlertPage:
    """Your risk alerts, newest first."""
    return await risk.list_alerts(principal, severity=severity, acknowledged=acknowledged, limit=limit, offset=offset)


@router.post("/alerts/{alert_id}/ack")
async def acknowledge_alert(alert_id: uuid.UUID, principal: CurrentUser, risk: Risk) -> AlertOut:
    return await risk.acknowledge(principal, alert_id)
