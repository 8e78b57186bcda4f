"""Positions, balances and the daily snapshot: updated by each fill, read by the portfolio endpoints.

The write side (`lock_funds`, `reserve` and `write_new_orders` for new orders; `settle_fill`, `release`,
`write_changes` and `record_snapshot` for the venue's events) runs inside the caller's transaction, on the driver
(D42), so an order, its trade, its position and its balances change together or not at all (the spec's
`sync_portfolio_data`). Money arithmetic is `domain.portfolio`'s; this
module loads and stores rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Integer, literal_column, select

from cival.core.db import Database
from cival.database.driver_sql import (
    DriverCheckedUpdate,
    DriverInsert,
    DriverStatement,
    DriverTx,
    DriverUpdate,
    Target,
)
from cival.database.models import Balance, Order, PortfolioSnapshot, Position, Trade, TradingAccount
from cival.database.rows import BalanceRow, OrderRow, PositionRow, TradeRow
from cival.domain import portfolio as pf
from cival.models.trading_models import PortfolioBalanceOut, PositionOut, SnapshotOut, SummaryOut
from cival.services.row_cache import RowCache

_EIGHT = Decimal("0.00000001")
Prices = Callable[[], Awaitable[dict[str, Decimal]]]
"""USD price per asset (from the latest tickers)."""


def stored(value: Decimal) -> Decimal:
    """Half-even to the 8 decimals a column holds."""
    return value.quantize(_EIGHT, rounding=ROUND_HALF_EVEN)


def _store(row: BalanceRow, value: pf.Balance) -> None:
    row.free, row.locked, row.total = value.free, value.locked, value.total


_B = Balance.__table__.c
_A = TradingAccount.__table__.c
_SQLITE_FUNDS: dict[int, DriverStatement] = {}
"""SQLite, every (user, account, asset) of a batch in one statement, by the batch's number of keys (its write
transaction holds the whole database already: nothing to lock row by row)."""


def _sqlite_funds(keys: int) -> DriverStatement:
    statement = _SQLITE_FUNDS.get(keys)
    if statement is None:
        rows = ", ".join(f"(:u{i}, :a{i}, :s{i})" for i in range(keys))
        params: dict[str, ColumnElement[Any]] = {}
        for i in range(keys):
            params |= {f"u{i}": _A.user_id, f"a{i}": _A.id, f"s{i}": _B.asset}
        statement = _SQLITE_FUNDS[keys] = DriverStatement(
            f"WITH k(user_id, account_id, asset) AS (VALUES {rows}) "  # noqa: S608 - placeholders only
            "SELECT k.user_id, k.account_id, k.asset, a.is_active, b.id, b.free, b.locked FROM k "
            "JOIN trading_accounts a ON a.id = k.account_id AND a.user_id = k.user_id "
            "LEFT JOIN balances b ON b.account_id = a.id AND b.asset = k.asset",
            params,
            [_A.user_id, _A.id, _B.asset, _A.is_active, _B.id, _B.free, _B.locked],
        )
    return statement


_LOCK_FUNDS = DriverStatement(
    "WITH k AS (SELECT * FROM unnest(CAST(:user_ids AS uuid[]), CAST(:account_ids AS uuid[]), "
    "CAST(:assets AS varchar[])) AS k(user_id, account_id, asset)), "
    "locked AS (SELECT b.id, b.account_id, b.asset, b.free, b.locked FROM balances b JOIN k "
    "ON b.account_id = k.account_id AND b.asset = k.asset ORDER BY b.id FOR UPDATE OF b) "
    "SELECT k.user_id, k.account_id, k.asset, a.is_active, l.id, l.free, l.locked FROM k "
    "JOIN trading_accounts a ON a.id = k.account_id AND a.user_id = k.user_id "
    "LEFT JOIN locked l ON l.account_id = k.account_id AND l.asset = k.asset",
    {"user_ids": _A.user_id, "account_ids": _A.id, "assets": _B.asset},
    [_A.user_id, _A.id, _B.asset, _A.is_active, _B.id, _B.free, _B.locked],
    arrays=("user_ids", "account_ids", "assets"),
)
"""PostgreSQL, every (user, account, asset) of a batch in one statement: the balances are locked in id order (as
the fill batch locks them: two transactions never wait on each other in a cycle), the accounts checked as the
user's."""
_SET_BALANCE_COLUMNS = ("free", "locked", "total", "updated_at")
_SET_BALANCE = DriverUpdate(Balance.__table__, _SET_BALANCE_COLUMNS)
_INSERT_BALANCE = DriverInsert(Balance.__table__)
_INSERT_ORDER = DriverInsert(Order.__table__)
_UPDATE_ORDER_COLUMNS = (
    "status",
    "filled_quantity",
    "average_price",
    "fees",
    "reserved",
    "reject_reason",
    "triggered_at",
    "updated_at",
)
_UPDATE_ORDER = DriverUpdate(Order.__table__, _UPDATE_ORDER_COLUMNS)
_P = Position.__table__.c
_UPDATE_POSITION_COLUMNS = ("size", "average_price", "market_value", "unrealized_pnl", "updated_at")
_UPDATE_POSITION = DriverUpdate(Position.__table__, _UPDATE_POSITION_COLUMNS)
_INSERT_POSITION = DriverInsert(Position.__table__)
# The same updates for rows the transaction did not read (D61): written only where unchanged since the cache kept them.
_CHECKED_ORDER = DriverCheckedUpdate(Order.__table__, _UPDATE_ORDER_COLUMNS)
_CHECKED_POSITION = DriverCheckedUpdate(Position.__table__, _UPDATE_POSITION_COLUMNS)
_CHECKED_BALANCE = DriverCheckedUpdate(Balance.__table__, _SET_BALANCE_COLUMNS)
_CHECKED_FUNDS = DriverCheckedUpdate(
    Balance.__table__,
    _SET_BALANCE_COLUMNS,
    also="EXISTS (SELECT FROM trading_accounts a "
    "WHERE a.id = balances.account_id AND a.user_id = balances.user_id AND a.is_active)",
)
"""New orders' reservations from balances not read in the transaction (D65): checked as `_CHECKED_BALANCE` is, and
each balance's account still its user's and active (what `lock_funds` reads)."""
_INSERT_TRADE = DriverInsert(Trade.__table__)
FundsKey = tuple[uuid.UUID, uuid.UUID, str]
"""(user, account, asset)."""


