"""Positions and PnL, balance reservations for spot fills, and portfolio valuation: pure arithmetic, no I/O.

Rounding. The database stores DECIMAL(20,8):

- Inputs that are stored amounts (trade quantities, prices and fees; balances; reservations) must lie on the
  8-decimal grid, and anything off it is refused (`InvalidAmount`), so sums of them are stored without rounding.
- Arithmetic is exact: it runs in a decimal context that traps `Inexact`, so nothing is rounded silently.
- A weighted average entry price is the one value that cannot be exact. `average_price` is rounded half-even to
  8 decimals whenever it changes, and every PnL figure uses that stored average. What the rounding adds to or drops
  from the position's cost, `size * (rounded - exact mean of the stored average and the fill)`, is an exact decimal
  of at most half a unit in the 8th decimal per unit of size, booked to `realized_pnl` by the trade that moved the
  average. Hence `size` and `average_price` are stored as they are (a position reloaded from its row and updated
  equals the fold of its trades, exactly), and `realized_pnl + unrealized_pnl(mark)` equals the cash PnL
  `sum(sell qty * price) - sum(buy qty * price) + size * mark`, exactly. As each add rounds from the stored
  average (what an update of a reloaded row computes), after k adds the average is within k/2 units of the 8th
  decimal of the exact mean of all entries.
- Products (`realized_pnl` carries up to 16 decimals, `unrealized_pnl`, `market_value`, USD values, snapshot figures)
  stay exact here; `to_storage` rounds them half-even to 8 decimals once, where they are written or shown.

Fees are never part of `realized_pnl`: a position's `fees_paid` sums them (in the quote asset, as the paper exchange
charges them), and `net_pnl` = realized + unrealized - fees.

Reservations (all in `required_reservation`): an open sell holds its remaining base quantity; an open buy holds
`ceil_8dp(remaining * price * (1 + fee_rate))` of the quote asset, with `price` the limit price, or for market and
stop orders the worst price the order may fill at (the level its book walk reaches, or a protection bound the
engine enforces). The reservation is a function of the remaining quantity only, so an account's locked amount is
always the sum of its open orders' reservations: a fill passes the order's reservation before and after
(`reserved`, `still_reserved`) to `settle_buy`/`settle_sell`, which take the fill's cost from it and return the
surplus to free; a cancel releases the reservation; a completed order holds nothing. With fees from `fill_fee`
(rounded down) and fills no worse than `price`, the reservation always covers the fill; a fee computed otherwise
may draw its last units from free, and `InsufficientFunds` is raised when free cannot cover them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import (
    ROUND_05UP,
    ROUND_CEILING,
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from types import MappingProxyType
from typing import Literal, Protocol

from cival.domain.instruments import SCHEMA_DECIMAL_PLACES

SideLiteral = Literal["buy", "sell"]
OrderTypeLiteral = Literal["market", "limit", "stop", "stop_limit"]
AssetRole = Literal["base", "quote"]

STORAGE_UNIT = Decimal(1).scaleb(-SCHEMA_DECIMAL_PLACES)
"""The smallest amount DECIMAL(20,8) holds: 0.00000001."""

USD_STABLECOINS = frozenset({"USD", "USDT", "USDC"})
"""Assets valued at exactly 1 USD: USDT is the quote of every feed, so pricing it from a feed would be circular."""

_ZERO = Decimal(0)
_ORDER_TYPES: frozenset[str] = frozenset({"market", "limit", "stop", "stop_limit"})
# Enough digits for any product of DECIMAL(20,8) values and sums of many; Inexact is trapped, so an operation that
# would have to round raises instead.
_EXACT = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_ROUNDING = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow])
_TO_ODD = Context(prec=100, rounding=ROUND_05UP, traps=[InvalidOperation, DivisionByZero, Overflow])
"""Divides rounding "to odd" (ROUND_05UP): an inexact quotient never ends in 0 or 5, so with digits to spare it never
sits on a tie of a later rounding to fewer places that the exact quotient is not on, nor crosses one: rounding it
again is rounding the exact quotient once."""


class PortfolioError(ValueError):
    """Base of the portfolio arithmetic's errors."""


