"""Index on the trades of an order: the fill batch reads an order's earlier fills, the API filters trades by order
(D56).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("idx_trades_order_id", "trades", ["order_id"])


def downgrade() -> None:
    op.drop_index("idx_trades_order_id", table_name="trades")
