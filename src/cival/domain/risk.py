"""Pre-trade risk arithmetic: limit types and units, reduce-only orders, projected exposure, daily loss, leverage.

Pure: no I/O. `services/risk_manager.py` loads a user's limits and standing in one query and asks `evaluate` whether
an order passes; the order rate (a counter in the cache) is the service's.

Bounds are inclusive: a value equal to its limit passes. The exception is `daily_loss`, a loss that has *reached*
its limit already blocks (the issue: "once reached, only orders that reduce risk pass"). Ratios and percentages are
computed with 28 significant digits and compared unrounded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from types import MappingProxyType

from cival.domain.portfolio import USD_STABLECOINS


class LimitType(StrEnum):
    POSITION_SIZE = "position_size"
    DAILY_LOSS = "daily_loss"
    LEVERAGE = "leverage"
    ORDER_NOTIONAL = "order_notional"
    PRICE_COLLAR = "price_collar"
    ORDER_RATE = "order_rate"
    OPEN_ORDERS = "open_orders"


KILL_SWITCH = "kill_switch"
"""A `trading_limits` row of this type holds a user's kill switch: `is_active` is whether it is engaged."""
KILL_SWITCH_ON_DAILY_LOSS = "kill_switch_on_daily_loss"
"""A `trading_limits` row of this type holds whether a daily loss breach engages the kill switch (`is_active`)."""
RESERVED_TYPES = frozenset({KILL_SWITCH, KILL_SWITCH_ON_DAILY_LOSS})

UNITS: Mapping[LimitType, str] = MappingProxyType(
    {
        LimitType.POSITION_SIZE: "quote",
        LimitType.DAILY_LOSS: "usd",
        LimitType.LEVERAGE: "ratio",
        LimitType.ORDER_NOTIONAL: "quote",
        LimitType.PRICE_COLLAR: "percent",
        LimitType.ORDER_RATE: "orders_per_minute",
        LimitType.OPEN_ORDERS: "orders",
    }
)
"""What each limit's value counts: `quote` is the pair's quote asset (USDT on every paper pair)."""

PER_SYMBOL: frozenset[LimitType] = frozenset(
    {LimitType.POSITION_SIZE, LimitType.ORDER_NOTIONAL, LimitType.PRICE_COLLAR, LimitType.OPEN_ORDERS}
)
"""Limits that may name a symbol (a symbol's limit replaces the global one for that symbol); the others are global."""

WHOLE_NUMBERS: frozenset[LimitType] = frozenset({LimitType.ORDER_RATE, LimitType.OPEN_ORDERS})

CAPS_RISK: frozenset[LimitType] = frozenset({LimitType.POSITION_SIZE, LimitType.DAILY_LOSS, LimitType.LEVERAGE})
"""Limits that exist to cap risk: a reduce-only order passes them (and the kill switch). The others guard order
quality and the platform (a fat finger, a runaway loop) and apply to every order."""

DEFAULT_LIMITS: Mapping[LimitType, Decimal] = MappingProxyType(
    {
        LimitType.ORDER_NOTIONAL: Decimal(50_000),
        LimitType.POSITION_SIZE: Decimal(100_000),
        LimitType.DAILY_LOSS: Decimal(5_000),
        LimitType.LEVERAGE: Decimal(2),
        LimitType.ORDER_RATE: Decimal(300),
        LimitType.OPEN_ORDERS: Decimal(200),
    }
)
"""A new user's global limits (docs/api.md says why each); there is no default price collar."""

MAX_LIMIT_VALUE = Decimal(10) ** 12
_EIGHT = Decimal("0.00000001")


