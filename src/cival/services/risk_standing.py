"""What the risk gate reads: a user's limits and standing in ONE query (`standing_query`), parsed into `Loaded`.

The limits, the kill switch and its automatic trip, the user's positions (of one symbol, or all), working orders,
balances, the last snapshot before today and the paper accounts' openings: everything the configured limits need
besides prices, as one union of typed rows (`RiskGate.load`, and `RiskGate.load_many` for a batch's users in one
round trip, D63). Working orders are read through `idx_orders_user_working` (D54), whose predicate
(`models.WORKING_ORDERS`) names the statuses of `WORKING`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, Integer, String, Uuid, bindparam, case, cast, literal_column, null, select, union_all
from sqlalchemy.sql import CompoundSelect
from sqlalchemy.types import TypeEngine

from cival.database.driver_sql import DriverQuery
from cival.database.models import Balance, Money, Order, PortfolioSnapshot, Position, TradingAccount, TradingLimit
from cival.database.rows import OrderRow
from cival.database.types import UTCDateTime
from cival.domain import risk
from cival.domain.orders import TERMINAL_STATUSES, OrderStatus
from cival.domain.risk import KILL_SWITCH, KILL_SWITCH_ON_DAILY_LOSS, Limit, LimitType

WORKING = tuple(s.value for s in OrderStatus if s not in TERMINAL_STATUSES)
_LIMIT_TYPES = frozenset(t.value for t in LimitType)


@dataclass
class Loaded:
    """A user's limits and standing as read in one query (before prices are applied)."""

    limits: list[Limit] = field(default_factory=list)
    kill_switch: bool | None = None  # None: the user has no risk rows yet (defaults not created)
    trip_on_daily_loss: bool = False
    positions: dict[tuple[uuid.UUID, str], Decimal] = field(default_factory=dict)
    working: list[risk.WorkingOrder] = field(default_factory=list)
    balances: dict[str, Decimal] = field(default_factory=dict)
    previous_snapshot: tuple[date, Decimal] | None = None
    account_openings: list[datetime] = field(default_factory=list)

    def standing(self, deposit_per_account: Decimal) -> risk.Standing:
        start = risk.start_of_day_value(self.previous_snapshot, self.account_openings, deposit_per_account)
        return risk.Standing(self.positions, tuple(self.working), self.balances, start)

    def accept(self, order: OrderRow) -> None:
        """Count `order`, just accepted, as working: the next order judged on this standing sees it."""
        self.working.append(
            risk.WorkingOrder(order.account_id, order.symbol, order.side, order.quantity, order.reserved)
        )


def _row(kind: str, **cols: Any) -> list[Any]:
    """One branch of the union: every branch has the same typed columns, NULL where it has nothing to say."""
    types: dict[str, TypeEngine[Any]] = {
        "symbol": String(50),
        "key": String(50),
        "ref": Uuid(),
        "a": Money,
        "b": Money,
        "c": Money,
        "at": UTCDateTime(),
        "day": Date(),
        "flag": Integer(),
    }
    out: list[Any] = [
        literal_column(f"'{kind}'", String(1)).label("kind"),
        bindparam("nth", type_=Integer()).label("nth"),  # which run of the query a row is of (`RiskGate.load_many`)
    ]
    for name, type_ in types.items():
        value = cols.get(name)
        out.append((cast(null(), type_) if value is None else value).label(name))
    return out


def standing_query(*, of_symbol: bool) -> CompoundSelect[Any]:
    """The user's limits, positions (of the `symbol` parameter, or all), working orders, balances, last snapshot
    before `today` and paper accounts: one round trip. Parameters `user_id`, `today` (and `symbol`), and `nth`, which
    every row repeats.

    Built once per shape and reused: building and hashing a statement this size costs more than running it.
    """
    user_id, today = bindparam("user_id", type_=Uuid()), bindparam("today", type_=Date())
    limits = select(
        *_row(
            "l",
            symbol=TradingLimit.symbol,
            key=TradingLimit.limit_type,
            ref=TradingLimit.id,
            a=TradingLimit.limit_value,
            flag=case((TradingLimit.is_active, 1), else_=0),
        )
    ).where(TradingLimit.user_id == user_id)
    positions = select(*_row("p", symbol=Position.symbol, ref=Position.account_id, a=Position.size)).where(
        Position.user_id == user_id
    )
    if of_symbol:
        positions = positions.where(Position.symbol == bindparam("symbol", type_=String(50)))
    orders = select(
        *_row(
            "o",
            symbol=Order.symbol,
            key=Order.side,
            ref=Order.account_id,
            a=Order.quantity,
            b=Order.filled_quantity,
            c=Order.reserved,
        )
    ).where(Order.user_id == user_id, Order.status.in_([literal_column(f"'{s}'") for s in WORKING]))
    balances = select(*_row("b", key=Balance.asset, ref=Balance.account_id, a=Balance.total)).where(
        Balance.user_id == user_id
    )
    last = (
        select(PortfolioSnapshot.total_value, PortfolioSnapshot.snapshot_date)
        .where(PortfolioSnapshot.user_id == user_id, PortfolioSnapshot.snapshot_date < today)
        .order_by(PortfolioSnapshot.snapshot_date.desc())
        .limit(1)
        .subquery()
    )
    snapshot = select(*_row("s", a=last.c.total_value, day=last.c.snapshot_date))
    accounts = select(*_row("a", ref=TradingAccount.id, at=TradingAccount.created_at)).where(
        TradingAccount.user_id == user_id, TradingAccount.exchange == "paper"
    )
    return union_all(limits, positions, orders, balances, snapshot, accounts)


STANDING = {of_symbol: DriverQuery(standing_query(of_symbol=of_symbol)) for of_symbol in (True, False)}


def parse_standing(rows: Sequence[Any]) -> Loaded:
    loaded = Loaded()
    for r in rows:
        if r.kind == "l":
            if r.key == KILL_SWITCH:
                loaded.kill_switch = bool(r.flag)
            elif r.key == KILL_SWITCH_ON_DAILY_LOSS:
                loaded.trip_on_daily_loss = bool(r.flag)
            elif r.flag and r.key in _LIMIT_TYPES:
                loaded.limits.append(Limit(LimitType(r.key), r.a, r.symbol, r.ref))
        elif r.kind == "p":
            loaded.positions[(r.ref, r.symbol)] = r.a
        elif r.kind == "o":
            loaded.working.append(risk.WorkingOrder(r.ref, r.symbol, r.key, r.a - r.b, r.c))
        elif r.kind == "b":
            loaded.balances[r.key] = loaded.balances.get(r.key, Decimal(0)) + r.a
        elif r.kind == "s":
            loaded.previous_snapshot = (r.day, r.a)
        elif r.kind == "a":
            loaded.account_openings.append(r.at)
    return loaded
