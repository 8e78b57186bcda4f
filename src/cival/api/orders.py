"""Orders and trades: place, list, read, cancel; the executions of the user's orders."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query

from cival.api.deps import CurrentUser, Registry
from cival.api.routing import CivalRoute
from cival.models.system_models import ErrorOut
from cival.models.trading_models import OrderIn, OrderOut, OrderPage, TradePage

router = APIRouter(prefix="/api/v1", tags=["orders"], route_class=CivalRoute)

StatusFilter = Literal["pending", "partial", "filled", "cancelled", "rejected", "unknown"]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]


@router.post(
    "/orders", status_code=201, responses={404: {"model": ErrorOut, "description": "No such account of yours"}}
)
async def place_order(
    body: OrderIn, principal: CurrentUser, registry: Registry, idempotency_key: IdempotencyKey = None
) -> OrderOut:
    """Place an order: validated, stored `pending` with its funds reserved, then sent to the account's exchange.

    A retry with the same `Idempotency-Key` (or `client_order_id`) and body returns the same order; with another
    body it is refused (422 `idempotency_key_reused`).
    """
    return await registry.orders.place_order(principal, body, idempotency_key)


@router.get("/orders")
async def list_orders(
    principal: CurrentUser,
    registry: Registry,
    status: StatusFilter | None = None,
    symbol: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> OrderPage:
    return await registry.orders.list_orders(principal, status=status, symbol=symbol, limit=limit, offset=offset)


@router.get("/orders/{order_id}")
async def get_order(order_id: uuid.UUID, principal: CurrentUser, registry: Registry) -> OrderOut:
    return await registry.orders.get_order(principal, order_id)


@router.delete(
    "/orders/{order_id}", responses={409: {"model": ErrorOut, "description": "The order is no longer working"}}
)
async def cancel_order(order_id: uuid.UUID, principal: CurrentUser, registry: Registry) -> OrderOut:
    """Cancel a working order; 409 `order_not_cancelable` once it is filled, cancelled or rejected."""
    return await registry.orders.cancel_order(principal, order_id)


@router.delete("/orders")
async def cancel_all_orders(principal: CurrentUser, registry: Registry, symbol: str | None = None) -> list[OrderOut]:
    """Cancel every working order (of `symbol` when given); returns the cancelled orders."""
    return await registry.orders.cancel_all(principal, symbol)


@router.get("/trades")
async def list_trades(
    principal: CurrentUser,
    registry: Registry,
    symbol: str | None = None,
    order_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TradePage:
    return await registry.orders.list_trades(principal, symbol=symbol, order_id=order_id, limit=limit, offset=offset)