class InvalidAmount(PortfolioError):
    """An amount that is not a finite Decimal, has the wrong sign, or lies off the 8-decimal grid."""


class InsufficientFunds(PortfolioError):
    """The free balance of `asset` cannot cover `needed`; `available` is what is free."""

    def __init__(self, asset: str, needed: Decimal, available: Decimal) -> None:
        super().__init__(f"insufficient {asset}: {needed} needed, {available} free")
        self.asset = asset
        self.needed = needed
        self.available = available


class LockedFundsShortfall(PortfolioError):
    """Releasing or consuming more of `asset` than is locked: a bookkeeping bug, not a user's mistake."""

    def __init__(self, asset: str, needed: Decimal, locked: Decimal) -> None:
        super().__init__(f"cannot take {needed} {asset} from the locked balance: only {locked} is locked")
        self.asset = asset
        self.needed = needed
        self.locked = locked


def to_storage(value: Decimal) -> Decimal:
    """`value` rounded half-even to the 8 decimals DECIMAL(20,8) stores."""
    result = value.quantize(STORAGE_UNIT, rounding=ROUND_HALF_EVEN, context=_ROUNDING)
    return result if result else result.copy_abs()  # no "-0E-8"


def _finite(value: object, what: str) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidAmount(f"{what} {value!r} must be a finite Decimal")
    return value


def _on_grid(value: Decimal) -> bool:
    try:
        _EXACT.quantize(value, STORAGE_UNIT)
    except (Inexact, InvalidOperation):
        return False
    return True


def _amount(value: object, what: str, *, positive: bool = False) -> Decimal:
    """`value` checked to be a non-negative (or positive) Decimal on the 8-decimal grid."""
    amount = _finite(value, what)
    if amount < 0 or (positive and amount == 0):
        raise InvalidAmount(f"{what} {amount} must be {'positive' if positive else 'non-negative'}")
    if not _on_grid(amount):
        raise InvalidAmount(f"{what} {amount} has more than {SCHEMA_DECIMAL_PLACES} decimals")
    return amount


def _price(value: object, what: str) -> Decimal:
    price = _finite(value, what)
    if price <= 0:
        raise InvalidAmount(f"{what} {price} must be positive")
    return price


def _side(value: str) -> SideLiteral:
    if value == "buy":
        return "buy"
    if value == "sell":
        return "sell"
    raise PortfolioError(f"side {value!r} must be 'buy' or 'sell'")


# --- Positions --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """A net position in one symbol: `size` > 0 long, < 0 short; `average_price` is 0 exactly when flat."""

    symbol: str
    size: Decimal
    average_price: Decimal
    realized_pnl: Decimal
    fees_paid: Decimal = _ZERO

    def __post_init__(self) -> None:
        if not self.symbol:
            raise PortfolioError("symbol must not be empty")
        _finite(self.size, "size")
        if not _on_grid(self.size):
            raise InvalidAmount(f"size {self.size} has more than {SCHEMA_DECIMAL_PLACES} decimals")
        _amount(self.average_price, "average_price")
        _finite(self.realized_pnl, "realized_pnl")
        _finite(self.fees_paid, "fees_paid")
        if self.fees_paid < 0:
            raise InvalidAmount(f"fees_paid {self.fees_paid} must be non-negative")
        if (self.size == 0) != (self.average_price == 0):
            raise InvalidAmount(f"average_price {self.average_price} must be 0 exactly when size ({self.size}) is")

    @classmethod
    def flat(cls, symbol: str) -> Position:
        """No position and no history."""
        return cls(symbol, _ZERO, _ZERO, _ZERO)

    @property
    def is_flat(self) -> bool:
        """Whether there is no open quantity."""
        return self.size == 0


class TradeLike(Protocol):
    """What `fold_trades` reads of a trade: the `trades` table's columns."""

    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> str: ...
    @property
    def quantity(self) -> Decimal: ...
    @property
    def price(self) -> Decimal: ...
    @property
    def fees(self) -> Decimal: ...