class Funds(NamedTuple):
    """An account, and its balance of one asset as locked for the rest of the transaction (none yet: `balance_id`
    is None and both amounts zero)."""

    is_active: bool
    balance_id: uuid.UUID | None
    free: Decimal
    locked: Decimal


async def lock_funds(tx: DriverTx, keys: Collection[FundsKey]) -> dict[FundsKey, Funds]:
    """Each (user, account, asset)'s account, if the user has it (a key is missing otherwise), and its balance of the
    asset, locked until the caller's transaction ends: one statement for a whole batch of new orders."""
    found: dict[FundsKey, Funds] = {}
    if tx.dialect.name == "postgresql":
        ordered = sorted(keys)
        rows = await _LOCK_FUNDS.fetch(
            tx,
            user_ids=[k[0] for k in ordered],
            account_ids=[k[1] for k in ordered],
            assets=[k[2] for k in ordered],
        )
    else:
        values: dict[str, Any] = {}
        for i, (user_id, account_id, asset) in enumerate(sorted(keys)):
            values |= {f"u{i}": user_id, f"a{i}": account_id, f"s{i}": asset}
        rows = await _sqlite_funds(len(keys)).fetch(tx, **values) if keys else []
    for user_id, account_id, asset, is_active, balance_id, free, locked in rows:
        none = balance_id is None  # no balance of the asset yet: both amounts zero
        found[(user_id, account_id, asset)] = Funds(
            bool(is_active), balance_id, Decimal(0) if none else free, Decimal(0) if none else locked
        )
    return found


