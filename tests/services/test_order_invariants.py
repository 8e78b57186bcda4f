"""A random program of orders, cancels and market steps, with the order book's invariants checked after every step.

Hypothesis draws the program: market, limit GTC/IOC/FOK and market FOK orders, buys and sells of random sizes priced
around the current book, cancels of any earlier order (working or not), and market steps. After each step the
stored state must hold:

- each position equals the fold of the account's trades (`domain.portfolio.fold_trades`);
- every balance has free + locked = total, free >= 0 and locked >= 0; locked is the sum of the open orders'
  reservations; the totals are the starting funds plus what the trades moved;
- every order has filled_quantity <= quantity, and filled_quantity / fees equal the sums of its trades;
- a terminal status (filled, cancelled, rejected) never changes once seen;
- no exchange trade id is stored twice.

The program runs against a dedicated app (its own SQLite database in a temporary directory, the in-process cache) on
an event loop of its own (an anyio blocking portal), so the session app and its market are untouched; each example
gets a new user and paper account (primed with one small buy per pair, see `_run`), and one stepped simulated market
runs through all examples.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

import anyio
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cival.app import create_app
from cival.config import Settings
from cival.core.service_registry import ServiceRegistry
from cival.database import migrate
from cival.database.models import Balance, Order, Position, Trade
from cival.domain.portfolio import fold_trades
from cival.models.user_models import LoginIn, RegisterIn

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
PASSWORD = "invariants-test-password"
STARTING = {"USDT": Decimal(10000)}
TERMINAL = {"filled", "cancelled", "rejected"}
OPEN = {"pending", "partial", "unknown"}
# A unit of size per pair (a multiple of its step, worth some tens of USDT) and a price offset unit.
UNITS = {"BTC/USDT": (Decimal("0.0005"), Decimal("5.00")), "ETH/USDT": (Decimal("0.01"), Decimal("0.50"))}
KINDS = ("market", "market_fok", "limit_gtc", "limit_ioc", "limit_fok")


@dataclass
class Harness:
    portal: BlockingPortal
    registry: ServiceRegistry
    app: Any


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    data_dir = tmp_path_factory.mktemp("cival-invariants")
    url = f"sqlite+aiosqlite:///{data_dir / 'invariants.sqlite3'}"
    app_settings = Settings(
        env="test",
        data_dir=data_dir,
        database_url=url,
        redis_url="",
        log_json=True,
        log_level="WARNING",
        market_data_enabled=False,  # the program steps the market itself
        paper_starting_balances=STARTING,
    )
    with start_blocking_portal() as portal:
        portal.call(migrate.upgrade, url)
        app = create_app(app_settings)
        with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
            registry: ServiceRegistry = app.state.registry

            async def lead() -> None:
                await registry.market_data.start(run=False)
                await registry.market_data.become_leader(start_time=START)
                await registry.market_data.run_step()

            portal.call(lead)
            yield Harness(portal, registry, app)


# --- the program --------------------------------------------------------------------------------------------------

place = st.tuples(
    st.just("place"),
    st.sampled_from(sorted(UNITS)),
    st.sampled_from(["buy", "sell"]),
    st.sampled_from(KINDS),
    # Size in units: small, or large enough (thousands of USDT) to walk several levels of the simulated book.
    st.one_of(st.integers(min_value=1, max_value=12), st.integers(min_value=60, max_value=150)),
    st.integers(min_value=-6, max_value=6),  # limit price: offset units from the touch (positive crosses)
)
cancel = st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=50))
step = st.tuples(st.just("step"), st.integers(min_value=1, max_value=4))
# Several requests and market steps at once: they meet in the order path's batched writer (group commit).
burst = st.tuples(st.just("burst"), st.lists(st.one_of(place, place, cancel, step), min_size=2, max_size=8))
program_strategy = st.lists(st.one_of(place, place, place, cancel, step, burst), min_size=5, max_size=30)


@dataclass
class Seen:
    """What the checks remember between steps."""

    order_ids: list[str] = field(default_factory=list)
    terminal: dict[uuid.UUID, str] = field(default_factory=dict)
    multi_fill: bool = False
    trade_ids: set[uuid.UUID] = field(default_factory=set)


async def _new_trader(harness: Harness, client: httpx.AsyncClient) -> tuple[str, str, uuid.UUID]:
    email = f"inv-{uuid.uuid4().hex[:16]}@example.com"
    user = await harness.registry.auth.register(RegisterIn(email=email, password=PASSWORD))
    token = (await harness.registry.auth.login(LoginIn(email=email, password=PASSWORD), client="invariants")).token
    response = await client.post(
        "/api/v1/accounts", json={"exchange": "paper"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 201, response.text
    return token, response.json()["id"], user.id


def _order_body(harness: Harness, account: str, op: tuple[Any, ...]) -> dict[str, Any]:
    _, symbol, side, kind, units, offset = op
    size_unit, price_unit = UNITS[symbol]
    body: dict[str, Any] = {
        "account_id": account, "symbol": symbol, "side": side, "quantity": str(size_unit * units),
    }  # fmt: skip
    if kind.startswith("market"):
        body["type"] = "market"
        if kind == "market_fok":
            body["time_in_force"] = "FOK"
        return body
    book = harness.registry.paper.engine(symbol).book
    assert book is not None
    tick = harness.registry.market_data.instrument("paper", symbol).tick_size
    raw = book.asks[0].price + offset * price_unit if side == "buy" else book.bids[0].price - offset * price_unit
    price = max(tick, (raw / tick).to_integral_value(ROUND_DOWN) * tick)
    body |= {"type": "limit", "price": str(price), "time_in_force": kind.split("_")[1].upper()}
    return body


async def _run(harness: Harness, program: list[tuple[Any, ...]]) -> Seen:
    transport = httpx.ASGITransport(app=harness.app, raise_app_exceptions=False, client=("10.9.9.9", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://cival.test") as client:
        token, account, user_id = await _new_trader(harness, client)
        headers = {"Authorization": f"Bearer {token}"}
        seen = Seen()
        await _check(harness, user_id, uuid.UUID(account), seen)

        async def run(op: tuple[Any, ...], concurrent: bool) -> None:
            if op[0] == "place":
                response = await client.post("/api/v1/orders", json=_order_body(harness, account, op), headers=headers)
                assert response.status_code in (201, 422), response.text
                if response.status_code == 201:
                    seen.order_ids.append(response.json()["id"])
                else:
                    assert response.json()["error"] in ("insufficient_funds", "min_notional"), response.text
            elif op[0] == "cancel":
                if not seen.order_ids:
                    return
                order_id = seen.order_ids[op[1] % len(seen.order_ids)]
                response = await client.delete(f"/api/v1/orders/{order_id}", headers=headers)
                assert response.status_code in (200, 409), response.text
                if response.status_code == 409:
                    # Alone, only an order seen finished answers 409; in a burst it may have finished meanwhile.
                    assert concurrent or uuid.UUID(order_id) in seen.terminal
                    assert response.json()["error"] == "order_not_cancelable"
                else:
                    assert response.json()["status"] == "cancelled"
            elif op[0] == "step":
                for _ in range(op[1]):
                    await harness.registry.market_data.run_step()
            else:
                async with anyio.create_task_group() as tasks:
                    for inner in op[1]:
                        tasks.start_soon(run, inner, True)

        for op in program:
            await run(op, False)
            await _check(harness, user_id, uuid.UUID(account), seen)
        return seen


def _cumulative(trade: Trade) -> Decimal:
    return Decimal((trade.external_trade_id or "0:0").rsplit(":", 1)[1])


async def _check(harness: Harness, user_id: uuid.UUID, account: uuid.UUID, seen: Seen) -> None:
    async with harness.registry.database.system_session(read_only=True) as session:
        orders = (await session.scalars(select(Order).where(Order.user_id == user_id))).all()
        rows = (await session.scalars(select(Trade).where(Trade.user_id == user_id))).all()
        balances = (await session.scalars(select(Balance).where(Balance.account_id == account))).all()
        positions = (await session.scalars(select(Position).where(Position.account_id == account))).all()
    # The order fills were applied in: storage order. Not `executed_at`, which mixes clocks (a taker fill carries the
    # order's wall-clock time, a maker fill the simulated market's); within one order, the cumulative fill id.
    trades = sorted(rows, key=lambda t: (t.created_at, _cumulative(t)))
    by_order: dict[uuid.UUID, list[Trade]] = {}
    for t in trades:
        assert t.order_id is not None
        by_order.setdefault(t.order_id, []).append(t)

    # No trade applied twice: one row per exchange trade id; rows seen before are still there.
    external = [(t.exchange, t.external_trade_id) for t in trades]
    assert len(external) == len(set(external)), external
    ids = {t.id for t in trades}
    assert seen.trade_ids <= ids
    seen.trade_ids = ids

    # Orders: never overfilled, their totals are the sums of their trades, terminal statuses are final.
    reserved: dict[str, Decimal] = {}
    for o in orders:
        mine = by_order.get(o.id, [])
        seen.multi_fill |= len(mine) > 1
        assert 0 <= o.filled_quantity <= o.quantity, (o.id, o.filled_quantity, o.quantity)
        assert o.filled_quantity == sum((t.quantity for t in mine), Decimal(0)), o.id
        assert o.fees == sum((t.fees for t in mine), Decimal(0)), o.id
        assert (o.status == "filled") == (o.filled_quantity == o.quantity), (o.id, o.status)
        if o.id in seen.terminal:
            assert o.status == seen.terminal[o.id], f"order {o.id} left terminal {seen.terminal[o.id]} for {o.status}"
        if o.status in TERMINAL:
            seen.terminal[o.id] = o.status
            assert o.reserved == 0, (o.id, o.status, o.reserved)
        else:
            assert o.status in OPEN, o.status
            base, quote = o.symbol.split("/")
            asset = quote if o.side == "buy" else base
            reserved[asset] = reserved.get(asset, Decimal(0)) + o.reserved
    assert sum((o.fees for o in orders), Decimal(0)) == sum((t.fees for t in trades), Decimal(0))

    # Balances: free + locked = total, nothing negative, locked = open reservations, totals = funds moved by trades.
    expected = dict(STARTING)
    for t in trades:
        base, quote = t.symbol.split("/")
        notional = t.quantity * t.price
        sign = 1 if t.side == "buy" else -1
        expected[base] = expected.get(base, Decimal(0)) + sign * t.quantity
        expected[quote] = expected.get(quote, Decimal(0)) - sign * notional - t.fees
    assets = [b.asset for b in balances]
    assert len(assets) == len(set(assets)), f"duplicate balance rows: {assets}"
    for b in balances:
        assert b.free + b.locked == b.total, (b.asset, b.free, b.locked, b.total)
        assert b.free >= 0, (b.asset, b.free, b.locked)
        assert b.locked >= 0, (b.asset, b.free, b.locked)
        assert b.locked == reserved.get(b.asset, Decimal(0)), (b.asset, b.locked, reserved)
        assert b.total == expected.get(b.asset, Decimal(0)), (b.asset, b.total, expected)
    for asset, amount in expected.items():
        assert amount == 0 or asset in assets, (asset, amount)

    # Positions: each equals the fold of its trades.
    symbols = [p.symbol for p in positions]
    assert len(symbols) == len(set(symbols)), f"duplicate position rows: {symbols}"
    traded = {t.symbol for t in trades}
    assert set(symbols) == traded
    for p in positions:
        folded = fold_trades(p.symbol, [t for t in trades if t.symbol == p.symbol])
        assert (p.size, p.average_price) == (folded.size, folded.average_price), p.symbol
        assert p.size >= 0  # spot: never short


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
@given(program=program_strategy)
def test_random_programs_keep_the_order_and_portfolio_invariants(
    harness: Harness, program: list[tuple[Any, ...]]
) -> None:
    seen = harness.portal.call(_run, harness, program)
    event(f"terminal statuses: {sorted(set(seen.terminal.values()))}")
    event(f"an order filled in several trades: {seen.multi_fill}")
    event(f"trades: {min(len(seen.trade_ids), 5)}{'+' if len(seen.trade_ids) >= 5 else ''}")
