"""An order checked against its pair before anything is stored: `validate_order`, and `OrderValidator`, its units
prepared once per instrument (the matching engine's per-order check). A refusal is an `OrderRejected` with a stable
`RejectCode` and a message that names the nearest valid values; nothing is ever adjusted."""

from __future__ import annotations

from decimal import ROUND_DOWN, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow

from cival.domain.instruments import SCHEMA_DECIMAL_PLACES, Instrument
from cival.domain.orders import (
    MAX_STORED,
    STORED_QUANTUM,
    ZERO,
    OrderRejected,
    OrderSide,
    OrderType,
    RejectCode,
    TimeInForce,
)

# A notional (quantity x price) of DECIMAL(20,8) values is exact in 100 digits; Inexact is trapped.
_EXACT = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_ROUND = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow])


def _text(value: Decimal) -> str:
    return format(value, "f")


def _power_of_ten(unit: Decimal) -> Decimal | None:
    # A unit like 0.01 is checked with one quantize; any other unit (0.05, 2.5) needs a division remainder too.
    normal = unit.normalize()  # 0.010 -> 0.01: quantize follows the exponent, not the value
    return normal if normal.as_tuple().digits == (1,) else None


_SIDES = frozenset(OrderSide)
_TYPES = frozenset(OrderType)
_TIMES_IN_FORCE = frozenset(TimeInForce)
_LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
# Enum members as module constants for the fast path: a class attribute lookup on an Enum is slow.
_MARKET, _LIMIT, _STOP, _STOP_LIMIT = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT
_GTC = TimeInForce.GTC


