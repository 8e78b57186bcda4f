"""The migrated database matches the spec's schema (`backend-structure-and-schema.md`), table by table.

The expected schema below is transcribed by hand from the spec's SQL, NOT derived from `cival.database.models`:
the test compares what the Alembic migrations actually created (read back through SQLAlchemy's inspector and the
PostgreSQL catalogues) with what the spec says, so a model or migration that drifts from the spec fails here.

Where the schema deliberately differs from the spec, the entry is marked `# deviation N` (see docs/decisions.md):

1. `user_id` is NOT NULL on every user-owned table; on system_logs and api_rate_limits it stays nullable and its
   foreign key is ON DELETE SET NULL (the spec has no action).
2. positions and balances: `account_id` is NOT NULL and the only unique constraint is the per-account one
   (user_id, account_id, symbol/asset); the spec's later `uk_position_user_symbol` / `uk_balance_user_asset`
   are not created.
3. trading_signals.strategy_id and agent_id are ON DELETE CASCADE.
4. Every column the spec gives a DEFAULT is NOT NULL.
5. The unique constraint on price_tickers is named `uk_ticker_symbol_exchange` (the spec's ALTER TABLE name).

Logical column types map to each database's storage (see `cival.database.types`): on SQLite a UUID is CHAR(32),
a DECIMAL(p,s) is sortable text VARCHAR(p+2), a TIMESTAMP WITH TIME ZONE is DATETIME and JSONB is JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Inspector
from sqlalchemy.ext.asyncio import AsyncEngine

NULL = True
NOT_NULL = False

# Server defaults, written as the spec's SQL writes them (compared after dropping PostgreSQL's `::type` casts).
GEN_UUID = "gen_random_uuid()"
NOW = "now()"

# Every table's primary key: `id UUID PRIMARY KEY DEFAULT gen_random_uuid()`.
ID = ("uuid", NOT_NULL, GEN_UUID)
# `created_at` / `updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()`: NOT NULL by deviation 4.
STAMP = ("timestamptz", NOT_NULL, NOW)
# `user_id UUID REFERENCES users(id) ON DELETE CASCADE`: NOT NULL by deviation 1.
OWNER = ("uuid", NOT_NULL, None)

# Per table: columns as name -> (logical type, nullable, server default or None); unique constraints as
# column tuple -> constraint name (None: any name); foreign keys as column -> (referred table, ON DELETE rule),
# always referring to `id`; the spec's "Key Indexes" as name -> key columns in order; and whether the table
# holds a user's rows and so has row-level security (PostgreSQL).
EXPECTED: dict[str, dict[str, Any]] = {
    # 1. Users & Authentication
    "users": {
        "columns": {
            "id": ID,
            "email": ("varchar(255)", NOT_NULL, None),
            "password_hash": ("varchar(255)", NULL, None),
            "full_name": ("varchar(255)", NULL, None),
            "role": ("varchar(50)", NOT_NULL, "'trader'"),  # deviation 4
            "is_active": ("bool", NOT_NULL, "true"),  # deviation 4
            "created_at": STAMP,
            "updated_at": STAMP,
        },
        "unique": {("email",): None},
        "foreign_keys": {},
        "indexes": {},
        "rls": True,
    },
    "user_sessions": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "token_hash": ("varchar(255)", NOT_NULL, None),
            "expires_at": ("timestamptz", NOT_NULL, None),
            "created_at": STAMP,
        },
        # Beyond the spec (migration 0003): every authenticated request looks its session up by token hash.
        "unique": {("token_hash",): "idx_user_sessions_token_hash"},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    "user_api_keys": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "exchange": ("varchar(50)", NOT_NULL, None),
            "api_key_encrypted": ("text", NOT_NULL, None),
            "api_secret_encrypted": ("text", NOT_NULL, None),
            "passphrase_encrypted": ("text", NULL, None),
            "is_active": ("bool", NOT_NULL, "true"),  # deviation 4
            "created_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    # 2. Trading Tables
    "trading_accounts": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "exchange": ("varchar(50)", NOT_NULL, None),
            "account_id": ("varchar(255)", NOT_NULL, None),
            "account_type": ("varchar(50)", NOT_NULL, "'spot'"),  # deviation 4
            "is_active": ("bool", NOT_NULL, "true"),  # deviation 4
            "created_at": STAMP,
        },
        "unique": {("user_id", "exchange", "account_id"): None},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    "trading_pairs": {
        "columns": {
            "id": ID,
            "symbol": ("varchar(50)", NOT_NULL, None),
            "base_asset": ("varchar(20)", NOT_NULL, None),
            "quote_asset": ("varchar(20)", NOT_NULL, None),
            "exchange": ("varchar(50)", NOT_NULL, None),
            "min_order_size": ("decimal(20,8)", NULL, None),
            "max_order_size": ("decimal(20,8)", NULL, None),
            "tick_size": ("decimal(20,8)", NULL, None),
            "step_size": ("decimal(20,8)", NULL, None),
            "is_active": ("bool", NOT_NULL, "true"),  # deviation 4
            "created_at": STAMP,
        },
        "unique": {("symbol", "exchange"): None},
        "foreign_keys": {},
        "indexes": {},
        "rls": False,
    },
    "orders": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "account_id": ("uuid", NULL, None),
            "external_order_id": ("varchar(255)", NULL, None),
            "symbol": ("varchar(50)", NOT_NULL, None),
            "side": ("varchar(10)", NOT_NULL, None),
            "type": ("varchar(20)", NOT_NULL, None),
            "quantity": ("decimal(20,8)", NOT_NULL, None),
            "price": ("decimal(20,8)", NULL, None),
            "stop_price": ("decimal(20,8)", NULL, None),
            "time_in_force": ("varchar(10)", NOT_NULL, "'GTC'"),  # deviation 4
            "status": ("varchar(20)", NOT_NULL, "'pending'"),  # deviation 4
            "filled_quantity": ("decimal(20,8)", NOT_NULL, "0"),  # deviation 4
            "average_price": ("decimal(20,8)", NULL, None),
            "fees": ("decimal(20,8)", NOT_NULL, "0"),  # deviation 4
            "exchange": ("varchar(50)", NOT_NULL, None),
            "created_at": STAMP,
            "updated_at": STAMP,
            # Beyond the spec (migration 0004, docs/decisions.md D18/D19): idempotent placement and what the
            # paper exchange needs to rebuild its book after a restart.
            "client_order_id": ("varchar(64)", NULL, None),
            "post_only": ("bool", NOT_NULL, "false"),
            "triggered_at": ("timestamptz", NULL, None),
            "reject_reason": ("varchar(255)", NULL, None),
            "reserved": ("decimal(20,8)", NOT_NULL, "0"),
        },
        # Beyond the spec (migration 0004, D18): one order per user and client order id.
        "unique": {("client_order_id", "user_id"): "idx_orders_user_client_order_id"},
        "foreign_keys": {
            "user_id": ("users", "CASCADE"),
            "account_id": ("trading_accounts", "NO ACTION"),
        },
        "indexes": {
            "idx_orders_user_status": ("user_id", "status"),
            "idx_orders_symbol_created": ("symbol", "created_at DESC"),
            # Beyond the spec (migration 0006, D54): a user's working orders, a partial index.
            "idx_orders_user_working": ("user_id",),
        },
        "rls": True,
    },
    "trades": {
        "columns": {
            "id": ID,
            "order_id": ("uuid", NULL, None),
            "user_id": OWNER,  # deviation 1
            "external_trade_id": ("varchar(255)", NULL, None),
            "symbol": ("varchar(50)", NOT_NULL, None),
            "side": ("varchar(10)", NOT_NULL, None),
            "quantity": ("decimal(20,8)", NOT_NULL, None),
            "price": ("decimal(20,8)", NOT_NULL, None),
            "fees": ("decimal(20,8)", NOT_NULL, "0"),  # deviation 4
            "exchange": ("varchar(50)", NOT_NULL, None),
            "executed_at": ("timestamptz", NOT_NULL, None),
            "created_at": STAMP,
        },
        # Beyond the spec (migration 0004, D18): a fill is stored once per venue trade id.
        "unique": {("exchange", "external_trade_id"): "idx_trades_exchange_external_trade_id"},
        "foreign_keys": {
            "order_id": ("orders", "NO ACTION"),
            "user_id": ("users", "CASCADE"),
        },
        "indexes": {
            "idx_trades_user_executed": ("user_id", "executed_at DESC"),
            # Beyond the spec (migration 0007, D56): an order's fills.
            "idx_trades_order_id": ("order_id",),
        },
        "rls": True,
    },
    # 3. Portfolio Tables
    "positions": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "account_id": ("uuid", NOT_NULL, None),  # deviation 2
            "symbol": ("varchar(50)", NOT_NULL, None),
            "size": ("decimal(20,8)", NOT_NULL, None),
            "average_price": ("decimal(20,8)", NOT_NULL, None),
            "market_value": ("decimal(20,8)", NULL, None),
            "unrealized_pnl": ("decimal(20,8)", NULL, None),
            "exchange": ("varchar(50)", NOT_NULL, None),
            "updated_at": STAMP,
        },
        # deviation 2: no uk_position_user_symbol UNIQUE(user_id, symbol).
        "unique": {("user_id", "account_id", "symbol"): None},
        "foreign_keys": {
            "user_id": ("users", "CASCADE"),
            "account_id": ("trading_accounts", "NO ACTION"),
        },
        "indexes": {"idx_positions_user_symbol": ("user_id", "symbol")},
        "rls": True,
    },
    "balances": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "account_id": ("uuid", NOT_NULL, None),  # deviation 2
            "asset": ("varchar(20)", NOT_NULL, None),
            "free": ("decimal(20,8)", NOT_NULL, "0"),  # deviation 4
            "locked": ("decimal(20,8)", NOT_NULL, "0"),  # deviation 4
            "total": ("decimal(20,8)", NOT_NULL, "0"),  # deviation 4
            "usd_value": ("decimal(20,8)", NULL, None),
            "exchange": ("varchar(50)", NOT_NULL, None),
            "updated_at": STAMP,
        },
        # deviation 2: no uk_balance_user_asset UNIQUE(user_id, asset).
        "unique": {("user_id", "account_id", "asset"): None},
        "foreign_keys": {
            "user_id": ("users", "CASCADE"),
            "account_id": ("trading_accounts", "NO ACTION"),
        },
        "indexes": {},
        "rls": True,
    },
    "portfolio_snapshots": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "total_value": ("decimal(20,8)", NOT_NULL, None),
            "total_pnl": ("decimal(20,8)", NULL, None),
            "daily_pnl": ("decimal(20,8)", NULL, None),
            "positions_count": ("int", NOT_NULL, "0"),  # deviation 4
            "snapshot_date": ("date", NOT_NULL, None),
            "created_at": STAMP,
        },
        "unique": {("user_id", "snapshot_date"): None},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    # 4. Trading Strategies & Agents
    "trading_strategies": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "name": ("varchar(255)", NOT_NULL, None),
            "description": ("text", NULL, None),
            "strategy_type": ("varchar(50)", NOT_NULL, None),
            "parameters": ("json", NOT_NULL, None),
            "is_active": ("bool", NOT_NULL, "false"),  # deviation 4
            "performance_metrics": ("json", NULL, None),
            "created_at": STAMP,
            "updated_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    "trading_agents": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "name": ("varchar(255)", NOT_NULL, None),
            "agent_type": ("varchar(50)", NOT_NULL, None),
            "configuration": ("json", NOT_NULL, None),
            "status": ("varchar(20)", NOT_NULL, "'inactive'"),  # deviation 4
            "performance": ("json", NULL, None),
            "last_decision_at": ("timestamptz", NULL, None),
            "created_at": STAMP,
            "updated_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    "trading_signals": {
        "columns": {
            "id": ID,
            "strategy_id": ("uuid", NULL, None),
            "agent_id": ("uuid", NULL, None),
            "symbol": ("varchar(50)", NOT_NULL, None),
            "action": ("varchar(10)", NOT_NULL, None),
            "strength": ("decimal(5,2)", NOT_NULL, None),
            "price": ("decimal(20,8)", NOT_NULL, None),
            "confidence": ("decimal(5,2)", NOT_NULL, None),
            "reasoning": ("text", NULL, None),
            "metadata": ("json", NULL, None),
            "created_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {
            "strategy_id": ("trading_strategies", "CASCADE"),  # deviation 3
            "agent_id": ("trading_agents", "CASCADE"),  # deviation 3
        },
        "indexes": {"idx_signals_created": ("created_at DESC",)},
        "rls": True,
    },
    # 5. Market Data Tables
    "market_data_ohlcv": {
        "columns": {
            "id": ID,
            "symbol": ("varchar(50)", NOT_NULL, None),
            "exchange": ("varchar(50)", NOT_NULL, None),
            "timeframe": ("varchar(10)", NOT_NULL, None),
            "open_time": ("timestamptz", NOT_NULL, None),
            "close_time": ("timestamptz", NOT_NULL, None),
            "open_price": ("decimal(20,8)", NOT_NULL, None),
            "high_price": ("decimal(20,8)", NOT_NULL, None),
            "low_price": ("decimal(20,8)", NOT_NULL, None),
            "close_price": ("decimal(20,8)", NOT_NULL, None),
            "volume": ("decimal(20,8)", NOT_NULL, None),
            "quote_volume": ("decimal(20,8)", NULL, None),
            "trades_count": ("int", NULL, None),
            "created_at": STAMP,
        },
        "unique": {("symbol", "exchange", "timeframe", "open_time"): None},
        "foreign_keys": {},
        "indexes": {"idx_market_data_symbol_time": ("symbol", "timeframe", "open_time DESC")},
        "rls": False,
    },
    "price_tickers": {
        "columns": {
            "id": ID,
            "symbol": ("varchar(50)", NOT_NULL, None),
            "exchange": ("varchar(50)", NOT_NULL, None),
            "price": ("decimal(20,8)", NOT_NULL, None),
            "bid_price": ("decimal(20,8)", NULL, None),
            "ask_price": ("decimal(20,8)", NULL, None),
            "volume_24h": ("decimal(20,8)", NULL, None),
            "change_24h": ("decimal(10,4)", NULL, None),
            "updated_at": ("timestamptz", NOT_NULL, None),
        },
        "unique": {("symbol", "exchange"): "uk_ticker_symbol_exchange"},  # deviation 5
        "foreign_keys": {},
        "indexes": {},
        "rls": False,
    },
    "order_book_snapshots": {
        "columns": {
            "id": ID,
            "symbol": ("varchar(50)", NOT_NULL, None),
            "exchange": ("varchar(50)", NOT_NULL, None),
            "bids": ("json", NOT_NULL, None),
            "asks": ("json", NOT_NULL, None),
            "timestamp": ("timestamptz", NOT_NULL, None),
            "created_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {},
        "indexes": {},
        "rls": False,
    },
    # 6. Risk Management Tables
    "risk_metrics": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "portfolio_risk": ("decimal(10,4)", NULL, None),
            "value_at_risk": ("decimal(20,8)", NULL, None),
            "max_drawdown": ("decimal(10,4)", NULL, None),
            "sharpe_ratio": ("decimal(10,4)", NULL, None),
            "position_risks": ("json", NULL, None),
            "calculated_at": ("timestamptz", NOT_NULL, None),
            "created_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    "risk_alerts": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "alert_type": ("varchar(50)", NOT_NULL, None),
            "severity": ("varchar(20)", NOT_NULL, None),
            "message": ("text", NOT_NULL, None),
            "data": ("json", NULL, None),
            "acknowledged": ("bool", NOT_NULL, "false"),  # deviation 4
            "created_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    "trading_limits": {
        "columns": {
            "id": ID,
            "user_id": OWNER,  # deviation 1
            "limit_type": ("varchar(50)", NOT_NULL, None),
            "symbol": ("varchar(50)", NULL, None),
            "limit_value": ("decimal(20,8)", NOT_NULL, None),
            "current_value": ("decimal(20,8)", NOT_NULL, "0"),  # deviation 4
            "is_active": ("bool", NOT_NULL, "true"),  # deviation 4
            "created_at": STAMP,
            "updated_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {},
        "rls": True,
    },
    # 7. System & Monitoring Tables
    "system_logs": {
        "columns": {
            "id": ID,
            "level": ("varchar(20)", NOT_NULL, None),
            "module": ("varchar(100)", NOT_NULL, None),
            "message": ("text", NOT_NULL, None),
            "data": ("json", NULL, None),
            "user_id": ("uuid", NULL, None),
            "created_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "SET NULL")},  # deviation 1
        "indexes": {"idx_logs_level_created": ("level", "created_at DESC")},
        "rls": True,
    },
    "api_rate_limits": {
        "columns": {
            "id": ID,
            "user_id": ("uuid", NULL, None),
            "endpoint": ("varchar(255)", NOT_NULL, None),
            "requests_count": ("int", NOT_NULL, "0"),  # deviation 4
            "window_start": ("timestamptz", NOT_NULL, None),
            "window_duration_seconds": ("int", NOT_NULL, None),
            "limit_exceeded": ("bool", NOT_NULL, "false"),  # deviation 4
            "created_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "SET NULL")},  # deviation 1
        "indexes": {},
        "rls": True,
    },
    "exchange_status": {
        "columns": {
            "id": ID,
            "exchange": ("varchar(50)", NOT_NULL, None),
            "status": ("varchar(20)", NOT_NULL, None),
            "last_ping": ("timestamptz", NULL, None),
            "response_time_ms": ("int", NULL, None),
            "error_message": ("text", NULL, None),
            "updated_at": STAMP,
        },
        "unique": {("exchange",): None},
        "foreign_keys": {},
        "indexes": {},
        "rls": False,
    },
}

BEYOND_SPEC_INDEXES = {"idx_orders_user_working", "idx_trades_order_id"}
"""Indexes beyond the spec on the spec's own tables (listed with them above, each with its decision)."""

