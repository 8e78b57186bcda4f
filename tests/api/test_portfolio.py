"""The portfolio endpoints against hand-computed PnL: every expectation is derived from the fills `GET /trades` returns.

The market is the stepped simulation, so fill prices are not known in advance; the test reads them back and redoes
the bookkeeping with plain Decimal arithmetic written here (weighted average entry, realized PnL of a partial close,
fees in the quote asset, USD valuation at the latest tickers), independently of `domain.portfolio`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import func, select

from cival.core.service_registry import ServiceRegistry
from cival.database.models import Order
from cival.services.market_data_service import MarketDataService
from tests.api._identity import ACCOUNTS, Caller, Identities

ORDERS = "/api/v1/orders"
TRADES = "/api/v1/trades"
POSITIONS = "/api/v1/portfolio/positions"
BALANCES = "/api/v1/portfolio/balances"
SUMMARY = "/api/v1/portfolio/summary"
SNAPSHOTS = "/api/v1/portfolio/snapshots"
TICKERS = "/api/v1/market-data/tickers"
EIGHT = Decimal("0.00000001")
TAKER_FEE_RATE = Decimal("0.001")
STARTING_USDT = Decimal(10000)


def q8(value: Decimal) -> Decimal:
    return value.quantize(EIGHT, rounding=ROUND_HALF_EVEN)


async def _trader(ids: Identities) -> tuple[Caller, str]:
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return user, response.json()["id"]


async def _market_order(user: Caller, account: str, side: str, quantity: str) -> dict[str, Any]:
    body = {"account_id": account, "symbol": "BTC/USDT", "side": side, "type": "market", "quantity": quantity}
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "filled", order
    return order


async def _trades(user: Caller, **params: str) -> list[dict[str, Any]]:
    response = await user.get(TRADES, params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    # The API lists newest first; the bookkeeping runs oldest first (executed_at, then the cumulative fill id).
    return sorted(items, key=lambda t: (t["executed_at"], Decimal(t["external_trade_id"].rsplit(":", 1)[1])))


async def _prices(user: Caller) -> dict[str, Decimal]:
    response = await user.get(TICKERS, params={"exchange": "paper"})
    assert response.status_code == 200, response.text
    return {t["symbol"].split("/")[0]: Decimal(t["price"]) for t in response.json()}


async def _balances(user: Caller) -> dict[str, dict[str, Decimal]]:
    response = await user.get(BALANCES)
    assert response.status_code == 200, response.text
    out: dict[str, dict[str, Decimal]] = {}
    for b in response.json():
        row = {k: Decimal(b[k]) for k in ("free", "locked", "total")}
        row["usd_value"] = Decimal(b["usd_value"]) if b["usd_value"] is not None else Decimal(-1)
        # The invariant of every balance after every step.
        assert row["free"] + row["locked"] == row["total"], b
        assert row["free"] >= 0, b
        assert row["locked"] >= 0, b
        out[b["asset"]] = row
    return out


def _expected_position(trades: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Long-only spot bookkeeping: each add re-averages (rounded half-even to 8 dp), each reduce realizes."""
    size = average = realized = fees = Decimal(0)
    for t in trades:
        qty, price, fee = Decimal(t["quantity"]), Decimal(t["price"]), Decimal(t["fees"])
        fees += fee
        if t["side"] == "buy":
            cost = size * average + qty * price
            size += qty
            average = q8(cost / size)
            realized += size * average - cost  # the rounding of the average, booked so cash PnL stays exact
        else:
            assert qty <= size, "spot never sells more than it holds"
            realized += qty * (price - average)
            size -= qty
            if size == 0:
                average = Decimal(0)
    return {"size": size, "average_price": average, "realized_pnl": realized, "fees_paid": fees}


def _fee_of(trade: dict[str, Any]) -> Decimal:
    notional = Decimal(trade["quantity"]) * Decimal(trade["price"])
    return (notional * TAKER_FEE_RATE).quantize(EIGHT, rounding=ROUND_DOWN)


