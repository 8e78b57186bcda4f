"""`POST /api/v1/orders` served directly (D57): the same answers as the declared FastAPI route, for every request.

Each request is sent twice, with the same user, body and headers: once as any client sends it (a well-formed one
is served by `DirectRoute`, anything else handed on to the declared route), once marked for the declared route alone
(`DECLARED_ONLY`, as the direct route marks what it hands on). The two answers must be the same: status, error code
and message, headers that matter, and for a placed order its serialization, byte for byte.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from cival.api.orders import DECLARED_ONLY, DirectRoute
from cival.services.market_data_service import MarketDataService
from tests.api._identity import ACCOUNTS, BASE_URL, Caller, Identities, random_address

ORDERS = "/api/v1/orders"


def _declared_only(app: FastAPI) -> httpx.AsyncClient:
    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, DECLARED_ONLY: True}, receive, send)

    transport = httpx.ASGITransport(app=marked, raise_app_exceptions=False, client=(random_address(), 1234))
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL)


async def _trader(ids: Identities) -> tuple[Caller, str]:
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return user, response.json()["id"]


def _answer(response: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("request_id", None)  # each request its own
    return response.status_code, body, response.headers.get("content-type"), response.headers.get("www-authenticate")


async def test_every_refused_request_gets_the_declared_routes_answer(
    app: FastAPI, ids: Identities, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    valid = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01"}
    auth = {"Authorization": f"Bearer {user.token}"}
    as_json = {**auth, "Content-Type": "application/json"}
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("not JSON", b"{", as_json),
        ("a JSON array", b"[]", as_json),
        ("an unknown field", json.dumps({**valid, "price": "1", "owner": "x"}).encode(), as_json),
        ("a float quantity", json.dumps({**valid, "price": "1", "quantity": 0.01}).encode(), as_json),
        ("no price on a limit", json.dumps(valid).encode(), as_json),
        ("a price off the tick", json.dumps({**valid, "price": "100.001"}).encode(), as_json),
        ("zero quantity", json.dumps({**valid, "price": "1", "quantity": "0"}).encode(), as_json),
        ("an unknown pair", json.dumps({**valid, "price": "1", "symbol": "NOPE/USDT"}).encode(), as_json),
        ("another's account", json.dumps({**valid, "price": "1", "account_id": str(uuid.uuid4())}).encode(), as_json),
        ("no bearer token", json.dumps({**valid, "price": "1"}).encode(), {"Content-Type": "application/json"}),
        ("a bad token", json.dumps({**valid, "price": "1"}).encode(), {**as_json, "Authorization": "Bearer nope"}),
        ("an empty idempotency key", json.dumps({**valid, "price": "1"}).encode(), {**as_json, "Idempotency-Key": ""}),
        (
            "a long idempotency key",
            json.dumps({**valid, "price": "1"}).encode(),
            {**as_json, "Idempotency-Key": "k" * 256},
        ),
        ("a text body", json.dumps({**valid, "price": "1"}).encode(), {**auth, "Content-Type": "text/plain"}),
        ("no body", b"", as_json),
        ("a form body", b"quantity=1", {**auth, "Content-Type": "application/x-www-form-urlencoded"}),
    ]
    declared = _declared_only(app)
    try:
        for case, body, headers in cases:
            direct = await user.client.post(ORDERS, content=body, headers=headers)
            expected = await declared.post(ORDERS, content=body, headers=headers)
            assert direct.status_code >= 400, (case, direct.text)
            assert _answer(direct) == _answer(expected), case
    finally:
        await declared.aclose()
    assert (await user.get(ORDERS)).json()["total"] == 0  # nothing was written by any of them


async def test_a_placed_order_and_its_replays_answer_as_the_declared_route_would(
    app: FastAPI, ids: Identities, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01"}
    body["price"] = "1000"  # far below the market: it rests, so the order does not change after it is placed
    headers = {"Authorization": f"Bearer {user.token}", "Idempotency-Key": f"direct-{uuid.uuid4()}"}
    placed = await user.client.post(ORDERS, json=body, headers=headers)
    assert placed.status_code == 201, placed.text
    assert placed.headers["content-type"] == "application/json"
    order = placed.json()
    assert order["status"] == "pending"
    read = await user.get(f"{ORDERS}/{order['id']}")  # serialized by FastAPI, from the stored row
    assert read.content == placed.content
    declared = _declared_only(app)
    try:
        replayed = await declared.post(ORDERS, json=body, headers=headers)  # the retry, through the declared route
        assert (replayed.status_code, replayed.content) == (201, placed.content)
        again = await user.client.post(ORDERS, json=body, headers=headers)  # and directly
        assert (again.status_code, again.content) == (201, placed.content)
        other = {**body, "quantity": "0.02"}
        refused = await user.client.post(ORDERS, json=other, headers=headers)
        expected = await declared.post(ORDERS, json=other, headers=headers)
    finally:
        await declared.aclose()
    assert refused.status_code == 422
    assert refused.json()["error"] == "idempotency_key_reused"
    assert _answer(refused) == _answer(expected)
    assert (await user.get(ORDERS)).json()["total"] == 1
    market = {**body, "type": "market", "price": None}
    filled = await user.post(ORDERS, json={k: v for k, v in market.items() if v is not None})
    assert (filled.status_code, filled.json()["status"]) == (201, "filled")
    read = await user.get(f"{ORDERS}/{filled.json()['id']}")  # the answer built while the fill's COMMIT was sent
    assert read.content == filled.content
    metrics = (await user.client.get("/metrics")).text  # what the direct route served is counted under its path
    assert 'cival_http_requests_total{method="POST",route="/api/v1/orders",status="201"}' in metrics


def test_the_direct_route_names_itself_in_the_scope_and_lets_marked_requests_through() -> None:
    route = DirectRoute()
    scope = {"type": "http", "path": ORDERS, "method": "POST", "root_path": "", "headers": []}
    match, child = route.matches(scope)
    assert (match, child.get("route")) == (Match.FULL, route)
    assert route.matches({**scope, DECLARED_ONLY: True})[0] == Match.NONE


@pytest.mark.parametrize(
    "content_type", [b"application/json", b"Application/JSON; charset=utf-8", b"application/x+json", None]
)
async def test_a_well_formed_order_is_served_without_the_declared_route(
    app: FastAPI, ids: Identities, market: MarketDataService, content_type: bytes | None
) -> None:
    """The direct route places the order on its own (the app it runs in has no router to hand anything on to),
    whatever the content type FastAPI reads as JSON (none, or a JSON one)."""
    user, account = await _trader(ids)
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.01"}
    content = json.dumps(body).encode()

    class NoRouter:
        state = app.state

        @property
        def router(self) -> Any:
            raise AssertionError("handed on to the declared route")

    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": ORDERS,
        "headers": [
            (b"authorization", f"Bearer {user.token}".encode()),
            (b"content-length", str(len(content)).encode()),
            *([(b"content-type", content_type)] if content_type is not None else []),
        ],
        "query_string": b"",
        "app": NoRouter(),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": content, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await DirectRoute().handle(scope, receive, send)
    assert sent[0]["status"] == 201
    order = json.loads(sent[1]["body"])
    assert (order["status"], order["filled_quantity"]) == ("filled", "0.01000000")
    assert (await user.get(f"{ORDERS}/{order['id']}")).json()["status"] == "filled"
