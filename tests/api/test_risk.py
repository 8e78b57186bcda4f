"""The risk gate end to end: limits through the API, orders refused (stored rejected, alerted, never sent) or passed.

Orders run against the paper exchange and the stepped simulated market (nothing moves between two requests unless
the test steps it), as in tests/api/test_orders.py. Each test sets exactly the limits it is about (`_only`), so the
defaults never interfere; a boundary that depends on the market (the book's mid, the day's loss) is read back from
the API first and the limit set to it, so "at the limit" is exact.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from cival.core.cache import RedisCache
from cival.core.service_registry import ServiceRegistry
from cival.database.models import Balance, PortfolioSnapshot, TradingAccount, TradingLimit
from cival.domain.risk import DEFAULT_LIMITS
from cival.services.market_data_service import MarketDataService
from tests.api._identity import ACCOUNTS, Caller, Identities

ORDERS = "/api/v1/orders"
LIMITS = "/api/v1/risk/limits"
KILL = "/api/v1/risk/kill-switch"
ALERTS = "/api/v1/risk/alerts"
START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
UNIT = Decimal("0.00000001")
BTC = "BTC/USDT"


@pytest.fixture
async def market(registry: ServiceRegistry, clean_db: Any, monkeypatch: pytest.MonkeyPatch) -> MarketDataService:
    # The test steps the market: every valuation must see the latest step (the gate may reuse prices briefly).
    monkeypatch.setattr(registry.risk, "prices_reuse_seconds", 0.0)
    service = registry.market_data
    await service.start(run=False)
    await service.become_leader(start_time=START)
    await service.run_step()  # books and tickers exist
    return service


async def _trader(ids: Identities) -> tuple[Caller, str]:
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return user, response.json()["id"]


async def _limits(user: Caller) -> dict[tuple[str, str | None], dict[str, Any]]:
    response = await user.get(LIMITS)
    assert response.status_code == 200, response.text
    return {(item["limit_type"], item["symbol"]): item for item in response.json()}


async def _only(user: Caller, **values: str) -> dict[str, str]:
    """Make `values` (type -> value, global) the user's only limits; returns type -> limit id."""
    for item in (await _limits(user)).values():
        assert (await user.delete(f"{LIMITS}/{item['id']}")).status_code == 204
    out = {}
    for kind, value in values.items():
        response = await user.post(LIMITS, json={"limit_type": kind, "limit_value": value})
        assert response.status_code == 201, response.text
        out[kind] = response.json()["id"]
    return out


async def _set(user: Caller, limit_id: str, value: Decimal) -> None:
    response = await user.patch(f"{LIMITS}/{limit_id}", json={"limit_value": format(value, "f")})
    assert response.status_code == 200, response.text


def _limit_buy(account: str, price: str = "10000", quantity: str = "0.01") -> dict[str, Any]:
    """A buy far below the market: it rests (pending) and holds its funds."""
    return {"account_id": account, "symbol": BTC, "side": "buy", "type": "limit", "quantity": quantity, "price": price}


def _market(account: str, side: str, quantity: str) -> dict[str, Any]:
    return {"account_id": account, "symbol": BTC, "side": side, "type": "market", "quantity": quantity}


async def _passes(user: Caller, body: dict[str, Any]) -> dict[str, Any]:
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] in ("pending", "filled"), order
    return order


async def _balances(registry: ServiceRegistry, account: str) -> dict[str, tuple[Decimal, Decimal]]:
    async with registry.database.system_session() as session:
        rows = (await session.scalars(select(Balance).where(Balance.account_id == uuid.UUID(account)))).all()
    return {b.asset: (b.free, b.locked) for b in rows}


