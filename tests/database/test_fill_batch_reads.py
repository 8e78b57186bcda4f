"""The fill batch's one read (D56) on PostgreSQL: the batch's orders, their accounts' balances, their positions and
their earlier fills, each reached through an index by the orders' user, account and order id, among 2,000 users'
rows (with statistics, as autovacuum keeps them; on a table of a few pages a sequential scan is cheaper, and the
planner rightly takes it). Before D56 the balances and positions were selected by account alone, which no index
leads with: every batch read every user's rows."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.services.order_applier import _LOCK_FILLED

USERS = 2000
SEED = """
CREATE TEMP TABLE seeded AS SELECT gen_random_uuid() AS user_id, gen_random_uuid() AS account_id, g
    FROM generate_series(1, :users) g;
INSERT INTO users (id, email, password_hash) SELECT user_id, 'fills-' || user_id || '@example.com', 'x' FROM seeded;
INSERT INTO trading_accounts (id, user_id, exchange, account_id)
    SELECT account_id, user_id, 'paper', 'paper-' || g FROM seeded;
INSERT INTO balances (id, user_id, account_id, asset, free, locked, total, exchange)
    SELECT gen_random_uuid(), user_id, account_id, asset, 1, 0, 1, 'paper'
    FROM seeded, unnest(ARRAY['BTC', 'USDT', 'ETH']) asset;
INSERT INTO positions (id, user_id, account_id, symbol, size, average_price, exchange)
    SELECT gen_random_uuid(), user_id, account_id, symbol, 1, 100, 'paper'
    FROM seeded, unnest(ARRAY['BTC/USDT', 'ETH/USDT']) symbol;
INSERT INTO orders (id, user_id, account_id, symbol, side, type, quantity, status, exchange, filled_quantity)
    SELECT gen_random_uuid(), user_id, account_id, 'BTC/USDT', 'buy', 'limit', 2, 'partial', 'paper', 1
    FROM seeded, generate_series(1, 10);
INSERT INTO trades (id, order_id, user_id, external_trade_id, symbol, side, quantity, price, exchange, executed_at)
    SELECT gen_random_uuid(), id, user_id, id::text, symbol, side, 1, 100, 'paper', now() FROM orders;
ANALYZE users, trading_accounts, balances, positions, orders, trades;
"""


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_the_fill_batch_reads_its_rows_through_indexes(owner_engine: AsyncEngine) -> None:
    async with owner_engine.connect() as conn:
        transaction = await conn.begin()
        try:
            for statement in SEED.split(";\n"):
                if statement.strip():
                    await conn.execute(text(statement), {"users": USERS})
            picked = await conn.execute(
                text("SELECT id FROM orders WHERE user_id IN (SELECT user_id FROM seeded WHERE g <= 2) LIMIT 4")
            )
            ids = [row[0] for row in picked]
            driver = (await conn.get_raw_connection()).driver_connection
            compiled, values = _LOCK_FILLED._statement(conn.dialect)._compile(conn.dialect, {"ids": ids})
            explained = await driver.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.sql, *compiled.bind(values))
        finally:
            await transaction.rollback()
    nodes = _nodes((json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"])
    read = {n["Relation Name"]: n for n in nodes if n.get("Relation Name") and n["Node Type"] != "CTE Scan"}
    assert set(read) == {"orders", "balances", "positions", "trades"}, read
    for table, node in read.items():
        assert "Seq Scan" not in node["Node Type"], (table, node["Node Type"])
        assert node.get("Rows Removed by Filter", 0) <= 10, (table, node)  # at most the picked users' other rows
    expected = {"orders": 4, "trades": 4}  # the orders asked for; one earlier fill each
    for table, rows in expected.items():
        assert read[table]["Actual Rows"] == rows, (table, read[table])
    # Their users' balances (3 per account) and positions (one per symbol): of one or two users, never all of them.
    assert 3 <= read["balances"]["Actual Rows"] <= 6
    assert 1 <= read["positions"]["Actual Rows"] <= 2