BEYOND_SPEC: dict[str, dict[str, Any]] = {
    # Migration 0005 (docs/decisions.md D33): each user's webhook endpoints and their recent deliveries.
    "notification_webhooks": {
        "columns": {
            "id": ID,
            "user_id": OWNER,
            "url": ("varchar(2048)", NOT_NULL, None),
            "secret_encrypted": ("text", NOT_NULL, None),
            "event_types": ("json", NOT_NULL, None),
            "is_active": ("bool", NOT_NULL, "true"),
            "status": ("varchar(20)", NOT_NULL, "'active'"),
            "consecutive_failures": ("int", NOT_NULL, "0"),
            "last_error": ("text", NULL, None),
            "last_failure_at": ("timestamptz", NULL, None),
            "last_success_at": ("timestamptz", NULL, None),
            "created_at": STAMP,
            "updated_at": STAMP,
        },
        "unique": {},
        "foreign_keys": {"user_id": ("users", "CASCADE")},
        "indexes": {"idx_notification_webhooks_user": ("user_id",)},
        "rls": True,
    },
    "notification_deliveries": {
        "columns": {
            "id": ID,
            "webhook_id": ("uuid", NOT_NULL, None),
            "user_id": OWNER,
            "event_id": ("uuid", NOT_NULL, None),
            "event_type": ("varchar(50)", NOT_NULL, None),
            "status": ("varchar(20)", NOT_NULL, "'pending'"),
            "attempts": ("int", NOT_NULL, "0"),
            "response_status": ("int", NULL, None),
            "error": ("text", NULL, None),
            "created_at": STAMP,
            "completed_at": ("timestamptz", NULL, None),
        },
        "unique": {},
        "foreign_keys": {"webhook_id": ("notification_webhooks", "CASCADE"), "user_id": ("users", "CASCADE")},
        "indexes": {"idx_notification_deliveries_webhook_created": ("webhook_id", "created_at DESC")},
        "rls": True,
    },
}
"""Tables the spec does not have, added by later migrations; checked exactly like the spec's."""