class InvalidLimit(ValueError):
    """A limit that cannot be stored; `code` is the stable error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_limit_type(name: str) -> LimitType:
    try:
        return LimitType(name)
    except ValueError:
        known = ", ".join(t.value for t in LimitType)
        raise InvalidLimit("unknown_limit_type", f"unknown limit type {name!r}; one of: {known}") from None


def validate_limit_value(limit_type: LimitType, value: Decimal) -> Decimal:
    """The value, checked: positive, at most 8 decimals and 10^12, whole for counts."""
    try:
        ok = value.is_finite() and value == value.quantize(_EIGHT)
    except InvalidOperation:
        ok = False
    if not ok or value <= 0 or value >= MAX_LIMIT_VALUE:
        raise InvalidLimit(
            "invalid_limit_value",
            f"{limit_type} must be a positive number below 10^12 with at most 8 decimals, got {value}",
        )
    if limit_type in WHOLE_NUMBERS and value != value.to_integral_value():
        raise InvalidLimit("invalid_limit_value", f"{limit_type} counts orders: a whole number, got {value}")
    return value


def validate_scope(limit_type: LimitType, symbol: str | None) -> None:
    if symbol is not None and limit_type not in PER_SYMBOL:
        allowed = ", ".join(sorted(PER_SYMBOL))
        raise InvalidLimit(
            "limit_not_per_symbol", f"{limit_type} applies to the whole account: omit symbol (per-symbol: {allowed})"
        )


# --- inputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    limit_type: LimitType
    value: Decimal
    symbol: str | None = None
    id: uuid.UUID | None = None


def effective(limits: Iterable[Limit], symbol: str) -> dict[LimitType, Limit]:
    """The limits that apply to an order of `symbol`: a symbol's own limit replaces the global one of its type."""
    out: dict[LimitType, Limit] = {}
    for limit in limits:
        if limit.symbol is None:
            out.setdefault(limit.limit_type, limit)
    for limit in limits:
        if limit.symbol == symbol:
            out[limit.limit_type] = limit
    return out


@dataclass(frozen=True)
class OrderIntent:
    """The order being checked."""

    account_id: uuid.UUID | None
    symbol: str
    quote_asset: str
    side: str
    type: str
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass(frozen=True)
class WorkingOrder:
    account_id: uuid.UUID | None
    symbol: str
    side: str
    remaining: Decimal
    reserved: Decimal


@dataclass(frozen=True)
class Standing:
    """Where the user stands: positions, working orders, balances; `start_of_day_value` in USD."""

    positions: Mapping[tuple[uuid.UUID, str], Decimal]
    working: tuple[WorkingOrder, ...]
    balances: Mapping[str, Decimal]
    start_of_day_value: Decimal


@dataclass(frozen=True)
class Breach:
    """Why an order is refused: the limit, what it allows and what the order would make of it."""

    limit_type: str
    detail: str
    limit_value: Decimal | None = None
    attempted_value: Decimal | None = None
    severity: str = "medium"
    limit_id: uuid.UUID | None = None


# --- arithmetic ---------------------------------------------------------------------------------------------


def severity(attempted: Decimal | None, limit: Decimal | None) -> str:
    """How far over the limit: up to 10% over is low, 50% medium, 100% high, beyond (more than twice) critical."""
    if attempted is None or limit is None or limit <= 0:
        return "medium"
    ratio = attempted / limit
    if ratio <= Decimal("1.1"):
        return "low"
    if ratio <= Decimal("1.5"):
        return "medium"
    if ratio <= 2:
        return "high"
    return "critical"


def is_reduce_only(order: OrderIntent, standing: Standing) -> bool:
    """Opposite side of the account's position, and no larger than what working orders of that side leave of it."""
    if order.account_id is None:
        return False
    size = standing.positions.get((order.account_id, order.symbol), Decimal(0))
    if size == 0 or (size > 0) == (order.side == "buy"):
        return False
    same = (order.account_id, order.symbol, order.side)
    pending = sum((w.remaining for w in standing.working if (w.account_id, w.symbol, w.side) == same), Decimal(0))
    return order.quantity + pending <= abs(size)


