"""The partial index on a user's working orders (migration 0006, D54): it holds exactly the statuses the risk gate
counts as working, and on PostgreSQL the gate's read of a user's standing reaches their working orders through it,
however many finished orders the user has, before any statistics exist (a fresh table, as after a deployment)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.database.models import WORKING_ORDERS
from cival.domain.orders import TERMINAL_STATUSES, OrderStatus
from cival.services.risk_standing import WORKING, standing_query
from tests.api._identity import Identities


def test_the_index_holds_the_statuses_the_gate_counts_as_working() -> None:
    indexed = set(re.findall(r"'(\w+)'", str(WORKING_ORDERS)))
    assert indexed == set(WORKING) == {s.value for s in OrderStatus if s not in TERMINAL_STATUSES}


@pytest.mark.postgres
async def test_the_gate_reads_working_orders_without_scanning_the_finished_ones(
    postgres_url: str, ids: Identities, owner_engine: AsyncEngine
) -> None:
    user = await ids.new_user()
    response = await user.post("/api/v1/accounts", json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    account_id = response.json()["id"]
    insert = text(
        "INSERT INTO orders (id, user_id, account_id, symbol, side, type, quantity, status, exchange) "
        "SELECT gen_random_uuid(), :user_id, :account_id, 'BTC/USDT', 'buy', 'market', 0.001, :status, 'paper' "
        "FROM generate_series(1, :n)"
    )
    async with owner_engine.begin() as conn:
        values = {"user_id": user.id, "account_id": uuid.UUID(account_id)}
        await conn.execute(insert, values | {"status": "filled", "n": 3000})
        await conn.execute(insert, values | {"status": "pending", "n": 2})
    standing = standing_query(of_symbol=True).params(
        user_id=user.id, today=datetime.now(UTC).date(), symbol="BTC/USDT", nth=0
    )
    sql = str(standing.compile(dialect=PGDialect_asyncpg(), compile_kwargs={"literal_binds": True}))
    async with owner_engine.connect() as conn:
        plan = (await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql))).scalar_one()
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    on_orders = [
        n for n in nodes if str(n.get("Index Name", n.get("Relation Name", ""))).startswith(("idx_orders", "orders"))
    ]
    assert any(n.get("Index Name") == "idx_orders_user_working" for n in on_orders), on_orders
    assert all(n.get("Rows Removed by Filter", 0) == 0 for n in on_orders), on_orders  # no finished order was read
    assert max(n["Actual Rows"] for n in on_orders) == 2