async def _check_everything(user: Caller, account: str, *, snapshot: bool = True) -> dict[str, Any]:
    """Positions, balances, summary and today's snapshot against the hand bookkeeping of the user's trades."""
    trades = await _trades(user)
    prices = await _prices(user)
    mark = prices["BTC"]
    expected = _expected_position(trades)

    # Fees: market orders are takers; each fee is floor_8dp(qty * price * rate), in USDT.
    for t in trades:
        assert Decimal(t["fees"]) == _fee_of(t), t
    fee_total = sum((Decimal(t["fees"]) for t in trades), Decimal(0))
    assert fee_total == expected["fees_paid"]

    # Balances: the quote pays notional + fee on a buy and receives notional - fee on a sell.
    usdt = STARTING_USDT
    btc = Decimal(0)
    for t in trades:
        notional = Decimal(t["quantity"]) * Decimal(t["price"])
        if t["side"] == "buy":
            usdt -= notional + Decimal(t["fees"])
            btc += Decimal(t["quantity"])
        else:
            usdt += notional - Decimal(t["fees"])
            btc -= Decimal(t["quantity"])
    balances = await _balances(user)
    assert balances["USDT"]["total"] == usdt
    assert balances["USDT"]["usd_value"] == usdt
    btc_total = balances.get("BTC", {}).get("total", Decimal(0))
    assert btc_total == btc == expected["size"]
    if "BTC" in balances:
        assert balances["BTC"]["usd_value"] == q8(btc * mark)

    # Position.
    response = await user.get(POSITIONS)
    assert response.status_code == 200, response.text
    (position,) = response.json()
    assert position["account_id"] == account
    assert position["symbol"] == "BTC/USDT"
    assert Decimal(position["size"]) == expected["size"]
    assert Decimal(position["average_price"]) == expected["average_price"]
    assert Decimal(position["realized_pnl"]) == q8(expected["realized_pnl"])
    assert Decimal(position["fees_paid"]) == fee_total
    assert Decimal(position["mark_price"]) == mark
    assert Decimal(position["market_value"]) == q8(expected["size"] * mark)
    unrealized = expected["size"] * (mark - expected["average_price"])
    assert Decimal(position["unrealized_pnl"]) == q8(unrealized)
    # realized + unrealized is the cash PnL (before fees), up to the two displayed roundings.
    cash = sum(
        (Decimal(t["quantity"]) * Decimal(t["price"]) * (1 if t["side"] == "sell" else -1) for t in trades),
        Decimal(0),
    )
    cash += expected["size"] * mark
    assert abs(Decimal(position["realized_pnl"]) + Decimal(position["unrealized_pnl"]) - cash) <= EIGHT

    # Summary: USD value of every balance at the ticker prices, USDT at 1.
    value = usdt + btc * mark
    response = await user.get(SUMMARY)
    assert response.status_code == 200, response.text
    summary = response.json()
    assert Decimal(summary["total_value"]) == q8(value)
    assert Decimal(summary["total_pnl"]) == q8(value - STARTING_USDT)
    assert Decimal(summary["realized_pnl"]) == q8(expected["realized_pnl"])
    assert Decimal(summary["unrealized_pnl"]) == q8(unrealized)
    assert Decimal(summary["fees_paid"]) == fee_total
    assert summary["positions_count"] == (1 if expected["size"] else 0)
    assert summary["unpriced_assets"] == []
    # Fees were paid out of the value: total PnL is cash PnL less fees.
    assert abs(Decimal(summary["total_pnl"]) - (cash - fee_total)) <= EIGHT

    if snapshot:
        await _check_snapshot(user, value, expected["size"])
    return {"trades": trades, "expected": expected, "balances": balances}


async def _check_snapshot(user: Caller, value: Decimal, size: Decimal) -> None:
    # Today's snapshot was taken by the last fill, at the same tickers (the market has not stepped since).
    response = await user.get(SNAPSHOTS)
    assert response.status_code == 200, response.text
    snapshots = response.json()
    assert snapshots[0]["snapshot_date"] == datetime.now(UTC).date().isoformat()
    assert Decimal(snapshots[0]["total_value"]) == q8(value)
    assert Decimal(snapshots[0]["total_pnl"]) == q8(value - STARTING_USDT)
    assert snapshots[0]["positions_count"] == (1 if size else 0)


