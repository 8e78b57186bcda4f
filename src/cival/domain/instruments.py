"""Tradable instruments and their precision: prices live on the tick, quantities on the step.

Rounding is exact Decimal arithmetic, never float: the integer quotient and the remainder of a division are exact
by definition, and the context used traps `Inexact`, so a result that could not be held exactly raises instead of
being rounded silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from functools import cache
from types import MappingProxyType

SCHEMA_DECIMAL_PLACES = 8
"""Fractional digits the database stores (`DECIMAL(20,8)`); an instrument needing more cannot be persisted."""

_SYMBOL = re.compile(r"^([A-Z0-9]+)/([A-Z0-9]+)$")
# Values are limited to exponents within +-64 so every quotient and product below fits the context's 200 digits;
# real prices and quantities are nowhere near these limits.
_MAX_EXPONENT = 64
_EXACT = Context(prec=200, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


class InstrumentError(ValueError):
    """An instrument's definition is inconsistent, or a value cannot be rounded to it."""


def decimal_places(value: Decimal) -> int:
    """Fractional digits `value` really needs (`Decimal("0.0100")` needs 2)."""
    return max(0, -_exponent(value.normalize()))


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise InstrumentError(f"{value} is not a finite number")
    return exponent


def _check_roundable(value: Decimal, what: str) -> None:
    if not isinstance(value, Decimal):
        raise InstrumentError(f"{what} {value!r} is a {type(value).__name__}; it must be a Decimal")
    if not value.is_finite():
        raise InstrumentError(f"{what} {value} is not a finite number")
    if abs(_exponent(value)) > _MAX_EXPONENT or value.adjusted() > _MAX_EXPONENT:
        raise InstrumentError(f"{what} {value} is out of range")


def _snap(value: Decimal, unit: Decimal, quantum: Decimal, *, up: bool) -> Decimal:
    """The multiple of `unit` at or below (or above, if `up`) `value`, written with `quantum`'s decimals."""
    multiple = _EXACT.divide_int(value, unit)  # truncated toward zero
    if _EXACT.remainder(value, unit):
        if up and value > 0:
            multiple = _EXACT.add(multiple, 1)
        elif not up and value < 0:
            multiple = _EXACT.subtract(multiple, 1)
    result = _EXACT.multiply(multiple, unit).quantize(quantum, context=_EXACT)
    return result if result else result.copy_abs()  # no "-0.00"


@cache
def _quantum(unit: Decimal) -> Decimal:
    # The unit's own decimals (at least none), so a price on a 0.01 tick reads `60000.00`, not `6E+4`.
    return Decimal(1).scaleb(min(_exponent(unit.normalize()), 0))


