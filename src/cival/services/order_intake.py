"""New orders are stored here: the store transaction, group-committed (D43).

Every new order is stored — `pending` with its funds reserved, or `rejected` by the risk gate with its alert —
in a committed transaction BEFORE it is sent anywhere. Orders placed at the same moment share that transaction:
`store` queues the order and ONE task per process takes whatever is queued (up to `max_batch`) and stores it at
once. In the batch's transaction, on the driver (D42), the platform's:

1. every (user, account, asset) the batch reserves from is checked as the user's account and its balance locked,
   in one statement on PostgreSQL (balances in id order, as the fill batch locks them);
2. each user's standing is read once per symbol (`RiskGate.load`);
3. the orders are judged one after another in queue order (`RiskGate.judge`), each on the standing and balances as
   the orders before it in the batch left them (an accepted order counts as working for the next; its reservation
   is taken from the balance the next one reserves from);
4. the orders, the alerts of the refused ones and the balances are written, one driver call per kind of write.

An order that fails on its own (no such account, a deactivated account, too few funds, a gate that asks for its
defaults or a kill-switch trip first) is answered with that error and left out; the others are stored. A batch
whose transaction fails (a client order id used twice, the database gone) is stored again one order at a time, so
a bad order fails alone.

On PostgreSQL, step 1 is skipped when every balance the batch reserves from is in the `RowCache` as this process
last committed it (D65): the batch starts from those, and each balance is written with a checked update — only if
it is unchanged since and its account is still the user's and active — so it costs no round trip of its own. If
any check fails (another worker, a deposit, a deactivation: anything), the transaction fails and the batch is
stored again the usual way, which decides.

Row-level security cannot bind a transaction shared by several users: each statement names the user's rows itself
(the account check joins on the user), as the fill batch does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from cival.core.db import Database
from cival.core.exceptions import NotFound, ValidationFailed
from cival.core.logging import get_logger
from cival.database.models import RiskAlert
from cival.database.rows import BalanceRow, OrderRow
from cival.domain import risk
from cival.domain.instruments import Instrument
from cival.domain.orders import OrderStatus
from cival.domain.risk import Limit, LimitType
from cival.services.group_commit import Writer
from cival.services.order_applier import Changes
from cival.services.portfolio_tracker import (
    Funds,
    FundsKey,
    kept_funds,
    lock_funds,
    new_balance,
    reserve,
    write_new_orders,
)
from cival.services.risk_manager import RateCounts, RiskGate, RiskRefused, refusal_alert, write_alerts
from cival.services.risk_standing import Loaded
from cival.services.row_cache import RowCache, copied

log = get_logger(__name__)


class AccountInactive(ValidationFailed):
    code = "account_inactive"


@dataclass
class Stored(Changes):
    """What storing a new order changed, and the gate's refusal when it was stored rejected."""

    refusal: RiskRefused | None = None


@dataclass
class NewOrder:
    """An order to store: validated, priced for its reservation (`amount` of `asset`), and what the gate needs."""

    order: OrderRow
    instrument: Instrument
    reference: Decimal | None
    """The market price the gate's collar compares a limit price with (the book's mid)."""
    asset: str
    amount: Decimal
    tripped: bool = False
    """The kill switch was just engaged for this order (`TripFirst`): it is judged as it came."""
    placed: tuple[str, str | None, Decimal] = field(init=False)
    """What judging the order changes, as placed: judged again (its batch stored again), it starts from these."""

    def __post_init__(self) -> None:
        self.placed = (self.order.status, self.order.reject_reason, self.order.reserved)

    def reset(self) -> None:
        self.order.status, self.order.reject_reason, self.order.reserved = self.placed


@dataclass
class _Batch:
    """What a batch's orders changed, to write when all are judged."""

    orders: list[OrderRow]
    alerts: list[RiskAlert]
    balances: dict[FundsKey, BalanceRow]
    created: set[uuid.UUID]  # balances not stored yet


