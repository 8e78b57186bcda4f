"""Orders: their enums, the status state machine, and fills and their arithmetic (an order checked against its pair:
`cival.domain.order_validation`).

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

from cival.domain.instruments import SCHEMA_DECIMAL_PLACES

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