def reserve(order: OrderRow, asset: str, amount: Decimal, row: BalanceRow) -> None:
    """Reserve `amount` of `asset` for the new `order` out of `row` (its balance, locked by the caller's transaction;
    a row not stored yet starts at zero). Raises `pf.InsufficientFunds`, changing nothing."""
    _store(row, pf.reserve(pf.Balance(asset, row.free, row.locked), amount))
    order.reserved = amount


def kept_funds(rows: RowCache, keys: Collection[FundsKey]) -> dict[FundsKey, BalanceRow] | None:
    """Each (user, account, asset)'s balance as the `RowCache` kept it (D65), or None unless all are kept (as the
    user's). Never change a kept row; what `write_new_orders` writes from them is checked, the account included."""
    kept: dict[FundsKey, BalanceRow] = {}
    for key in keys:
        row = rows.balance(key[1], key[2])
        if row is None or row.user_id != key[0]:
            return None
        kept[key] = row
    return kept


async def write_new_orders(
    tx: DriverTx,
    orders: Collection[OrderRow],
    balances: Collection[BalanceRow],
    created: Collection[uuid.UUID],
    as_read: Mapping[uuid.UUID, Any] | None = None,
) -> None:
    """Insert a batch of new orders and write the balances their reservations changed (inserted when their id is in
    `created`): one driver call per kind of write. With `as_read` (each balance's id -> the row `kept_funds` gave),
    the balances were not locked in this transaction: their updates are checked (`_CHECKED_FUNDS`)."""
    await _INSERT_ORDER.rows(tx, list(orders))
    await _write_balances(tx, balances, created, as_read, _CHECKED_FUNDS)


async def write_changes(
    tx: Target,
    orders: Collection[OrderRow],
    trades: Collection[TradeRow],
    positions: Collection[PositionRow],
    balances: Collection[BalanceRow],
    created: Collection[uuid.UUID],
    as_read: Mapping[uuid.UUID, Any] | None = None,
) -> None:
    """Write what applying a batch of venue events changed, in the caller's transaction, on the driver's connection
    (D38): the changed orders, the new trades, and the positions and balances (inserted when their id is in
    `created`, updated otherwise; the caller loaded and locked those). One driver call per kind of write.

    With `as_read` (each updated row's id -> the row as it was when taken from the `RowCache`, D61), the rows were
    not read in this transaction: each update is checked, and fails the transaction if its row changed since."""
    await _update(tx, orders, as_read, _UPDATE_ORDER, _CHECKED_ORDER)
    await _INSERT_TRADE.rows(tx, list(trades))
    await _INSERT_POSITION.rows(tx, [p for p in positions if p.id in created])
    await _update(tx, [p for p in positions if p.id not in created], as_read, _UPDATE_POSITION, _CHECKED_POSITION)
    await _write_balances(tx, balances, created, as_read)


async def _update(
    tx: Target,
    rows: Collection[Any],
    as_read: Mapping[uuid.UUID, Any] | None,
    plain: DriverUpdate,
    checked: DriverCheckedUpdate,
) -> None:
    """`rows` updated with `plain`, or, taken from the `RowCache` (`as_read` given), with `checked` against the rows
    as taken (D61)."""
    if as_read is None:
        await plain.rows(tx, list(rows))
    else:
        await checked.rows(tx, [(row, as_read[row.id]) for row in rows])