class OrderIntake(Writer[NewOrder, Stored]):
    def __init__(
        self,
        database: Database,
        risk: RiskGate,
        publish_changes: Callable[[Changes], Awaitable[None]],
        prepare: Callable[[Changes], None],
        rows: RowCache,
        *,
        max_batch: int = 64,
    ) -> None:
        super().__init__(database, "order-intake", max_batch=max_batch)
        self.risk = risk
        self.rows = rows  # the applier's: what is stored here, its fills start from (D61)
        self.publish_changes = publish_changes
        self.prepare = prepare
        self._prepared: tuple[list[Stored | Exception], Changes] | None = None  # a batch's outcomes, its changes

    async def store(self, new: NewOrder) -> Stored:
        """Store `new.order` (queued synchronously, before the first await) and return what that changed, published
        already (`publish_changes`, with the rest of its batch). Raises what fails this order alone (`NotFound`,
        `AccountInactive`, `pf.InsufficientFunds`, the gate's `DefaultsFirst` and `TripFirst`), or what failed its
        transaction (`IntegrityError`: a client order id used twice)."""
        return await self.submit(new)

    async def close(self) -> None:
        await self.finish()

    async def publish_batch(self, results: list[Stored | Exception]) -> None:
        """What the stored orders changed, published before any caller is answered (and so before any order is
        sent): one message per changed row, the batch's rows together (built while the COMMIT was in flight)."""
        prepared, self._prepared = self._prepared, None
        await self.publish_changes(prepared[1] if prepared is not None and prepared[0] is results else _merged(results))

    async def write_batch(self, batch: list[NewOrder]) -> list[Stored | Exception]:
        """One transaction for the whole batch; each order's outcome, in order. From the balances kept in the
        `RowCache` when all are (D65); should that transaction fail, the batch is stored again reading them."""
        kept = None if self.database.is_sqlite else kept_funds(self.rows, {_key(new) for new in batch})
        if kept is not None:
            try:
                return await self._write_once(batch, kept)
            except Exception as exc:
                self.rows.forget(balances=[(account_id, asset) for _, account_id, asset in kept])
                log.info("new orders' balances read from the database after all", error=str(exc))
        return await self._write_once(batch, None)

    async def _write_once(
        self, batch: list[NewOrder], kept: dict[FundsKey, BalanceRow] | None
    ) -> list[Stored | Exception]:
        outcomes: list[Stored | Exception] = []
        self._prepared = None
        writes = _Batch([], [], {}, set())
        counts: dict[uuid.UUID, RateCounts] = {}
        stored = False
        try:
            async with self.database.driver_transaction(None, held=self.held) as tx:
                if kept is None:
                    funds = await lock_funds(tx, {_key(new) for new in batch})
                else:
                    funds = {key: Funds(True, row.id, row.free, row.locked) for key, row in kept.items()}
                    # Every kept balance is written, so every account is checked (D65); orders reserve from these.
                    writes.balances = {key: copied(row) for key, row in kept.items()}
                # Each (user, symbol)'s standing, read after the funds are locked, all in one round trip (D63).
                keys = list({(new.order.user_id, new.order.symbol): None for new in batch if _key(new) in funds})
                standings = dict(zip(keys, await self.risk.load_many(keys, tx), strict=True))
                counts = await self._take_counts(batch, standings)
                for new in batch:
                    new.reset()
                    try:
                        outcomes.append(await self._judge(new, funds, standings, counts, writes))
                    except Exception as exc:  # this order alone: nothing of it is written
                        outcomes.append(exc)
                as_read = None if kept is None else {row.id: row for row in kept.values()}
                await write_new_orders(tx, writes.orders, writes.balances.values(), writes.created, as_read)
                await write_alerts(tx, writes.alerts)
                tx.meanwhile = lambda: self._prepare(outcomes)
            stored = True
            self.rows.keep(writes.orders, writes.balances.values())
        finally:
            for taken in counts.values():  # the unused ones, or all of them when nothing was stored
                await self.risk.return_counts(taken, every=not stored)
        return outcomes

    def _prepare(self, outcomes: list[Stored | Exception]) -> None:
        changes = _merged(outcomes)
        self.prepare(changes)
        self._prepared = (outcomes, changes)

    async def _take_counts(
        self, batch: list[NewOrder], standings: dict[tuple[uuid.UUID, str], Loaded]
    ) -> dict[uuid.UUID, RateCounts]:
        """Each user's order-rate counts for this batch, in one cache step per user (D48), the users' steps at once
        (D64): as many as the user has orders here, when an order rate limit applies to them. Should a step fail, the
        counts the others took are given back before the failure is raised."""
        wanted: dict[uuid.UUID, tuple[Limit, int]] = {}
        for new in batch:
            order = new.order
            loaded = standings.get((order.user_id, order.symbol))
            limit = None if loaded is None else risk.effective(loaded.limits, order.symbol).get(LimitType.ORDER_RATE)
            if limit is not None:
                wanted[order.user_id] = (limit, wanted.get(order.user_id, (limit, 0))[1] + 1)
        steps = (self.risk.take_counts(user_id, n, limit) for user_id, (limit, n) in wanted.items())
        outcomes = await asyncio.gather(*steps, return_exceptions=True)
        taken = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        if len(taken) < len(outcomes):
            for counts in taken:
                await self.risk.return_counts(counts, every=True)
            raise next(outcome for outcome in outcomes if isinstance(outcome, BaseException))
        return dict(zip(wanted, taken, strict=True))

    async def _judge(
        self,
        new: NewOrder,
        funds: dict[FundsKey, Funds],
        standings: dict[tuple[uuid.UUID, str], Loaded],
        counts: dict[uuid.UUID, RateCounts],
        writes: _Batch,
    ) -> Stored:
        order = new.order
        key = _key(new)
        found = funds.get(key)
        if found is None:
            raise NotFound(f"account {order.account_id} not found")
        if not found.is_active:
            raise AccountInactive(f"account {order.account_id} is deactivated: reactivate it to trade")
        stored = Stored()
        loaded = standings[(order.user_id, order.symbol)]
        try:
            await self.risk.judge(
                order, new.instrument, new.reference, loaded, tripped=new.tripped, counts=counts.get(order.user_id)
            )
        except RiskRefused as refusal:
            order.status = OrderStatus.REJECTED.value
            order.reject_reason = f"risk:{refusal.limit_type}: {refusal.detail}"[:255]
            alert = refusal_alert(order, refusal)
            writes.orders.append(order)
            writes.alerts.append(alert)
            stored.alerts.append(alert)
            stored.refusal = refusal
            stored.users.add(order.user_id)
        else:
            balance = writes.balances.get(key) or _balance(new, found, writes)
            reserve(order, new.asset, new.amount, balance)  # raises InsufficientFunds before anything is kept
            writes.balances[key] = balance
            writes.orders.append(order)
            loaded.accept(order)
            stored.balances[balance.id] = balance
        stored.orders[order.id] = order
        return stored


