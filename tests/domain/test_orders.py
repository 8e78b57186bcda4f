"""The order state machine, fill arithmetic and order validation, checked against hand-computed values."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cival.domain.instruments import Instrument
from cival.domain.order_validation import OrderValidator, validate_order
from cival.domain.orders import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    ConflictingFill,
    Fill,
    FillLedger,
    IllegalTransition,
    OrderRejected,
    OrderSide,
    OrderState,
    OrderStatus,
    OrderType,
    Overfill,
    RejectCode,
    TimeInForce,
    apply_fill,
    quantize_stored,
    transition,
)

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
D = Decimal
P, F, X, J, U = (
    OrderStatus.PENDING,
    OrderStatus.PARTIAL,
    OrderStatus.FILLED,
    OrderStatus.CANCELLED,
    OrderStatus.REJECTED,
)
UNK = OrderStatus.UNKNOWN

# The decisions, written out independently of the module's table: the test fails if either changes alone.
ALLOWED = {
    (P, F),
    (P, X),
    (P, J),
    (P, U),
    (P, UNK),
    (F, F),
    (F, X),
    (F, J),
    (F, UNK),
    (UNK, P),
    (UNK, F),
    (UNK, X),
    (UNK, J),
    (UNK, U),
    (UNK, UNK),
}
ALL_PAIRS = list(itertools.product(OrderStatus, OrderStatus))


def fill(quantity: str, price: str, fee: str = "0", trade_id: str = "t1") -> Fill:
    return Fill(trade_id, D(quantity), D(price), D(fee), "taker", NOW)


def btc(**overrides: Any) -> Instrument:
    values: dict[str, Any] = {
        "exchange": "paper",
        "symbol": "BTC/USDT",
        "base_asset": "BTC",
        "quote_asset": "USDT",
        "tick_size": D("0.01"),
        "step_size": D("0.00001"),
        "min_order_size": D("0.00001"),
        "max_order_size": D("9000"),
        "min_notional": D("5"),
    }
    values.update(overrides)
    return Instrument(**values)


# -- transitions ------------------------------------------------------------------------------------------------


def test_the_table_covers_every_status_and_only_the_documented_moves() -> None:
    assert set(TRANSITIONS) == set(OrderStatus)
    assert {(current, new) for current, targets in TRANSITIONS.items() for new in targets} == ALLOWED


@pytest.mark.parametrize(("current", "new"), [pair for pair in ALL_PAIRS if pair in ALLOWED])
def test_allowed_transition(current: OrderStatus, new: OrderStatus) -> None:
    assert transition(current, new) is new


@pytest.mark.parametrize(("current", "new"), [pair for pair in ALL_PAIRS if pair not in ALLOWED])
def test_illegal_transition_names_both_statuses(current: OrderStatus, new: OrderStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"{current} -> {new}") as caught:
        transition(current, new)
    assert (caught.value.current, caught.value.new) == (current, new)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_statuses_are_final_even_to_themselves(terminal: OrderStatus) -> None:
    assert TRANSITIONS[terminal] == frozenset()
    for new in OrderStatus:
        with pytest.raises(IllegalTransition, match="terminal statuses are final"):
            transition(terminal, new)


def test_unknown_is_settled_by_the_venue_answer_including_working_again() -> None:
    # A late answer that the order works (rests) makes it pending again; a fill, cancel or reject settles it.
    assert TRANSITIONS[UNK] == frozenset(OrderStatus)
    assert transition(UNK, P) is P


def test_more_fills_keep_an_order_partial_but_pending_does_not_repeat() -> None:
    assert transition(F, F) is F
    with pytest.raises(IllegalTransition):
        transition(P, P)
    with pytest.raises(IllegalTransition):
        transition(F, U)  # an order that has filled something was accepted


# -- fills ------------------------------------------------------------------------------------------------------


def test_average_price_and_fees_over_two_fills() -> None:
    first = apply_fill(D("1.0"), D(0), None, D(0), fill("0.4", "100.00", "0.04"))
    assert first == (D("0.4"), D("100.00"), D("0.04"), F)
    second = apply_fill(D("1.0"), *first[:3], fill("0.6", "101.50", "0.0609", "t2"))
    # (0.4 x 100.00 + 0.6 x 101.50) / 1.0 = (40 + 60.9) / 1 = 100.9
    assert second == (D("1.0"), D("100.9"), D("0.1009"), X)


def test_average_keeps_full_precision_and_is_quantized_half_even_to_store() -> None:
    state = OrderState(D(3))
    for i, price in enumerate(["100", "100", "101"]):
        state.apply(fill("1", price, trade_id=f"t{i}"))
    average = state.average_price
    assert average is not None
    with localcontext() as context:
        context.prec = 60  # "full precision": the module keeps 60 significant digits of a quotient
        assert average == D(301) / D(3)
    assert quantize_stored(average) == D("100.33333333")
    assert state.notional == D(301)
    assert state.status is X


def test_quantize_stored_rounds_half_even() -> None:
    assert quantize_stored(D("0.000000005")) == D("0.00000000")
    assert quantize_stored(D("0.000000015")) == D("0.00000002")
    assert quantize_stored(D("2.5")) == D("2.50000000")
    assert str(quantize_stored(D(1))) == "1.00000000"


def test_overfill_is_refused_and_changes_nothing() -> None:
    with pytest.raises(Overfill, match="would fill 1.1 of an order for 1"):
        apply_fill(D(1), D("0.7"), D(100), D(0), fill("0.4", "100"))
    state = OrderState(D(1))
    state.apply(fill("0.7", "100", trade_id="a"))
    with pytest.raises(Overfill):
        state.apply(fill("0.4", "100", trade_id="b"))
    assert (state.filled_quantity, state.notional, state.status) == (D("0.7"), D(70), F)


def test_a_fill_on_a_finished_order_is_an_illegal_transition() -> None:
    with pytest.raises(IllegalTransition, match="cancelled -> partial"):
        apply_fill(D(1), D(0), None, D(0), fill("0.5", "100"), status=J)
    state = OrderState(D(1))
    state.apply(fill("1", "100"))
    with pytest.raises(Overfill):
        state.apply(fill("0.1", "100", trade_id="t2"))


def test_fill_after_unknown_settles_it() -> None:
    outcome = apply_fill(D(2), D(0), None, D(0), fill("2", "10"), status=UNK)
    assert outcome.status is X


def test_apply_fill_needs_the_average_of_what_is_filled() -> None:
    with pytest.raises(ValueError, match="must have an average price"):
        apply_fill(D(2), D(1), None, D(0), fill("1", "10"))


def test_ledger_ignores_a_repeated_trade_and_refuses_a_conflicting_one() -> None:
    ledger = FillLedger(OrderState(D(2)))
    first = fill("1", "100", "0.1", "t1")
    assert ledger.apply(first) is True
    assert ledger.apply(fill("1", "100", "0.1", "t1")) is False
    assert ledger.state.filled_quantity == D(1)
    assert ledger.fills == (first,)
    with pytest.raises(ConflictingFill, match="t1"):
        ledger.apply(fill("1", "101", "0.1", "t1"))
    assert ledger.apply(fill("1", "102", "0.1", "t2")) is True
    assert (ledger.state.status, ledger.state.fees, ledger.state.average_price) == (X, D("0.2"), D(101))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"quantity": D(0)}, "quantity 0 must be positive"),
        ({"price": D("-1")}, "price -1 must be positive"),
        ({"fee": D("-0.01")}, "must not be negative"),
        ({"liquidity": "both"}, "must be 'maker' or 'taker'"),
        ({"ts": datetime(2024, 1, 1)}, "naive"),  # noqa: DTZ001 - the naive timestamp under test
    ],
)
def test_fill_refuses_impossible_values(values: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "trade_id": "t",
        "quantity": D(1),
        "price": D(1),
        "fee": D(0),
        "liquidity": "maker",
        "ts": NOW,
    }
    fields.update(values)
    with pytest.raises(ValueError, match=message):
        Fill(**fields)


def test_fill_refuses_floats() -> None:
    with pytest.raises(TypeError, match="must be Decimals"):
        Fill("t", 0.1, D(1), D(0), "maker", NOW)  # type: ignore[arg-type]


def test_fill_is_frozen_and_compares_by_value() -> None:
    a, b = fill("1", "2", "0.1"), fill("1", "2.0", "0.10")
    assert a == b
    with pytest.raises(AttributeError):
        a.quantity = D(2)  # type: ignore[misc]


@given(
    st.lists(
        st.tuples(st.integers(1, 10**6), st.integers(1, 10**9), st.integers(0, 10**4)),
        min_size=1,
        max_size=30,
    )
)
def test_folding_fills_is_exact(parts: list[tuple[int, int, int]]) -> None:
    quantities = [D(q).scaleb(-5) for q, _, _ in parts]
    prices = [D(p).scaleb(-2) for _, p, _ in parts]
    fees = [D(f).scaleb(-8) for _, _, f in parts]
    total = sum(quantities, D(0))
    state = OrderState(total)
    filled, average, fee_sum = D(0), None, D(0)
    for i, (q, p, f) in enumerate(zip(quantities, prices, fees, strict=True)):
        state.apply(Fill(f"t{i}", q, p, f, "maker", NOW))
        filled, average, fee_sum, _ = apply_fill(total, filled, average, fee_sum, Fill(f"t{i}", q, p, f, "maker", NOW))
    exact = sum((Fraction(q) * Fraction(p) for q, p in zip(quantities, prices, strict=True)), Fraction(0))
    exact /= Fraction(total)
    assert state.filled_quantity == filled == total
    assert state.fees == fee_sum == sum(fees, D(0))
    assert state.status is X
    assert state.average_price is not None
    assert average is not None
    assert quantize_stored(state.average_price) == quantize_stored(average)
    assert abs(Fraction(state.average_price) - exact) < Fraction(1, 10**40)
    # The stored average is the exact average rounded half-even, not a drifting running value.
    assert quantize_stored(state.average_price) == quantize_stored(Decimal(exact.numerator) / exact.denominator)


# -- validation -------------------------------------------------------------------------------------------------

BTC = btc()
VALID: dict[str, Any] = {
    "side": OrderSide.BUY,
    "order_type": OrderType.LIMIT,
    "quantity": D("0.001"),
    "price": D("60000.00"),
    "stop_price": None,
    "time_in_force": TimeInForce.GTC,
    "post_only": False,
}


def check(instrument: Instrument = BTC, reference_price: Decimal | None = None, **changes: Any) -> None:
    values = {**VALID, **changes}
    validate_order(instrument, **values, reference_price=reference_price)


def market(**changes: Any) -> dict[str, Any]:
    return {"order_type": OrderType.MARKET, "price": None, "time_in_force": TimeInForce.IOC, **changes}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"time_in_force": TimeInForce.IOC},
        {"time_in_force": TimeInForce.FOK},
        {"post_only": True},
        market(),
        market(time_in_force=TimeInForce.FOK),
        {"order_type": OrderType.STOP, "price": None, "stop_price": D("61000")},
        {"order_type": OrderType.STOP_LIMIT, "stop_price": D("61000"), "time_in_force": TimeInForce.IOC},
        {"side": OrderSide.SELL, "quantity": D("9000"), "price": D("0.01")},
        {"quantity": D("0.00100000000")},  # trailing zeros are not decimals the value needs
        {"price": D("6E+4")},
    ],
)
def test_valid_orders_pass(changes: dict[str, Any]) -> None:
    check(**changes)


@pytest.mark.parametrize(
    ("changes", "code", "detail"),
    [
        ({"quantity": D(0)}, RejectCode.INVALID_QUANTITY, "quantity 0 must be a positive number"),
        ({"quantity": D("-0.001")}, RejectCode.INVALID_QUANTITY, "must be a positive number"),
        ({"quantity": D("NaN")}, RejectCode.INVALID_QUANTITY, "must be a positive number"),
        ({"quantity": D("Infinity")}, RejectCode.INVALID_QUANTITY, "must be a positive number"),
        ({"quantity": D("1E+12")}, RejectCode.INVALID_QUANTITY, "above the largest storable value"),
        (
            {"quantity": D("0.000015")},
            RejectCode.QUANTITY_NOT_ON_STEP,
            "quantity 0.000015 is not a multiple of the step 0.00001; nearest valid quantities 0.00001 and 0.00002",
        ),
        (
            {"price": D("100.005")},
            RejectCode.PRICE_NOT_ON_TICK,
            "price 100.005 is not a multiple of the tick 0.01; nearest valid prices 100.00 and 100.01",
        ),
        (
            {"order_type": OrderType.STOP_LIMIT, "stop_price": D("100.019")},
            RejectCode.PRICE_NOT_ON_TICK,
            "stop price 100.019 is not a multiple of the tick 0.01; nearest valid prices 100.01 and 100.02",
        ),
        ({"quantity": D("0.000000001")}, RejectCode.TOO_MANY_DECIMALS, "more than 8 decimal places"),
        ({"price": D("100.000000001")}, RejectCode.TOO_MANY_DECIMALS, "price 100.000000001 has more than 8"),
        ({"price": D(0)}, RejectCode.INVALID_PRICE, "price 0 must be a positive number"),
        ({"quantity": D("9000.00001")}, RejectCode.ABOVE_MAX_SIZE, "above the maximum order size 9000"),
        (
            {"quantity": D("0.00008"), "price": D("60000")},
            RejectCode.BELOW_MIN_NOTIONAL,
            "notional 4.80000 (0.00008 x 60000) is below the minimum 5",
        ),
        (market(price=D(1)), RejectCode.PRICE_NOT_ALLOWED, "a market order takes no price"),
        (
            {"order_type": OrderType.STOP, "stop_price": D(1)},
            RejectCode.PRICE_NOT_ALLOWED,
            "a stop order takes no price",
        ),
        ({"price": None}, RejectCode.PRICE_REQUIRED, "a limit order needs a price"),
        (
            {"order_type": OrderType.STOP_LIMIT, "price": None, "stop_price": D(1)},
            RejectCode.PRICE_REQUIRED,
            "stop_limit order needs a price",
        ),
        (
            {"order_type": OrderType.STOP, "price": None},
            RejectCode.STOP_PRICE_REQUIRED,
            "a stop order needs a stop price",
        ),
        ({"order_type": OrderType.STOP_LIMIT}, RejectCode.STOP_PRICE_REQUIRED, "needs a stop price"),
        ({"stop_price": D(1)}, RejectCode.STOP_PRICE_NOT_ALLOWED, "a limit order takes no stop price"),
        (market(stop_price=D(1)), RejectCode.STOP_PRICE_NOT_ALLOWED, "a market order takes no stop price"),
        (
            {"post_only": True, "time_in_force": TimeInForce.IOC},
            RejectCode.INVALID_TIME_IN_FORCE,
            "post-only needs a GTC limit order, not a IOC limit order",
        ),
        ({"post_only": True, "time_in_force": TimeInForce.FOK}, RejectCode.INVALID_TIME_IN_FORCE, "post-only"),
        (market(post_only=True), RejectCode.INVALID_TIME_IN_FORCE, "post-only"),
        (
            {"order_type": OrderType.STOP_LIMIT, "stop_price": D(1), "post_only": True},
            RejectCode.INVALID_TIME_IN_FORCE,
            "post-only",
        ),
        (market(time_in_force=TimeInForce.GTC), RejectCode.INVALID_TIME_IN_FORCE, "immediate-or-cancel by nature"),
        (
            {"order_type": OrderType.STOP, "price": None, "stop_price": D(1), "time_in_force": TimeInForce.IOC},
            RejectCode.INVALID_TIME_IN_FORCE,
            "waits GTC for its trigger",
        ),
    ],
)
def test_rejections_name_the_problem(changes: dict[str, Any], code: RejectCode, detail: str) -> None:
    with pytest.raises(OrderRejected) as caught:
        check(**changes)
    assert caught.value.code is code
    assert detail in caught.value.detail
    assert str(caught.value) == f"{code}: {caught.value.detail}"


def test_min_size_and_notional_for_market_and_stop_orders() -> None:
    coarse = btc(min_order_size=D("0.001"))
    with pytest.raises(OrderRejected, match="below_min_size: quantity 0.0005 is below the minimum order size 0.001"):
        check(coarse, quantity=D("0.0005"))
    # A market order's notional needs a reference price: checked with one, skipped without.
    check(**market(quantity=D("0.00001")))
    with pytest.raises(OrderRejected, match="below_min_notional"):
        check(reference_price=D(60000), **market(quantity=D("0.00001")))
    with pytest.raises(OrderRejected, match=r"0\.00001 x 100"):
        check(order_type=OrderType.STOP, price=None, stop_price=D(100), quantity=D("0.00001"))


def test_inactive_instrument_and_non_decimal_values() -> None:
    with pytest.raises(OrderRejected, match="instrument_inactive"):
        check(btc(is_active=False))
    with pytest.raises(TypeError, match="is a float"):
        check(quantity=0.001)
    with pytest.raises(TypeError, match="is a float"):
        check(price=60000.0)
    with pytest.raises(ValueError, match="unknown side"):
        check(side="long")


def test_odd_ticks_use_the_remainder() -> None:
    nickel = btc(tick_size=D("0.05"), step_size=D("0.25"), min_order_size=D("0.25"), min_notional=D(0))
    check(nickel, price=D("100.05"), quantity=D("1.75"))
    with pytest.raises(OrderRejected, match="nearest valid prices 100.05 and 100.10"):
        check(nickel, price=D("100.07"), quantity=D("1.75"))
    with pytest.raises(OrderRejected, match="nearest valid quantities 1.50 and 1.75"):
        check(nickel, price=D("100.05"), quantity=D("1.6"))


ANY_DECIMAL = st.one_of(
    st.decimals(min_value=D("-1"), max_value=D("1E+13"), places=None, allow_nan=False, allow_infinity=False),
    st.sampled_from([D("NaN"), D("Infinity"), D("-Infinity"), D("1E-30"), D("1E+5")]),
    st.integers(-2, 10**6).map(lambda n: D(n).scaleb(-5)),
    st.integers(1, 10**8).map(lambda n: D(n).scaleb(-2)),
    st.integers(1, 10**8).map(lambda n: D(n).scaleb(-3)),
)


@given(
    instrument=st.sampled_from([BTC, btc(tick_size=D("0.05"), step_size=D("0.25"), min_order_size=D("0.25"))]),
    side=st.sampled_from(OrderSide),
    order_type=st.sampled_from(OrderType),
    quantity=ANY_DECIMAL,
    price=st.none() | ANY_DECIMAL,
    stop_price=st.none() | ANY_DECIMAL,
    time_in_force=st.sampled_from(TimeInForce),
    post_only=st.booleans(),
    reference_price=st.none() | st.integers(1, 10**8).map(lambda n: D(n).scaleb(-2)),
)
def test_the_fast_path_agrees_with_the_named_checks(
    instrument: Instrument,
    side: OrderSide,
    order_type: OrderType,
    quantity: Decimal,
    price: Decimal | None,
    stop_price: Decimal | None,
    time_in_force: TimeInForce,
    post_only: bool,
    reference_price: Decimal | None,
) -> None:
    validator = OrderValidator(instrument)
    args = (side, order_type, quantity, price, stop_price, time_in_force, post_only, reference_price)

    def outcome(check: Any) -> RejectCode | None:
        try:
            check(*args)
        except OrderRejected as exc:
            return exc.code
        return None

    assert outcome(validator.validate) == outcome(validator._explain)