SCHEMA = EXPECTED | BEYOND_SPEC
TABLES = list(SCHEMA)


# --- how a logical type is stored on each database ----------------------------------------------------------


def storage_type(logical: str, dialect: str) -> str:
    """The DDL type of a logical column type on `dialect`, as SQLAlchemy renders the reflected type."""
    pg = dialect == "postgresql"
    if m := re.fullmatch(r"varchar\((\d+)\)", logical):
        return f"VARCHAR({m[1]})"
    if m := re.fullmatch(r"decimal\((\d+),(\d+)\)", logical):
        precision, scale = int(m[1]), int(m[2])
        return f"NUMERIC({precision}, {scale})" if pg else f"VARCHAR({precision + 2})"
    return {
        "uuid": "UUID" if pg else "CHAR(32)",
        "text": "TEXT",
        "bool": "BOOLEAN",
        "int": "INTEGER",
        "date": "DATE",
        "timestamptz": "TIMESTAMP WITH TIME ZONE" if pg else "DATETIME",
        "json": "JSONB" if pg else "JSON",
    }[logical]


def default_matches(expected: str, actual: str, dialect: str) -> bool:
    """Whether a reflected server default is the spec's DEFAULT, in the form each database stores it."""
    if dialect == "postgresql":
        return re.sub(r"::[a-z ]+", "", actual) == expected  # 'trader'::character varying -> 'trader'
    if expected == GEN_UUID:  # a random v4 UUID as 32 hex digits, built in SQL
        return "randomblob" in actual
    if expected == NOW:
        return actual.upper() == "CURRENT_TIMESTAMP"
    if expected in ("true", "false"):
        return actual == {"true": "1", "false": "0"}[expected]
    if expected == "0":  # integer 0, or the sortable text of Decimal 0
        return Decimal(actual.strip("'")) == 0
    return actual == expected


