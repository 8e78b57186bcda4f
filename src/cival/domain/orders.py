"""Orders: their enums, the status state machine, fills and their arithmetic, and validation against an instrument.

Status changes go through one table, `TRANSITIONS`, and nothing else:

- `pending` is a working order with nothing filled (the spec has no separate "open"/"new" status).
- `partial` is a working order with some of its quantity filled; `partial -> partial` is allowed because every
  further fill is a real event that leaves the order partial.
- `unknown` is the outcome of a send (or a cancel) that timed out: the venue may or may not hold the order, may or
  may not have filled it. Nothing else may be decided while it is unknown — no re-send, no release of reserved
  funds — until the venue has been asked and has answered (reconciliation); the answer moves it to `partial`,
  `filled`, `cancelled` or `rejected`. A query that times out again leaves it `unknown` (`unknown -> unknown`). It
  never returns to `pending`: a re-send loop keyed on `pending` would send it twice (a network error is not a
  failed order, Hummingbot #6968). An answer of "working, nothing filled yet" therefore leaves it `unknown` — known
  to the venue, never to be sent again — until its first fill or its cancel.
- `filled`, `cancelled` and `rejected` are terminal: no transition leaves them, not even to themselves.

Self-transitions are therefore not a blanket way to re-apply an event idempotently: they exist only where a new,
distinct event really leaves the status unchanged (`partial`, `unknown`). A duplicate event is recognised by its
identity — a fill by its `trade_id` (`FillLedger` in memory, a unique key in the database) — so a duplicate
"filled" is refused loudly instead of being swallowed.

Arithmetic is exact: filled quantity and fees are sums, the average price is the volume-weighted mean of the fills,
kept at full precision in memory and rounded to the schema's 8 decimals (half-even) only when stored
(`quantize_stored`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, NamedTuple

from cival.domain.instruments import SCHEMA_DECIMAL_PLACES, Instrument

ZERO = Decimal(0)
STORED_QUANTUM = Decimal(1).scaleb(-SCHEMA_DECIMAL_PLACES)
"""The smallest stored unit, `0.00000001`: DECIMAL(20,8)."""
MAX_STORED = Decimal(10) ** (20 - SCHEMA_DECIMAL_PLACES)
"""DECIMAL(20,8) holds 12 integer digits: every stored price and quantity is below this."""

# Products and sums of DECIMAL(20,8) values need at most ~42 digits; Inexact is trapped, so nothing is rounded silently.
_EXACT = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
# Quotients (average prices) are rarely exact: 60 significant digits is "full precision" for 8 stored decimals.
_QUOTIENT = Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
_ROUND = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow])


class OrderSide(StrEnum):
    """Which way the order trades the base asset."""

    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    """How the order is priced and when it becomes active."""

    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    """How long the order works: until cancelled, immediately or cancel the rest, fill entirely or not at all."""

    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderStatus(StrEnum):
    """Where the order is in its life; change it only through `transition`."""

    PENDING = "pending"
    PARTIAL = "partial"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    """A send or cancel timed out: ask the venue before deciding anything else (see the module docstring)."""


class RejectCode(StrEnum):
    """Why an order was refused before it worked: a stable machine-readable code."""

    INVALID_QUANTITY = "invalid_quantity"
    INVALID_PRICE = "invalid_price"
    TOO_MANY_DECIMALS = "too_many_decimals"
    QUANTITY_NOT_ON_STEP = "quantity_not_on_step"
    PRICE_NOT_ON_TICK = "price_not_on_tick"
    BELOW_MIN_SIZE = "below_min_size"
    ABOVE_MAX_SIZE = "above_max_size"
    BELOW_MIN_NOTIONAL = "below_min_notional"
    PRICE_NOT_ALLOWED = "price_not_allowed"
    PRICE_REQUIRED = "price_required"
    STOP_PRICE_REQUIRED = "stop_price_required"
    STOP_PRICE_NOT_ALLOWED = "stop_price_not_allowed"
    INVALID_TIME_IN_FORCE = "invalid_time_in_force"
    INSTRUMENT_INACTIVE = "instrument_inactive"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    STOP_WOULD_TRIGGER_IMMEDIATELY = "stop_would_trigger_immediately"


class CancelReason(StrEnum):
    """Why a working order stopped working without being filled entirely."""

    REQUESTED = "requested"
    IOC_REMAINDER = "ioc_remainder"
    """What an IOC (or market, IOC by nature) order could not fill at once."""
    FOK_UNFILLED = "fok_unfilled"
    """A FOK order that could not be filled entirely: nothing was filled."""


TERMINAL_STATUSES: frozenset[OrderStatus] = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})
WORKING_STATUSES: frozenset[OrderStatus] = frozenset({OrderStatus.PENDING, OrderStatus.PARTIAL})

TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = MappingProxyType(
    {
        OrderStatus.PENDING: frozenset(
            {OrderStatus.PARTIAL, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.UNKNOWN}
        ),
        # Once something filled, the venue had accepted the order: it can no longer be rejected.
        OrderStatus.PARTIAL: frozenset(
            {OrderStatus.PARTIAL, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.UNKNOWN}
        ),
        # The venue answered after all: working (pending), or what it did with the order.
        OrderStatus.UNKNOWN: frozenset(
            {
                OrderStatus.PENDING,
                OrderStatus.PARTIAL,
                OrderStatus.FILLED,
                OrderStatus.CANCELLED,
                OrderStatus.REJECTED,
                OrderStatus.UNKNOWN,
            }
        ),
        OrderStatus.FILLED: frozenset(),
        OrderStatus.CANCELLED: frozenset(),
        OrderStatus.REJECTED: frozenset(),
    }
)
"""Every allowed status change, `current -> {new, ...}`; anything not listed is illegal."""


class IllegalTransition(ValueError):
    """A status change the transition table does not allow."""

    def __init__(self, current: OrderStatus, new: OrderStatus) -> None:
        self.current = current
        self.new = new
        why = " (terminal statuses are final)" if current in TERMINAL_STATUSES else ""
        super().__init__(f"illegal order status transition {current} -> {new}{why}")


class Overfill(ValueError):
    """A fill that would take the filled quantity above the order's quantity."""


