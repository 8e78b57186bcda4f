"""Stores a venue's events: the spec's `sync_portfolio_data`, batched, in the order the venue produced them.

Every event a connector emits (fills, cancels, rejects, triggers) is queued here and applied by ONE task per
process, so events are stored in exactly the order they were produced. The task takes whatever is queued (up to
`max_batch` calls' worth) and applies it in ONE transaction: the orders involved, their balances and positions are
loaded and locked in one query (each in id order, so two processes never deadlock) — or, for a batch of fills whose
rows are all in the `RowCache` on PostgreSQL, taken from there and written with checked updates, the batch stored
again the usual way if any row changed since (D61) —, fills become `trades` (a
trade id already stored meets the trades' unique index, and the batch is stored again skipping it, so a fill is
never applied twice), the orders' totals, the balances, the
positions and each touched user's snapshot for today change together, and the transaction commits. Then the
callers are answered and one user message per change is published, in order.

Batching is group commit: under load many orders share a transaction (a commit and a snapshot per user per batch
instead of per fill); alone, a batch is one call. If a batch fails, its calls are retried one by one so a bad call
fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import IntegrityError

from cival.core.db import Database
from cival.core.logging import get_logger
from cival.database.driver_sql import DriverRowSets, DriverStatement, DriverTx, RowSet
from cival.database.models import Order, RiskAlert, Trade
from cival.database.rows import BalanceRow, OrderRow, PositionRow, TradeRow
from cival.domain.instruments import Instrument
from cival.domain.matching import Cancelled, Event, Filled, Rejected, Triggered
from cival.domain.orders import TERMINAL_STATUSES, OrderStatus, OrderType, quantize_stored, transition
from cival.models.trading_models import OrderOut, TradeOut
from cival.services.channels import UserPublisher, framed
from cival.services.group_commit import Writer
from cival.services.portfolio_tracker import (
    Prices,
    new_balance,
    new_position,
    record_snapshot,
    release,
    settle_fill,
    write_changes,
)
from cival.services.risk_manager import alert_data
from cival.services.row_cache import RowCache, copied

log = get_logger(__name__)

UserEvents = dict[uuid.UUID, list[tuple[str, Mapping[str, Any]]]]
"""Each user's messages (channel, data), in order."""


@dataclass
class Changes:
    """What one transaction changed, to answer callers and publish (each row once, in the order first changed)."""

    orders: dict[uuid.UUID, OrderRow] = field(default_factory=dict)
    trades: list[TradeRow] = field(default_factory=list)
    positions: dict[uuid.UUID, PositionRow] = field(default_factory=dict)
    balances: dict[uuid.UUID, BalanceRow] = field(default_factory=dict)
    alerts: list[RiskAlert] = field(default_factory=list)
    users: set[uuid.UUID] = field(default_factory=set)
    events: UserEvents | None = None
    """The messages to publish, built ahead (`EventApplier.prepare`, while the COMMIT is in flight: D55)."""
    answers: dict[uuid.UUID, OrderOut] = field(default_factory=dict)
    """Each changed order as the API shows it, built with its message (`prepare`)."""

    def answer(self, order: OrderRow) -> OrderOut:
        """`order` as the API shows it, as this change left it."""
        built = self.answers.get(order.id)
        return built if built is not None else OrderOut.model_validate(self.orders.get(order.id, order))


@dataclass
class _Loaded:
    """The rows one batch works on, loaded and locked up front."""

    orders: dict[uuid.UUID, OrderRow]
    balances: dict[tuple[uuid.UUID, str], BalanceRow]
    positions: dict[tuple[uuid.UUID, str], PositionRow]
    stored_trades: set[tuple[str, str]]
    notional: dict[uuid.UUID, Decimal]
    created: set[uuid.UUID] = field(default_factory=set)  # positions and balances new in this batch
    as_read: dict[uuid.UUID, Any] | None = None
    """Taken from the `RowCache`, not read (D61): each row's id -> the row as taken, which its update is checked
    against."""