def _average(cost: Decimal, size: Decimal) -> Decimal:
    """`cost / size` rounded half-even to 8 decimals, as from the exact quotient (no double rounding): the quotient
    to 100 digits rounded to odd (`_TO_ODD`; an average price has at most 12 before the point, so 80 and more after
    it where 8 and 2 would do), then to 8 decimals."""
    return _TO_ODD.divide(cost, size).quantize(STORAGE_UNIT, rounding=ROUND_HALF_EVEN, context=_ROUNDING)


def apply_trade(
    position: Position, side: SideLiteral, quantity: Decimal, price: Decimal, fee: Decimal = _ZERO
) -> Position:
    """The position after one fill; fees go to `fees_paid`, never into `realized_pnl` (see the module docstring)."""
    side = _side(side)
    quantity = _amount(quantity, "quantity", positive=True)
    price = _amount(price, "price", positive=True)
    fee = _amount(fee, "fee")
    with localcontext(_EXACT):
        size, average = position.size, position.average_price
        signed = quantity if side == "buy" else -quantity
        new_size = size + signed
        if size == 0 or (size > 0) == (signed > 0):
            # Opening or adding: the cost is exact, its average is rounded; the difference is realized so that
            # realized + unrealized stays equal to the cash PnL.
            cost = size * average + signed * price
            new_average = _average(cost, new_size)
            realized = new_size * new_average - cost
        elif new_size == 0 or (new_size > 0) == (size > 0):
            # Reducing: (price - avg) per unit closed for a long, (avg - price) for a short; the average is kept.
            realized = -signed * (price - average)
            new_average = average if new_size else _ZERO
        else:
            # Through zero: the whole old position closes at `price`, and the remainder opens there.
            realized = size * (price - average)
            new_average = price
        return Position(
            position.symbol, new_size, new_average, position.realized_pnl + realized, position.fees_paid + fee
        )


def fold_trades(symbol: str, trades: Iterable[TradeLike]) -> Position:
    """The position a sequence of trades of `symbol` builds from flat: the reference every stored position equals."""
    position = Position.flat(symbol)
    for trade in trades:
        if trade.symbol != symbol:
            raise PortfolioError(f"a {trade.symbol} trade cannot be folded into a {symbol} position")
        position = apply_trade(position, _side(trade.side), trade.quantity, trade.price, trade.fees)
    return position


def market_value(position: Position, mark_price: Decimal) -> Decimal:
    """`size * mark`: negative for a short."""
    mark = _price(mark_price, "mark_price")
    with localcontext(_EXACT):
        return position.size * mark


def unrealized_pnl(position: Position, mark_price: Decimal) -> Decimal:
    """`size * (mark - average_price)`: what closing at `mark` would realize, before fees."""
    mark = _price(mark_price, "mark_price")
    with localcontext(_EXACT):
        return position.size * (mark - position.average_price)


def net_pnl(position: Position, mark_price: Decimal) -> Decimal:
    """Realized plus unrealized PnL at `mark`, less the fees paid."""
    with localcontext(_EXACT):
        return position.realized_pnl + unrealized_pnl(position, mark_price) - position.fees_paid


# --- Balances and reservations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Balance:
    """One asset's balance: `free` can be spent, `locked` is reserved by open orders."""

    asset: str
    free: Decimal
    locked: Decimal = _ZERO

    def __post_init__(self) -> None:
        if not self.asset:
            raise PortfolioError("asset must not be empty")
        _amount(self.free, f"{self.asset} free")
        _amount(self.locked, f"{self.asset} locked")

    @property
    def total(self) -> Decimal:
        """free + locked."""
        with localcontext(_EXACT):
            return self.free + self.locked


def reserve(balance: Balance, amount: Decimal) -> Balance:
    """Move `amount` from free to locked."""
    amount = _amount(amount, "reservation")
    if amount > balance.free:
        raise InsufficientFunds(balance.asset, amount, balance.free)
    with localcontext(_EXACT):
        return Balance(balance.asset, balance.free - amount, balance.locked + amount)