def key_columns(keys: tuple[str, ...]) -> list[str]:
    """Index key columns without their sort order: ("symbol", "created_at DESC") -> ["symbol", "created_at"]."""
    return [key.removesuffix(" DESC") for key in keys]


# --- reading the migrated database --------------------------------------------------------------------------


async def reflect(engine: AsyncEngine, read: Callable[[Inspector, Connection], Any]) -> Any:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync_conn: read(inspect(sync_conn), sync_conn))


def index_keys_with_order(conn: Connection, table: str) -> dict[str, tuple[str, ...]]:
    """Each index's key columns in order, a descending one suffixed " DESC", read from the database catalogue."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t"),
            {"t": table},
        )
        keys: dict[str, tuple[str, ...]] = {}
        for name, indexdef in rows:
            m = re.search(r"USING \w+ \((.*?)\)(?: WHERE .*)?$", indexdef)
            assert m, indexdef
            keys[name] = tuple(key.strip() for key in m[1].split(","))
        return keys
    names = [row[1] for row in conn.exec_driver_sql(f"PRAGMA index_list('{table}')")]
    keys = {}
    for name in names:
        # index_xinfo rows: (seqno, cid, name, desc, coll, key); key = 0 for the rowid appended to every index.
        xinfo = conn.exec_driver_sql(f"PRAGMA index_xinfo('{name}')").all()
        keys[name] = tuple(row[2] + (" DESC" if row[3] else "") for row in xinfo if row[5])
    return keys


@pytest.fixture(scope="module")
def dialect(owner_engine: AsyncEngine) -> str:
    return owner_engine.dialect.name


# --- the expected schema itself -----------------------------------------------------------------------------


def test_expected_schema_transcribes_the_whole_spec() -> None:
    """A guard on the transcription: 22 tables, the 7 key indexes, and every table keyed by `id`."""
    assert len(EXPECTED) == 22
    indexes = [name for table in EXPECTED.values() for name in table["indexes"] if name not in BEYOND_SPEC_INDEXES]
    assert sorted(indexes) == sorted(
        [
            "idx_orders_user_status",
            "idx_orders_symbol_created",
            "idx_trades_user_executed",
            "idx_positions_user_symbol",
            "idx_market_data_symbol_time",
            "idx_signals_created",
            "idx_logs_level_created",
        ]
    )
    for table in EXPECTED.values():
        assert table["columns"]["id"] == ID
        for column in table["foreign_keys"]:
            assert column in table["columns"]
        for columns in table["unique"]:
            assert set(columns) <= set(table["columns"])


# --- the migrated database ----------------------------------------------------------------------------------


async def test_tables_are_exactly_the_spec_tables(owner_engine: AsyncEngine) -> None:
    """The spec's tables and the documented additions, nothing else."""
    names = await reflect(owner_engine, lambda insp, _: insp.get_table_names())
    assert set(names) - {"alembic_version"} == set(EXPECTED) | set(BEYOND_SPEC)


