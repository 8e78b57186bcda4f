"""`INSERT ... ON CONFLICT DO UPDATE` for the running database (PostgreSQL and SQLite spell it the same way)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


async def upsert(
    session: AsyncSession, table: Table, rows: Sequence[dict[str, Any]], *, keys: Sequence[str], update: Sequence[str]
) -> None:
    """Insert `rows`; a row whose `keys` exist already updates the `update` columns instead."""
    if not rows:
        return
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    stmt = (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)).values(list(rows))
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in update})
    await session.execute(stmt)