# A batch's rows, loaded and locked in ONE statement (D56): its orders, then (for fills, cancels and rejects) their
# accounts' balances, then (for fills) their positions in the orders' symbols and the earlier fills of the orders
# filled in part already, each set in id order (two processes never deadlock). Each is read by the user, account
# (and symbol) of the orders, through the tables' unique indexes that begin with the user's id.
_ORDERS = RowSet("o", OrderRow, "id = ANY(:ids)", for_update=True)
_BALANCES = RowSet(
    "b",
    BalanceRow,
    "user_id = ANY(ARRAY(SELECT user_id FROM o)) AND account_id = ANY(ARRAY(SELECT account_id FROM o))",
    "user_id IN (SELECT user_id FROM o) AND account_id IN (SELECT account_id FROM o)",
    for_update=True,
)
_POSITIONS = RowSet(
    "p",
    PositionRow,
    "user_id = ANY(ARRAY(SELECT user_id FROM o)) AND account_id = ANY(ARRAY(SELECT account_id FROM o)) "
    "AND symbol = ANY(ARRAY(SELECT symbol FROM o))",
    "user_id IN (SELECT user_id FROM o) AND account_id IN (SELECT account_id FROM o) "
    "AND symbol IN (SELECT symbol FROM o)",
    for_update=True,
)
_EARLIER_FILLS = RowSet(  # the exact average price needs the exact notional so far (read, not locked)
    "t",
    TradeRow,
    "order_id = ANY(ARRAY(SELECT id FROM o WHERE filled_quantity > 0))",
    "order_id IN (SELECT id FROM o WHERE filled_quantity > 0)",
)
_IDS: dict[str, Any] = {"ids": Order.__table__.c.id}
_LOCK_ORDERS = DriverRowSets([_ORDERS], _IDS)
_LOCK_FUNDS = DriverRowSets([_ORDERS, _BALANCES], _IDS)
_LOCK_FILLED = DriverRowSets([_ORDERS, _BALANCES, _POSITIONS, _EARLIER_FILLS], _IDS)
_T = Trade.__table__.c
_STORED_TRADES = DriverStatement(
    "SELECT exchange, external_trade_id FROM trades WHERE external_trade_id = ANY(:trade_ids)",
    {"trade_ids": _T.external_trade_id},
    [_T.exchange, _T.external_trade_id],
)


