"""Run and inspect Alembic migrations: the only way Cival's schema is made.

Alembic is imported only when a migration actually runs: checking that a database is current is one query, so
start-up stays fast. Nor does this module import the service stack: `cival serve` checks the database with it before
importing the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from cival.core.db import check_reachable, make_engine, redact_url
from cival.core.exceptions import StartupError
from cival.core.logging import get_logger

if TYPE_CHECKING:
    from alembic.config import Config

    from cival.config import Settings

log = get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
HEAD_REVISION = "0008"
"""The newest migration's revision; a test checks it against the migrations directory."""
_ADVISORY_LOCK_KEY = 0x43495641  # "CIVA": one migrator at a time on PostgreSQL


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def script_head() -> str:
    """The head revision as Alembic computes it from the migration files."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def head_revision() -> str:
    return HEAD_REVISION


async def current_revision(url: str) -> str | None:
    """The database's revision, or None for an empty database."""
    engine = make_engine(url, app_role=False)
    try:
        async with engine.connect() as conn:
            try:
                revision: str | None = await conn.scalar(text("SELECT version_num FROM alembic_version"))
                return revision
            except DBAPIError:  # no alembic_version table yet: an empty database
                return None
    finally:
        await engine.dispose()


_CURRENT: set[str] = set()
"""Database URLs this process has already found reachable and current (the CLI checks before uvicorn starts)."""


async def ensure_current(settings: Settings) -> None:
    """Reachable and current: the embedded SQLite upgrades itself, PostgreSQL must be migrated first."""
    url = settings.effective_database_url
    if url in _CURRENT:
        return
    await check_reachable(url)
    current, head = await current_revision(url), head_revision()
    if current == head:
        _CURRENT.add(url)
        return
    if settings.is_sqlite:
        await upgrade(url)
        log.info("database migrated", revision=head, url=redact_url(url))
        _CURRENT.add(url)
        return
    raise StartupError(
        f"the database schema is at revision {current or '(empty)'} but this Cival needs {head}: "
        "run `cival db upgrade` first"
    )


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`; running it on a current database changes nothing."""
    from alembic import command

    await _run(url, lambda conn: _command(conn, command.upgrade, revision))


async def downgrade(url: str, revision: str) -> None:
    from alembic import command

    await _run(url, lambda conn: _command(conn, command.downgrade, revision))


async def drift(url: str) -> list[Any]:
    """What autogenerate would change to make the database match the models (empty when they agree)."""
    engine = make_engine(url, app_role=False)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_compare)
    finally:
        await engine.dispose()


def _compare(conn: Connection) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cival.database.models import Base

    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


async def _run(url: str, fn: Any) -> None:
    engine = make_engine(url, app_role=False)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
            await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _command(conn: Connection, fn: Any, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    fn(cfg, revision)
