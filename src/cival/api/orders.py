"""Orders and trades: place, list, read, cancel; the executions of the user's orders."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from cival.api.deps import CurrentUser, Registry, get_principal
from cival.api.routing import CivalRoute
from cival.core.service_registry import ServiceRegistry
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


_ORDER_IN = TypeAdapter(OrderIn)
_ORDER_OUT = TypeAdapter(OrderOut)
DECLARED_ONLY = "cival.declared_route"
"""Scope key of a request for the declared route alone: `DirectRoute` lets it through (a request it hands on)."""


class DirectRoute(Route):
    """`POST /api/v1/orders` for a well-formed request, served without FastAPI's per-request machinery (D57).

    The declared route (`place_order` above) stays what the API is: its OpenAPI entry, and its answer to every
    request this one does not take. This one takes a request whose body FastAPI would read as JSON (no content type,
    or a JSON one) and that is a JSON object valid as `OrderIn`, with an `Idempotency-Key` FastAPI would accept (or
    none); anything else (no or bad JSON, an invalid body or header, another content type) goes, its body replayed,
    to the declared route, which answers as it always has.
    What it takes, it does as the declared route does: the same bearer authentication (`get_principal`), the same
    service call, the same serialization; the errors raised on the way reach the same exception handlers. It saves
    FastAPI's dependency solving, parameter and response handling per order: ~0.1 ms of CPU (docs/benchmarks.md).
    """

    def __init__(self) -> None:
        super().__init__("/api/v1/orders", self._serve, methods=["POST"], include_in_schema=False)
        self.app = self._serve  # an ASGI app itself, not a request-response function

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if DECLARED_ONLY in scope:
            return Match.NONE, {}
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["route"] = self  # as FastAPI's routes name themselves: the metrics label it by its path at once
        return match, child

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await request.body()
        except ClientDisconnect as exc:  # as the declared route answers a body it could not read
            raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
        headers = request.headers
        key = headers.get("idempotency-key")
        order = _parsed(body, headers.get("content-type"), key)
        if order is None:
            await _declared(scope, body, receive, send)
            return
        principal = await get_principal(request)
        registry: ServiceRegistry = request.app.state.registry
        placed = await registry.orders.place_order(principal, order, key)
        content = _ORDER_OUT.dump_json(placed)
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-length", b"%d" % len(content)), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _parsed(body: bytes, content_type: str | None, key: str | None) -> OrderIn | None:
    """The order, when the declared route would take this request as it is; None for anything it would refuse."""
    if content_type is not None:  # FastAPI reads the body as JSON with no content type, or a JSON one
        maintype, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
        if maintype != "application" or not (subtype == "json" or subtype.endswith("+json")):
            return None
    if key is not None and not 1 <= len(key) <= 255:
        return None
    try:
        value = json.loads(body)
        return _ORDER_IN.validate_python(value) if isinstance(value, dict) else None
    except (ValueError, ValidationError):
        return None


async def _declared(scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
    """The request, its body replayed, through the app's routes again: to the declared route."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()  # what comes after the body (a disconnect) comes from the client
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    await scope["app"].router({**scope, DECLARED_ONLY: True}, replay, send)
