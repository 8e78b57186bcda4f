"""The order path's rows as this process last committed them (D61).

The order intake stores an order and the balance its reservation changed; a moment later the fill applier reads
the same rows back, locked, to apply the order's fills. On PostgreSQL that read is a round trip of its own at the
start of every fill batch. This cache lets the applier start from the rows as they were committed instead and write
with checked updates (`DriverCheckedUpdate`), which fail the transaction if a row changed meanwhile — another
worker, another batch, anything: the batch is then stored again the usual way, reading and locking the rows. So the
cache is never trusted, only checked, and the database stays the truth.

Rows are kept as copies, and a kept row is never changed: the caller works on a copy of it (`copied`) and checks
its writes against the kept row itself. An order in a terminal status is not kept: no venue event changes it again.
At most `most` rows of each table are kept; the oldest kept go first.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterable
from typing import TypeVar

from cival.core.logging import get_logger
from cival.database.rows import BalanceRow, OrderRow, PositionRow, row_of
from cival.domain.orders import TERMINAL_STATUSES

log = get_logger(__name__)
RowT = TypeVar("RowT", OrderRow, BalanceRow, PositionRow)
_K = TypeVar("_K", bound=Hashable)
TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)


def copied(row: RowT) -> RowT:
    """A copy of `row` (of the order path's rows kept here) to change."""
    return row_of(type(row), row)


class RowCache:
    def __init__(self, most: int = 10_000) -> None:
        self.most = most
        self._orders: dict[uuid.UUID, OrderRow] = {}
        self._balances: dict[tuple[uuid.UUID, str], BalanceRow] = {}  # by (account, asset)
        self._positions: dict[tuple[uuid.UUID, str], PositionRow] = {}  # by (account, symbol)

    def keep(
        self,
        orders: Iterable[OrderRow] = (),
        balances: Iterable[BalanceRow] = (),
        positions: Iterable[PositionRow] = (),
    ) -> None:
        """Keep copies of rows just committed (call only once their transaction has committed; anything with the
        rows' attributes will do). Never raises — it runs after a COMMIT, whose callers must learn of it: should
        copying fail, nothing is kept any more until rows are kept again, and fills are read meanwhile."""
        try:
            for order in orders:
                if order.status in TERMINAL:
                    self._orders.pop(order.id, None)
                else:
                    self._put(self._orders, order.id, row_of(OrderRow, order))
            for balance in balances:
                self._put(self._balances, (balance.account_id, balance.asset), row_of(BalanceRow, balance))
            for position in positions:
                self._put(self._positions, (position.account_id, position.symbol), row_of(PositionRow, position))
        except Exception:
            log.exception("keeping the order path's rows failed: the cache is emptied")
            self.clear()

    def clear(self) -> None:
        self._orders.clear()
        self._balances.clear()
        self._positions.clear()

    def forget(
        self,
        orders: Iterable[uuid.UUID] = (),
        balances: Iterable[tuple[uuid.UUID, str]] = (),
        positions: Iterable[tuple[uuid.UUID, str]] = (),
    ) -> None:
        """Drop rows found changed (or in doubt): the next use reads them from the database."""
        for order_id in orders:
            self._orders.pop(order_id, None)
        for balance in balances:
            self._balances.pop(balance, None)
        for position in positions:
            self._positions.pop(position, None)

    def order(self, order_id: uuid.UUID) -> OrderRow | None:
        """The order as kept (never change it: work on `copied(...)`), or None."""
        return self._orders.get(order_id)

    def balance(self, account_id: uuid.UUID, asset: str) -> BalanceRow | None:
        """The balance as kept (never change it), or None."""
        return self._balances.get((account_id, asset))

    def position(self, account_id: uuid.UUID, symbol: str) -> PositionRow | None:
        """The position as kept (never change it), or None."""
        return self._positions.get((account_id, symbol))

    def __len__(self) -> int:
        return len(self._orders) + len(self._balances) + len(self._positions)

    def _put(self, rows: dict[_K, RowT], key: _K, row: RowT) -> None:
        rows.pop(key, None)  # kept again: now the newest
        rows[key] = row
        if len(rows) > self.most:
            del rows[next(iter(rows))]