async def _write_balances(
    tx: Target,
    balances: Collection[BalanceRow],
    created: Collection[uuid.UUID],
    as_read: Mapping[uuid.UUID, Any] | None = None,
    checked: DriverCheckedUpdate = _CHECKED_BALANCE,
) -> None:
    """Stamp `balances` as changed now and write them: inserted when their id is in `created`, updated otherwise
    (checked against `as_read` with `checked`, as in `write_changes`, when given)."""
    now = datetime.now(UTC)
    for b in balances:
        b.updated_at = now
    await _INSERT_BALANCE.rows(tx, [b for b in balances if b.id in created])
    await _update(tx, [b for b in balances if b.id not in created], as_read, _SET_BALANCE, checked)


def new_balance(user_id: uuid.UUID, account: uuid.UUID, asset: str, exchange: str) -> BalanceRow:
    """A balance of zero, to insert (its `updated_at` is stamped when written)."""
    return BalanceRow(
        id=uuid.uuid4(),
        user_id=user_id,
        account_id=account,
        asset=asset,
        free=Decimal(0),
        locked=Decimal(0),
        total=Decimal(0),
        usd_value=None,
        exchange=exchange,
        updated_at=datetime.now(UTC),
    )


def new_position(order: OrderRow) -> PositionRow:
    """A flat position in `order`'s symbol and account, to insert (`settle_fill` stamps its `updated_at`)."""
    if order.account_id is None:
        raise ValueError(f"order {order.id} has no account")
    return PositionRow(
        id=uuid.uuid4(),
        user_id=order.user_id,
        account_id=order.account_id,
        symbol=order.symbol,
        size=Decimal(0),
        average_price=Decimal(0),
        market_value=None,
        unrealized_pnl=None,
        exchange=order.exchange,
        updated_at=order.updated_at,
    )


def release(order: OrderRow, row: BalanceRow) -> None:
    """Return what `order` still holds to free (on cancel, reject, or a completed fill's surplus); `row` is the
    balance of the asset the order reserved, locked by the caller's transaction."""
    _store(row, pf.release(pf.Balance(row.asset, row.free, row.locked), order.reserved))
    order.reserved = Decimal(0)


def settle_fill(
    order: OrderRow, trade: TradeRow, is_complete: bool, base: BalanceRow, quote: BalanceRow, position: PositionRow
) -> None:
    """Settle one fill on rows the caller's transaction locked: balances out of the order's reservation (a buy's is
    in quote: cost and fee; a sell's in base: the quantity), then the position."""
    reserved = order.reserved
    is_buy = order.side == "buy"
    used = trade.quantity * trade.price + trade.fees if is_buy else trade.quantity
    still = Decimal(0) if is_complete else max(Decimal(0), reserved - used)
    settle = pf.settle_buy if is_buy else pf.settle_sell
    new_base, new_quote = settle(
        pf.Balance(base.asset, base.free, base.locked),
        pf.Balance(quote.asset, quote.free, quote.locked),
        quantity=trade.quantity,
        price=trade.price,
        fee=trade.fees,
        reserved=reserved,
        still_reserved=still,
    )
    _store(base, new_base)
    _store(quote, new_quote)
    order.reserved = still
    side: pf.SideLiteral = "buy" if trade.side == "buy" else "sell"
    moved = pf.apply_trade(
        pf.Position(order.symbol, position.size, position.average_price, Decimal(0)),
        side,
        trade.quantity,
        trade.price,
        trade.fees,
    )
    position.size, position.average_price = moved.size, moved.average_price
    position.market_value = stored(moved.size * trade.price)
    position.unrealized_pnl = stored(pf.unrealized_pnl(moved, trade.price)) if moved.size else Decimal(0)
    position.updated_at = trade.created_at