@pytest.mark.parametrize("table", TABLES)
async def test_columns_types_and_nullability(owner_engine: AsyncEngine, dialect: str, table: str) -> None:
    def read(insp: Inspector, conn: Connection) -> dict[str, tuple[str, bool]]:
        return {
            col["name"]: (col["type"].compile(dialect=conn.dialect), col["nullable"]) for col in insp.get_columns(table)
        }

    actual = await reflect(owner_engine, read)
    expected = {
        name: (storage_type(logical, dialect), nullable)
        for name, (logical, nullable, _default) in SCHEMA[table]["columns"].items()
    }
    assert set(actual) == set(expected), "column names differ from the spec"
    assert actual == expected


@pytest.mark.parametrize("table", TABLES)
async def test_primary_key_is_id(owner_engine: AsyncEngine, table: str) -> None:
    pk = await reflect(owner_engine, lambda insp, _: insp.get_pk_constraint(table))
    assert pk["constrained_columns"] == ["id"]


@pytest.mark.parametrize("table", TABLES)
async def test_server_defaults(owner_engine: AsyncEngine, dialect: str, table: str) -> None:
    actual = await reflect(
        owner_engine, lambda insp, _: {col["name"]: col["default"] for col in insp.get_columns(table)}
    )
    for name, (_logical, _nullable, default) in SCHEMA[table]["columns"].items():
        if default is None:
            assert actual[name] is None, f"{table}.{name} has a DEFAULT the spec does not give it"
        else:
            assert actual[name] is not None, f"{table}.{name} lacks the spec's DEFAULT {default}"
            assert default_matches(default, actual[name], dialect), (
                f"{table}.{name} DEFAULT {actual[name]!r}, spec says {default}"
            )


