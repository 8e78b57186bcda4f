"""The order path: idempotency, exactly-once fills, and what the paper exchange needs to rebuild its book.

- `orders.client_order_id` (unique per user): a retried or concurrent placement finds the one order (D18).
- `orders.post_only`, `orders.triggered_at`, `orders.reject_reason`, `orders.reserved` (D19).
- `trades (exchange, external_trade_id)` unique: a fill is never applied twice (D18).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cival.database.types
from cival.database.types import money_zero

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN (no batch copy): SQLite supports it, and a batch copy would drop the DESC of
    # idx_orders_symbol_created.
    op.add_column("orders", sa.Column("client_order_id", sa.String(length=64), nullable=True))
    op.add_column("orders", sa.Column("post_only", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("orders", sa.Column("triggered_at", cival.database.types.UTCDateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("reject_reason", sa.String(length=255), nullable=True))
    op.add_column(
        "orders",
        sa.Column(
            "reserved",
            cival.database.types.ExactDecimal(precision=20, scale=8),
            server_default=money_zero(),
            nullable=False,
        ),
    )
    op.create_index("idx_orders_user_client_order_id", "orders", ["user_id", "client_order_id"], unique=True)
    op.create_index("idx_trades_exchange_external_trade_id", "trades", ["exchange", "external_trade_id"], unique=True)


def downgrade() -> None:
    op.drop_index("idx_trades_exchange_external_trade_id", table_name="trades")
    op.drop_index("idx_orders_user_client_order_id", table_name="orders")
    # SQLite drops columns with ALTER TABLE DROP COLUMN (3.35+); none of these is indexed any more.
    for column in ("reserved", "reject_reason", "triggered_at", "post_only", "client_order_id"):
        op.drop_column("orders", column)