_S = PortfolioSnapshot.__table__.c
_USER_BALANCES = DriverStatement(
    "SELECT asset, total FROM balances WHERE user_id = :user_id", {"user_id": _B.user_id}, [_B.asset, _B.total]
)
_USER_POSITIONS = DriverStatement(
    "SELECT symbol, size, average_price FROM positions WHERE user_id = :user_id",
    {"user_id": _P.user_id},
    [_P.symbol, _P.size, _P.average_price],
)
_PAPER_ACCOUNTS = DriverStatement(
    "SELECT count(*) FROM trading_accounts WHERE user_id = :user_id AND exchange = 'paper'",
    {"user_id": _A.user_id},
    [literal_column("accounts", Integer())],
)
_PREVIOUS_SNAPSHOT = DriverStatement(
    "SELECT total_value FROM portfolio_snapshots WHERE user_id = :user_id AND snapshot_date < :today "
    "ORDER BY snapshot_date DESC LIMIT 1",
    {"user_id": _S.user_id, "today": _S.snapshot_date},
    [_S.total_value],
)
_SNAPSHOT_COLUMNS = ("id", "user_id", "total_value", "total_pnl", "daily_pnl", "positions_count", "snapshot_date")
_UPSERT_SNAPSHOT = DriverStatement(
    f"INSERT INTO portfolio_snapshots ({', '.join(_SNAPSHOT_COLUMNS)}, created_at) "  # noqa: S608 - fixed names
    f"VALUES ({', '.join(':' + c for c in _SNAPSHOT_COLUMNS)}, :created_at) "
    "ON CONFLICT (user_id, snapshot_date) DO UPDATE SET total_value = excluded.total_value, "
    "total_pnl = excluded.total_pnl, daily_pnl = excluded.daily_pnl, positions_count = excluded.positions_count",
    {name: _S[name] for name in (*_SNAPSHOT_COLUMNS, "created_at")},
)


async def _net_deposits(
    tx: Target, user_id: uuid.UUID, starting: dict[str, Decimal], prices: dict[str, Decimal]
) -> Decimal:
    """What the user's paper accounts were funded with, in USD at `prices`."""
    per_account = pf.portfolio_value(starting, prices).total_value
    [(accounts,)] = await _PAPER_ACCOUNTS.fetch(tx, user_id=user_id)
    return per_account * int(accounts)


async def record_snapshot(
    tx: Target, user_id: uuid.UUID, prices: dict[str, Decimal], starting: dict[str, Decimal]
) -> None:
    """Upsert today's snapshot (one per user and day): value, PnL against deposits, PnL since yesterday's; in the
    caller's transaction, on the driver (it runs with the fills, D42)."""
    totals: dict[str, Decimal] = {}
    for asset, total in await _USER_BALANCES.fetch(tx, user_id=user_id):
        totals[asset] = totals.get(asset, Decimal(0)) + total
    positions = await _USER_POSITIONS.fetch(tx, user_id=user_id)
    deposits = await _net_deposits(tx, user_id, starting, prices)
    today = datetime.now(UTC).date()
    previous = await _PREVIOUS_SNAPSHOT.fetch(tx, user_id=user_id, today=today)
    snap = pf.take_snapshot(
        positions=[pf.Position(symbol, size, average_price, Decimal(0)) for symbol, size, average_price in positions],
        balances=totals,
        prices_in_usd=prices,
        net_deposits_total=deposits,
        start_of_day_value=previous[0][0] if previous else deposits,
        net_deposits_today=Decimal(0),
    )
    await _UPSERT_SNAPSHOT.execute(
        tx,
        id=uuid.uuid4(),
        user_id=user_id,
        total_value=stored(snap.total_value),
        total_pnl=stored(snap.total_pnl),
        daily_pnl=stored(snap.daily_pnl),
        positions_count=snap.positions_count,
        snapshot_date=today,
        created_at=datetime.now(UTC),
    )


