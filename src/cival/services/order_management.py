"""Order lifecycle: validate, reserve, store, send, and apply the venue's events (the spec's order_management).

Placement: the body is checked against the pair (domain validation, nothing written on failure), and the order
intake (D43) judges it with the risk gate and stores it `pending` with its funds reserved in a committed
transaction (shared with the orders placed at the same moment) BEFORE it is sent to the connector. The connector's
events then go through the state machine in a second transaction: fills become trades (unique per exchange and
trade id, so never applied twice), then the order's totals, balances, position and today's snapshot change together
(`sync_portfolio_data`), and one user message per change is published. A send that times out leaves the order
`unknown` (never `rejected`); restart reconciliation settles it.

Idempotency (D18): `client_order_id` is unique per user; an `Idempotency-Key` becomes the client order id when
none is given, so concurrent identical requests race on the unique index and exactly one order is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from cival.connectors.paper import ConnectorTimeout, PaperExchange
from cival.core.cache import Cache
from cival.core.db import Database
from cival.core.exceptions import Conflict, NotFound, ValidationFailed
from cival.core.logging import get_logger
from cival.database.models import Order, Trade, TradingAccount
from cival.database.rows import OrderRow, row_of
from cival.domain import portfolio as pf
from cival.domain.instruments import Instrument
from cival.domain.matching import Cancelled, Event, OpenOrder, OrderRequest, Rested
from cival.domain.order_validation import validate_order
from cival.domain.orders import (
    TERMINAL_STATUSES,
    CancelReason,
    OrderRejected,
    OrderSide,
    OrderStatus,
    OrderType,
    TimeInForce,
    transition,
)
from cival.models.trading_models import OrderIn, OrderOut, OrderPage, TradeOut, TradePage
from cival.services.auth_service import Principal
from cival.services.channels import UserPublisher
from cival.services.order_applier import Changes, EventApplier
from cival.services.order_intake import AccountInactive, NewOrder, OrderIntake, Stored
from cival.services.order_routing import OrderRoute, VenueUnavailable
from cival.services.risk_manager import RiskGate

log = get_logger(__name__)


STOP_BUY_SLIPPAGE = Decimal("0.05")
"""A stop (market) buy reserves at its stop price plus this much: its fill price is not known before the trigger."""


class OrderInvalid(ValidationFailed):
    """A domain reject code; `code` is set per instance."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code  # type: ignore[misc]


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"


class InsufficientFundsError(ValidationFailed):
    code = "insufficient_funds"


class NoMarketPrice(ValidationFailed):
    code = "no_market_data"


class OrderNotCancelable(Conflict):
    code = "order_not_cancelable"


class OrderNotFound(NotFound):
    code = "not_found"


_COMPARED = ("account_id", "symbol", "side", "type", "quantity", "price", "stop_price", "time_in_force", "post_only")