async def _check_order_fees(user: Caller, order_id: str) -> None:
    order = (await user.get(f"{ORDERS}/{order_id}")).json()
    trades = await _trades(user, order_id=order_id)
    assert trades, order
    assert Decimal(order["fees"]) == sum((Decimal(t["fees"]) for t in trades), Decimal(0))
    assert Decimal(order["filled_quantity"]) == sum((Decimal(t["quantity"]) for t in trades), Decimal(0))


async def test_order_average_price_is_the_mean_of_its_fills(ids: Identities, market: MarketDataService) -> None:
    user, account = await _trader(ids)
    order = await _market_order(user, account, "buy", "0.01")
    trades = await _trades(user, order_id=order["id"])
    notional = sum((Decimal(t["quantity"]) * Decimal(t["price"]) for t in trades), Decimal(0))
    assert Decimal(order["average_price"]) == q8(notional / Decimal(order["filled_quantity"]))


async def test_snapshot_after_the_first_buy_values_the_bought_asset(ids: Identities, market: MarketDataService) -> None:
    user, account = await _trader(ids)
    await _market_order(user, account, "buy", "0.01")
    balances = await _balances(user)
    mark = (await _prices(user))["BTC"]
    value = balances["USDT"]["total"] + balances["BTC"]["total"] * mark
    await _check_snapshot(user, value, balances["BTC"]["total"])


async def test_first_buy_walking_several_levels_fills(ids: Identities, market: MarketDataService) -> None:
    user, account = await _trader(ids)
    # Simulated levels hold at most ~7000 USDT each, so 0.15 BTC (~9000 USDT) always takes two levels or more.
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.15"}
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "filled"
    trades = await _trades(user)
    assert len(trades) >= 2
    await _check_everything(user, account)


async def test_realized_pnl_of_a_maker_sell_after_two_buys(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    first = await _market_order(user, account, "buy", "0.01")
    first_price = Decimal((await _trades(user, order_id=first["id"]))[0]["price"])
    book = registry.paper.engine("BTC/USDT").book
    for _ in range(50):  # step until the ask moved, so the two buys are at different prices
        await market.run_step()
        book = registry.paper.engine("BTC/USDT").book
        assert book is not None
        if book.asks[0].price != first_price:
            break
    await _market_order(user, account, "buy", "0.01")
    buys = await _trades(user)
    assert book is not None
    price = book.asks[0].price + Decimal(1)
    sell = {
        "account_id": account, "symbol": "BTC/USDT", "side": "sell", "type": "limit", "quantity": "0.01",
        "price": str(price),
    }  # fmt: skip
    response = await user.post(ORDERS, json=sell)
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]
    for _ in range(200):
        await market.run_step()
        if (await user.get(f"{ORDERS}/{order_id}")).json()["status"] == "filled":
            break
    sells = await _trades(user, order_id=order_id)
    assert sum(Decimal(t["quantity"]) for t in sells) == Decimal("0.01")
    size = average = realized = Decimal(0)
    for t in buys + sells:  # the order the fills happened in: both buys, then the maker sell
        qty, fill_price = Decimal(t["quantity"]), Decimal(t["price"])
        if t["side"] == "buy":
            cost = size * average + qty * fill_price
            size += qty
            average = q8(cost / size)
            realized += size * average - cost
        else:
            realized += qty * (fill_price - average)
            size -= qty
    (position,) = (await user.get(POSITIONS)).json()
    assert Decimal(position["size"]) == size == Decimal("0.01")
    assert Decimal(position["average_price"]) == average
    assert Decimal(position["realized_pnl"]) == q8(realized)


async def test_fresh_account_has_flat_portfolio(ids: Identities, market: MarketDataService) -> None:
    user, _ = await _trader(ids)
    assert (await user.get(POSITIONS)).json() == []
    balances = await _balances(user)
    assert balances["USDT"]["total"] == STARTING_USDT
    assert balances["USDT"]["usd_value"] == STARTING_USDT
    summary = (await user.get(SUMMARY)).json()
    assert Decimal(summary["total_value"]) == STARTING_USDT
    assert Decimal(summary["total_pnl"]) == 0
    assert summary["positions_count"] == 0
    assert (await user.get(SNAPSHOTS)).json() == []


