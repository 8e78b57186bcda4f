"""Position/PnL arithmetic, balance reservations and valuation: hand-computed cases and Hypothesis invariants."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cival.domain.portfolio import (
    STORAGE_UNIT,
    Balance,
    InsufficientFunds,
    InvalidAmount,
    LockedFundsShortfall,
    PortfolioError,
    Position,
    apply_trade,
    daily_pnl,
    fill_fee,
    fold_trades,
    market_value,
    net_pnl,
    portfolio_value,
    release,
    required_reservation,
    reserve,
    settle_buy,
    settle_sell,
    take_snapshot,
    to_storage,
    unrealized_pnl,
)

D = Decimal
SYMBOL = "BTC/USDT"
RATE = D("0.001")


@dataclass(frozen=True)
class Fill:
    symbol: str
    side: Literal["buy", "sell"]
    quantity: Decimal
    price: Decimal
    fees: Decimal = D(0)


def buy(quantity: str, price: str, fee: str = "0") -> Fill:
    return Fill(SYMBOL, "buy", D(quantity), D(price), D(fee))


def sell(quantity: str, price: str, fee: str = "0") -> Fill:
    return Fill(SYMBOL, "sell", D(quantity), D(price), D(fee))


def ds(*values: int) -> tuple[Decimal, ...]:
    return tuple(D(value) for value in values)


def position(size: str, average_price: str, realized: str = "0") -> Position:
    return Position(SYMBOL, D(size), D(average_price), D(realized))


def then(start: Position, *fills: Fill) -> Position:
    for fill in fills:
        start = apply_trade(start, fill.side, fill.quantity, fill.price, fill.fees)
    return start


# --- Positions: hand-computed ------------------------------------------------------------------------------------


def test_adding_to_a_long_averages_the_entry() -> None:
    # (1 * 100 + 3 * 104) / 4 = 412 / 4 = 103
    pos = fold_trades(SYMBOL, [buy("1", "100"), buy("3", "104")])
    assert (pos.size, pos.average_price, pos.realized_pnl) == ds(4, 103, 0)


def test_partial_close_realizes_against_the_kept_average() -> None:
    # (110 - 103) * 2 = 14; 4 - 2 = 2 left, still at 103
    pos = fold_trades(SYMBOL, [buy("1", "100"), buy("3", "104"), sell("2", "110")])
    assert (pos.size, pos.average_price, pos.realized_pnl) == ds(2, 103, 14)


def test_selling_through_zero_closes_the_long_and_opens_a_short_at_the_trade_price() -> None:
    # closes 2: (100 - 103) * 2 = -6; the other 3 open a short at 100
    pos = then(position("2", "103"), sell("5", "100"))
    assert (pos.size, pos.average_price, pos.realized_pnl) == ds(-3, 100, -6)
    # the same after the adds and the partial close above: 14 - 6 = 8
    chained = fold_trades(SYMBOL, [buy("1", "100"), buy("3", "104"), sell("2", "110"), sell("5", "100")])
    assert (chained.size, chained.average_price, chained.realized_pnl) == ds(-3, 100, 8)


def test_short_covered_at_a_loss_then_at_a_profit() -> None:
    short = fold_trades(SYMBOL, [sell("2", "50")])
    assert (short.size, short.average_price) == ds(-2, 50)
    # covering 1 at 55: (50 - 55) * 1 = -5
    loss = then(short, buy("1", "55"))
    assert (loss.size, loss.average_price, loss.realized_pnl) == ds(-1, 50, -5)
    # covering the last 1 at 45: (50 - 45) * 1 = +5, so -5 + 5 = 0 in all; flat resets the average
    flat = then(loss, buy("1", "45"))
    assert (flat.size, flat.average_price, flat.realized_pnl) == ds(0, 0, 0)
    assert flat.is_flat


def test_adding_to_a_short_averages_and_covering_below_profits() -> None:
    # (1 * 50 + 1 * 60) / 2 = 55; covering 2 at 40: (55 - 40) * 2 = 30
    short = fold_trades(SYMBOL, [sell("1", "50"), sell("1", "60")])
    assert (short.size, short.average_price) == ds(-2, 55)
    assert then(short, buy("2", "40")).realized_pnl == 30


def test_buying_through_zero_closes_the_short_and_opens_a_long() -> None:
    # closes 3: (100 - 90) * 3 = 30; the other 2 open a long at 90
    pos = then(position("-3", "100"), buy("5", "90"))
    assert (pos.size, pos.average_price, pos.realized_pnl) == ds(2, 90, 30)


def test_back_to_flat_resets_the_average_so_a_new_position_starts_afresh() -> None:
    # (120 - 100) * 1 = 20, flat; then 1 @ 50 opens at 50, not blended with the old 100
    flat = fold_trades(SYMBOL, [buy("1", "100"), sell("1", "120")])
    assert (flat.size, flat.average_price, flat.realized_pnl) == ds(0, 0, 20)
    reopened = then(flat, buy("1", "50"))
    assert (reopened.size, reopened.average_price, reopened.realized_pnl) == ds(1, 50, 20)


def test_fees_accumulate_apart_from_realized_pnl() -> None:
    # realized (110 - 100) * 1 = 10 excludes fees; fees 0.1 + 0.11 = 0.21; net 10 - 0.21 = 9.79
    pos = fold_trades(SYMBOL, [buy("1", "100", "0.1"), sell("1", "110", "0.11")])
    assert (pos.realized_pnl, pos.fees_paid) == (D(10), D("0.21"))
    assert net_pnl(pos, D(123)) == D("9.79")  # flat: the mark does not matter


def test_open_position_net_pnl_includes_unrealized_less_fees() -> None:
    # buy 2 @ 100 fee 0.2; mark 105: unrealized 2 * 5 = 10; net 10 - 0.2 = 9.8
    pos = fold_trades(SYMBOL, [buy("2", "100", "0.2")])
    assert net_pnl(pos, D(105)) == D("9.8")


def test_market_value_and_unrealized_pnl_are_signed() -> None:
    # long 2 @ 103 at 110: value 2 * 110 = 220, unrealized 2 * (110 - 103) = 14
    assert (market_value(position("2", "103"), D(110)), unrealized_pnl(position("2", "103"), D(110))) == ds(220, 14)
    # short 3 @ 100 at 90: value -3 * 90 = -270, unrealized -3 * (90 - 100) = 30
    assert (market_value(position("-3", "100"), D(90)), unrealized_pnl(position("-3", "100"), D(90))) == ds(-270, 30)
    assert unrealized_pnl(Position.flat(SYMBOL), D(90)) == 0


# --- Positions: rounding at 8 decimals --------------------------------------------------------------------------


def test_average_is_rounded_half_even_and_the_residual_is_realized() -> None:
    # cost 1 * 100 + 2 * 100.00000001 = 300.00000002; exact average 100.0000000066... -> 100.00000001
    pos = fold_trades(SYMBOL, [buy("1", "100"), buy("2", "100.00000001")])
    assert pos.average_price == D("100.00000001")
    # the stored average carries cost 3 * 100.00000001 = 300.00000003, 0.00000001 more than paid: realized
    assert pos.realized_pnl == D("0.00000001")
    # at mark 100: unrealized 3 * (100 - 100.00000001) = -0.00000003; plus 0.00000001 = -0.00000002,
    # which is the cash PnL 3 * 100 - 300.00000002
    assert unrealized_pnl(pos, D(100)) == D("-0.00000003")
    assert pos.realized_pnl + unrealized_pnl(pos, D(100)) == D("-0.00000002")


def test_average_ties_round_to_even() -> None:
    # (100 + 100.00000001) / 2 = 100.000000005 -> 100.00000000 (last digit 0 is even); residual 200 - 200.00000001
    low = fold_trades(SYMBOL, [buy("1", "100"), buy("1", "100.00000001")])
    assert (low.average_price, low.realized_pnl) == (D(100), D("-0.00000001"))
    # (100.00000001 + 100.00000002) / 2 = 100.000000015 -> 100.00000002; residual 200.00000004 - 200.00000003
    high = fold_trades(SYMBOL, [buy("1", "100.00000001"), buy("1", "100.00000002")])
    assert (high.average_price, high.realized_pnl) == (D("100.00000002"), D("0.00000001"))


def test_a_short_average_is_rounded_the_same_way() -> None:
    # (-1 * 100 - 2 * 100.00000001) / -3 = 100.0000000066... -> 100.00000001; cost -300.00000002, stored -300.00000003
    pos = fold_trades(SYMBOL, [sell("1", "100"), sell("2", "100.00000001")])
    assert (pos.average_price, pos.realized_pnl) == (D("100.00000001"), D("-0.00000001"))


def test_to_storage_rounds_half_even_to_8_decimals() -> None:
    assert str(to_storage(D("14.0000000000000000"))) == "14.00000000"
    assert to_storage(D("0.000000005")) == 0  # tie -> even 0
    assert to_storage(D("0.000000015")) == D("0.00000002")  # tie -> even 2
    assert to_storage(D("0.0000000149")) == D("0.00000001")
    assert str(to_storage(D("-0.000000005"))) == "0E-8"  # never "-0E-8"
    # a realized PnL with 16 decimals: 0.33333333 * (100.00000001 - 100) = 0.0000000033333333
    assert to_storage(D("0.0000000033333333")) == 0


# --- Positions: validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "price", "fee"),
    [
        (D(0), D(100), D(0)),
        (D(-1), D(100), D(0)),
        (D("0.000000001"), D(100), D(0)),  # 9 decimals
        (D(1), D(0), D(0)),
        (D(1), D("100.000000001"), D(0)),
        (D(1), D(100), D(-1)),
        (D(1), D("NaN"), D(0)),
        (1.5, D(100), D(0)),
    ],
)
def test_apply_trade_refuses_amounts_off_the_grid_or_of_the_wrong_sign(
    quantity: Decimal, price: Decimal, fee: Decimal
) -> None:
    with pytest.raises(InvalidAmount):
        apply_trade(Position.flat(SYMBOL), "buy", quantity, price, fee)


def test_apply_trade_refuses_an_unknown_side() -> None:
    with pytest.raises(PortfolioError, match="side"):
        apply_trade(Position.flat(SYMBOL), "hold", D(1), D(1))  # type: ignore[arg-type]


def test_fold_refuses_a_trade_of_another_symbol() -> None:
    with pytest.raises(PortfolioError, match="ETH/USDT"):
        fold_trades(SYMBOL, [Fill("ETH/USDT", "buy", D(1), D(1))])


@pytest.mark.parametrize(
    ("size", "average"),
    [("1", "0"), ("0", "100"), ("1", "-5"), ("0.000000001", "1"), ("1", "100.000000001")],
)
def test_position_refuses_inconsistent_state(size: str, average: str) -> None:
    with pytest.raises(InvalidAmount):
        position(size, average)


# --- Positions: invariants ----------------------------------------------------------------------------------------

quantities = st.one_of(
    st.sampled_from([D(1), D(2), D(3), D("0.5")]),  # small integers make flat and flips through zero common
    st.decimals(min_value=D("0.00000001"), max_value=D(1000), places=8, allow_nan=False, allow_infinity=False),
)
prices = st.decimals(min_value=D("0.00000001"), max_value=D(100000), places=8, allow_nan=False, allow_infinity=False)
fees = st.decimals(min_value=D(0), max_value=D(10), places=8, allow_nan=False, allow_infinity=False)
fills = st.builds(Fill, st.just(SYMBOL), st.sampled_from(["buy", "sell"]), quantities, prices, fees)


def cash_pnl(trades: list[Fill], mark: Decimal) -> Fraction:
    """Σ sells q*p − Σ buys q*p + (Σ buys q − Σ sells q) * mark, in rationals: independent of Decimal contexts."""
    cash = sum((Fraction(t.quantity) * Fraction(t.price) * (1 if t.side == "sell" else -1) for t in trades), Fraction())
    held = sum((Fraction(t.quantity) * (1 if t.side == "buy" else -1) for t in trades), Fraction())
    return cash + held * Fraction(mark)


@given(st.lists(fills, max_size=30))
def test_fold_is_deterministic_and_is_repeated_apply_trade(trades: list[Fill]) -> None:
    folded = fold_trades(SYMBOL, trades)
    assert fold_trades(SYMBOL, trades) == folded
    assert then(Position.flat(SYMBOL), *trades) == folded


@given(st.lists(fills, max_size=30), prices)
def test_total_pnl_is_conserved_exactly(trades: list[Fill], mark: Decimal) -> None:
    pos = fold_trades(SYMBOL, trades)
    assert Fraction(pos.realized_pnl) + Fraction(unrealized_pnl(pos, mark)) == cash_pnl(trades, mark)
    assert Fraction(net_pnl(pos, mark)) == cash_pnl(trades, mark) - sum((Fraction(t.fees) for t in trades), Fraction())
    if pos.is_flat:
        # fully closed: realized alone is the cash PnL, whatever the mark
        assert Fraction(pos.realized_pnl) == cash_pnl(trades, mark)


@given(st.lists(fills, max_size=30))
def test_size_and_average_are_stored_without_rounding(trades: list[Fill]) -> None:
    pos = fold_trades(SYMBOL, trades)
    assert pos.size == sum((t.quantity if t.side == "buy" else -t.quantity for t in trades), D(0))
    assert (to_storage(pos.size), to_storage(pos.average_price)) == (pos.size, pos.average_price)
    assert (pos.average_price == 0) == pos.is_flat


@given(st.lists(fills, max_size=30), st.data())
def test_a_position_reloaded_from_its_row_and_updated_equals_the_fold(trades: list[Fill], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(trades)))
    before = fold_trades(SYMBOL, trades[:cut])
    row = Position(
        SYMBOL, to_storage(before.size), to_storage(before.average_price), before.realized_pnl, before.fees_paid
    )
    assert then(row, *trades[cut:]) == fold_trades(SYMBOL, trades)


@given(st.lists(st.tuples(quantities, prices), min_size=1, max_size=20), st.sampled_from(["buy", "sell"]))
def test_each_add_rounds_the_average_half_even_and_the_drift_is_bounded(
    entries: list[tuple[Decimal, Decimal]], side: Literal["buy", "sell"]
) -> None:
    half_unit = Fraction(STORAGE_UNIT) / 2
    sign = 1 if side == "buy" else -1  # adding to a long, or to a short
    pos = Position.flat(SYMBOL)
    for adds, (quantity, price) in enumerate(entries, start=1):
        before = pos
        pos = apply_trade(pos, side, quantity, price)
        # one step: the exact mean of the stored average and the fill, rounded half-even (ties to an even digit)
        step = (
            Fraction(before.size) * Fraction(before.average_price) + sign * Fraction(quantity) * Fraction(price)
        ) / Fraction(pos.size)
        error = Fraction(pos.average_price) - step
        assert abs(error) <= half_unit
        if abs(error) == half_unit:
            assert int(pos.average_price / STORAGE_UNIT) % 2 == 0
        # all steps: each rounding moves the average by at most half a unit, and later fills only dilute earlier
        # errors, so after `adds` adds it is within adds / 2 units of the exact mean of every entry
        seen = entries[:adds]
        mean = sum((Fraction(q) * Fraction(p) for q, p in seen), Fraction()) / sum(Fraction(q) for q, _ in seen)
        assert abs(Fraction(pos.average_price) - mean) <= adds * half_unit
        assert min(p for _, p in seen) <= pos.average_price <= max(p for _, p in seen)


# --- Balances: hand-computed --------------------------------------------------------------------------------------


def test_balance_total_and_validation() -> None:
    assert Balance("USDT", D("10.5"), D("2.25")).total == D("12.75")
    for free, locked in [(D(-1), D(0)), (D(0), D(-1)), (D("0.000000001"), D(0))]:
        with pytest.raises(InvalidAmount):
            Balance("USDT", free, locked)


def test_reserve_and_release_move_between_free_and_locked() -> None:
    held = reserve(Balance("USDT", D(1000)), D("100.1"))
    assert (held.free, held.locked, held.total) == (D("899.9"), D("100.1"), D(1000))
    back = release(held, D("100.1"))
    assert (back.free, back.locked) == (D(1000), D(0))


def test_reserving_more_than_free_raises_insufficient_funds() -> None:
    with pytest.raises(InsufficientFunds) as caught:
        reserve(Balance("USDT", D(100), D(50)), D("100.00000001"))
    assert (caught.value.asset, caught.value.needed, caught.value.available) == ("USDT", D("100.00000001"), D(100))


def test_releasing_more_than_locked_is_refused() -> None:
    with pytest.raises(LockedFundsShortfall) as caught:
        release(Balance("USDT", D(100), D(50)), D("50.00000001"))
    assert (caught.value.asset, caught.value.needed, caught.value.locked) == ("USDT", D("50.00000001"), D(50))


def test_reservations() -> None:
    # limit buy 1 @ 100, fee 0.1%: 1 * 100 * 1.001 = 100.1
    assert required_reservation("buy", "limit", D(1), D(100), RATE) == ("quote", D("100.1"))
    # 0.00001 @ 60000.01: 0.6000001 * 1.001 = 0.6006001001, rounded up to 0.60060011
    assert required_reservation("buy", "limit", D("0.00001"), D("60000.01"), RATE) == ("quote", D("0.60060011"))
    # market buy against its worst fill price 61000: 0.1 * 61000 * 1.001 = 6106.1
    assert required_reservation("buy", "market", D("0.1"), D(61000), RATE) == ("quote", D("6106.1"))
    # sells hold the base quantity, whatever the price
    assert required_reservation("sell", "limit", D("0.5"), D(100), RATE) == ("base", D("0.5"))
    assert required_reservation("sell", "market", D("0.5"), None, RATE) == ("base", D("0.5"))
    # nothing remaining, nothing held
    assert required_reservation("buy", "limit", D(0), D(100), RATE) == ("quote", D(0))


def test_reservation_refuses_bad_input() -> None:
    with pytest.raises(PortfolioError, match="needs a price"):
        required_reservation("buy", "market", D(1), None, RATE)
    with pytest.raises(PortfolioError, match="order type"):
        required_reservation("buy", "iceberg", D(1), D(1), RATE)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount, match="fee_rate"):
        required_reservation("buy", "limit", D(1), D(1), D(1))


def test_fill_fee_rounds_down() -> None:
    # 0.4 * 110 * 0.001 = 0.044
    assert fill_fee(D("0.4"), D(110), RATE) == D("0.044")
    # 0.00001 * 60000.01 * 0.001 = 0.0006000001 -> 0.00060000
    assert fill_fee(D("0.00001"), D("60000.01"), RATE) == D("0.0006")


def test_a_buy_filled_at_a_better_price_releases_the_difference() -> None:
    base, quote = Balance("BTC", D(0)), reserve(Balance("USDT", D(1000)), D("100.1"))  # 1 @ 100 limit
    # fill 1 @ 90, fee 90 * 0.001 = 0.09: cost 90.09; free 899.9 + 100.1 - 90.09 = 909.91
    base, quote = settle_buy(
        base, quote, quantity=D(1), price=D(90), fee=D("0.09"), reserved=D("100.1"), still_reserved=D(0)
    )
    assert (quote.free, quote.locked, quote.total) == (D("909.91"), D(0), D(1000) - D("90.09"))
    assert (base.free, base.locked) == (D(1), D(0))


def test_partial_fill_then_cancel_returns_locked_to_zero() -> None:
    # limit buy 2 @ 100: 200.2 held
    quote = reserve(Balance("USDT", D(1000)), D("200.2"))
    base = Balance("BTC", D(0))
    # fill 0.5 @ 100, fee 0.05: cost 50.05; 1.5 remain, holding 150.15; 200.2 - 150.15 - 50.05 = 0 back to free
    base, quote = settle_buy(
        base, quote, quantity=D("0.5"), price=D(100), fee=D("0.05"), reserved=D("200.2"), still_reserved=D("150.15")
    )
    assert (quote.free, quote.locked, quote.total) == (D("799.8"), D("150.15"), D("949.95"))
    quote = release(quote, D("150.15"))  # cancel
    assert (quote.free, quote.locked) == (D("949.95"), D(0))
    assert base.free == D("0.5")


def test_completing_one_order_leaves_locked_at_what_the_others_hold() -> None:
    # A: 1 @ 100 holds 100.1; B: 2 @ 50 holds 2 * 50 * 1.001 = 100.1
    quote = reserve(reserve(Balance("USDT", D(1000)), D("100.1")), D("100.1"))
    # A fills at 99, fee 0.099: cost 99.099
    _, quote = settle_buy(
        Balance("BTC", D(0)),
        quote,
        quantity=D(1),
        price=D(99),
        fee=D("0.099"),
        reserved=D("100.1"),
        still_reserved=D(0),
    )
    assert quote.locked == D("100.1")
    assert quote.total == D(1000) - D("99.099")


def test_a_sell_fill_pays_from_locked_base_and_credits_quote_less_fee() -> None:
    base = reserve(Balance("BTC", D(1)), D(1))
    # fill 0.4 @ 110, fee 0.044: proceeds 44 - 0.044 = 43.956
    base, quote = settle_sell(
        base,
        Balance("USDT", D(10)),
        quantity=D("0.4"),
        price=D(110),
        fee=D("0.044"),
        reserved=D(1),
        still_reserved=D("0.6"),
    )
    assert (base.free, base.locked) == (D(0), D("0.6"))
    assert (quote.free, quote.locked) == (D("53.956"), D(0))


def test_a_fee_beyond_the_reservation_comes_from_free_or_raises() -> None:
    # 1 @ 100 holds 100.1; a venue that rounds the fee up charges 0.10000001: cost 100.10000001
    quote = reserve(Balance("USDT", D("100.1")), D("100.1"))
    with pytest.raises(InsufficientFunds) as caught:
        settle_buy(
            Balance("BTC", D(0)),
            quote,
            quantity=D(1),
            price=D(100),
            fee=D("0.10000001"),
            reserved=D("100.1"),
            still_reserved=D(0),
        )
    assert (caught.value.needed, caught.value.available) == (D("0.00000001"), D(0))
    richer = reserve(Balance("USDT", D("101.1")), D("100.1"))
    _, after = settle_buy(
        Balance("BTC", D(0)),
        richer,
        quantity=D(1),
        price=D(100),
        fee=D("0.10000001"),
        reserved=D("100.1"),
        still_reserved=D(0),
    )
    assert (after.free, after.locked) == (D("0.99999999"), D(0))


def test_settlement_refuses_bookkeeping_errors() -> None:
    base, quote = Balance("BTC", D(0)), Balance("USDT", D(100), D(10))
    with pytest.raises(LockedFundsShortfall):
        settle_buy(base, quote, quantity=D(1), price=D(1), fee=D(0), reserved=D(11), still_reserved=D(0))
    with pytest.raises(PortfolioError, match="two different assets"):
        settle_buy(quote, quote, quantity=D(1), price=D(1), fee=D(0), reserved=D(1), still_reserved=D(0))
    # 0.00000001 * 0.5 = 0.000000005: no balance can hold it
    with pytest.raises(InvalidAmount, match="notional"):
        settle_buy(base, quote, quantity=D("0.00000001"), price=D("0.5"), fee=D(0), reserved=D(1), still_reserved=D(0))
    with pytest.raises(InvalidAmount, match="exceeds"):
        settle_sell(
            Balance("BTC", D(0), D(1)), quote, quantity=D(1), price=D(1), fee=D(2), reserved=D(1), still_reserved=D(0)
        )


# --- Balances: invariants -----------------------------------------------------------------------------------------

amounts = st.decimals(min_value=D(0), max_value=D(2000), places=8, allow_nan=False, allow_infinity=False)


@given(st.lists(st.tuples(st.sampled_from(["reserve", "release"]), amounts), max_size=40))
def test_reserve_and_release_never_change_the_total(operations: list[tuple[str, Decimal]]) -> None:
    balance = Balance("USDT", D(1000))
    for operation, amount in operations:
        try:
            balance = reserve(balance, amount) if operation == "reserve" else release(balance, amount)
        except InsufficientFunds:
            assert operation == "reserve"
            assert amount > balance.free
        except LockedFundsShortfall:
            assert operation == "release"
            assert amount > balance.locked
        assert balance.free >= 0
        assert balance.locked >= 0
        assert balance.free + balance.locked == balance.total == 1000


steps = st.integers(1, 100_000).map(lambda n: D(n) * D("0.00001"))  # BTC's step: 0.00001 .. 1
ticks = st.integers(1, 10_000_000).map(lambda n: D(n) * D("0.01"))  # a 0.01 tick: 0.01 .. 100000
rates = st.sampled_from([D(0), D("0.00075"), D("0.001"), D("0.0025"), D("0.1")])


@given(steps, steps, ticks, st.data(), rates)
def test_a_buy_reservation_covers_any_fill_no_worse_than_its_price(
    remaining: Decimal, filled: Decimal, limit: Decimal, data: st.DataObject, rate: Decimal
) -> None:
    filled = min(filled, remaining)
    price = data.draw(st.integers(1, int(limit * 100)).map(lambda n: D(n) * D("0.01")))
    before = required_reservation("buy", "limit", remaining, limit, rate)[1]
    after = required_reservation("buy", "limit", remaining - filled, limit, rate)[1]
    assert before - after >= filled * price + fill_fee(filled, price, rate)


@dataclass
class OpenOrder:
    side: Literal["buy", "sell"]
    limit: Decimal
    remaining: Decimal
    rate: Decimal

    def holds(self) -> Decimal:
        return required_reservation(self.side, "limit", self.remaining, self.limit, self.rate)[1]


@settings(max_examples=200)
@given(st.data())
def test_orders_fills_and_cancels_keep_balances_consistent(data: st.DataObject) -> None:
    base, quote = Balance("BTC", D(2)), Balance("USDT", D(100_000))
    base_in = quote_out = D(0)  # net flows from fills only
    orders: list[OpenOrder] = []
    for _ in range(data.draw(st.integers(1, 25))):
        action = data.draw(st.sampled_from(["buy", "sell", "fill", "cancel"]))
        if action in ("buy", "sell"):
            order = OpenOrder(
                "buy" if action == "buy" else "sell", data.draw(ticks), data.draw(steps), data.draw(rates)
            )
            try:
                if action == "buy":
                    quote = reserve(quote, order.holds())
                else:
                    base = reserve(base, order.holds())
            except InsufficientFunds:
                continue
            orders.append(order)
        elif orders and action == "fill":
            order = orders[data.draw(st.integers(0, len(orders) - 1))]
            quantity = min(data.draw(steps), order.remaining)
            cents = int(order.limit * 100)
            # a buy fills at or below its limit, a sell at or above
            price = D(data.draw(st.integers(1, cents) if order.side == "buy" else st.integers(cents, 2 * cents))) / 100
            fee = fill_fee(quantity, price, order.rate)
            held = order.holds()
            order.remaining -= quantity
            settle = settle_buy if order.side == "buy" else settle_sell
            paying_free = quote.free if order.side == "buy" else base.free
            base, quote = settle(
                base, quote, quantity=quantity, price=price, fee=fee, reserved=held, still_reserved=order.holds()
            )
            # the reservation covered the fill: nothing was taken from free
            assert (quote.free if order.side == "buy" else base.free) >= paying_free
            signed = 1 if order.side == "buy" else -1
            base_in += signed * quantity
            quote_out += signed * quantity * price + fee
            if order.remaining == 0:
                orders.remove(order)
        elif orders and action == "cancel":
            order = orders.pop(data.draw(st.integers(0, len(orders) - 1)))
            if order.side == "buy":
                quote = release(quote, order.holds())
            else:
                base = release(base, order.holds())
        # locked is exactly what the open orders hold, and totals move only by fills
        assert quote.locked == sum((o.holds() for o in orders if o.side == "buy"), D(0))
        assert base.locked == sum((o.holds() for o in orders if o.side == "sell"), D(0))
        assert quote.total == quote.free + quote.locked == D(100_000) - quote_out
        assert base.total == base.free + base.locked == D(2) + base_in
        assert min(quote.free, quote.locked, base.free, base.locked) >= 0
    for order in orders:  # cancelling everything unlocks everything
        if order.side == "buy":
            quote = release(quote, order.holds())
        else:
            base = release(base, order.holds())
    assert (quote.locked, base.locked) == ds(0, 0)


# --- Valuation and snapshots --------------------------------------------------------------------------------------


def test_portfolio_value_prices_assets_and_reports_the_unpriced() -> None:
    balances = {"USDT": D(1000), "USDC": D(5), "BTC": D("0.5"), "ETH": D(2), "DOGE": D(100), "XRP": D(0)}
    prices = {"BTC": D(60000), "ETH": D(3000), "USDT": D("0.999")}  # a stable coin's feed price is ignored
    valuation = portfolio_value(balances, prices)
    # 1000 + 5 + 0.5 * 60000 + 2 * 3000 = 37005; DOGE has no price; XRP has none either but nothing is held
    assert valuation.total_value == D(37005)
    assert valuation.unpriced_assets == {"DOGE"}
    assert dict(valuation.usd_values) == {"USDT": 1000, "USDC": 5, "BTC": 30000, "ETH": 6000}


def test_portfolio_value_refuses_a_non_positive_price() -> None:
    with pytest.raises(InvalidAmount):
        portfolio_value({"BTC": D(1)}, {"BTC": D(0)})


def test_daily_pnl_removes_deposits_and_withdrawals() -> None:
    # 10500 - 10000 - 300 deposited = 200
    assert daily_pnl(D(10500), D(10000), D(300)) == 200
    # 9500 - 10000 + 600 withdrawn = 100
    assert daily_pnl(D(9500), D(10000), D(-600)) == 100


def test_snapshot() -> None:
    positions = [position("0.1", "50000"), Position.flat("ETH/USDT")]
    snapshot = take_snapshot(
        positions=positions,
        balances={"USDT": D(9000), "BTC": D("0.1"), "SOL": D(1)},
        prices_in_usd={"BTC": D(60000)},
        net_deposits_total=D(10000),
        start_of_day_value=D(14000),
        net_deposits_today=D(500),
    )
    # value 9000 + 0.1 * 60000 = 15000; total PnL 15000 - 10000 = 5000; daily 15000 - 14000 - 500 = 500
    assert (snapshot.total_value, snapshot.total_pnl, snapshot.daily_pnl) == ds(15000, 5000, 500)
    assert snapshot.positions_count == 1
    assert snapshot.unpriced_assets == {"SOL"}
