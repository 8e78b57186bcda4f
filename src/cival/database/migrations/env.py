"""Alembic environment. Cival runs migrations through `cival.database.migrate`, which passes a connection in."""

from __future__ import annotations

from alembic import context

from cival.database.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when someone runs bare `alembic`
    raise RuntimeError("run migrations with `cival db upgrade`, not the bare alembic command")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