async def test_adds_average_partial_close_realizes_fees_and_valuation(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)

    first = await _market_order(user, account, "buy", "0.01")
    await _check_order_fees(user, first["id"])
    state = await _check_everything(user, account)
    assert state["expected"]["size"] == Decimal("0.01")

    await market.run_step()
    await market.run_step()  # the price moves: the add is at another price
    second = await _market_order(user, account, "buy", "0.02")
    await _check_order_fees(user, second["id"])
    state = await _check_everything(user, account)
    assert state["expected"]["size"] == Decimal("0.03")
    buys = state["trades"]
    exact_mean = sum((Decimal(t["quantity"]) * Decimal(t["price"]) for t in buys), Decimal(0)) / Decimal("0.03")
    assert abs(state["expected"]["average_price"] - exact_mean) <= EIGHT  # two roundings at most

    # A resting limit buy far below the market locks quote: free + locked = total still, and cancel releases it.
    limit = {
        "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01",
        "price": "10000",
    }  # fmt: skip
    resting = (await user.post(ORDERS, json=limit)).json()
    assert resting["status"] == "pending"
    balances = await _balances(user)
    assert balances["USDT"]["locked"] == Decimal(resting["reserved"]) == Decimal("100.1")  # 0.01 * 10000 * 1.001
    assert balances["USDT"]["total"] == state["balances"]["USDT"]["total"]
    assert (await user.delete(f"{ORDERS}/{resting['id']}")).json()["status"] == "cancelled"
    assert (await _balances(user))["USDT"]["locked"] == 0

    for _ in range(3):
        await market.run_step()
    close = await _market_order(user, account, "sell", "0.012")
    await _check_order_fees(user, close["id"])
    before_close = state["expected"]["average_price"]
    state = await _check_everything(user, account)
    assert state["expected"]["size"] == Decimal("0.018")
    assert state["expected"]["average_price"] == before_close  # a reduce keeps the entry price
    sells = [t for t in state["trades"] if t["side"] == "sell"]
    realized_by_close = sum((Decimal(t["quantity"]) * (Decimal(t["price"]) - before_close) for t in sells), Decimal(0))
    rounding_of_adds = state["expected"]["realized_pnl"] - realized_by_close
    assert abs(rounding_of_adds) <= Decimal("0.03") * EIGHT  # what the rounded average moved, nothing more

    # Closing the rest flattens the position: no unrealized PnL, everything realized.
    await market.run_step()
    flat = await _market_order(user, account, "sell", "0.018")
    await _check_order_fees(user, flat["id"])
    state = await _check_everything(user, account)
    assert state["expected"]["size"] == 0
    (position,) = (await user.get(POSITIONS)).json()
    assert Decimal(position["size"]) == 0
    assert Decimal(position["average_price"]) == 0
    assert Decimal(position["unrealized_pnl"]) == 0
    assert (await _balances(user))["BTC"]["total"] == 0


async def test_spot_refuses_to_sell_more_than_held_so_no_flip_to_short(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    """Spot has no short: a sell beyond the held base is refused (422 insufficient_funds) and nothing changes.

    The long -> short flip through zero is the domain's (`apply_trade`), tested at the domain level.
    """
    user, account = await _trader(ids)
    await _market_order(user, account, "buy", "0.01")
    before = await _check_everything(user, account, snapshot=False)
    orders_before = await _count_orders(registry, user.id)
    for order_type in ("market", "limit"):
        body = {"account_id": account, "symbol": "BTC/USDT", "side": "sell", "type": order_type, "quantity": "0.02"}
        if order_type == "limit":
            body["price"] = str(before["trades"][0]["price"])
        response = await user.post(ORDERS, json=body)
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["error"] == "insufficient_funds"
        assert "0.02 BTC" in error["detail"] or "0.02 BTC" in response.text
        assert await _count_orders(registry, user.id) == orders_before
        after = await _check_everything(user, account, snapshot=False)
        assert after["balances"] == before["balances"]
        assert after["expected"] == before["expected"]
    (position,) = (await user.get(POSITIONS)).json()
    assert Decimal(position["size"]) == Decimal("0.01")  # still long, never short


async def _count_orders(registry: ServiceRegistry, user_id: uuid.UUID) -> int:
    async with registry.database.system_session() as session:
        return int(await session.scalar(select(func.count()).select_from(Order).where(Order.user_id == user_id)) or 0)
