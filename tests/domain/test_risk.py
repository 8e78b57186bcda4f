"""The risk arithmetic at each limit's boundary: just under passes, at the limit as documented, just over refused."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from cival.domain import risk
from cival.domain.risk import Limit, LimitType, OrderIntent, Standing, WorkingOrder

D = Decimal
TICK = D("0.00000001")
ACCOUNT = uuid.uuid4()
OTHER_ACCOUNT = uuid.uuid4()
QUOTES = {"BTC/USDT": "USDT", "ETH/USDT": "USDT"}


def order(side: str = "buy", quantity: str = "1", price: str | None = "100", **kw: object) -> OrderIntent:
    fields: dict[str, object] = {
        "account_id": ACCOUNT, "symbol": "BTC/USDT", "quote_asset": "USDT", "side": side,
        "type": "limit" if price is not None else "market", "quantity": D(quantity),
        "price": None if price is None else D(price),
    } | kw  # fmt: skip
    return OrderIntent(**fields)  # type: ignore[arg-type]


def standing(
    positions: dict[tuple[uuid.UUID, str], Decimal] | None = None,
    working: tuple[WorkingOrder, ...] = (),
    balances: dict[str, Decimal] | None = None,
    start: str = "10000",
) -> Standing:
    return Standing(positions or {}, working, balances if balances is not None else {"USDT": D(10000)}, D(start))


def limit(kind: LimitType, value: str, symbol: str | None = None) -> Limit:
    return Limit(kind, D(value), symbol, uuid.uuid4())


# --- each limit at its boundary ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("collar", "passes"), [("10.00000001", True), ("10", True), ("9.99999999", False)])
def test_price_collar_boundary(collar: str, passes: bool) -> None:
    found = risk.check_price_collar(limit(LimitType.PRICE_COLLAR, collar), order(price="110"), D(100))
    assert (found is None) is passes
    if found:
        assert found.attempted_value == D(10)
        assert found.limit_type == "price_collar"


def test_price_collar_counts_both_directions_and_the_stop_price() -> None:
    collar = limit(LimitType.PRICE_COLLAR, "10")
    assert risk.check_price_collar(collar, order(price="90"), D(100)) is None
    assert risk.check_price_collar(collar, order(price="89.99"), D(100)) is not None
    stop_limit = order(price="105", stop_price=D("111"), type="stop_limit")
    found = risk.check_price_collar(collar, stop_limit, D(100))
    assert found is not None
    assert found.attempted_value == D(11)


def test_price_collar_without_reference_price_refuses_but_market_orders_name_no_price() -> None:
    collar = limit(LimitType.PRICE_COLLAR, "50")
    found = risk.check_price_collar(collar, order(price="100"), None)
    assert found is not None
    assert found.attempted_value is None
    assert "no reference price" in found.detail
    assert risk.check_price_collar(collar, order(price=None), None) is None


@pytest.mark.parametrize(("value", "passes"), [("1000.00000001", True), ("1000", True), ("999.99999999", False)])
def test_order_notional_boundary(value: str, passes: bool) -> None:
    found = risk.check_order_notional(limit(LimitType.ORDER_NOTIONAL, value), order(quantity="10", price="100"), None)
    assert (found is None) is passes


def test_order_notional_of_market_and_stop_orders() -> None:
    cap = limit(LimitType.ORDER_NOTIONAL, "1000")
    assert risk.order_notional(order(quantity="2", price=None), D(500)) == D(1000)
    assert risk.order_notional(order(quantity="2", price=None, stop_price=D(600), type="stop"), D(500)) == D(1200)
    found = risk.check_order_notional(cap, order(price=None), None)
    assert found is not None
    assert "cannot be valued" in found.detail


@pytest.mark.parametrize(("value", "passes"), [("300.00000001", True), ("300", True), ("299.99999999", False)])
def test_position_size_boundary_counts_the_position_and_working_orders_of_the_same_side(
    value: str, passes: bool
) -> None:
    held = standing(
        positions={(ACCOUNT, "BTC/USDT"): D(1), (OTHER_ACCOUNT, "BTC/USDT"): D("0.5")},
        working=(
            WorkingOrder(ACCOUNT, "BTC/USDT", "buy", D("0.5"), D(0)),
            WorkingOrder(ACCOUNT, "BTC/USDT", "sell", D(9), D(0)),  # the other side: not counted for a buy
            WorkingOrder(ACCOUNT, "ETH/USDT", "buy", D(9), D(0)),  # another symbol
        ),
    )
    # (1 + 0.5) held + 0.5 working + 1 ordered = 3 BTC at the reference price 100
    found = risk.check_position_size(limit(LimitType.POSITION_SIZE, value), order(), held, D(100))
    assert (found is None) is passes
    if found:
        assert found.attempted_value == D(300)


@pytest.mark.parametrize(("loss_limit", "passes"), [("100.00000001", True), ("100", False), ("99.99999999", False)])
def test_daily_loss_boundary_blocks_once_reached(loss_limit: str, passes: bool) -> None:
    held = standing(balances={"USDT": D(9900)}, start="10000")
    loss = risk.daily_loss(held, {})
    assert loss == D(100)
    assert (risk.check_daily_loss(limit(LimitType.DAILY_LOSS, loss_limit), loss) is None) is passes


def test_daily_loss_includes_unrealized_moves_and_is_unknowable_without_a_price() -> None:
    held = standing(balances={"USDT": D(5000), "BTC": D("0.1")}, start="10000")
    assert risk.daily_loss(held, {"BTC": D(40000)}) == D(1000)
    assert risk.daily_loss(held, {"BTC": D(60000)}) == D(0)  # up on the day: no loss
    assert risk.daily_loss(held, {}) is None
    found = risk.check_daily_loss(limit(LimitType.DAILY_LOSS, "1"), None)
    assert found is not None
    assert found.attempted_value is None


@pytest.mark.parametrize(("value", "passes"), [("0.20010001", True), ("0.2001", True), ("0.20009999", False)])
def test_leverage_boundary_counts_holdings_working_buys_and_the_order(value: str, passes: bool) -> None:
    held = standing(
        balances={"USDT": D(9000), "BTC": D("0.01")},
        working=(WorkingOrder(ACCOUNT, "BTC/USDT", "buy", D(1), D(1)),),
    )
    prices = {"BTC": D(100000)}  # equity 9000 + 1000 = 10000; gross 1000 held + 1 reserved + 1000 ordered
    found = risk.check_leverage(
        limit(LimitType.LEVERAGE, value), order(quantity="10", price="100"), held, None, prices, QUOTES
    )
    assert (found is None) is passes
    if found:
        assert found.attempted_value == D("0.2001")


def test_leverage_without_equity_or_price_refuses() -> None:
    cap = limit(LimitType.LEVERAGE, "100")
    broke = standing(balances={"USDT": D(0)})
    found = risk.check_leverage(cap, order(), broke, None, {}, QUOTES)
    assert found is not None
    assert "no equity" in found.detail
    unpriced = standing(balances={"USDT": D(10), "DOGE": D(5)})
    found = risk.check_leverage(cap, order(), unpriced, None, {}, QUOTES)
    assert found is not None
    assert "no price" in found.detail


@pytest.mark.parametrize(("working", "passes"), [(1, True), (2, True), (3, False)])
def test_open_orders_boundary(working: int, passes: bool) -> None:
    # The limit is 3: with `working` orders already working, this one makes working + 1.
    orders = tuple(WorkingOrder(ACCOUNT, "BTC/USDT", "buy", D(1), D(0)) for _ in range(working))
    found = risk.check_open_orders(limit(LimitType.OPEN_ORDERS, "3"), order(), standing(working=orders))
    assert (found is None) is passes


def test_open_orders_of_a_symbol_count_that_symbol_only() -> None:
    orders = (WorkingOrder(ACCOUNT, "ETH/USDT", "buy", D(1), D(0)),) * 5
    per_symbol = limit(LimitType.OPEN_ORDERS, "1", "BTC/USDT")
    assert risk.check_open_orders(per_symbol, order(), standing(working=orders)) is None


@pytest.mark.parametrize(("count", "passes"), [(2, True), (3, True), (4, False)])
def test_order_rate_boundary(count: int, passes: bool) -> None:
    assert (risk.check_order_rate(limit(LimitType.ORDER_RATE, "3"), count) is None) is passes


# --- reduce-only, the kill switch, and which limits apply ---------------------------------------------------------


def test_reduce_only_is_the_opposite_side_within_what_the_account_holds() -> None:
    held = standing(
        positions={(ACCOUNT, "BTC/USDT"): D(2)}, working=(WorkingOrder(ACCOUNT, "BTC/USDT", "sell", D(1), D(0)),)
    )
    assert risk.is_reduce_only(order("sell", "1"), held)
    assert not risk.is_reduce_only(order("sell", "1.00000001"), held)  # with the working sell: more than held
    assert not risk.is_reduce_only(order("buy", "1"), held)
    assert not risk.is_reduce_only(order("sell", "1", account_id=OTHER_ACCOUNT), held)
    short = standing(positions={(ACCOUNT, "BTC/USDT"): D(-1)})
    assert risk.is_reduce_only(order("buy", "1"), short)


def _blocking_limits() -> dict[LimitType, Limit]:
    return {
        LimitType.DAILY_LOSS: limit(LimitType.DAILY_LOSS, "1"),
        LimitType.POSITION_SIZE: limit(LimitType.POSITION_SIZE, "0.00000001"),
        LimitType.LEVERAGE: limit(LimitType.LEVERAGE, "0.00000001"),
    }


def test_reduce_only_orders_pass_risk_caps_and_the_kill_switch_but_not_order_quality_limits() -> None:
    held = standing(positions={(ACCOUNT, "BTC/USDT"): D(2)}, balances={"USDT": D(0), "BTC": D(2)}, start="1000000")
    prices = {"BTC": D(100)}
    sell = order("sell", "1", price="100")
    caps = _blocking_limits()
    assert risk.evaluate(sell, caps, held, kill_switch=True, reference=D(100), prices=prices, quotes=QUOTES) is None
    buy = order("buy", "1", price="100")
    found = risk.evaluate(buy, caps, held, kill_switch=False, reference=D(100), prices=prices, quotes=QUOTES)
    assert found is not None
    assert found.limit_type == "daily_loss"
    found = risk.evaluate(buy, caps, held, kill_switch=True, reference=D(100), prices=prices, quotes=QUOTES)
    assert found is not None
    assert (found.limit_type, found.severity) == ("kill_switch", "high")
    notional = {LimitType.ORDER_NOTIONAL: limit(LimitType.ORDER_NOTIONAL, "99.99999999")}
    found = risk.evaluate(sell, notional, held, kill_switch=True, reference=D(100), prices=prices, quotes=QUOTES)
    assert found is not None
    assert found.limit_type == "order_notional"


def test_a_symbols_limit_replaces_the_global_one() -> None:
    global_cap = limit(LimitType.ORDER_NOTIONAL, "10")
    btc_cap = limit(LimitType.ORDER_NOTIONAL, "1000", "BTC/USDT")
    collar = limit(LimitType.PRICE_COLLAR, "5", "ETH/USDT")
    assert risk.effective([btc_cap, global_cap, collar], "BTC/USDT") == {LimitType.ORDER_NOTIONAL: btc_cap}
    assert risk.effective([btc_cap, global_cap, collar], "ETH/USDT") == {
        LimitType.ORDER_NOTIONAL: global_cap,
        LimitType.PRICE_COLLAR: collar,
    }


# --- severity, start of day, validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempted", "severity"),
    [("100", "low"), ("110", "low"), ("110.00000001", "medium"), ("150", "medium"), ("150.1", "high"),
     ("200", "high"), ("200.00000001", "critical")],
)  # fmt: skip
def test_severity_bands(attempted: str, severity: str) -> None:
    assert risk.severity(D(attempted), D(100)) == severity
    assert risk.severity(None, D(100)) == "medium"


def test_start_of_day_is_the_last_snapshot_plus_accounts_opened_since() -> None:
    openings = [datetime(2026, 1, 1, 9, tzinfo=UTC), datetime(2026, 1, 5, 0, tzinfo=UTC)]
    assert risk.start_of_day_value(None, openings, D(10000)) == D(20000)
    assert risk.start_of_day_value((date(2026, 1, 4), D(12000)), openings, D(10000)) == D(22000)
    assert risk.start_of_day_value((date(2026, 1, 5), D(12000)), openings, D(10000)) == D(12000)


@pytest.mark.parametrize(
    ("kind", "value", "code"),
    [
        (LimitType.ORDER_NOTIONAL, "0", "invalid_limit_value"),
        (LimitType.ORDER_NOTIONAL, "-1", "invalid_limit_value"),
        (LimitType.ORDER_NOTIONAL, "0.000000001", "invalid_limit_value"),
        (LimitType.ORDER_NOTIONAL, "1000000000000", "invalid_limit_value"),
        (LimitType.ORDER_NOTIONAL, "NaN", "invalid_limit_value"),
        (LimitType.ORDER_RATE, "1.5", "invalid_limit_value"),
    ],
)
def test_bad_limit_values(kind: LimitType, value: str, code: str) -> None:
    with pytest.raises(risk.InvalidLimit) as caught:
        risk.validate_limit_value(kind, D(value))
    assert caught.value.code == code


def test_unknown_type_and_per_symbol_scope() -> None:
    with pytest.raises(risk.InvalidLimit) as caught:
        risk.parse_limit_type("kill_switch")  # stored like a limit, but not one
    assert caught.value.code == "unknown_limit_type"
    with pytest.raises(risk.InvalidLimit) as caught:
        risk.validate_scope(LimitType.DAILY_LOSS, "BTC/USDT")
    assert caught.value.code == "limit_not_per_symbol"
    risk.validate_scope(LimitType.PRICE_COLLAR, "BTC/USDT")
    assert risk.validate_limit_value(LimitType.ORDER_RATE, D(60)) == D(60)


def test_current_values() -> None:
    held = standing(
        positions={(ACCOUNT, "BTC/USDT"): D(1), (ACCOUNT, "ETH/USDT"): D(10)},
        working=(WorkingOrder(ACCOUNT, "BTC/USDT", "buy", D(1), D(200)),),
        balances={"USDT": D(800), "BTC": D(1), "ETH": D(10)},
        start="2000",
    )
    prices = {"BTC": D(100), "ETH": D(20)}
    size = limit(LimitType.POSITION_SIZE, "1")
    assert risk.current_value(size, held, prices, QUOTES, None) == D(200)  # ETH 200, BTC (1 + 1 working) * 100
    eth = limit(LimitType.POSITION_SIZE, "1", "ETH/USDT")
    assert risk.current_value(eth, held, prices, QUOTES, None) == D(200)
    assert risk.current_value(limit(LimitType.DAILY_LOSS, "1"), held, prices, QUOTES, None) == D(900)
    assert risk.current_value(limit(LimitType.LEVERAGE, "1"), held, prices, QUOTES, None) == D(500) / D(1100)
    assert risk.current_value(limit(LimitType.ORDER_RATE, "1"), held, prices, QUOTES, 7) == D(7)
    assert risk.current_value(limit(LimitType.OPEN_ORDERS, "1"), held, prices, QUOTES, None) == D(1)
    assert risk.current_value(limit(LimitType.PRICE_COLLAR, "1"), held, prices, QUOTES, None) is None
    assert D(1).scaleb(-8) == TICK
