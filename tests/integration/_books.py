"""What the crash tests read back from a server's database, and the invariants the books must keep.

Rows come back as plain tuples, ids as UUIDs and amounts as Decimals, whatever the database: SQLite's money text is
decoded with the column type's own decoder, PostgreSQL's NUMERIC arrives as Decimal.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.dialects import sqlite as sqlite_dialect

from cival.database.types import ExactDecimal
from cival.domain.portfolio import fold_trades

_MONEY = ExactDecimal(20, 8)
_DIALECT = sqlite_dialect.dialect()


def _dec(value: Any) -> Decimal:
    """A money column as stored in SQLite (fixed-width text, nines' complement for negatives) back to a Decimal."""
    result = _MONEY.process_result_value(value, _DIALECT)
    assert result is not None
    return result


@dataclass(frozen=True)
class Stored:
    """What the checks read back, ids as UUIDs and amounts as Decimals whatever the database."""

    orders: list[tuple[uuid.UUID, str | None, str, str, str, Decimal, Decimal, Decimal]]
    """id, client_order_id, type, time_in_force, status, quantity, filled_quantity, fees."""
    trades: list[tuple[uuid.UUID, str, str | None, uuid.UUID, str, str, Decimal, Decimal, Decimal]]
    """order_id, exchange, external_trade_id, account_id, symbol, side, quantity, price, fees: in the order they were
    applied — `created_at`, strictly increasing per process (`EventApplier._now`), as the portfolio tracker folds."""
    balances: list[tuple[str, Decimal, Decimal, Decimal]]
    """asset, free, locked, total."""
    positions: list[tuple[uuid.UUID, str, Decimal, Decimal]]
    """account_id, symbol, size, average_price."""


_ORDERS = "SELECT id, client_order_id, type, time_in_force, status, quantity, filled_quantity, fees FROM orders"
_TRADES = (
    "SELECT t.order_id, t.exchange, t.external_trade_id, o.account_id, t.symbol, t.side, t.quantity, t.price, t.fees "
    "FROM trades t JOIN orders o ON o.id = t.order_id ORDER BY t.created_at, t.external_trade_id"
)
_BALANCES = "SELECT asset, free, locked, total FROM balances"
_POSITIONS = "SELECT account_id, symbol, size, average_price FROM positions"


def read_sqlite(db: Path) -> Stored:
    """The four tables in ONE read transaction: the server keeps working meanwhile (a resting order may fill as the
    market moves), and reads from separate snapshots could pair a position with trades it does not include yet."""

    def uid(value: Any) -> uuid.UUID:
        return uuid.UUID(str(value))

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        stored = Stored(
            orders=[
                (uid(i), c, k, t, s, _dec(q), _dec(f), _dec(fee)) for i, c, k, t, s, q, f, fee in conn.execute(_ORDERS)
            ],
            trades=[
                (uid(o), e, x, uid(a), s, side, _dec(q), _dec(p), _dec(f))
                for o, e, x, a, s, side, q, p, f in conn.execute(_TRADES)
            ],
            balances=[(a, _dec(f), _dec(lk), _dec(t)) for a, f, lk, t in conn.execute(_BALANCES)],
            positions=[(uid(a), s, _dec(size), _dec(avg)) for a, s, size, avg in conn.execute(_POSITIONS)],
        )
        conn.execute("ROLLBACK")
        return stored
    finally:
        conn.close()


def read_postgres(url: str) -> Stored:
    """The tables as their owner reads them (row-level security does not apply), in ONE repeatable-read snapshot
    (see `read_sqlite`)."""

    async def read() -> Stored:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return Stored(
                    orders=[tuple(r) for r in await conn.fetch(_ORDERS)],
                    trades=[tuple(r) for r in await conn.fetch(_TRADES)],
                    balances=[tuple(r) for r in await conn.fetch(_BALANCES)],
                    positions=[tuple(r) for r in await conn.fetch(_POSITIONS)],
                )
        finally:
            await conn.close()

    return asyncio.run(read())


def unsettled(stored: Stored) -> list[str]:
    """Orders reconciliation has yet to settle: `unknown`, or working though they cannot rest on the paper book."""
    return [
        f"{order_id} {kind}/{tif} {status}"
        for order_id, _, kind, tif, status, *_ in stored.orders
        if status == "unknown" or (status in ("pending", "partial") and (kind, tif) != ("limit", "GTC"))
    ]


def wait_until_reconciled(read: Callable[[], Stored], timeout: float) -> Stored:
    """The stored rows once the server's paper orders are reconciled (at once on SQLite; on Redis once the dead
    process's market-data lease has expired and the next leader has taken over)."""
    deadline = time.monotonic() + timeout
    while True:
        stored = read()
        left = unsettled(stored)
        if not left:
            return stored
        assert time.monotonic() < deadline, f"not reconciled after {timeout:g} s: {left}"
        time.sleep(0.1)  # polling interval under a deadline


def check_books(stored: Stored) -> None:
    trade_ids = [(exchange, external) for _, exchange, external, *_ in stored.trades]
    assert len(trade_ids) == len(set(trade_ids)), f"{len(trade_ids) - len(set(trade_ids))} duplicated trades"
    assert all(external is not None for _, external in trade_ids)

    for asset, free, locked, total in stored.balances:
        assert free + locked == total, (asset, free, locked, total)
        assert free >= 0, (asset, free)
        assert locked >= 0, (asset, locked)

    fills: dict[uuid.UUID, tuple[Decimal, Decimal]] = {}
    for order_id, _, _, _, _, _, quantity, _, fee in stored.trades:
        q, f = fills.get(order_id, (Decimal(0), Decimal(0)))
        fills[order_id] = (q + quantity, f + fee)
    for order_id, _, _, _, _, quantity, filled, fees in stored.orders:
        assert filled <= quantity, (order_id, filled, quantity)
        assert (filled, fees) == fills.get(order_id, (Decimal(0), Decimal(0))), order_id
    assert not unsettled(stored), unsettled(stored)

    @dataclass
    class _Trade:
        symbol: str
        side: str
        quantity: Decimal
        price: Decimal
        fees: Decimal

    by_key: dict[tuple[uuid.UUID, str], list[_Trade]] = {}
    for _, _, _, account_id, symbol, side, quantity, price, fee in stored.trades:
        by_key.setdefault((account_id, symbol), []).append(_Trade(symbol, side, quantity, price, fee))
    positions = {(a, s): (size, avg) for a, s, size, avg in stored.positions}
    for (account_id, symbol), rows in by_key.items():
        folded = fold_trades(symbol, rows)
        assert positions.get((account_id, symbol)) == (folded.size, folded.average_price), (symbol, folded)
    for key, (size, _) in positions.items():
        assert key in by_key or size == 0, f"position {key} without trades"
