"""The portfolio: positions marked to the latest ticker, balances in USD, daily snapshots, a summary."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cival.api.deps import CurrentUser, Registry
from cival.api.routing import CivalRoute
from cival.models.trading_models import PortfolioBalanceOut, PositionOut, SnapshotOut, SummaryOut

router = APIRouter(prefix="/api/v1/portfolio", tags=["portfolio"], route_class=CivalRoute)


@router.get("/positions")
async def positions(principal: CurrentUser, registry: Registry) -> list[PositionOut]:
    return await registry.portfolio.positions(principal.user_id)


@router.get("/balances")
async def balances(principal: CurrentUser, registry: Registry) -> list[PortfolioBalanceOut]:
    return await registry.portfolio.balances(principal.user_id)


@router.get("/snapshots")
async def snapshots(
    principal: CurrentUser, registry: Registry, limit: Annotated[int, Query(ge=1, le=366)] = 30
) -> list[SnapshotOut]:
    return await registry.portfolio.snapshots(principal.user_id, limit)


@router.get("/summary")
async def summary(principal: CurrentUser, registry: Registry) -> SummaryOut:
    return await registry.portfolio.summary(principal.user_id)
