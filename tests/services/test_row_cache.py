"""The order path's rows as this process last committed them (D61): copies in, never changed, copies out to work on;
terminal orders not kept; bounded; and keeping never fails the COMMIT it follows."""

from __future__ import annotations

import uuid
from decimal import Decimal

from cival.database.rows import OrderRow, row_of
from cival.services.portfolio_tracker import new_balance, new_position
from cival.services.row_cache import RowCache, copied
from tests.database.test_driver_sql import _order

USER, ACCOUNT = uuid.uuid4(), uuid.uuid4()


def _pending(client_order_id: str = "a") -> OrderRow:
    return row_of(OrderRow, _order(USER, ACCOUNT, client_order_id))


def test_kept_rows_are_copies_and_what_is_worked_on_is_a_copy_of_them() -> None:
    cache = RowCache()
    order, balance = _pending(), new_balance(USER, ACCOUNT, "USDT", "paper")
    position = new_position(order)
    cache.keep([order], [balance], [position])
    order.status, balance.free = "filled", Decimal(5)  # the caller goes on changing its rows
    kept = cache.order(order.id)
    assert kept is not None
    assert kept is not order
    assert kept.status == "pending"
    kept_balance = cache.balance(ACCOUNT, "USDT")
    assert kept_balance is not None
    assert _fields(kept_balance) == _fields(balance) | {"free": Decimal(0)}
    kept_position = cache.position(ACCOUNT, order.symbol)
    assert kept_position is not None
    assert _fields(kept_position) == _fields(position)
    work = copied(kept)
    work.status = "partial"
    assert cache.order(order.id) is kept
    assert kept.status == "pending"  # the kept row is never changed by working on its copy


def test_an_order_in_a_terminal_status_is_not_kept_and_forgetting_drops_rows() -> None:
    cache = RowCache()
    order = _pending()
    cache.keep([order], [new_balance(USER, ACCOUNT, "USDT", "paper")])
    order.status = "filled"
    cache.keep([order])
    assert cache.order(order.id) is None  # no venue event changes it again
    cache.forget(balances=[(ACCOUNT, "USDT")])
    assert cache.balance(ACCOUNT, "USDT") is None
    assert len(cache) == 0


def test_at_most_so_many_rows_of_a_table_are_kept_the_oldest_go_first() -> None:
    cache = RowCache(most=2)
    a, b, c = _pending("a"), _pending("b"), _pending("c")
    cache.keep([a, b])
    cache.keep([a])  # kept again: now the newest
    cache.keep([c])
    assert cache.order(b.id) is None
    assert cache.order(a.id) is not None
    assert cache.order(c.id) is not None


def test_keeping_never_raises_and_a_failure_empties_the_cache() -> None:
    cache = RowCache()
    order = _pending()
    cache.keep([order])
    cache.keep([object()])  # type: ignore[list-item]  # not a row: it cannot be copied
    assert len(cache) == 0  # nothing half-kept: fills are read until rows are kept again


def _fields(row: object) -> dict[str, object]:
    return {name: getattr(row, name) for name in row.__slots__}  # type: ignore[attr-defined]