@pytest.mark.parametrize("table", TABLES)
async def test_unique_constraints(owner_engine: AsyncEngine, table: str) -> None:
    def read(insp: Inspector, _: Connection) -> dict[tuple[str, ...], str | None]:
        found = {tuple(sorted(uc["column_names"])): uc["name"] for uc in insp.get_unique_constraints(table)}
        # A unique index is a unique constraint too (PostgreSQL also lists the index behind each constraint).
        for index in insp.get_indexes(table):
            if index["unique"] and not index.get("duplicates_constraint"):
                found[tuple(sorted(map(str, index["column_names"])))] = index["name"]
        return found

    actual = await reflect(owner_engine, read)
    expected = SCHEMA[table]["unique"]
    assert set(actual) == {tuple(sorted(columns)) for columns in expected}
    for columns, name in expected.items():
        if name is not None:
            assert actual[tuple(sorted(columns))] == name


@pytest.mark.parametrize("table", TABLES)
async def test_foreign_keys(owner_engine: AsyncEngine, table: str) -> None:
    def read(insp: Inspector, _: Connection) -> dict[str, tuple[str, list[str], str]]:
        found = {}
        for fk in insp.get_foreign_keys(table):
            (column,) = fk["constrained_columns"]
            ondelete = (fk.get("options", {}).get("ondelete") or "NO ACTION").upper()
            found[column] = (fk["referred_table"], fk["referred_columns"], ondelete)
        return found

    actual = await reflect(owner_engine, read)
    expected = {
        column: (referred, ["id"], ondelete) for column, (referred, ondelete) in SCHEMA[table]["foreign_keys"].items()
    }
    assert actual == expected


