"""What goes into the matching engine and what comes out: order requests, stored working orders, events, and the
engine's errors. `cival.domain.matching` re-exports all of it; import from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from cival.domain.orders import CancelReason, Fill, OrderSide, OrderType, RejectCode, TimeInForce


class OrderNotWorking(ValueError):
    """The order is not working on this engine: unknown, or already filled, cancelled or rejected."""


class DuplicateOrder(ValueError):
    """An order id that is already working on this engine.

    Finished orders are forgotten (the engine's memory stays bounded by what is working): that an id is never reused
    over an order's whole life is the database's job, where it is the primary key.
    """


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order as submitted; validated by the engine, which answers with events."""

    order_id: str
    side: OrderSide
    type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    ts: datetime
    price: Decimal | None = None
    stop_price: Decimal | None = None
    post_only: bool = False


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """A working order as stored: what `open_orders` returns and `restore` takes back.

    `triggered_at` is set for a stop-limit that has triggered and rests as a limit: it joined the book then, so that
    is its time priority (the creation `ts` for every other order).
    """

    request: OrderRequest
    filled_quantity: Decimal = Decimal(0)
    triggered_at: datetime | None = None

    @property
    def priority_ts(self) -> datetime:
        """When the order took its place in the queue."""
        return self.triggered_at or self.request.ts


# The three events the engine creates by the hundred thousand write their slots through the slots' own descriptors:
# a generated frozen __init__ (object.__setattr__ per field) costs half as much again.
def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    setter: Callable[[Any, Any], None] = cls.__dict__[name].__set__
    return setter


@dataclass(frozen=True, slots=True, init=False)
class Filled:
    """Part or all of an order executed."""

    order_id: str
    fill: Fill

    def __init__(self, order_id: str, fill: Fill) -> None:
        _set_filled_order_id(self, order_id)
        _set_filled_fill(self, fill)


@dataclass(frozen=True, slots=True, init=False)
class Rested:
    """The order is working: a limit on the book, or a stop waiting for its trigger."""

    order_id: str

    def __init__(self, order_id: str) -> None:
        _set_rested_order_id(self, order_id)


@dataclass(frozen=True, slots=True, init=False)
class Cancelled:
    """The order stopped working; what was not filled never will be."""

    order_id: str
    reason: CancelReason

    def __init__(self, order_id: str, reason: CancelReason) -> None:
        _set_cancelled_order_id(self, order_id)
        _set_cancelled_reason(self, reason)


_set_filled_order_id, _set_filled_fill = _slot_setter(Filled, "order_id"), _slot_setter(Filled, "fill")
_set_rested_order_id = _slot_setter(Rested, "order_id")
_set_cancelled_order_id, _set_cancelled_reason = _slot_setter(Cancelled, "order_id"), _slot_setter(Cancelled, "reason")


@dataclass(frozen=True, slots=True)
class Rejected:
    """The order was refused and never worked."""

    order_id: str
    reason: RejectCode
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Triggered:
    """A stop's trigger was hit at `ts`: it now works as a market or limit order."""

    order_id: str
    ts: datetime


Event = Filled | Rested | Cancelled | Rejected | Triggered
