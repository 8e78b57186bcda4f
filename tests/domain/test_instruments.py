"""Instrument validation and exact tick/step rounding, checked against rational arithmetic."""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cival.domain.instruments import (
    DEFAULT_PAPER_PAIRS,
    DEFAULT_START_PRICES,
    DEFAULT_VOLATILITIES,
    SCHEMA_DECIMAL_PLACES,
    Instrument,
    InstrumentError,
    decimal_places,
)

BTC, ETH, SOL = DEFAULT_PAPER_PAIRS


def make(**overrides: Any) -> Instrument:
    values: dict[str, Any] = {
        "exchange": "paper",
        "symbol": "BTC/USDT",
        "base_asset": "BTC",
        "quote_asset": "USDT",
        "tick_size": Decimal("0.01"),
        "step_size": Decimal("0.00001"),
        "min_order_size": Decimal("0.00001"),
        "max_order_size": Decimal("9000"),
    }
    values.update(overrides)
    return Instrument(**values)


def test_default_pairs_are_binance_like() -> None:
    assert [p.symbol for p in DEFAULT_PAPER_PAIRS] == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    assert {p.exchange for p in DEFAULT_PAPER_PAIRS} == {"paper"}
    assert {p.tick_size for p in DEFAULT_PAPER_PAIRS} == {Decimal("0.01")}
    assert {p.min_notional for p in DEFAULT_PAPER_PAIRS} == {Decimal(5)}
    assert (BTC.step_size, BTC.min_order_size, BTC.max_order_size) == (
        Decimal("0.00001"),
        Decimal("0.00001"),
        Decimal(9000),
    )
    assert (ETH.step_size, ETH.max_order_size) == (Decimal("0.0001"), Decimal(90000))
    assert (SOL.step_size, SOL.max_order_size) == (Decimal("0.001"), Decimal(900000))
    assert all(p.is_active for p in DEFAULT_PAPER_PAIRS)


def test_every_default_pair_has_a_start_price_and_volatility() -> None:
    symbols = {p.symbol for p in DEFAULT_PAPER_PAIRS}
    assert set(DEFAULT_START_PRICES) == symbols
    assert set(DEFAULT_VOLATILITIES) == symbols
    assert DEFAULT_START_PRICES["BTC/USDT"] == Decimal(60000)
    assert all(isinstance(p, Decimal) and p > 0 for p in DEFAULT_START_PRICES.values())
    assert all(0 < v < 2 for v in DEFAULT_VOLATILITIES.values())


def test_instrument_is_immutable() -> None:
    with pytest.raises(AttributeError):
        BTC.tick_size = Decimal(1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"symbol": "btc/usdt"}, "must be BASE/QUOTE"),
        ({"symbol": "BTCUSDT"}, "must be BASE/QUOTE"),
        ({"symbol": "BTC-USDT"}, "must be BASE/QUOTE"),
        ({"symbol": "BTC/USDT "}, "must be BASE/QUOTE"),
        ({"symbol": "ETH/USDT"}, "does not match base 'BTC' and quote 'USDT'"),
        ({"quote_asset": "USDC"}, "does not match"),
        ({"symbol": "BTC/BTC", "quote_asset": "BTC"}, "same base and quote"),
        ({"exchange": ""}, "exchange must not be empty"),
        ({"tick_size": Decimal(0)}, "tick_size 0 must be positive"),
        ({"step_size": Decimal("-0.1")}, "step_size -0.1 must be positive"),
        ({"min_order_size": Decimal(10), "max_order_size": Decimal(1)}, "min_order_size 10 is above max_order_size 1"),
        ({"min_notional": Decimal(-1)}, "min_notional -1 must not be negative"),
        (
            {"tick_size": Decimal("0.000000001")},
            "tick_size 1E-9 needs more decimals than the schema stores (8)",
        ),
        ({"step_size": Decimal("0.123456789")}, "needs more decimals than the schema stores (8)"),
        ({"min_notional": Decimal("0.000000005")}, "needs more decimals than the schema stores (8)"),
        ({"tick_size": 0.01}, "tick_size 0.01 is a float; it must be a Decimal"),
        ({"tick_size": Decimal("NaN")}, "not a finite number"),
        ({"max_order_size": Decimal("Infinity")}, "not a finite number"),
    ],
)
def test_invalid_instruments_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InstrumentError) as info:
        make(**overrides)
    assert message in str(info.value)


def test_instrument_error_is_a_value_error() -> None:
    assert issubclass(InstrumentError, ValueError)


def test_trailing_zeros_do_not_count_as_decimals() -> None:
    assert decimal_places(Decimal("0.000000010")) == SCHEMA_DECIMAL_PLACES
    assert decimal_places(Decimal("100")) == 0
    assert make(tick_size=Decimal("0.000000010")).tick_size == Decimal("0.00000001")


