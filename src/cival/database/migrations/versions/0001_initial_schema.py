"""Initial schema: the spec's 22 tables, its indexes and constraints (see docs/decisions.md for deviations).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cival.database.types
from cival.database.types import gen_random_uuid, money_zero, utcnow

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "exchange_status",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("last_ping", cival.database.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("response_time_ms", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exchange_status")),
        sa.UniqueConstraint("exchange", name=op.f("uq_exchange_status_exchange")),
    )
    op.create_table(
        "market_data_ohlcv",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column("timeframe", sa.String(length=10), nullable=False),
        sa.Column("open_time", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("close_time", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("open_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("high_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("low_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("close_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("volume", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("quote_volume", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("trades_count", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_data_ohlcv")),
        sa.UniqueConstraint(
            "symbol",
            "exchange",
            "timeframe",
            "open_time",
            name=op.f("uq_market_data_ohlcv_symbol_exchange_timeframe_open_time"),
        ),
    )
    with op.batch_alter_table("market_data_ohlcv", schema=None) as batch_op:
        batch_op.create_index(
            "idx_market_data_symbol_time",
            ["symbol", "timeframe", sa.literal_column("open_time DESC")],
            unique=False,
        )

    op.create_table(
        "order_book_snapshots",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column(
            "bids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "asks",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("timestamp", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_book_snapshots")),
    )
    op.create_table(
        "price_tickers",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column("price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("bid_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("ask_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("volume_24h", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("change_24h", cival.database.types.ExactDecimal(precision=10, scale=4), nullable=True),
        sa.Column("updated_at", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_tickers")),
        sa.UniqueConstraint("symbol", "exchange", name="uk_ticker_symbol_exchange"),
    )
    op.create_table(
        "trading_pairs",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("base_asset", sa.String(length=20), nullable=False),
        sa.Column("quote_asset", sa.String(length=20), nullable=False),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column("min_order_size", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("max_order_size", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("tick_size", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("step_size", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_pairs")),
        sa.UniqueConstraint("symbol", "exchange", name=op.f("uq_trading_pairs_symbol_exchange")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("full_name", sa.String(length=255), nullable=True),
        sa.Column("role", sa.String(length=50), server_default="trader", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "api_rate_limits",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("requests_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("window_start", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_duration_seconds", sa.Integer(), nullable=False),
        sa.Column("limit_exceeded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_rate_limits_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_rate_limits")),
    )
    op.create_table(
        "portfolio_snapshots",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("total_value", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("total_pnl", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("daily_pnl", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("positions_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("snapshot_date", sa.Date(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_portfolio_snapshots_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portfolio_snapshots")),
        sa.UniqueConstraint("user_id", "snapshot_date", name=op.f("uq_portfolio_snapshots_user_id_snapshot_date")),
    )
    op.create_table(
        "risk_alerts",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("alert_type", sa.String(length=50), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("acknowledged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_risk_alerts_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_alerts")),
    )
    op.create_table(
        "risk_metrics",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("portfolio_risk", cival.database.types.ExactDecimal(precision=10, scale=4), nullable=True),
        sa.Column("value_at_risk", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("max_drawdown", cival.database.types.ExactDecimal(precision=10, scale=4), nullable=True),
        sa.Column("sharpe_ratio", cival.database.types.ExactDecimal(precision=10, scale=4), nullable=True),
        sa.Column(
            "position_risks",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("calculated_at", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_risk_metrics_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_metrics")),
    )
    op.create_table(
        "system_logs",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("level", sa.String(length=20), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_system_logs_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_logs")),
    )
    with op.batch_alter_table("system_logs", schema=None) as batch_op:
        batch_op.create_index("idx_logs_level_created", ["level", sa.literal_column("created_at DESC")], unique=False)

    op.create_table(
        "trading_accounts",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("account_type", sa.String(length=50), server_default="spot", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_trading_accounts_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_accounts")),
        sa.UniqueConstraint(
            "user_id", "exchange", "account_id", name=op.f("uq_trading_accounts_user_id_exchange_account_id")
        ),
    )
    op.create_table(
        "trading_agents",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("agent_type", sa.String(length=50), nullable=False),
        sa.Column(
            "configuration",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=20), server_default="inactive", nullable=False),
        sa.Column(
            "performance",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("last_decision_at", cival.database.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_trading_agents_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_agents")),
    )
    op.create_table(
        "trading_limits",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("limit_type", sa.String(length=50), nullable=False),
        sa.Column("symbol", sa.String(length=50), nullable=True),
        sa.Column("limit_value", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column(
            "current_value",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_trading_limits_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_limits")),
    )
    op.create_table(
        "trading_strategies",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("strategy_type", sa.String(length=50), nullable=False),
        sa.Column(
            "parameters",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "performance_metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_trading_strategies_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_strategies")),
    )
    op.create_table(
        "user_api_keys",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column("api_key_encrypted", sa.Text(), nullable=False),
        sa.Column("api_secret_encrypted", sa.Text(), nullable=False),
        sa.Column("passphrase_encrypted", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_api_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_api_keys")),
    )
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=255), nullable=False),
        sa.Column("expires_at", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
    )
    op.create_table(
        "balances",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("asset", sa.String(length=20), nullable=False),
        sa.Column(
            "free",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
        sa.Column(
            "locked",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
        sa.Column(
            "total",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
        sa.Column("usd_value", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["trading_accounts.id"], name=op.f("fk_balances_account_id_trading_accounts")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_balances_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balances")),
        sa.UniqueConstraint("user_id", "account_id", "asset", name=op.f("uq_balances_user_id_account_id_asset")),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=True),
        sa.Column("external_order_id", sa.String(length=255), nullable=True),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("side", sa.String(length=10), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("quantity", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("stop_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("time_in_force", sa.String(length=10), server_default="GTC", nullable=False),
        sa.Column("status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column(
            "filled_quantity",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
        sa.Column("average_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column(
            "fees",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["trading_accounts.id"], name=op.f("fk_orders_account_id_trading_accounts")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_orders_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            "idx_orders_symbol_created", ["symbol", sa.literal_column("created_at DESC")], unique=False
        )
        batch_op.create_index("idx_orders_user_status", ["user_id", "status"], unique=False)

    op.create_table(
        "positions",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("size", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("average_price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("market_value", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("unrealized_pnl", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=True),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column(
            "updated_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["trading_accounts.id"], name=op.f("fk_positions_account_id_trading_accounts")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_positions_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_positions")),
        sa.UniqueConstraint("user_id", "account_id", "symbol", name=op.f("uq_positions_user_id_account_id_symbol")),
    )
    with op.batch_alter_table("positions", schema=None) as batch_op:
        batch_op.create_index("idx_positions_user_symbol", ["user_id", "symbol"], unique=False)

    op.create_table(
        "trading_signals",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("strategy_id", sa.Uuid(), nullable=True),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("strength", cival.database.types.ExactDecimal(precision=5, scale=2), nullable=False),
        sa.Column("price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("confidence", cival.database.types.ExactDecimal(precision=5, scale=2), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["trading_agents.id"],
            name=op.f("fk_trading_signals_agent_id_trading_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["strategy_id"],
            ["trading_strategies.id"],
            name=op.f("fk_trading_signals_strategy_id_trading_strategies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_signals")),
    )
    with op.batch_alter_table("trading_signals", schema=None) as batch_op:
        batch_op.create_index("idx_signals_created", [sa.literal_column("created_at DESC")], unique=False)

    op.create_table(
        "trades",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("external_trade_id", sa.String(length=255), nullable=True),
        sa.Column("symbol", sa.String(length=50), nullable=False),
        sa.Column("side", sa.String(length=10), nullable=False),
        sa.Column("quantity", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column("price", cival.database.types.ExactDecimal(precision=20, scale=8), nullable=False),
        sa.Column(
            "fees",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
        sa.Column("exchange", sa.String(length=50), nullable=False),
        sa.Column("executed_at", cival.database.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            cival.database.types.UTCDateTime(timezone=True),
            server_default=utcnow(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_trades_order_id_orders")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_trades_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trades")),
    )
    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.create_index(
            "idx_trades_user_executed", ["user_id", sa.literal_column("executed_at DESC")], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.drop_index("idx_trades_user_executed")

    op.drop_table("trades")
    with op.batch_alter_table("trading_signals", schema=None) as batch_op:
        batch_op.drop_index("idx_signals_created")

    op.drop_table("trading_signals")
    with op.batch_alter_table("positions", schema=None) as batch_op:
        batch_op.drop_index("idx_positions_user_symbol")

    op.drop_table("positions")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("idx_orders_user_status")
        batch_op.drop_index("idx_orders_symbol_created")

    op.drop_table("orders")
    op.drop_table("balances")
    op.drop_table("user_sessions")
    op.drop_table("user_api_keys")
    op.drop_table("trading_strategies")
    op.drop_table("trading_limits")
    op.drop_table("trading_agents")
    op.drop_table("trading_accounts")
    with op.batch_alter_table("system_logs", schema=None) as batch_op:
        batch_op.drop_index("idx_logs_level_created")

    op.drop_table("system_logs")
    op.drop_table("risk_metrics")
    op.drop_table("risk_alerts")
    op.drop_table("portfolio_snapshots")
    op.drop_table("api_rate_limits")
    op.drop_table("users")
    op.drop_table("trading_pairs")
    op.drop_table("price_tickers")
    op.drop_table("order_book_snapshots")
    with op.batch_alter_table("market_data_ohlcv", schema=None) as batch_op:
        batch_op.drop_index("idx_market_data_symbol_time")

    op.drop_table("market_data_ohlcv")
    op.drop_table("exchange_status")