def release(balance: Balance, amount: Decimal) -> Balance:
    """Move `amount` from locked back to free."""
    amount = _amount(amount, "release")
    if amount > balance.locked:
        raise LockedFundsShortfall(balance.asset, amount, balance.locked)
    with localcontext(_EXACT):
        return Balance(balance.asset, balance.free + amount, balance.locked - amount)


def fill_fee(quantity: Decimal, price: Decimal, fee_rate: Decimal) -> Decimal:
    """`quantity * price * fee_rate` in the quote asset, rounded down to 8 decimals (why: module docstring)."""
    quantity = _amount(quantity, "quantity", positive=True)
    price = _amount(price, "price", positive=True)
    rate = _fee_rate(fee_rate)
    with localcontext(_EXACT):
        return (quantity * price * rate).quantize(STORAGE_UNIT, rounding=ROUND_DOWN, context=_ROUNDING)


def _fee_rate(value: Decimal) -> Decimal:
    rate = _finite(value, "fee_rate")
    if not 0 <= rate < 1:
        raise InvalidAmount(f"fee_rate {rate} must be at least 0 and below 1")
    return rate


def required_reservation(
    side: SideLiteral, order_type: OrderTypeLiteral, quantity: Decimal, price: Decimal | None, fee_rate: Decimal
) -> tuple[AssetRole, Decimal]:
    """What an open order for `quantity` (its remaining quantity) holds, and of which asset of its pair."""
    side = _side(side)
    if order_type not in _ORDER_TYPES:
        raise PortfolioError(f"order type {order_type!r} must be one of {sorted(_ORDER_TYPES)}")
    quantity = _amount(quantity, "quantity")
    rate = _fee_rate(fee_rate)
    if side == "sell":
        return "base", quantity
    if price is None:
        raise PortfolioError(f"a {order_type} buy needs a price to reserve against: its limit or its worst fill price")
    bound = _amount(price, "price", positive=True)
    with localcontext(_EXACT):
        # Rounded up: the reservation must cover every fill, and `fill_fee` rounds down, so the ceiling suffices.
        held = (quantity * bound * (1 + rate)).quantize(STORAGE_UNIT, rounding=ROUND_CEILING, context=_ROUNDING)
    return "quote", held


def _notional(quantity: Decimal, price: Decimal) -> Decimal:
    with localcontext(_EXACT):
        notional = quantity * price
    if not _on_grid(notional):
        # A balance cannot hold it; the paper pairs' tick and step keep every notional on the grid.
        raise InvalidAmount(
            f"notional {quantity} * {price} = {notional} has more than {SCHEMA_DECIMAL_PLACES} decimals"
        )
    return notional


def _settle(
    paying: Balance, receiving: Balance, paid: Decimal, received: Decimal, reserved: Decimal, still_reserved: Decimal
) -> tuple[Balance, Balance]:
    """Pay `paid` out of the order's reservation (`reserved` before, `still_reserved` after), the rest from free."""
    if paying.asset == receiving.asset:
        raise PortfolioError(f"a fill must exchange two different assets, not {paying.asset} for itself")
    reserved = _amount(reserved, "reserved")
    still_reserved = _amount(still_reserved, "still_reserved")
    if reserved > paying.locked:
        raise LockedFundsShortfall(paying.asset, reserved, paying.locked)
    with localcontext(_EXACT):
        free = paying.free + reserved - still_reserved - paid
        if free < 0:
            raise InsufficientFunds(paying.asset, paid + still_reserved - reserved, paying.free)
        paying = Balance(paying.asset, free, paying.locked - reserved + still_reserved)
        receiving = Balance(receiving.asset, receiving.free + received, receiving.locked)
    return paying, receiving