class PortfolioTracker:
    """The read side: positions marked to the latest ticker, balances in USD, snapshots and a summary."""

    def __init__(self, database: Database, prices: Prices, starting_balances: dict[str, Decimal]) -> None:
        self.database = database
        self.prices = prices
        self.starting_balances = starting_balances

    async def _marks(self) -> dict[str, Decimal]:
        return await self.prices()

    async def positions(self, user_id: uuid.UUID) -> list[PositionOut]:
        prices = await self._marks()
        async with self.database.session(user_id, read_only=True) as session:
            rows = (
                await session.scalars(
                    select(Position).where(Position.user_id == user_id).order_by(Position.symbol, Position.account_id)
                )
            ).all()
            trades = (
                await session.scalars(
                    select(Trade).where(Trade.user_id == user_id).order_by(Trade.created_at, Trade.external_trade_id)
                )
            ).all()
            accounts = await session.execute(select(Order.id, Order.account_id).where(Order.user_id == user_id))
            order_accounts = {order_id: account_id for order_id, account_id in accounts.all()}
        out = []
        for row in rows:
            mine = [
                t
                for t in trades
                if t.symbol == row.symbol
                and t.order_id is not None
                and order_accounts.get(t.order_id) == row.account_id
            ]
            folded = pf.fold_trades(row.symbol, mine)
            base = row.symbol.split("/")[0]
            mark = prices.get(base)
            position = pf.Position(row.symbol, row.size, row.average_price, folded.realized_pnl, folded.fees_paid)
            out.append(
                PositionOut(
                    account_id=row.account_id,
                    exchange=row.exchange,
                    symbol=row.symbol,
                    size=row.size,
                    average_price=row.average_price,
                    mark_price=mark,
                    market_value=None if mark is None else stored(pf.market_value(position, mark)),
                    unrealized_pnl=None if mark is None else stored(pf.unrealized_pnl(position, mark)),
                    realized_pnl=stored(folded.realized_pnl),
                    fees_paid=folded.fees_paid,
                )
            )
        return out

    async def balances(self, user_id: uuid.UUID) -> list[PortfolioBalanceOut]:
        prices = await self._marks()
        async with self.database.session(user_id, read_only=True) as session:
            rows = (
                await session.scalars(
                    select(Balance).where(Balance.user_id == user_id).order_by(Balance.account_id, Balance.asset)
                )
            ).all()
        out = []
        for b in rows:
            value = pf.portfolio_value({b.asset: b.total}, prices)
            out.append(
                PortfolioBalanceOut(
                    account_id=b.account_id,
                    exchange=b.exchange,
                    asset=b.asset,
                    free=b.free,
                    locked=b.locked,
                    total=b.total,
                    usd_value=None if b.asset in value.unpriced_assets else stored(value.total_value),
                )
            )
        return out

    async def snapshots(self, user_id: uuid.UUID, limit: int) -> list[SnapshotOut]:
        async with self.database.session(user_id, read_only=True) as session:
            rows = (
                await session.scalars(
                    select(PortfolioSnapshot)
                    .where(PortfolioSnapshot.user_id == user_id)
                    .order_by(PortfolioSnapshot.snapshot_date.desc())
                    .limit(limit)
                )
            ).all()
        return [SnapshotOut.model_validate(r) for r in rows]

    async def summary(self, user_id: uuid.UUID) -> SummaryOut:
        prices = await self._marks()
        positions = await self.positions(user_id)
        async with self.database.session(user_id, read_only=True) as session:
            rows = (await session.scalars(select(Balance).where(Balance.user_id == user_id))).all()
            deposits = await _net_deposits(session, user_id, self.starting_balances, prices)
        totals: dict[str, Decimal] = {}
        for b in rows:
            totals[b.asset] = totals.get(b.asset, Decimal(0)) + b.total
        valuation = pf.portfolio_value(totals, prices)
        return SummaryOut(
            total_value=stored(valuation.total_value),
            total_pnl=stored(valuation.total_value - deposits),
            realized_pnl=sum((p.realized_pnl for p in positions), Decimal(0)),
            unrealized_pnl=sum((p.unrealized_pnl or Decimal(0) for p in positions), Decimal(0)),
            fees_paid=sum((p.fees_paid for p in positions), Decimal(0)),
            positions_count=sum(1 for p in positions if p.size),
            unpriced_assets=sorted(valuation.unpriced_assets),
        )