class OrderValidator:
    """`validate_order` for one instrument, its units prepared once: the matching engine's per-order check."""

    __slots__ = (
        "instrument",
        "_step_quantum",
        "_tick_quantum",
        "_has_fast_path",
        "_fast_step",
        "_fast_tick",
        "_min_size",
        "_max_size",
        "_min_notional",
    )

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self._step_quantum = _power_of_ten(instrument.step_size)
        self._tick_quantum = _power_of_ten(instrument.tick_size)
        self._has_fast_path = instrument.is_active and self._step_quantum is not None and self._tick_quantum is not None
        # Meaningful only with the fast path, i.e. when both are powers of ten.
        self._fast_step = self._step_quantum or instrument.step_size
        self._fast_tick = self._tick_quantum or instrument.tick_size
        self._min_size = instrument.min_order_size
        self._max_size = min(instrument.max_order_size, MAX_STORED - STORED_QUANTUM)
        self._min_notional = instrument.min_notional

    def validate(
        self,
        side: OrderSide,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        time_in_force: TimeInForce,
        post_only: bool = False,
        reference_price: Decimal | None = None,
    ) -> None:
        """Raise `OrderRejected` naming the first problem (see `validate_order`).

        The common case is accepted by one pass of plain comparisons (the matching engine calls this per order);
        anything that pass does not accept goes through `_explain`, whose checks name the problem and stay the
        authority. The pass is only taken for instruments with power-of-ten units, where being on the grid is one
        quantize.
        """
        if (
            self._has_fast_path
            and side in _SIDES
            and time_in_force in _TIMES_IN_FORCE
            and isinstance(quantity, Decimal)
            and quantity.is_finite()
            and self._min_size <= quantity <= self._max_size
            and quantity.quantize(self._fast_step, ROUND_DOWN, _ROUND) == quantity
            and (price is None or self._is_on_fast_tick(price))
            and (stop_price is None or self._is_on_fast_tick(stop_price))
        ):
            notional_price: Decimal | None
            if order_type == _LIMIT:
                is_valid_shape = stop_price is None and price is not None and (not post_only or time_in_force == _GTC)
                notional_price = price
            elif order_type == _MARKET:
                is_valid_shape = price is None and stop_price is None and not post_only and time_in_force != _GTC
                notional_price = reference_price
            elif order_type == _STOP:
                is_valid_shape = price is None and stop_price is not None and not post_only and time_in_force == _GTC
                notional_price = stop_price
            else:
                is_valid_shape = order_type == _STOP_LIMIT and price is not None and stop_price is not None
                is_valid_shape = is_valid_shape and not post_only
                notional_price = price
            minimum = self._min_notional
            if is_valid_shape and (
                notional_price is None or not minimum or _EXACT.multiply(quantity, notional_price) >= minimum
            ):
                return
        self._explain(side, order_type, quantity, price, stop_price, time_in_force, post_only, reference_price)

    def _is_on_fast_tick(self, price: Decimal) -> bool:
        return (
            isinstance(price, Decimal)
            and price.is_finite()
            and ZERO < price < MAX_STORED
            and price.quantize(self._fast_tick, ROUND_DOWN, _ROUND) == price
        )

    def _explain(
        self,
        side: OrderSide,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        time_in_force: TimeInForce,
        post_only: bool,
        reference_price: Decimal | None,
    ) -> None:
        """Every check in order, raising for the first that fails."""
        if side not in _SIDES or order_type not in _TYPES or time_in_force not in _TIMES_IN_FORCE:
            # The schemas only let the enums' values through: anything else is a bug upstream, not a user's mistake.
            raise ValueError(f"unknown side, type or time in force: {side!r}, {order_type!r}, {time_in_force!r}")
        instrument = self.instrument
        if not instrument.is_active:
            raise OrderRejected(
                RejectCode.INSTRUMENT_INACTIVE, f"{instrument.symbol} on {instrument.exchange} is inactive"
            )
        _check_shape(order_type, price, stop_price, time_in_force, post_only)
        self._check_quantity(quantity)
        if price is not None:
            self._check_price(price, "price")
        if stop_price is not None:
            self._check_price(stop_price, "stop price")
        notional_price = price if price is not None else stop_price if stop_price is not None else reference_price
        if notional_price is not None and instrument.min_notional:
            notional = _EXACT.multiply(quantity, notional_price)
            if notional < instrument.min_notional:
                raise OrderRejected(
                    RejectCode.BELOW_MIN_NOTIONAL,
                    f"notional {_text(notional)} ({_text(quantity)} x {_text(notional_price)}) is below the minimum "
                    f"{_text(instrument.min_notional)}",
                )

    def _check_quantity(self, quantity: Decimal) -> None:
        instrument = self.instrument
        _check_number(quantity, "quantity", RejectCode.INVALID_QUANTITY)
        if not _on_grid(quantity, self._step_quantum, instrument.step_size):
            _check_decimals(quantity, "quantity")
            below, above = instrument.nearest_quantities(quantity)
            raise OrderRejected(
                RejectCode.QUANTITY_NOT_ON_STEP,
                f"quantity {_text(quantity)} is not a multiple of the step {_text(instrument.step_size)}; "
                f"nearest valid quantities {_text(below)} and {_text(above)}",
            )
        if quantity < instrument.min_order_size:
            raise OrderRejected(
                RejectCode.BELOW_MIN_SIZE,
                f"quantity {_text(quantity)} is below the minimum order size {_text(instrument.min_order_size)}",
            )
        if quantity > instrument.max_order_size:
            raise OrderRejected(
                RejectCode.ABOVE_MAX_SIZE,
                f"quantity {_text(quantity)} is above the maximum order size {_text(instrument.max_order_size)}",
            )

    def _check_price(self, price: Decimal, what: str) -> None:
        instrument = self.instrument
        _check_number(price, what, RejectCode.INVALID_PRICE)
        if not _on_grid(price, self._tick_quantum, instrument.tick_size):
            _check_decimals(price, what)
            below, above = instrument.nearest_prices(price)
            raise OrderRejected(
                RejectCode.PRICE_NOT_ON_TICK,
                f"{what} {_text(price)} is not a multiple of the tick {_text(instrument.tick_size)}; "
                f"nearest valid prices {_text(below)} and {_text(above)}",
            )