def collar_distance(price: Decimal, reference: Decimal) -> Decimal:
    """How far `price` is from `reference`, in percent of the reference (either direction)."""
    return abs(price - reference) / reference * 100


def order_notional(order: OrderIntent, reference: Decimal | None) -> Decimal | None:
    """Quantity times the price the order names (limit, else stop); a market order at the reference price."""
    price = order.price if order.price is not None else order.stop_price
    if price is None:
        price = reference
    return None if price is None else order.quantity * price


def projected_position(symbol: str, standing: Standing, side: str | None, quantity: Decimal) -> Decimal:
    """The user's absolute position in `symbol` (all accounts) once working orders of `side` and `quantity` fill.

    With `side=None` (where the user stands now): the larger of the all-buys-fill and all-sells-fill outcomes.
    """
    size = sum((s for (_, sym), s in standing.positions.items() if sym == symbol), Decimal(0))
    buys = sum((w.remaining for w in standing.working if w.symbol == symbol and w.side == "buy"), Decimal(0))
    sells = sum((w.remaining for w in standing.working if w.symbol == symbol and w.side == "sell"), Decimal(0))
    if side == "buy":
        return abs(size + buys + quantity)
    if side == "sell":
        return abs(size - sells - quantity)
    return max(abs(size + buys), abs(size - sells))


def valuation(balances: Mapping[str, Decimal], prices: Mapping[str, Decimal]) -> tuple[Decimal, list[str]]:
    """USD value of the balances, and the held assets without a price (which make any figure unknowable)."""
    total, unpriced = Decimal(0), []
    for asset, amount in balances.items():
        if asset in USD_STABLECOINS:
            total += amount
        elif asset in prices:
            total += amount * prices[asset]
        elif amount:
            unpriced.append(asset)
    return total, sorted(unpriced)


def usd_rate(asset: str, prices: Mapping[str, Decimal]) -> Decimal | None:
    return Decimal(1) if asset in USD_STABLECOINS else prices.get(asset)


def start_of_day_value(
    previous: tuple[date, Decimal] | None, account_openings: Iterable[datetime], deposit_per_account: Decimal
) -> Decimal:
    """The value the day's loss is measured from, in USD.

    The latest earlier snapshot's value, plus the funding of paper accounts opened since that snapshot's day; with no
    earlier snapshot, the funding of every paper account (what the snapshots' `daily_pnl` measures from).
    """
    openings = list(account_openings)
    if previous is None:
        return deposit_per_account * len(openings)
    day, value = previous
    since = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
    return value + deposit_per_account * sum(1 for opened in openings if opened >= since)


def daily_loss(standing: Standing, prices: Mapping[str, Decimal]) -> Decimal | None:
    """Realized plus unrealized loss since 00:00 UTC (0 when up); None when a held asset has no price."""
    value, unpriced = valuation(standing.balances, prices)
    if unpriced:
        return None
    return max(Decimal(0), standing.start_of_day_value - value)


def exposure(standing: Standing, prices: Mapping[str, Decimal], quotes: Mapping[str, str]) -> Decimal | None:
    """Gross exposure in USD: non-stablecoin holdings plus what working buys may still buy (their reservations)."""
    total = Decimal(0)
    for asset, amount in standing.balances.items():
        if asset in USD_STABLECOINS or not amount:
            continue
        if asset not in prices:
            return None
        total += abs(amount) * prices[asset]
    for w in standing.working:
        if w.side != "buy" or not w.reserved:
            continue
        rate = usd_rate(quotes.get(w.symbol, w.symbol.partition("/")[2]), prices)
        if rate is None:
            return None
        total += w.reserved * rate
    return total


def leverage(standing: Standing, prices: Mapping[str, Decimal], quotes: Mapping[str, str]) -> Decimal | None:
    """Gross exposure divided by equity (None when it cannot be valued or there is no equity)."""
    gross = exposure(standing, prices, quotes)
    equity, unpriced = valuation(standing.balances, prices)
    if gross is None or unpriced or equity <= 0:
        return None
    return gross / equity