@pytest.mark.parametrize("table", TABLES)
async def test_key_indexes(owner_engine: AsyncEngine, table: str) -> None:
    """Exactly the spec's indexes on the table (besides those behind constraints), columns and order included."""

    def read(insp: Inspector, conn: Connection) -> tuple[dict[Any, list[Any]], dict[str, tuple[str, ...]]]:
        plain = {
            index["name"]: index["column_names"]
            for index in insp.get_indexes(table)
            if not index["unique"] and not index.get("duplicates_constraint")
        }
        return plain, index_keys_with_order(conn, table)

    plain, with_order = await reflect(owner_engine, read)
    expected = SCHEMA[table]["indexes"]
    assert plain == {name: key_columns(keys) for name, keys in expected.items()}
    # DESC where the spec says so: PostgreSQL's pg_indexes.indexdef, SQLite's PRAGMA index_xinfo.
    for name, keys in expected.items():
        assert with_order[name] == keys


@pytest.mark.postgres
@pytest.mark.parametrize("table", TABLES)
async def test_row_level_security(postgres_url: str, owner_engine: AsyncEngine, table: str) -> None:
    """Tables holding a user's rows have RLS enabled and forced, with a policy; market-data tables have none."""
    async with owner_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT c.relrowsecurity, c.relforcerowsecurity,"
                    " (SELECT count(*) FROM pg_policies p"
                    "  WHERE p.schemaname = n.nspname AND p.tablename = c.relname)"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relname = :t AND c.relkind = 'r'"
                ),
                {"t": table},
            )
        ).one()
    enabled, forced, policies = row
    if SCHEMA[table]["rls"]:
        assert (enabled, forced) == (True, True)
        assert policies >= 1, f"{table} has row-level security but no policy"
    else:
        assert (enabled, forced, policies) == (False, False, 0)
