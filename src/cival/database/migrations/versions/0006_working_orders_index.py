"""Partial index on a user's working orders: the risk gate reads them for every batch of new orders (D54).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKING = sa.text("status IN ('pending', 'partial', 'unknown')")


def upgrade() -> None:
    op.create_index("idx_orders_user_working", "orders", ["user_id"], postgresql_where=WORKING, sqlite_where=WORKING)


def downgrade() -> None:
    op.drop_index("idx_orders_user_working", table_name="orders")
