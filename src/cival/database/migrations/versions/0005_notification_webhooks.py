"""Webhook notifications: each user's endpoints and their recent deliveries, with row-level security (D33).

- `notification_webhooks`: URL, the signing secret (encrypted like exchange credentials), event types, health.
- `notification_deliveries`: one row per event sent to an endpoint (status, attempts, last response or error).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cival.database.types
from cival.core.db import APP_ROLE, SYSTEM_ROLE
from cival.database import rls
from cival.database.types import gen_random_uuid, utcnow

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _stamp(name: str, *, default: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        name,
        cival.database.types.UTCDateTime(timezone=True),
        server_default=utcnow() if default else None,
        nullable=not default,
    )


def upgrade() -> None:
    op.create_table(
        "notification_webhooks",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column(
            "event_types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="active", nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _stamp("last_failure_at", default=False),
        _stamp("last_success_at", default=False),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notification_webhooks_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_webhooks")),
    )
    op.create_index("idx_notification_webhooks_user", "notification_webhooks", ["user_id"])
    op.create_table(
        "notification_deliveries",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("webhook_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _stamp("created_at"),
        _stamp("completed_at", default=False),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["notification_webhooks.id"],
            name=op.f("fk_notification_deliveries_webhook_id_notification_webhooks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notification_deliveries_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_deliveries")),
    )
    op.create_index(
        "idx_notification_deliveries_webhook_created",
        "notification_deliveries",
        ["webhook_id", sa.literal_column("created_at DESC")],
    )
    if op.get_bind().dialect.name == "postgresql":
        for table in rls.NOTIFICATION_TABLES:
            op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}, {SYSTEM_ROLE}")
            for statement in rls.owner_policy_statements(table):
                op.execute(statement)


def downgrade() -> None:
    # Dropping the tables drops their policies too.
    op.drop_index("idx_notification_deliveries_webhook_created", table_name="notification_deliveries")
    op.drop_table("notification_deliveries")
    op.drop_index("idx_notification_webhooks_user", table_name="notification_webhooks")
    op.drop_table("notification_webhooks")