def test_replace_revalidates() -> None:
    with pytest.raises(InstrumentError):
        replace(BTC, step_size=Decimal(0))


def test_rounding_prices() -> None:
    assert BTC.round_price_down(Decimal("60000.129")) == Decimal("60000.12")
    assert BTC.round_price_up(Decimal("60000.121")) == Decimal("60000.13")
    assert BTC.round_price_up(Decimal("60000.12")) == Decimal("60000.12")
    assert BTC.round_price_down(Decimal("-1.005")) == Decimal("-1.01")
    assert BTC.round_price_up(Decimal("-1.005")) == Decimal("-1.00")
    assert BTC.round_price_down(Decimal("0.009")) == 0


def test_rounded_values_are_written_with_the_tick_decimals() -> None:
    assert str(BTC.round_price_down(Decimal(60000))) == "60000.00"
    assert str(BTC.round_price_down(Decimal("1E+3"))) == "1000.00"
    assert str(BTC.round_quantity_down(Decimal("0.123456789"))) == "0.12345"
    assert str(make(tick_size=Decimal(5)).round_price_down(Decimal("123.4"))) == "120"


def test_tick_that_is_not_a_power_of_ten() -> None:
    five_cents = make(tick_size=Decimal("0.05"))
    assert five_cents.nearest_prices(Decimal("1.07")) == (Decimal("1.05"), Decimal("1.10"))
    assert five_cents.is_on_tick(Decimal("1.15"))
    assert not five_cents.is_on_tick(Decimal("1.16"))


def test_nearest_prices_and_quantities() -> None:
    assert BTC.nearest_prices(Decimal("100.005")) == (Decimal("100.00"), Decimal("100.01"))
    assert BTC.nearest_prices(Decimal("100.01")) == (Decimal("100.01"), Decimal("100.01"))
    assert ETH.nearest_quantities(Decimal("1.23456")) == (Decimal("1.2345"), Decimal("1.2346"))
    assert ETH.nearest_quantities(Decimal("2")) == (Decimal(2), Decimal(2))


def test_on_tick_and_on_step() -> None:
    assert BTC.is_on_tick(Decimal("60000.10"))
    assert BTC.is_on_tick(Decimal("6E+4"))
    assert not BTC.is_on_tick(Decimal("60000.105"))
    assert SOL.is_on_step(Decimal("1.001"))
    assert not SOL.is_on_step(Decimal("1.0001"))
    assert BTC.is_on_step(Decimal("0.00000"))


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), Decimal("1E-999999999"), Decimal("1E+999999")])
def test_unroundable_values_are_refused(bad: Decimal) -> None:
    with pytest.raises(InstrumentError):
        BTC.round_price_down(bad)
    with pytest.raises(InstrumentError):
        BTC.is_on_step(bad)


def test_rounding_refuses_floats() -> None:
    with pytest.raises(InstrumentError, match="is a float"):
        BTC.round_price_down(60000.1)  # type: ignore[arg-type]


def _reference_floor(value: Decimal, unit: Decimal) -> Fraction:
    return math.floor(Fraction(value) / Fraction(unit)) * Fraction(unit)


UNITS = st.sampled_from(["0.01", "0.00001", "0.5", "0.05", "1", "25", "0.00000001", "0.0003"]).map(Decimal)
VALUES = st.decimals(
    min_value=Decimal("-1e12"), max_value=Decimal("1e12"), allow_nan=False, allow_infinity=False, places=12
) | st.decimals(min_value=Decimal("-1e12"), max_value=Decimal("1e12"), allow_nan=False, allow_infinity=False).filter(
    # values with exponents beyond the domain's range are refused by design (test_out_of_range... covers it)
    lambda d: abs(int(d.as_tuple().exponent)) <= 30
)


@given(value=VALUES, unit=UNITS)
@example(value=Decimal("999999999999.99999999"), unit=Decimal("0.00000001"))
@example(value=Decimal("12345678901234567890.123456789"), unit=Decimal("0.0003"))
@example(value=Decimal("-98765432109876543210987654321098765432.1234567891"), unit=Decimal("0.0003"))
@example(value=Decimal("-0.001"), unit=Decimal("0.01"))
def test_rounding_matches_rational_arithmetic(value: Decimal, unit: Decimal) -> None:
    pair = make(tick_size=unit, step_size=unit, min_order_size=unit)
    down, up = pair.nearest_prices(value)
    expected_down = _reference_floor(value, unit)
    assert Fraction(down) == expected_down
    on_tick = Fraction(value) == expected_down
    assert Fraction(up) == (expected_down if on_tick else expected_down + Fraction(unit))
    assert pair.is_on_tick(value) is on_tick
    assert pair.is_on_tick(down)
    assert pair.is_on_tick(up)
    assert pair.nearest_quantities(value) == (down, up)
    assert pair.is_on_step(value) is on_tick