async def _refused(
    user: Caller, registry: ServiceRegistry, account: str, body: dict[str, Any], limit_type: str, *, status: int = 422
) -> dict[str, Any]:
    """The order is refused by `limit_type`: stored rejected, alerted, nothing reserved, nothing sent or filled."""
    before = await _balances(registry, account)
    response = await user.post(ORDERS, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] == ("risk_limit_exceeded" if status == 422 else "risk_check_unavailable"), error
    assert error["limit_type"] == limit_type, error
    rejected = (await user.get(ORDERS, params={"status": "rejected", "limit": 1})).json()["items"][0]
    assert rejected["reject_reason"].startswith(f"risk:{limit_type}: "), rejected
    assert Decimal(rejected["reserved"]) == 0
    assert Decimal(rejected["filled_quantity"]) == 0
    assert not registry.paper.is_working(BTC, rejected["id"])  # never reached the exchange
    assert (await user.get("/api/v1/trades", params={"order_id": rejected["id"]})).json()["items"] == []
    assert await _balances(registry, account) == before
    alerts = (await user.get(ALERTS, params={"limit": 500})).json()["items"]
    alert = next(a for a in alerts if a["data"] and a["data"].get("order_id") == rejected["id"])
    assert alert["data"]["limit_type"] == limit_type
    assert alert["data"]["limit_value"] == error["limit_value"]
    assert alert["data"]["attempted_value"] == error["attempted_value"]
    assert alert["acknowledged"] is False
    return error | {"alert": alert, "order": rejected}


async def _lost_since_yesterday(registry: ServiceRegistry, user: Caller, account: str, value: Decimal) -> None:
    """Yesterday's snapshot (of an account that existed then) says the portfolio was worth `value`."""
    async with registry.database.system_session() as session:
        yesterday = datetime.now(UTC).date() - timedelta(days=1)
        session.add(PortfolioSnapshot(user_id=user.id, snapshot_date=yesterday, total_value=value))
        row = await session.get(TradingAccount, uuid.UUID(account))
        assert row is not None
        row.created_at = datetime.now(UTC) - timedelta(days=2)


async def _mid(user: Caller) -> Decimal:
    book = (await user.get("/api/v1/market-data/orderbook", params={"exchange": "paper", "symbol": BTC})).json()
    return (Decimal(book["bids"][0][0]) + Decimal(book["asks"][0][0])) / 2


# --- limits: the API --------------------------------------------------------------------------------------------


async def test_a_new_user_gets_the_documented_defaults(ids: Identities, market: MarketDataService) -> None:
    user, _ = await _trader(ids)
    limits = await _limits(user)
    assert {(k, Decimal(v["limit_value"])) for (k, _), v in limits.items()} == {
        (t.value, v) for t, v in DEFAULT_LIMITS.items()
    }
    assert all(symbol is None for _, symbol in limits)
    assert limits[("open_orders", None)]["current_value"] == "0.00000000"
    assert limits[("daily_loss", None)]["current_value"] == "0.00000000"
    assert limits[("order_notional", None)]["current_value"] is None
    assert limits[("order_notional", None)]["unit"] == "quote"
    assert limits[("daily_loss", None)]["applies_to_reduce_only"] is False
    assert limits[("order_rate", None)]["applies_to_reduce_only"] is True
    assert (await user.get(KILL)).json() | {"updated_at": None} == {
        "active": False, "trip_on_daily_loss": False, "updated_at": None, "users": 1, "cancelled_orders": 0,
    }  # fmt: skip