class ConflictingFill(ValueError):
    """A fill whose trade_id was already applied with different values."""


class OrderRejected(ValueError):
    """An order refused by validation, with a stable `code` and a human `detail`."""

    def __init__(self, code: RejectCode, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


def transition(current: OrderStatus, new: OrderStatus) -> OrderStatus:
    """`new` if the table allows `current -> new`, else raise `IllegalTransition`."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(current, new)
    return new


def quantize_stored(value: Decimal) -> Decimal:
    """`value` rounded half-even to the 8 decimals the database stores."""
    return value.quantize(STORED_QUANTUM, rounding=ROUND_HALF_EVEN, context=_ROUND)


Liquidity = Literal["maker", "taker"]


@dataclass(frozen=True, slots=True, init=False)
class Fill:
    """One execution of (part of) an order; `fee` is in the quote asset."""

    trade_id: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    liquidity: Liquidity
    ts: datetime

    # Written out rather than generated: the dataclass's frozen __init__ costs 60% more, and the matching engine
    # creates one of these per execution.
    def __init__(
        self, trade_id: str, quantity: Decimal, price: Decimal, fee: Decimal, liquidity: Liquidity, ts: datetime
    ) -> None:
        if not (isinstance(quantity, Decimal) and isinstance(price, Decimal) and isinstance(fee, Decimal)):
            raise TypeError(f"fill {trade_id}: quantity, price and fee must be Decimals")
        if not quantity > ZERO:
            raise ValueError(f"fill {trade_id}: quantity {quantity} must be positive")
        if not price > ZERO:
            raise ValueError(f"fill {trade_id}: price {price} must be positive")
        if not fee >= ZERO:
            raise ValueError(f"fill {trade_id}: fee {fee} must not be negative")
        if liquidity != "maker" and liquidity != "taker":
            raise ValueError(f"fill {trade_id}: liquidity {liquidity!r} must be 'maker' or 'taker'")
        if ts.tzinfo is None:
            raise ValueError(f"fill {trade_id}: ts {ts.isoformat()} is naive; it must be timezone-aware")
        _set_trade_id(self, trade_id)
        _set_quantity(self, quantity)
        _set_price(self, price)
        _set_fee(self, fee)
        _set_liquidity(self, liquidity)
        _set_ts(self, ts)


# The slots' own setters: a frozen dataclass refuses `self.x = ...`, and these cost a third less than
# `object.__setattr__(self, "x", ...)`, which looks the slot up by name each time.
_set_trade_id, _set_quantity, _set_price, _set_fee, _set_liquidity, _set_ts = (
    Fill.__dict__[name].__set__ for name in ("trade_id", "quantity", "price", "fee", "liquidity", "ts")
)


class FillOutcome(NamedTuple):
    """An order's fill totals after one more fill; `average_price` at full precision (quantize it to store)."""

    filled_quantity: Decimal
    average_price: Decimal
    fees: Decimal
    status: OrderStatus


def _status_after_fill(
    order_quantity: Decimal, filled_quantity: Decimal, fill: Fill, status: OrderStatus
) -> tuple[Decimal, OrderStatus]:
    new_filled = _EXACT.add(filled_quantity, fill.quantity)
    if new_filled > order_quantity:
        raise Overfill(
            f"fill {fill.trade_id} of {fill.quantity} would fill {new_filled} of an order for {order_quantity}"
        )
    new_status = OrderStatus.FILLED if new_filled == order_quantity else OrderStatus.PARTIAL
    return new_filled, transition(status, new_status)


def apply_fill(
    order_quantity: Decimal,
    filled_quantity: Decimal,
    average_price: Decimal | None,
    fees: Decimal,
    fill: Fill,
    *,
    status: OrderStatus | None = None,
) -> FillOutcome:
    """The totals after `fill`; raises `Overfill`, or `IllegalTransition` if `status` cannot take a fill.

    `status` defaults to `pending` with nothing filled and `partial` otherwise. Pass the full-precision average this
    function returned last time: an average already rounded to 8 decimals carries its rounding into every later one,
    so rebuild from the fills (`OrderState`) when only the stored value is at hand.
    """
    if status is None:
        status = OrderStatus.PENDING if filled_quantity == 0 else OrderStatus.PARTIAL
    if filled_quantity and average_price is None:
        raise ValueError(f"an order with {filled_quantity} filled must have an average price")
    new_filled, new_status = _status_after_fill(order_quantity, filled_quantity, fill, status)
    notional = _EXACT.add(
        _EXACT.multiply(average_price or ZERO, filled_quantity), _EXACT.multiply(fill.price, fill.quantity)
    )
    return FillOutcome(new_filled, _QUOTIENT.divide(notional, new_filled), _EXACT.add(fees, fill.fee), new_status)


@dataclass(slots=True)
class OrderState:
    """One order's running totals and status; `notional` (sum of price x quantity) keeps the average exact."""

    quantity: Decimal
    filled_quantity: Decimal = ZERO
    notional: Decimal = ZERO
    fees: Decimal = ZERO
    status: OrderStatus = OrderStatus.PENDING

    @property
    def average_price(self) -> Decimal | None:
        """Volume-weighted average fill price at full precision, or None before the first fill."""
        if not self.filled_quantity:
            return None
        return _QUOTIENT.divide(self.notional, self.filled_quantity)

    @property
    def remaining(self) -> Decimal:
        """Quantity still to fill."""
        return _EXACT.subtract(self.quantity, self.filled_quantity)

    def apply(self, fill: Fill) -> None:
        """Add `fill`; raises `Overfill` or `IllegalTransition` and then changes nothing."""
        self.filled_quantity, self.status = _status_after_fill(self.quantity, self.filled_quantity, fill, self.status)
        self.notional = _EXACT.add(self.notional, _EXACT.multiply(fill.price, fill.quantity))
        self.fees = _EXACT.add(self.fees, fill.fee)

    def set_status(self, new: OrderStatus) -> None:
        """Move to `new` through the transition table."""
        self.status = transition(self.status, new)


class FillLedger:
    """One order's fills applied once each: a repeated `trade_id` is ignored, so re-delivery is harmless."""

    def __init__(self, state: OrderState) -> None:
        self.state = state
        self._fills: dict[str, Fill] = {}

    @property
    def fills(self) -> tuple[Fill, ...]:
        """The applied fills in the order they were applied."""
        return tuple(self._fills.values())

    def apply(self, fill: Fill) -> bool:
        """Apply `fill` and return True, or return False if its trade_id was already applied."""
        seen = self._fills.get(fill.trade_id)
        if seen is not None:
            if seen != fill:
                raise ConflictingFill(f"trade {fill.trade_id} was applied as {seen} and now arrives as {fill}")
            return False
        self.state.apply(fill)
        self._fills[fill.trade_id] = fill
        return True


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