def symbol_price(symbol: str, prices: Mapping[str, Decimal]) -> Decimal | None:
    """The price of `symbol` in its quote asset, from USD prices (pairs quoted in a USD stablecoin only)."""
    base, _, quote = symbol.partition("/")
    return prices.get(base) if quote in USD_STABLECOINS else None


def current_value(
    limit: Limit,
    standing: Standing,
    prices: Mapping[str, Decimal],
    quotes: Mapping[str, str],
    orders_this_minute: int | None,
) -> Decimal | None:
    """Where the user stands against `limit` now (None: a per-order limit, or a figure that cannot be valued).

    `position_size`: the largest position (all accounts, working orders of the growing side filled) at the latest
    price, of the limit's symbol or of any symbol; `open_orders` counts working orders (of its symbol).
    """
    kind = limit.limit_type
    if kind is LimitType.POSITION_SIZE:
        symbols = {sym for _, sym in standing.positions} | {w.symbol for w in standing.working}
        if limit.symbol is not None:
            symbols = {limit.symbol}
        values = []
        for sym in symbols:
            size = projected_position(sym, standing, None, Decimal(0))
            price = symbol_price(sym, prices)
            if size and price is None:
                return None
            values.append(size * (price or 0))
        return max(values, default=Decimal(0))
    if kind is LimitType.DAILY_LOSS:
        return daily_loss(standing, prices)
    if kind is LimitType.LEVERAGE:
        return leverage(standing, prices, quotes)
    if kind is LimitType.ORDER_RATE:
        return None if orders_this_minute is None else Decimal(orders_this_minute)
    if kind is LimitType.OPEN_ORDERS:
        return Decimal(sum(1 for w in standing.working if limit.symbol is None or w.symbol == limit.symbol))
    return None


# --- the checks ---------------------------------------------------------------------------------------------


def _over(limit: Limit, attempted: Decimal, detail: str) -> Breach:
    return Breach(limit.limit_type.value, detail, limit.value, attempted, severity(attempted, limit.value), limit.id)


def _unknowable(limit: Limit, detail: str) -> Breach:
    return Breach(limit.limit_type.value, detail, limit.value, None, "medium", limit.id)


def _fmt(value: Decimal) -> str:
    return format(value.normalize() if value == value.to_integral_value() else value, "f")


def check_price_collar(limit: Limit, order: OrderIntent, reference: Decimal | None) -> Breach | None:
    prices = [p for p in (order.price, order.stop_price) if p is not None]
    if not prices:
        return None  # a market order names no price
    if reference is None or reference <= 0:
        return _unknowable(limit, f"no reference price for {order.symbol}: a priced order cannot be checked")
    distance = max(collar_distance(p, reference) for p in prices)
    if distance <= limit.value:
        return None
    return _over(
        limit,
        distance,
        f"price is {distance:.4f}% from the reference price {_fmt(reference)}; the collar allows {_fmt(limit.value)}%",
    )


def check_order_notional(limit: Limit, order: OrderIntent, reference: Decimal | None) -> Breach | None:
    notional = order_notional(order, reference)
    if notional is None:
        return _unknowable(limit, f"no reference price for {order.symbol}: a market order cannot be valued")
    if notional <= limit.value:
        return None
    return _over(
        limit,
        notional,
        f"order value {_fmt(notional)} {order.quote_asset} is above the limit of {_fmt(limit.value)}",
    )


def check_position_size(
    limit: Limit, order: OrderIntent, standing: Standing, reference: Decimal | None
) -> Breach | None:
    price = reference or order.price or order.stop_price
    if price is None:
        return _unknowable(limit, f"no reference price for {order.symbol}: the position cannot be valued")
    value = projected_position(order.symbol, standing, order.side, order.quantity) * price
    if value <= limit.value:
        return None
    return _over(
        limit,
        value,
        f"{order.symbol} position would be worth {_fmt(value)} {order.quote_asset} once this and the working "
        f"{order.side} orders fill; the limit is {_fmt(limit.value)}",
    )