def _merged(outcomes: list[Stored | Exception]) -> Changes:
    """What a batch's stored orders changed, together."""
    changes = Changes()
    for outcome in outcomes:
        if isinstance(outcome, Stored):
            changes.orders |= outcome.orders
            changes.balances |= outcome.balances
            changes.alerts += outcome.alerts
            changes.users |= outcome.users
    return changes


def _key(new: NewOrder) -> FundsKey:
    if new.order.account_id is None:
        raise ValueError(f"order {new.order.id} has no account")
    return (new.order.user_id, new.order.account_id, new.asset)


def _balance(new: NewOrder, funds: Funds, writes: _Batch) -> BalanceRow:
    """The balance `new` reserves from as locked (a row to create when the account has none of the asset yet)."""
    user_id, account_id, asset = _key(new)
    exchange = new.order.exchange
    if funds.balance_id is None:
        row = new_balance(user_id, account_id, asset, exchange)
        writes.created.add(row.id)
        return row
    return BalanceRow(
        id=funds.balance_id,
        user_id=user_id,
        account_id=account_id,
        asset=asset,
        free=funds.free,
        locked=funds.locked,
        total=funds.free + funds.locked,
        usd_value=None,  # not read here, nor written: the update sets free, locked, total and updated_at
        exchange=exchange,
        updated_at=new.order.updated_at,
    )