async def test_a_deleted_default_stays_deleted_and_a_first_limit_replaces_its_default(
    ids: Identities, market: MarketDataService
) -> None:
    user, _ = await _trader(ids)
    response = await user.post(LIMITS, json={"limit_type": "order_rate", "limit_value": "1000"})
    assert response.status_code == 201, response.text
    limits = await _limits(user)
    assert Decimal(limits[("order_rate", None)]["limit_value"]) == 1000
    assert len(limits) == len(DEFAULT_LIMITS)
    assert (await user.delete(f"{LIMITS}/{limits[('daily_loss', None)]['id']}")).status_code == 204
    assert ("daily_loss", None) not in await _limits(user)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"limit_type": "order_notional", "limit_value": "0"}, 422, "invalid_limit_value"),
        ({"limit_type": "order_notional", "limit_value": "-5"}, 422, "invalid_limit_value"),
        ({"limit_type": "order_rate", "limit_value": "2.5"}, 422, "invalid_limit_value"),
        ({"limit_type": "max_drawdown", "limit_value": "5"}, 422, "unknown_limit_type"),
        ({"limit_type": "kill_switch", "limit_value": "1"}, 422, "unknown_limit_type"),
        ({"limit_type": "price_collar", "symbol": "NOPE/USDT", "limit_value": "5"}, 422, "unknown_symbol"),
        ({"limit_type": "daily_loss", "symbol": "BTC/USDT", "limit_value": "5"}, 422, "limit_not_per_symbol"),
        ({"limit_type": "order_notional", "limit_value": 1.5}, 422, "validation_error"),
        ({"limit_type": "order_notional", "limit_value": "1", "user_id": str(uuid.uuid4())}, 422, "validation_error"),
        ({"limit_type": "order_notional", "limit_value": "7"}, 409, "limit_exists"),
    ],
)
async def test_bad_limits_are_refused_precisely(
    ids: Identities, market: MarketDataService, body: dict[str, Any], status: int, code: str
) -> None:
    user, _ = await _trader(ids)
    before = await _limits(user)
    response = await user.post(LIMITS, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert await _limits(user) == before


async def test_per_symbol_limit_duplicates_and_updates(ids: Identities, market: MarketDataService) -> None:
    user, _ = await _trader(ids)
    body = {"limit_type": "price_collar", "symbol": BTC, "limit_value": "5"}
    created = await user.post(LIMITS, json=body)
    assert created.status_code == 201, created.text
    limit = created.json()
    assert (limit["symbol"], limit["unit"], limit["limit_value"]) == (BTC, "percent", "5.00000000")
    again = await user.post(LIMITS, json=body | {"limit_value": "6"})
    assert (again.status_code, again.json()["error"]) == (409, "limit_exists")
    other_symbol = await user.post(LIMITS, json=body | {"symbol": "ETH/USDT"})
    assert other_symbol.status_code == 201
    changed = await user.patch(f"{LIMITS}/{limit['id']}", json={"limit_value": "7.5", "is_active": False})
    assert changed.status_code == 200
    assert (changed.json()["limit_value"], changed.json()["is_active"]) == ("7.50000000", False)
    assert (await user.get(f"{LIMITS}/{limit['id']}")).json() == changed.json()
    for bad, code in (({"limit_value": "0"}, "invalid_limit_value"), ({}, "nothing_to_change")):
        response = await user.patch(f"{LIMITS}/{limit['id']}", json=bad)
        assert (response.status_code, response.json()["error"]) == (422, code)


async def test_another_users_limit_and_alert_are_not_found(ids: Identities, market: MarketDataService) -> None:
    alice, account = await _trader(ids)
    bob, _ = await _trader(ids)
    limit_id = (await _only(alice, order_notional="1"))["order_notional"]
    await _refused(alice, ids.registry, account, _limit_buy(account), "order_notional")
    alert_id = (await alice.get(ALERTS)).json()["items"][0]["id"]
    for method, path, body in (
        ("GET", f"{LIMITS}/{limit_id}", None),
        ("PATCH", f"{LIMITS}/{limit_id}", {"limit_value": "5"}),
        ("DELETE", f"{LIMITS}/{limit_id}", None),
        ("POST", f"{ALERTS}/{alert_id}/ack", None),
    ):
        response = await bob.request(method, path, json=body)
        assert (response.status_code, response.json()["error"]) == (404, "not_found"), (method, path)
    assert (await bob.get(ALERTS)).json()["total"] == 0
    assert Decimal((await alice.get(f"{LIMITS}/{limit_id}")).json()["limit_value"]) == 1
    assert (await alice.get(ALERTS)).json()["items"][0]["acknowledged"] is False


# --- each limit at its boundary, through the order path -----------------------------------------------------------


async def test_order_notional_boundary(ids: Identities, registry: ServiceRegistry, market: MarketDataService) -> None:
    user, account = await _trader(ids)
    limit_id = (await _only(user, order_notional="100.00000001"))["order_notional"]
    body = _limit_buy(account, price="10000", quantity="0.01")  # 100 USDT
    await _passes(user, body)  # just under
    await _set(user, limit_id, Decimal(100))
    await _passes(user, body)  # at the limit: passes (inclusive)
    await _set(user, limit_id, Decimal(100) - UNIT)
    error = await _refused(user, registry, account, body, "order_notional")  # just over
    assert (Decimal(error["limit_value"]), Decimal(error["attempted_value"])) == (Decimal(100) - UNIT, Decimal(100))
    assert error["alert"]["alert_type"] == "order_limit"
    assert error["alert"]["severity"] == "low"


async def test_position_size_boundary_counts_working_orders(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    mid = await _mid(user)
    limit_id = (await _only(user, position_size=format(mid * Decimal("0.01") + UNIT, "f")))["position_size"]
    await _passes(user, _limit_buy(account))  # 0.01 BTC at the mid: just under
    # The second 0.01 makes 0.02 BTC once both fill.
    await _set(user, limit_id, mid * Decimal("0.02"))
    await _passes(user, _limit_buy(account))  # at the limit
    await _set(user, limit_id, mid * Decimal("0.03") - UNIT)
    error = await _refused(user, registry, account, _limit_buy(account), "position_size")
    assert Decimal(error["attempted_value"]) == mid * Decimal("0.03")
    assert error["alert"]["alert_type"] == "position_risk"


async def test_price_collar_boundary_and_no_reference_price(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, account = await _trader(ids)
    mid = await _mid(user)
    price = (mid * Decimal("0.95")).quantize(Decimal("0.01"))
    distance = (mid - price) / mid * 100
    limit_id = (await _only(user, price_collar=format(distance.quantize(UNIT) + UNIT, "f")))["price_collar"]
    await _passes(user, _limit_buy(account, price=str(price)))
    await _set(user, limit_id, distance.quantize(UNIT) - UNIT)
    error = await _refused(user, registry, account, _limit_buy(account, price=str(price)), "price_collar")
    assert Decimal(error["attempted_value"]) == distance
    # No book, no reference price: a priced order is refused, not waved through.
    await _set(user, limit_id, Decimal(99))

    async def no_book(_: object) -> None:
        return None

    monkeypatch.setattr(registry.orders, "_book", no_book)  # where the order path reads the book it prices against
    error = await _refused(user, registry, account, _limit_buy(account), "price_collar")
    assert error["attempted_value"] is None
    assert "no reference price" in error["detail"]


async def test_daily_loss_boundary_and_reduce_only_orders_pass(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    await _passes(user, _market(account, "buy", "0.01"))
    limit_id = (await _only(user, daily_loss="1000000"))["daily_loss"]
    # Yesterday the portfolio was worth 200 USDT more than its cash today: today's loss is (about) 200.
    await _lost_since_yesterday(registry, user, account, Decimal(10200))
    loss = Decimal((await _limits(user))[("daily_loss", None)]["current_value"])
    assert Decimal(190) < loss < Decimal(210)
    await _set(user, limit_id, loss + UNIT)
    await _passes(user, _limit_buy(account))  # just under
    await _set(user, limit_id, loss)
    error = await _refused(user, registry, account, _limit_buy(account), "daily_loss")  # reached: refused
    assert Decimal(error["attempted_value"]) == loss
    assert error["alert"]["alert_type"] == "drawdown_limit"
    await _set(user, limit_id, loss - UNIT)
    await _refused(user, registry, account, _limit_buy(account), "daily_loss")  # just over
    # Only what reduces the position passes: a sell of what the account holds, not more.
    sold = await _passes(user, _market(account, "sell", "0.004"))
    assert sold["status"] == "filled"
    await _refused(user, registry, account, _limit_buy(account), "daily_loss")


async def test_leverage_boundary(ids: Identities, registry: ServiceRegistry, market: MarketDataService) -> None:
    user, account = await _trader(ids)
    limit_id = (await _only(user, leverage="0.1"))["leverage"]
    body = _limit_buy(account, price="10000", quantity="0.1")  # 1000 USDT of exposure on 10000 of equity
    await _passes(user, body)  # at the limit: 0.1
    # Now the working buy holds 1001 USDT (price and fee): the next one makes (1001 + 1000) / 10000.
    await _set(user, limit_id, Decimal("0.2001") + UNIT)
    await _passes(user, body)  # just under
    await _set(user, limit_id, Decimal("0.3002") - UNIT)
    error = await _refused(user, registry, account, body, "leverage")  # just over
    assert Decimal(error["attempted_value"]) == Decimal("0.3002")
    assert Decimal((await _limits(user))[("leverage", None)]["current_value"]) == Decimal("0.2002")


async def test_open_orders_boundary(ids: Identities, registry: ServiceRegistry, market: MarketDataService) -> None:
    user, account = await _trader(ids)
    await _only(user, open_orders="2")
    await _passes(user, _limit_buy(account))  # 1 of 2
    await _passes(user, _limit_buy(account))  # 2 of 2: at the limit
    error = await _refused(user, registry, account, _limit_buy(account), "open_orders")
    assert (error["limit_value"], error["attempted_value"]) == ("2.00000000", "3")
    assert (await _limits(user))[("open_orders", None)]["current_value"] == "2.00000000"


async def test_order_rate_boundary(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_800_000_000.0  # one fixed minute, so the window cannot roll over mid-test
    monkeypatch.setattr(registry.risk, "clock", lambda: now)
    user, account = await _trader(ids)
    await _only(user, order_rate="3", order_notional="1000")
    await _refused(user, registry, account, _limit_buy(account, quantity="1"), "order_notional")  # not counted
    for _ in range(3):  # up to the limit
        await _passes(user, _limit_buy(account))
    assert (await _limits(user))[("order_rate", None)]["current_value"] == "3.00000000"
    error = await _refused(user, registry, account, _limit_buy(account), "order_rate")
    assert error["attempted_value"] == "4"
    monkeypatch.setattr(registry.risk, "clock", lambda: now + 60)  # the next minute
    await _passes(user, _limit_buy(account))


async def test_cache_down_fails_order_rate_closed_and_says_so(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, account = await _trader(ids)
    limit_id = (await _only(user, order_rate="100"))["order_rate"]
    dead = RedisCache("redis://127.0.0.1:1/0", timeout=0.5)  # a real Redis client, nothing listening
    monkeypatch.setattr(registry.risk, "cache", dead)
    try:
        error = await _refused(user, registry, account, _limit_buy(account), "order_rate", status=503)
        assert "unreachable" in error["detail"]
        assert "fail closed" in error["detail"]
        assert error["alert"]["severity"] == "high"
        assert (await _limits(user))[("order_rate", None)]["current_value"] is None
        # Checks that do not need the cache still work: without an order_rate limit the order passes.
        assert (await user.delete(f"{LIMITS}/{limit_id}")).status_code == 204
        await _passes(user, _limit_buy(account))
    finally:
        await dead.close()


# --- the kill switch -------------------------------------------------------------------------------------------


async def test_kill_switch_cancels_everything_refuses_new_orders_and_off_restores_trading(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    await _passes(user, _market(account, "buy", "0.01"))
    working = [(await _passes(user, _limit_buy(account)))["id"] for _ in range(2)]
    assert (await _balances(registry, account))["USDT"][1] > 0
    response = await user.post(KILL, json={"active": True})
    assert response.status_code == 200, response.text
    assert response.json()["active"] is True
    assert response.json()["cancelled_orders"] == 2
    for order_id in working:
        assert (await user.get(f"{ORDERS}/{order_id}")).json()["status"] == "cancelled"
        assert not registry.paper.is_working(BTC, order_id)
    assert (await _balances(registry, account))["USDT"][1] == 0
    alert = (await user.get(ALERTS, params={"severity": "critical"})).json()["items"][0]
    assert (alert["alert_type"], alert["data"]["engaged"]) == ("kill_switch", True)

    await _refused(user, registry, account, _limit_buy(account), "kill_switch")
    await _refused(user, registry, account, _market(account, "sell", "0.02"), "kill_switch")  # more than held
    assert (await _passes(user, _market(account, "sell", "0.005")))["status"] == "filled"  # reduce-only passes
    assert (await user.get(KILL)).json()["active"] is True  # stays on

    response = await user.post(KILL, json={"active": False})
    assert (response.status_code, response.json()["active"]) == (200, False)
    await _passes(user, _limit_buy(account))
    released = (await user.get(ALERTS, params={"severity": "low"})).json()["items"]
    assert any(a["alert_type"] == "kill_switch" and a["data"]["engaged"] is False for a in released)
    assert (await user.post(KILL, json={})).json()["error"] == "nothing_to_change"


async def test_admin_kill_switch_for_everyone(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    alice, alice_account = await _trader(ids)
    bob, bob_account = await _trader(ids)
    admin = await ids.new_user(role="admin")
    order_ids = [(await _passes(u, _limit_buy(a)))["id"] for u, a in ((alice, alice_account), (bob, bob_account))]
    refused = await alice.post(KILL, json={"active": True, "all_users": True})
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    assert (await alice.get(KILL)).json()["active"] is False
    response = await admin.post(KILL, json={"active": True, "all_users": True})
    assert response.status_code == 200, response.text
    assert (response.json()["users"], response.json()["cancelled_orders"]) == (3, 2)
    assert (await alice.get(f"{ORDERS}/{order_ids[0]}")).json()["status"] == "cancelled"
    assert (await bob.get(f"{ORDERS}/{order_ids[1]}")).json()["status"] == "cancelled"
    await _refused(bob, registry, bob_account, _limit_buy(bob_account), "kill_switch")
    response = await admin.post(KILL, json={"active": False, "all_users": True})
    assert response.status_code == 200, response.text
    await _passes(bob, _limit_buy(bob_account))
    await _passes(alice, _limit_buy(alice_account))


async def test_daily_loss_breach_trips_the_switch_when_enabled(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    await _only(user, daily_loss="100")
    working = (await _passes(user, _limit_buy(account)))["id"]
    response = await user.post(KILL, json={"trip_on_daily_loss": True})
    assert response.json() | {"updated_at": None} == {
        "active": False, "trip_on_daily_loss": True, "updated_at": None, "users": 1, "cancelled_orders": 0,
    }  # fmt: skip
    await _lost_since_yesterday(registry, user, account, Decimal(10500))
    await market.run_step()  # the leader's step looks at users whose switch trips on their daily loss
    assert (await user.get(KILL)).json()["active"] is True
    assert (await user.get(f"{ORDERS}/{working}")).json()["status"] == "cancelled"
    alerts = (await user.get(ALERTS, params={"severity": "critical"})).json()["items"]
    assert "automatic" in alerts[0]["message"]


async def test_alerts_filter_paginate_and_acknowledge(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    await _only(user, order_notional="1")
    for _ in range(3):
        await _refused(user, registry, account, _limit_buy(account), "order_notional")  # 100 vs 1: critical
    page = (await user.get(ALERTS, params={"limit": 2, "offset": 1})).json()
    assert (page["total"], len(page["items"]), page["limit"], page["offset"]) == (3, 2, 2, 1)
    first = (await user.get(ALERTS)).json()["items"][0]
    assert first["severity"] == "critical"
    acked = await user.post(f"{ALERTS}/{first['id']}/ack")
    assert (acked.status_code, acked.json()["acknowledged"]) == (200, True)
    assert (await user.post(f"{ALERTS}/{first['id']}/ack")).status_code == 200  # idempotent
    assert (await user.get(ALERTS, params={"acknowledged": "true"})).json()["total"] == 1
    assert (await user.get(ALERTS, params={"acknowledged": "false"})).json()["total"] == 2
    assert (await user.get(ALERTS, params={"severity": "low"})).json()["total"] == 0
    bad = await user.get(ALERTS, params={"severity": "urgent"})
    assert (bad.status_code, bad.json()["error"]) == (422, "validation_error")
    assert (await user.post(f"{ALERTS}/{uuid.uuid4()}/ack")).status_code == 404


async def test_limits_of_an_inactive_row_do_not_apply(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    limit_id = (await _only(user, order_notional="1"))["order_notional"]
    response = await user.patch(f"{LIMITS}/{limit_id}", json={"is_active": False})
    assert response.status_code == 200
    await _passes(user, _limit_buy(account))
    async with registry.database.system_session() as session:
        rows = (await session.scalars(select(TradingLimit).where(TradingLimit.user_id == user.id))).all()
    assert {r.limit_type for r in rows} == {"order_notional", "kill_switch", "kill_switch_on_daily_loss"}