class EventApplier(Writer[list[Event], Changes]):
    def __init__(
        self,
        database: Database,
        instrument: Callable[[str, str], Instrument],
        prices: Prices,
        starting_balances: dict[str, Decimal],
        publish: UserPublisher,
        *,
        max_batch: int = 64,
        snapshot_seconds: float = 0.0,
        rows: RowCache | None = None,
    ) -> None:
        super().__init__(database, "order-applier", max_batch=max_batch)
        self.rows = rows if rows is not None else RowCache()  # shared with the intake (D61)
        self.instrument = instrument
        self.prices = prices
        self.starting_balances = starting_balances
        self.publish = publish
        self._last_ts = datetime.now(UTC)
        self.snapshot_seconds = snapshot_seconds
        self._snapshotted: dict[uuid.UUID, float] = {}  # user -> when today's snapshot was last written (monotonic)
        self._owed: set[uuid.UUID] = set()  # users whose snapshot is behind their rows
        self._timer: asyncio.TimerHandle | None = None

    async def apply(self, events: list[Event], *, force_snapshots: bool = False) -> Changes:
        """Queue `events` (synchronously, before the first await: queue order is call order) and wait until they
        are stored; returns what their batch changed."""
        if force_snapshots:
            self._snapshotted.clear()
        return await self.submit(events)

    async def close(self) -> None:
        """Let queued work finish and write the snapshots still owed (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.snapshot_seconds = 0.0
        if self._owed:
            with contextlib.suppress(Exception):
                await self.apply([])
        await self.finish()

    async def flush_snapshots(self) -> None:
        """Write every owed snapshot now (the timer does this `snapshot_seconds` after a deferred one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._owed:
            await self.apply([], force_snapshots=True)

    def _snapshot_later(self) -> None:
        self._timer = None
        if self._owed:
            future = asyncio.ensure_future(self.apply([]))
            future.add_done_callback(_quiet)

    # --- the single writer ---------------------------------------------------------------------------------------

    async def write_batch(self, items: list[list[Event]]) -> list[Changes | Exception]:
        """The calls' events in one transaction: one change set, answering every call of the batch."""
        changes = await self._store([e for events in items for e in events])
        return [changes] * len(items)

    async def publish_batch(self, results: list[Changes | Exception]) -> None:
        for changes in {id(r): r for r in results if isinstance(r, Changes)}.values():
            await self.publish_changes(changes)

    def failed(self, error: Exception) -> None:
        log.error("storing venue events failed", exc_info=error)

    def _now(self) -> datetime:
        """Strictly increasing: trades fold in `created_at` order, and a batch stores many in the same microsecond."""
        now = datetime.now(UTC)
        self._last_ts = now if now > self._last_ts else self._last_ts + timedelta(microseconds=1)
        return self._last_ts

    async def _store(self, events: list[Event]) -> Changes:
        """Store `events` in one transaction. Whether a fill is stored already is not read first: the trades'
        unique index says so (a duplicate fails the transaction), and then the batch is stored again reading which
        trades are stored, so a fill is still never applied twice (D42: one round trip less per batch, and a venue
        repeating a fill is rare).

        A batch of fills whose rows are all in the `RowCache` (on PostgreSQL) is first stored from those, with no
        read (D61); if that fails — a row changed since it was kept, or anything else — the batch is stored the usual
        way, which decides."""
        cached = self._cached(events)
        if cached is not None:
            try:
                return await self._store_once(events, read_stored=False, cached=cached)
            except Exception as exc:
                self.rows.forget(cached.orders, cached.balances, cached.positions)
                log.info("fill batch read from the database after all", error=str(exc))
        try:
            return await self._store_once(events, read_stored=False)
        except IntegrityError:
            if not any(isinstance(e, Filled) for e in events):
                raise
            return await self._store_once(events, read_stored=True)

    async def _store_once(self, events: list[Event], *, read_stored: bool, cached: _Loaded | None = None) -> Changes:
        changes = Changes()
        if not events and not self._owed:
            return changes
        async with self.database.driver_transaction(None, held=self.held) as tx:  # the platform's, on the driver (D42)
            if events:
                loaded = cached if cached is not None else await self._load(tx, events, read_stored=read_stored)
                for event in events:
                    self._apply(loaded, event, changes)
                await write_changes(
                    tx,
                    changes.orders.values(),
                    changes.trades,
                    changes.positions.values(),
                    changes.balances.values(),
                    loaded.created,
                    loaded.as_read,
                )
            due = self._due(changes.users)
            prices = await self.prices() if due else {}  # only snapshots value the holdings (D62)
            for user_id in due:
                await record_snapshot(tx, user_id, prices, self.starting_balances)
            tx.meanwhile = lambda: self.prepare(changes)
        self.rows.keep(changes.orders.values(), changes.balances.values(), changes.positions.values())
        written = time.monotonic()
        for user_id in due:
            self._snapshotted[user_id] = written
            self._owed.discard(user_id)
        if self._owed and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.snapshot_seconds, self._snapshot_later)
        return changes

    def _due(self, changed: set[uuid.UUID]) -> list[uuid.UUID]:
        """Users whose snapshot is written in this transaction: at most one write per user per `snapshot_seconds`
        (the rest are owed, and written by the timer): under a burst of fills the snapshot trails by that much."""
        self._owed |= changed
        now = time.monotonic()
        return sorted(u for u in self._owed if now - self._snapshotted.get(u, -math.inf) >= self.snapshot_seconds)

    def _cached(self, events: list[Event]) -> _Loaded | None:
        """The rows a batch of fills works on, from the `RowCache` (D61), or None if it cannot be stored from them:
        not PostgreSQL (no checked updates), not only fills, or a row not kept — an order, its base or quote balance,
        its position (none is created from the cache) — or an order filled in part already (its average price needs
        its earlier fills)."""
        if self.database.is_sqlite or not events or not all(isinstance(e, Filled) for e in events):
            return None
        as_read: dict[uuid.UUID, Any] = {}
        loaded = _Loaded({}, {}, {}, set(), {}, as_read=as_read)
        for order_id in {uuid.UUID(e.order_id) for e in events}:
            order = self.rows.order(order_id)
            if order is None or order.filled_quantity or order.account_id is None:
                return None
            instrument = self.instrument(order.exchange, order.symbol)
            base = self.rows.balance(order.account_id, instrument.base_asset)
            quote = self.rows.balance(order.account_id, instrument.quote_asset)
            position = self.rows.position(order.account_id, order.symbol)
            if base is None or quote is None or position is None:
                return None
            loaded.orders[order.id] = copied(order)
            for kept in (base, quote):  # orders of one account share them: one copy to work on
                loaded.balances.setdefault((order.account_id, kept.asset), copied(kept))
            loaded.positions.setdefault((order.account_id, order.symbol), copied(position))
            as_read.update({order.id: order, base.id: base, quote.id: quote, position.id: position})
        return loaded

    async def _load(self, tx: DriverTx, events: list[Event], *, read_stored: bool) -> _Loaded:
        ids = sorted({uuid.UUID(e.order_id) for e in events})
        fills = [e for e in events if isinstance(e, Filled)]
        if fills:
            lock = _LOCK_FILLED
        elif any(isinstance(e, Cancelled | Rejected) for e in events):
            lock = _LOCK_FUNDS
        else:
            lock = _LOCK_ORDERS
        found = await lock.all(tx, ids=ids)
        loaded = _Loaded({o.id: o for o in found[0]}, {}, {}, set(), {})
        if len(found) > 1:
            loaded.balances = {(b.account_id, b.asset): b for b in found[1]}
        if len(found) > 2:
            loaded.positions = {(p.account_id, p.symbol): p for p in found[2]}
            for trade in found[3]:
                notional = loaded.notional.get(trade.order_id, Decimal(0))
                loaded.notional[trade.order_id] = notional + trade.quantity * trade.price
        if read_stored:
            rows = await _STORED_TRADES.fetch(tx, trade_ids=sorted({e.fill.trade_id for e in fills}))
            loaded.stored_trades = {(exchange, trade_id) for exchange, trade_id in rows if trade_id is not None}
        return loaded

    def _balance(self, loaded: _Loaded, order: OrderRow, asset: str) -> BalanceRow:
        if order.account_id is None:
            raise ValueError(f"order {order.id} has no account")
        key = (order.account_id, asset)
        row = loaded.balances.get(key)
        if row is None:
            row = loaded.balances[key] = new_balance(order.user_id, order.account_id, asset, order.exchange)
            loaded.created.add(row.id)
        return row

    def _apply(self, loaded: _Loaded, event: Event, changes: Changes) -> None:
        order = loaded.orders.get(uuid.UUID(event.order_id))
        if order is None:
            log.error("event for an unknown order", order_id=event.order_id, kind=type(event).__name__)
            return
        status = OrderStatus(order.status)
        if isinstance(event, Filled):
            fill = event.fill
            if (order.exchange, fill.trade_id) in loaded.stored_trades:
                return  # this fill is stored already: never apply it twice
            loaded.stored_trades.add((order.exchange, fill.trade_id))
            filled = order.filled_quantity + fill.quantity
            if filled > order.quantity:
                raise ValueError(f"fill {fill.trade_id} would overfill order {order.id}")
            new_status = transition(status, OrderStatus.FILLED if filled == order.quantity else OrderStatus.PARTIAL)
            now = self._now()
            trade = TradeRow(
                id=uuid.uuid4(),
                order_id=order.id,
                user_id=order.user_id,
                external_trade_id=fill.trade_id,
                symbol=order.symbol,
                side=order.side,
                quantity=fill.quantity,
                price=fill.price,
                fees=fill.fee,
                exchange=order.exchange,
                executed_at=fill.ts,
                created_at=now,
            )
            # Exact average from the fills: the stored average is rounded and must not carry its rounding on.
            notional = loaded.notional.get(order.id, Decimal(0)) + fill.quantity * fill.price
            loaded.notional[order.id] = notional
            order.filled_quantity = filled
            order.average_price = quantize_stored(notional / filled)
            order.fees += fill.fee
            order.status = new_status.value
            instrument = self.instrument(order.exchange, order.symbol)
            base = self._balance(loaded, order, instrument.base_asset)
            quote = self._balance(loaded, order, instrument.quote_asset)
            if order.account_id is None:
                raise ValueError(f"order {order.id} has no account")
            position = loaded.positions.get((order.account_id, order.symbol))
            if position is None:
                position = loaded.positions[(order.account_id, order.symbol)] = new_position(order)
                loaded.created.add(position.id)
            settle_fill(order, trade, new_status is OrderStatus.FILLED, base, quote, position)
            changes.trades.append(trade)
            changes.positions[position.id] = position
            changes.balances[base.id] = base
            changes.balances[quote.id] = quote
        elif isinstance(event, Cancelled | Rejected):
            if status in TERMINAL_STATUSES:
                # A cancel that crossed the order's last fill: the fill won, there is nothing left to cancel.
                log.info("cancel of a finished order ignored", order_id=str(order.id), status=order.status)
                return
            target = OrderStatus.CANCELLED if isinstance(event, Cancelled) else OrderStatus.REJECTED
            order.status = transition(status, target).value
            if isinstance(event, Rejected):
                order.reject_reason = f"{event.reason}: {event.detail}"[:255]
            if order.reserved:
                instrument = self.instrument(order.exchange, order.symbol)
                asset = instrument.quote_asset if order.side == "buy" else instrument.base_asset
                row = self._balance(loaded, order, asset)
                release(order, row)
                changes.balances[row.id] = row
        elif isinstance(event, Triggered):
            if order.type != OrderType.STOP_LIMIT.value:
                return
            order.triggered_at = event.ts
        elif status is OrderStatus.UNKNOWN:  # Rested: the venue answered after all, the order works
            working = OrderStatus.PARTIAL if order.filled_quantity else OrderStatus.PENDING
            order.status = transition(status, working).value
        else:  # Rested: the order works; nothing changes in storage
            return
        order.updated_at = self._now()
        changes.orders[order.id] = order
        changes.users.add(order.user_id)

    def prepare(self, changes: Changes) -> None:
        """Build what `publish_changes` will publish (`changes.events`): one message per changed row, in order,
        grouped by user, each framed already (D55), and each changed order's answer to its caller
        (`changes.answers`). It runs while the COMMIT is in flight and must not raise: a failure leaves the building
        to `publish_changes` and `Changes.answer`, which then do it."""
        try:
            changes.events = self._events(changes)
        except Exception:
            changes.events = None

    async def publish_changes(self, changes: Changes) -> None:
        """One message per changed row, in order, all of a user's in one call (one cache step), the users' calls at
        once (D64: on Redis, one round trip's wait for them all, not one per user); best effort (the database
        already holds the truth), and one user's failure does not keep the others' messages back."""
        try:
            events = changes.events if changes.events is not None else self._events(changes)
        except Exception:
            log.exception("publishing order updates failed")
            return
        outcomes = await asyncio.gather(*(self.publish(u, e) for u, e in events.items()), return_exceptions=True)
        for user_id, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("publishing order updates failed", user_id=str(user_id), exc_info=outcome)

    @staticmethod
    def _events(changes: Changes) -> UserEvents:
        events: UserEvents = {}
        for order in changes.orders.values():
            out = changes.answers[order.id] = OrderOut.model_validate(order)  # the caller's answer too
            events.setdefault(order.user_id, []).append(framed("orders", out.model_dump(mode="json")))
        for trade in changes.trades:
            events.setdefault(trade.user_id, []).append(framed("trades", trade_message(trade)))
        for position in changes.positions.values():
            events.setdefault(position.user_id, []).append(framed("positions", position_message(position)))
        for balance in changes.balances.values():
            events.setdefault(balance.user_id, []).append(framed("balances", balance_message(balance)))
        for alert in changes.alerts:
            events.setdefault(alert.user_id, []).append(framed("alerts", alert_data(alert)))
        for user_id in changes.users:
            events.setdefault(user_id, []).append(framed("portfolio", {"changed": True}))
        return events


def _quiet(future: asyncio.Future[Changes]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing owed snapshots failed", error=str(future.exception()))


def trade_message(trade: TradeRow) -> dict[str, Any]:
    return TradeOut.model_validate(trade).model_dump(mode="json")


def position_message(position: PositionRow) -> dict[str, Any]:
    return {
        "account_id": str(position.account_id),
        "symbol": position.symbol,
        "size": format(position.size, "f"),
        "average_price": format(position.average_price, "f"),
    }


def balance_message(balance: BalanceRow) -> dict[str, Any]:
    return {
        "account_id": str(balance.account_id),
        "asset": balance.asset,
        "free": format(balance.free, "f"),
        "locked": format(balance.locked, "f"),
        "total": format(balance.total, "f"),
    }