def check_daily_loss(limit: Limit, loss: Decimal | None) -> Breach | None:
    if loss is None:
        return _unknowable(limit, "a held asset has no price: today's loss cannot be measured")
    if loss < limit.value:
        return None
    return _over(
        limit,
        loss,
        f"today's loss {_fmt(loss)} USD has reached the limit of {_fmt(limit.value)}: only orders that reduce a "
        "position pass until 00:00 UTC",
    )


def check_leverage(
    limit: Limit,
    order: OrderIntent,
    standing: Standing,
    reference: Decimal | None,
    prices: Mapping[str, Decimal],
    quotes: Mapping[str, str],
) -> Breach | None:
    gross = exposure(standing, prices, quotes)
    equity, unpriced = valuation(standing.balances, prices)
    notional = order_notional(order, reference)
    rate = usd_rate(order.quote_asset, prices)
    if gross is None or unpriced or notional is None or rate is None:
        return _unknowable(limit, "an asset has no price: leverage cannot be measured")
    if equity <= 0:
        return _unknowable(limit, "the account has no equity: any exposure is unlimited leverage")
    after = (gross + notional * rate) / equity
    if after <= limit.value:
        return None
    return _over(limit, after, f"leverage would be {after:.4f} (gross exposure / equity); the limit is {limit.value}")


def check_open_orders(limit: Limit, order: OrderIntent, standing: Standing) -> Breach | None:
    count = sum(1 for w in standing.working if limit.symbol is None or w.symbol == limit.symbol)
    after = Decimal(count + 1)
    if after <= limit.value:
        return None
    scope = f" of {limit.symbol}" if limit.symbol else ""
    return _over(limit, after, f"{count} orders{scope} are working; the limit is {_fmt(limit.value)}")


def check_order_rate(limit: Limit, count: int) -> Breach | None:
    if count <= limit.value:
        return None
    return _over(
        limit, Decimal(count), f"this is order {count} this minute; the limit is {_fmt(limit.value)} per minute"
    )


def check_kill_switch(engaged: bool, reduce_only: bool) -> Breach | None:
    if not engaged or reduce_only:
        return None
    return Breach(KILL_SWITCH, "the kill switch is on: only orders that reduce a position pass", severity="high")


def evaluate(
    order: OrderIntent,
    limits: Mapping[LimitType, Limit],
    standing: Standing,
    *,
    kill_switch: bool,
    reference: Decimal | None,
    prices: Mapping[str, Decimal],
    quotes: Mapping[str, str],
) -> Breach | None:
    """The first limit the order breaks (order rate aside), checked cheapest first; None when it passes."""
    reduce_only = is_reduce_only(order, standing)
    found = check_kill_switch(kill_switch, reduce_only)
    if found:
        return found
    if LimitType.PRICE_COLLAR in limits:
        found = check_price_collar(limits[LimitType.PRICE_COLLAR], order, reference)
    if not found and LimitType.ORDER_NOTIONAL in limits:
        found = check_order_notional(limits[LimitType.ORDER_NOTIONAL], order, reference)
    if not found and LimitType.OPEN_ORDERS in limits:
        found = check_open_orders(limits[LimitType.OPEN_ORDERS], order, standing)
    if found or reduce_only:
        return found
    if LimitType.DAILY_LOSS in limits:
        found = check_daily_loss(limits[LimitType.DAILY_LOSS], daily_loss(standing, prices))
    if not found and LimitType.POSITION_SIZE in limits:
        found = check_position_size(limits[LimitType.POSITION_SIZE], order, standing, reference)
    if not found and LimitType.LEVERAGE in limits:
        found = check_leverage(limits[LimitType.LEVERAGE], order, standing, reference, prices, quotes)
    return found