class OrderManagementService:
    def __init__(
        self,
        database: Database,
        cache: Cache,
        instruments: Callable[[str, str], Instrument],
        paper: PaperExchange,
        risk: RiskGate,
        prices: Callable[[], Awaitable[dict[str, Decimal]]],
        starting_balances: dict[str, Decimal],
        route: OrderRoute,
        publish: UserPublisher,
        *,
        sweep_seconds: float = 10.0,
        snapshot_seconds: float = 0.0,
    ) -> None:
        self.database = database
        self.route = route
        self.sweep_seconds = sweep_seconds
        self._sweeper: asyncio.Task[None] | None = None
        self.cache = cache
        self.instrument = instruments
        self.paper = paper
        self.risk = risk
        self.prices = prices
        self.starting_balances = starting_balances
        self.applier = EventApplier(
            database,
            instruments,
            prices,
            starting_balances,
            publish,
            snapshot_seconds=snapshot_seconds,
        )
        self.intake = OrderIntake(database, risk, self.applier.publish_changes, self.applier.prepare, self.applier.rows)
        paper.sink = self.apply_events
        self._accounts: dict[tuple[uuid.UUID, uuid.UUID], str] = {}  # (user, account) -> exchange: never changes
        self._sending: set[uuid.UUID] = set()  # stored, not yet handed to the venue
        self._routing: set[uuid.UUID] = set()  # stored, asked of the leader, not yet answered
        self._cancel_before_send: set[uuid.UUID] = set()
        self._taken_over = asyncio.Event()  # cleared while this process takes the lead of the paper exchange
        self._taken_over.set()

    # --- placing ---------------------------------------------------------------------------------------------

    async def place_order(self, principal: Principal, body: OrderIn, idempotency_key: str | None) -> OrderOut:
        user_id = principal.user_id
        client_order_id = body.client_order_id or (f"idem:{idempotency_key[:59]}" if idempotency_key else None)
        tif = body.time_in_force or ("IOC" if body.type == "market" else "GTC")
        if client_order_id is not None:
            existing = await self._by_client_id(user_id, client_order_id)
            if existing is not None:
                return self._same_or_refuse(existing, body, tif)
        exchange = await self._account_exchange(user_id, body.account_id)
        instrument = self.instrument(exchange, body.symbol)
        book = await self._book(instrument)
        is_buy = body.side == "buy"
        reference = None
        if book is not None:
            levels = book.asks if is_buy else book.bids
            reference = levels[0].price if levels else None
        try:
            validate_order(
                instrument,
                OrderSide(body.side),
                OrderType(body.type),
                body.quantity,
                body.price,
                body.stop_price,
                TimeInForce(tif),
                body.post_only,
                reference_price=reference,
            )
        except OrderRejected as exc:
            raise OrderInvalid(str(exc.code), exc.detail) from exc
        now = datetime.now(UTC)
        order = OrderRow(
            id=uuid.uuid4(),
            user_id=user_id,
            account_id=body.account_id,
            external_order_id=None,
            symbol=instrument.symbol,
            side=body.side,
            type=body.type,
            quantity=body.quantity,
            price=body.price,
            stop_price=body.stop_price,
            time_in_force=tif,
            status=OrderStatus.PENDING.value,
            filled_quantity=Decimal(0),
            average_price=None,
            fees=Decimal(0),
            exchange=exchange,
            created_at=now,
            updated_at=now,
            client_order_id=client_order_id,
            post_only=body.post_only,
            triggered_at=None,
            reject_reason=None,
            reserved=Decimal(0),
        )
        mid = None
        if book is not None and book.bids and book.asks:
            mid = (book.bids[0].price + book.asks[0].price) / 2
        asset, amount = self._reservation(order, instrument, book)
        try:
            stored = await self.risk.judged(
                user_id, lambda tripped: self._store(NewOrder(order, instrument, mid, asset, amount, tripped))
            )
        except IntegrityError:
            if client_order_id is None:
                raise
            existing = await self._by_client_id(user_id, client_order_id)
            if existing is None:
                raise
            return self._same_or_refuse(existing, body, tif)
        except pf.InsufficientFunds as exc:
            raise InsufficientFundsError(
                f"this order needs {amount} {asset} and the account has less free: {exc}"
            ) from exc
        # Stored (pending with its funds locked, or rejected with its alert), and its changes published before
        # anything the venue does with it.
        if stored.refusal is not None:
            raise stored.refusal
        # The order is stored and acknowledged: now, and only now, it goes to the venue.
        return await self._send(order, instrument)

    async def _store(self, new: NewOrder) -> Stored:
        """Stored by the intake (D43): pending with its funds locked, or rejected by the gate with its alert."""
        order = new.order
        self._sending.add(order.id)
        try:
            stored = await self.intake.store(new)
        except BaseException:
            self._sending.discard(order.id)
            raise
        if stored.refusal is not None:
            self._sending.discard(order.id)
        return stored

    async def _account_exchange(self, user_id: uuid.UUID, account_id: uuid.UUID) -> str:
        """The account's exchange (immutable, so remembered); whether it is active is checked when storing."""
        known = self._accounts.get((user_id, account_id))
        if known is not None:
            return known
        async with self.database.session(user_id, read_only=True) as session:
            account = await session.scalar(
                select(TradingAccount).where(TradingAccount.id == account_id, TradingAccount.user_id == user_id)
            )
        if account is None:
            raise NotFound(f"account {account_id} not found")
        if not account.is_active:
            raise AccountInactive(f"account {account.id} is deactivated: reactivate it to trade")
        self._accounts[(user_id, account_id)] = account.exchange
        return account.exchange

    def _same_or_refuse(self, existing: Order, body: OrderIn, tif: str) -> OrderOut:
        wanted = body.model_dump() | {"time_in_force": tif, "symbol": body.symbol}
        for name in _COMPARED:
            if getattr(existing, name) != wanted[name]:
                raise IdempotencyKeyReused(
                    f"client order id / Idempotency-Key {existing.client_order_id!r} was used for a different order "
                    f"({name} differs): use a new key for a new order"
                )
        return OrderOut.model_validate(existing)

    async def _by_client_id(self, user_id: uuid.UUID, client_order_id: str) -> Order | None:
        async with self.database.session(user_id, read_only=True) as session:
            return await session.scalar(
                select(Order).where(Order.user_id == user_id, Order.client_order_id == client_order_id)
            )

    async def _book(self, instrument: Instrument) -> Any:
        engine = self.paper.engines.get(instrument.symbol)
        if self.paper.book_source is not None:
            latest = await self.paper.book_source(instrument.symbol)
            if latest is not None:
                return latest
        return engine.book if engine is not None else None

    def _reservation(self, order: OrderRow, instrument: Instrument, book: Any) -> tuple[str, Decimal]:
        maker, taker = self.paper.fee_rates.get(instrument.symbol, (Decimal(0), Decimal(0)))
        rate = max(maker, taker)
        if order.side == "sell":
            return instrument.base_asset, order.quantity
        if order.type in ("limit", "stop_limit"):
            bound = order.price
        elif order.type == "market":
            if book is None or not book.asks:
                raise NoMarketPrice(f"no order book for {order.symbol} yet: a market order cannot be priced")
            bound = book.asks[-1].price  # no fill of this order can be worse than the deepest ask of the book
        else:
            if order.stop_price is None:
                raise ValueError(f"stop order {order.id} has no stop price")
            raw = order.stop_price * (1 + STOP_BUY_SLIPPAGE)
            bound = (raw / instrument.tick_size).to_integral_value(ROUND_CEILING) * instrument.tick_size
        _, amount = pf.required_reservation("buy", order.type, order.quantity, bound, rate)  # type: ignore[arg-type]
        return instrument.quote_asset, amount

    async def _send(self, order: OrderRow, instrument: Instrument) -> OrderOut:
        if not self.paper.active:  # another worker leads the paper exchange: it works the order
            self._sending.discard(order.id)
            return await self._route_submit(order)
        try:
            if order.id in self._cancel_before_send:
                events: list[Event] = [Cancelled(str(order.id), CancelReason.REQUESTED)]
            else:
                events = await self.paper.submit(instrument.symbol, _request(order))
        except (TimeoutError, ConnectorTimeout, ConnectionError) as exc:
            # The venue may or may not hold the order: unknown, never rejected (reconciliation decides).
            log.warning("order send timed out; outcome unknown", order_id=str(order.id), error=str(exc))
            return await self._mark_unknown(order)
        finally:
            self._sending.discard(order.id)
            self._cancel_before_send.discard(order.id)
        # No await between the venue's answer and `apply` queueing it: events are stored in the venue's order.
        changes = await self.applier.apply(events)
        return changes.answer(order)  # built while the batch's COMMIT was in flight

    async def _route_submit(self, order: OrderRow) -> OrderOut:
        self._routing.add(order.id)  # a reconciliation meanwhile leaves it to this call (`reconcile`)
        try:
            reply = await self.route.request("submit", order.id)
            if reply is None:
                # No leader answered. If this process is taking the lead right now, its request found no one
                # listening yet: once it leads, it works the order itself, as it would a late request.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.route.timeout):
                        await self._taken_over.wait()
                if self.paper.active:
                    reply = await self.work("submit", order.id)
            if reply is not None and "order" in reply:
                return OrderOut.model_validate(reply["order"])
            log.warning("no answer from the paper exchange; outcome unknown", order_id=str(order.id), reply=reply)
            return await self._mark_unknown(order)
        finally:
            self._routing.discard(order.id)

    async def _mark_unknown(self, order: OrderRow) -> OrderOut:
        """Unknown, unless the venue answered meanwhile (a late answer wins: it is what happened)."""
        async with self.database.system_session() as session:
            row = await session.get(Order, order.id, with_for_update=True)
            if row is None:
                return OrderOut.model_validate(order)
            changed = row.status == OrderStatus.PENDING.value
            if changed:
                row.status = transition(OrderStatus(row.status), OrderStatus.UNKNOWN).value
        if changed:  # as committed (with its new updated_at)
            await self.applier.publish_changes(Changes(orders={row.id: row_of(OrderRow, row)}, users={row.user_id}))
        return OrderOut.model_validate(row)

    # --- the process that works paper orders (the market-data leader) ---------------------------------------

    def taking_lead(self) -> None:
        """This process has just taken the market-data lease: until `on_leadership(True)` has rebuilt the books, a
        placement whose request finds no leader waits for it (at most the route's timeout) and is worked here."""
        self._taken_over.clear()

    async def on_leadership(self, leading: bool) -> None:
        """Become (or stop being) the process that works paper orders."""
        if leading:
            self.paper.active = False  # while the books are rebuilt, nothing reaches the engines
            self._taken_over.clear()
            try:
                await self.reconcile()
                self.paper.active = True
                await self.route.serve(self.work)
            finally:
                self._taken_over.set()
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = asyncio.create_task(self._sweep(), name="unknown-order-sweep")
        else:
            self.paper.active = False
            self._taken_over.set()
            await self.route.stop_serving()
            await self._stop_sweeper()
            self.paper.reset()

    async def work(self, op: str, order_id: uuid.UUID) -> dict[str, Any]:
        """Another worker's request: submit or cancel one stored order here; answers with the order as stored."""
        async with self.database.system_session(read_only=True) as session:
            stored = await session.get(Order, order_id)
        if stored is None:
            return {"error": "not_found", "detail": f"order {order_id} not found"}
        row: Order | OrderRow = stored
        if op == "submit":
            if row.status in (OrderStatus.PENDING.value, OrderStatus.UNKNOWN.value) and not self.paper.is_working(
                row.symbol, str(row.id)
            ):
                changes = await self.applier.apply(await self.paper.submit(row.symbol, _request(row)))
                row = changes.orders.get(row.id, row)
        elif op == "cancel":
            row = await self._cancel_here(stored)
        else:
            return {"error": "bad_request", "detail": f"unknown operation {op!r}"}
        return {"order": OrderOut.model_validate(row).model_dump(mode="json")}

    async def settle_unknown(self, older_than: float) -> int:
        """Cancel paper orders left unknown for `older_than` seconds that are not on the engines: the request that
        would have worked them never arrived. Returns how many were settled."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        async with self.database.system_session(read_only=True) as session:
            rows = (
                await session.execute(
                    select(Order.id, Order.symbol).where(
                        Order.exchange == "paper",
                        Order.status == OrderStatus.UNKNOWN.value,
                        Order.updated_at < cutoff,
                    )
                )
            ).all()
        lost: list[Event] = [
            Cancelled(str(i), CancelReason.REQUESTED) for i, symbol in rows if not self.paper.is_working(symbol, str(i))
        ]
        await self.apply_events(lost)
        return len(lost)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                settled = await self.settle_unknown(older_than=2 * self.route.timeout)
                if settled:
                    log.info("unknown paper orders settled", count=settled)
            except Exception:
                log.exception("settling unknown orders failed")

    async def _stop_sweeper(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        await self._stop_sweeper()
        await self.route.close()
        await self.intake.close()
        await self.applier.close()

    async def apply_events(self, events: list[Event]) -> None:
        """The connector's sink: store its events (in the order it produced them) and publish what changed."""
        if events:
            await self.applier.apply(events)

    # --- cancelling ------------------------------------------------------------------------------------------

    async def cancel_order(self, principal: Principal, order_id: uuid.UUID) -> OrderOut:
        order = await self._own(principal.user_id, order_id)
        if OrderStatus(order.status) in TERMINAL_STATUSES:
            raise OrderNotCancelable(f"order {order_id} is {order.status}: only a working order can be cancelled")
        if self.paper.active:
            done = OrderOut.model_validate(await self._cancel_here(order))
        else:
            reply = await self.route.request("cancel", order.id)
            if reply is None or "order" not in reply:
                raise VenueUnavailable(
                    f"the paper exchange did not answer: order {order_id} is unchanged; retry the cancel"
                )
            done = OrderOut.model_validate(reply["order"])
        if done.status != OrderStatus.CANCELLED.value:
            raise OrderNotCancelable(f"order {order_id} is {done.status}: only a working order can be cancelled")
        return done

    async def _cancel_here(self, order: Order) -> Order | OrderRow:
        if self.paper.is_working(order.symbol, str(order.id)):
            events = await self.paper.cancel(order.symbol, str(order.id))
        else:
            if order.id in self._sending:  # stored, on its way to the venue: it will be cancelled instead of sent
                self._cancel_before_send.add(order.id)
            # Not on the venue (never sent, finished meanwhile, or lost with a restart): nothing can fill it now.
            events = [Cancelled(str(order.id), CancelReason.REQUESTED)]
        changes = await self.applier.apply(events)
        found = changes.orders.get(order.id)
        if found is not None:
            return found
        async with self.database.system_session(read_only=True) as session:
            return await session.get(Order, order.id) or order

    async def cancel_all(self, principal: Principal, symbol: str | None) -> list[OrderOut]:
        async with self.database.session(principal.user_id, read_only=True) as session:
            query = select(Order.id).where(
                Order.user_id == principal.user_id,
                Order.status.in_([s.value for s in OrderStatus if s not in TERMINAL_STATUSES]),
            )
            if symbol is not None:
                query = query.where(Order.symbol == symbol)
            ids = list((await session.scalars(query.order_by(Order.created_at))).all())
        out = []
        for order_id in ids:
            try:
                out.append(await self.cancel_order(principal, order_id))
            except OrderNotCancelable:  # filled meanwhile
                continue
        return out

    # --- reads -----------------------------------------------------------------------------------------------

    async def _own(self, user_id: uuid.UUID, order_id: uuid.UUID) -> Order:
        async with self.database.session(user_id, read_only=True) as session:
            order = await session.scalar(select(Order).where(Order.id == order_id, Order.user_id == user_id))
        if order is None:
            raise OrderNotFound(f"order {order_id} not found")
        return order

    async def get_order(self, principal: Principal, order_id: uuid.UUID) -> OrderOut:
        return OrderOut.model_validate(await self._own(principal.user_id, order_id))

    async def list_orders(
        self, principal: Principal, *, status: str | None, symbol: str | None, limit: int, offset: int
    ) -> OrderPage:
        user_id = principal.user_id
        where = [Order.user_id == user_id]
        if status is not None:
            where.append(Order.status == status)
        if symbol is not None:
            where.append(Order.symbol == symbol)
        async with self.database.session(user_id, read_only=True) as session:
            total = await session.scalar(select(func.count()).select_from(Order).where(*where)) or 0
            rows = (
                await session.scalars(
                    select(Order).where(*where).order_by(Order.created_at.desc(), Order.id).limit(limit).offset(offset)
                )
            ).all()
        return OrderPage(items=[OrderOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)

    async def list_trades(
        self, principal: Principal, *, symbol: str | None, order_id: uuid.UUID | None, limit: int, offset: int
    ) -> TradePage:
        user_id = principal.user_id
        where = [Trade.user_id == user_id]
        if symbol is not None:
            where.append(Trade.symbol == symbol)
        if order_id is not None:
            where.append(Trade.order_id == order_id)
        async with self.database.session(user_id, read_only=True) as session:
            total = await session.scalar(select(func.count()).select_from(Trade).where(*where)) or 0
            rows = (
                await session.scalars(
                    select(Trade)
                    .where(*where)
                    .order_by(Trade.executed_at.desc(), Trade.external_trade_id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
        return TradePage(items=[TradeOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)

    # --- restart safety --------------------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Rebuild the paper books from the database (from scratch); settle paper orders that cannot be working.

        Resting limits, waiting stops and triggered stop-limits go back on their engine (with what they filled).
        A paper order that cannot rest (a market/IOC/FOK order stored but never answered: the process died between
        commit and send, or the send timed out) is cancelled and its reservation released: the in-process venue
        that could have filled it is gone, and nothing was stored of a fill.

        Orders this process is placing right now (stored, being sent or asked of a leader that no longer answers)
        are left to their placement: it works them here once this process leads (`_route_submit`).
        """
        in_flight = self._sending | self._routing  # before the read too: its rows may predate a placement's end
        async with self.database.system_session(read_only=True) as session:
            rows = (
                await session.scalars(
                    select(Order)
                    .where(
                        Order.exchange == "paper",
                        Order.status.in_(
                            [OrderStatus.PENDING.value, OrderStatus.PARTIAL.value, OrderStatus.UNKNOWN.value]
                        ),
                    )
                    .order_by(Order.created_at, Order.id)
                )
            ).all()
        restorable: dict[str, list[OpenOrder]] = {}
        orphans: list[Event] = []
        in_flight |= self._sending | self._routing
        for row in rows:
            if row.id in in_flight:
                continue
            rests = (
                (row.type == "limit" and row.time_in_force == "GTC")
                or row.type == "stop"
                or (row.type == "stop_limit" and (row.triggered_at is None or row.time_in_force == "GTC"))
            )
            if not rests or row.symbol not in self.paper.engines:
                orphans.append(Cancelled(str(row.id), CancelReason.REQUESTED))
                continue
            restorable.setdefault(row.symbol, []).append(
                OpenOrder(_request(row), row.filled_quantity, row.triggered_at)
            )
            if row.status == OrderStatus.UNKNOWN.value:  # it is working after all
                orphans.append(Rested(str(row.id)))
        self.paper.reset()
        for symbol, orders in restorable.items():
            self.paper.restore(symbol, orders)
        await self.apply_events(orphans)
        return sum(len(o) for o in restorable.values())


def _request(order: Order | OrderRow) -> OrderRequest:
    return OrderRequest(
        order_id=str(order.id),
        side=OrderSide(order.side),
        type=OrderType(order.type),
        quantity=order.quantity,
        time_in_force=TimeInForce(order.time_in_force),
        ts=order.created_at,
        price=order.price,
        stop_price=order.stop_price,
        post_only=order.post_only,
    )