@dataclass(frozen=True)
class Instrument:
    """A pair on one exchange with its precision and size limits; validated on construction."""

    exchange: str
    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    step_size: Decimal
    min_order_size: Decimal
    max_order_size: Decimal
    min_notional: Decimal = Decimal(0)
    is_active: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `InstrumentError` naming the first inconsistency."""
        if not self.exchange:
            raise InstrumentError("exchange must not be empty")
        match = _SYMBOL.match(self.symbol)
        if match is None:
            raise InstrumentError(f"symbol {self.symbol!r} must be BASE/QUOTE in upper-case letters and digits")
        if (match[1], match[2]) != (self.base_asset, self.quote_asset):
            raise InstrumentError(
                f"symbol {self.symbol!r} does not match base {self.base_asset!r} and quote {self.quote_asset!r}"
            )
        if self.base_asset == self.quote_asset:
            raise InstrumentError(f"symbol {self.symbol!r} has the same base and quote asset")
        for name in ("tick_size", "step_size", "min_order_size", "max_order_size", "min_notional"):
            value = getattr(self, name)
            if not isinstance(value, Decimal):
                raise InstrumentError(f"{name} {value!r} is a {type(value).__name__}; it must be a Decimal")
            if not value.is_finite():
                raise InstrumentError(f"{name} {value} is not a finite number")
            if decimal_places(value) > SCHEMA_DECIMAL_PLACES:
                raise InstrumentError(
                    f"{name} {value} needs more decimals than the schema stores ({SCHEMA_DECIMAL_PLACES})"
                )
        for name in ("tick_size", "step_size", "min_order_size", "max_order_size"):
            if getattr(self, name) <= 0:
                raise InstrumentError(f"{name} {getattr(self, name)} must be positive")
        if self.min_notional < 0:
            raise InstrumentError(f"min_notional {self.min_notional} must not be negative")
        if self.min_order_size > self.max_order_size:
            raise InstrumentError(f"min_order_size {self.min_order_size} is above max_order_size {self.max_order_size}")

    def round_price_down(self, price: Decimal) -> Decimal:
        """The valid price at or below `price`."""
        _check_roundable(price, "price")
        return _snap(price, self.tick_size, _quantum(self.tick_size), up=False)

    def round_price_up(self, price: Decimal) -> Decimal:
        """The valid price at or above `price`."""
        _check_roundable(price, "price")
        return _snap(price, self.tick_size, _quantum(self.tick_size), up=True)

    def is_on_tick(self, price: Decimal) -> bool:
        """Whether `price` is a whole number of ticks."""
        _check_roundable(price, "price")
        return not _EXACT.remainder(price, self.tick_size)

    def nearest_prices(self, price: Decimal) -> tuple[Decimal, Decimal]:
        """The valid prices just below and just above `price` (both equal `price` when it is on the tick)."""
        return self.round_price_down(price), self.round_price_up(price)

    def round_quantity_down(self, quantity: Decimal) -> Decimal:
        """The valid quantity at or below `quantity`."""
        _check_roundable(quantity, "quantity")
        return _snap(quantity, self.step_size, _quantum(self.step_size), up=False)

    def round_quantity_up(self, quantity: Decimal) -> Decimal:
        """The valid quantity at or above `quantity`."""
        _check_roundable(quantity, "quantity")
        return _snap(quantity, self.step_size, _quantum(self.step_size), up=True)

    def is_on_step(self, quantity: Decimal) -> bool:
        """Whether `quantity` is a whole number of steps."""
        _check_roundable(quantity, "quantity")
        return not _EXACT.remainder(quantity, self.step_size)

    def nearest_quantities(self, quantity: Decimal) -> tuple[Decimal, Decimal]:
        """The valid quantities just below and just above `quantity` (both equal it when it is on the step)."""
        return self.round_quantity_down(quantity), self.round_quantity_up(quantity)


def _paper_pair(base: str, step: str, max_size: str) -> Instrument:
    return Instrument(
        exchange="paper",
        symbol=f"{base}/USDT",
        base_asset=base,
        quote_asset="USDT",
        tick_size=Decimal("0.01"),
        step_size=Decimal(step),
        min_order_size=Decimal(step),
        max_order_size=Decimal(max_size),
        min_notional=Decimal(5),
    )


DEFAULT_PAPER_PAIRS: tuple[Instrument, ...] = (
    _paper_pair("BTC", "0.00001", "9000"),
    _paper_pair("ETH", "0.0001", "90000"),
    _paper_pair("SOL", "0.001", "900000"),
)
"""The paper exchange's pairs, with Binance-like spot filters."""

DEFAULT_START_PRICES: Mapping[str, Decimal] = MappingProxyType(
    {"BTC/USDT": Decimal(60000), "ETH/USDT": Decimal(3000), "SOL/USDT": Decimal(150)}
)
"""Where the simulated market starts each default pair, by symbol."""

DEFAULT_VOLATILITIES: Mapping[str, float] = MappingProxyType({"BTC/USDT": 0.6, "ETH/USDT": 0.75, "SOL/USDT": 0.9})
"""Annualised volatility of each default pair's simulated random walk, by symbol."""
