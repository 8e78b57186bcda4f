"""Migrations are the only way the schema is made; they match the models and are idempotent."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.database import migrate


async def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    assert await migrate.drift(database_url) == []


async def test_database_is_at_head(database_url: str) -> None:
    assert await migrate.current_revision(database_url) == migrate.head_revision()


async def _schema_fingerprint(engine: AsyncEngine) -> list[tuple[str, ...]]:
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = await conn.execute(text("SELECT type, name, sql FROM sqlite_master ORDER BY type, name"))
        else:
            rows = await conn.execute(
                text(
                    "SELECT 'col', table_name || '.' || column_name, data_type || coalesce(column_default, '') "
                    "FROM information_schema.columns WHERE table_schema = current_schema() "
                    "UNION ALL SELECT 'idx', indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                    "UNION ALL SELECT 'pol', tablename || '.' || policyname, qual FROM pg_policies "
                    "ORDER BY 1, 2"
                )
            )
        return [tuple(str(v) for v in row) for row in rows]


async def test_upgrading_a_current_database_changes_nothing(database_url: str, owner_engine: AsyncEngine) -> None:
    before = await _schema_fingerprint(owner_engine)
    await migrate.upgrade(database_url)
    await migrate.upgrade(database_url)
    assert await _schema_fingerprint(owner_engine) == before
    assert await migrate.current_revision(database_url) == migrate.head_revision()


async def test_downgrade_to_base_and_back(tmp_path: object) -> None:
    """Every migration can be undone and redone (on a scratch SQLite database)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/scratch.sqlite3"
    await migrate.upgrade(url)
    await migrate.downgrade(url, "base")
    assert await migrate.current_revision(url) is None
    await migrate.upgrade(url)
    assert await migrate.drift(url) == []


def test_head_revision_constant_matches_the_migrations() -> None:
    """`HEAD_REVISION` lets start-up skip Alembic; it must name the newest migration."""
    assert migrate.head_revision() == migrate.script_head()