def settle_buy(
    base: Balance,
    quote: Balance,
    *,
    quantity: Decimal,
    price: Decimal,
    fee: Decimal,
    reserved: Decimal,
    still_reserved: Decimal,
) -> tuple[Balance, Balance]:
    """(base, quote) after a buy fill: quantity * price + fee leaves quote, quantity arrives in free base."""
    quantity = _amount(quantity, "quantity", positive=True)
    price = _amount(price, "price", positive=True)
    fee = _amount(fee, "fee")
    with localcontext(_EXACT):
        cost = _notional(quantity, price) + fee
    quote, base = _settle(quote, base, cost, quantity, reserved, still_reserved)
    return base, quote


def settle_sell(
    base: Balance,
    quote: Balance,
    *,
    quantity: Decimal,
    price: Decimal,
    fee: Decimal,
    reserved: Decimal,
    still_reserved: Decimal,
) -> tuple[Balance, Balance]:
    """(base, quote) after a sell fill: quantity leaves base, quantity * price - fee arrives in free quote."""
    quantity = _amount(quantity, "quantity", positive=True)
    price = _amount(price, "price", positive=True)
    fee = _amount(fee, "fee")
    with localcontext(_EXACT):
        proceeds = _notional(quantity, price) - fee
    if proceeds < 0:
        raise InvalidAmount(f"fee {fee} exceeds the fill's notional {quantity} * {price}")
    return _settle(base, quote, quantity, proceeds, reserved, still_reserved)


# --- Valuation and snapshots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valuation:
    """A portfolio's USD value, per asset and in total, and the held assets that had no price."""

    total_value: Decimal
    usd_values: Mapping[str, Decimal] = field(hash=False)
    unpriced_assets: frozenset[str]


def portfolio_value(balances: Mapping[str, Decimal], prices_in_usd: Mapping[str, Decimal]) -> Valuation:
    """Value total balances by asset at USD prices; a held asset without a price is left out and reported."""
    values: dict[str, Decimal] = {}
    unpriced: set[str] = set()
    with localcontext(_EXACT):
        for asset, total in balances.items():
            amount = _finite(total, f"{asset} balance")
            if asset in USD_STABLECOINS:
                values[asset] = amount
            elif asset in prices_in_usd:
                values[asset] = amount * _price(prices_in_usd[asset], f"{asset} price")
            elif amount:
                unpriced.add(asset)
        total_value = sum(values.values(), _ZERO)
    return Valuation(total_value, MappingProxyType(values), frozenset(unpriced))


def daily_pnl(current_value: Decimal, start_of_day_value: Decimal, net_deposits: Decimal) -> Decimal:
    """Today's change in value that deposits and withdrawals (net, since the start of the day) do not explain."""
    with localcontext(_EXACT):
        return (
            _finite(current_value, "current_value")
            - _finite(start_of_day_value, "start_of_day_value")
            - _finite(net_deposits, "net_deposits")
        )


@dataclass(frozen=True)
class Snapshot:
    """One `portfolio_snapshots` row's figures, exact (round with `to_storage` when writing)."""

    total_value: Decimal
    total_pnl: Decimal
    daily_pnl: Decimal
    positions_count: int
    unpriced_assets: frozenset[str] = frozenset()


def take_snapshot(
    *,
    positions: Iterable[Position],
    balances: Mapping[str, Decimal],
    prices_in_usd: Mapping[str, Decimal],
    net_deposits_total: Decimal,
    start_of_day_value: Decimal,
    net_deposits_today: Decimal,
) -> Snapshot:
    """Value the balances; total PnL is value less net deposits ever made, daily PnL the same since the day began.

    PnL is measured on the account's value rather than summed over positions: on spot the balances already hold
    every realized gain and every fee, and value moves of assets that were deposited rather than bought count too.
    """
    valuation = portfolio_value(balances, prices_in_usd)
    with localcontext(_EXACT):
        total_pnl = valuation.total_value - _finite(net_deposits_total, "net_deposits_total")
    return Snapshot(
        total_value=valuation.total_value,
        total_pnl=total_pnl,
        daily_pnl=daily_pnl(valuation.total_value, start_of_day_value, net_deposits_today),
        positions_count=sum(1 for position in positions if not position.is_flat),
        unpriced_assets=valuation.unpriced_assets,
    )