def _check_number(value: Decimal, what: str, invalid: RejectCode) -> None:
    if not isinstance(value, Decimal):
        # A float here is a bug upstream, not a user's mistake: it must have been converted through str already.
        raise TypeError(f"{what} {value!r} is a {type(value).__name__}; it must be a Decimal")
    if not value.is_finite() or value <= 0:
        raise OrderRejected(invalid, f"{what} {value} must be a positive number")
    if value >= MAX_STORED:
        raise OrderRejected(invalid, f"{what} {_text(value)} is above the largest storable value")


def _on_grid(value: Decimal, quantum: Decimal | None, unit: Decimal) -> bool:
    if quantum is not None:
        return value.quantize(quantum, ROUND_DOWN, _ROUND) == value
    return value.quantize(STORED_QUANTUM, ROUND_DOWN, _ROUND) == value and not _ROUND.remainder(value, unit)


def _check_decimals(value: Decimal, what: str) -> None:
    if value.quantize(STORED_QUANTUM, ROUND_DOWN, _ROUND) != value:
        raise OrderRejected(
            RejectCode.TOO_MANY_DECIMALS, f"{what} {_text(value)} has more than {SCHEMA_DECIMAL_PLACES} decimal places"
        )


def _check_shape(
    order_type: OrderType, price: Decimal | None, stop_price: Decimal | None, tif: TimeInForce, post_only: bool
) -> None:
    has_limit = order_type in _LIMIT_TYPES
    has_stop = order_type in _STOP_TYPES
    if price is None and has_limit:
        raise OrderRejected(RejectCode.PRICE_REQUIRED, f"a {order_type} order needs a price")
    if price is not None and not has_limit:
        raise OrderRejected(RejectCode.PRICE_NOT_ALLOWED, f"a {order_type} order takes no price")
    if stop_price is None and has_stop:
        raise OrderRejected(RejectCode.STOP_PRICE_REQUIRED, f"a {order_type} order needs a stop price")
    if stop_price is not None and not has_stop:
        raise OrderRejected(RejectCode.STOP_PRICE_NOT_ALLOWED, f"a {order_type} order takes no stop price")
    if post_only and (order_type != OrderType.LIMIT or tif != TimeInForce.GTC):
        raise OrderRejected(
            RejectCode.INVALID_TIME_IN_FORCE, f"post-only needs a GTC limit order, not a {tif} {order_type} order"
        )
    if order_type == OrderType.MARKET and tif == TimeInForce.GTC:
        raise OrderRejected(
            RejectCode.INVALID_TIME_IN_FORCE,
            "a market order is immediate-or-cancel by nature: use IOC (or FOK for all or nothing), not GTC",
        )
    if order_type == OrderType.STOP and tif != TimeInForce.GTC:
        raise OrderRejected(
            RejectCode.INVALID_TIME_IN_FORCE,
            f"a stop order waits GTC for its trigger and then fills as a market order; {tif} is not allowed",
        )


def validate_order(
    instrument: Instrument,
    side: OrderSide,
    order_type: OrderType,
    quantity: Decimal,
    price: Decimal | None,
    stop_price: Decimal | None,
    time_in_force: TimeInForce,
    post_only: bool = False,
    *,
    reference_price: Decimal | None = None,
) -> None:
    """Raise `OrderRejected` naming the first problem; never adjusts a value.

    Time in force: market orders take IOC or FOK (GTC would be a lie: nothing of a market order rests); stop orders
    take GTC only (they wait for the trigger, then fill as a market order); stop-limit orders take any, applied to the
    limit order they become when triggered; post-only is for GTC limit orders only. The minimum notional is checked at
    the limit price, the stop price of a stop order, or `reference_price` for a market order (skipped without one).
    Quantities and prices must be positive, below 10**12 and have at most 8 decimals (what DECIMAL(20,8) stores).
    """
    OrderValidator(instrument).validate(
        side, order_type, quantity, price, stop_price, time_in_force, post_only, reference_price=reference_price
    )
