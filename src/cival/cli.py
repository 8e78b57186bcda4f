"""The `cival` command: serve, db, and (as capabilities land) data, user, keys."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, NoReturn

import typer

from cival import __version__
from cival.config import Settings, SettingsError, get_settings
from cival.core.exceptions import StartupError

cli = typer.Typer(name="cival", help="Cival trading platform backend.", no_args_is_help=True, add_completion=False)
db_cli = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"cival: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        _fail(f"bad configuration: {exc}", 2)


async def _preflight(settings: Settings) -> None:
    from cival.core.db import check_reachable
    from cival.core.service_registry import ensure_schema

    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await check_reachable(settings.effective_database_url)
    await ensure_schema(settings)


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default CIVAL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CIVAL_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API worker processes.")] = 1,
) -> None:
    """Run the API server (migrating an embedded SQLite database first)."""
    import uvicorn

    from cival.core.logging import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, json=settings.log_json)
    try:
        asyncio.run(_preflight(settings))
    except StartupError as exc:
        _fail(str(exc))
    uvicorn.run(
        "cival.app:app_factory",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (idempotent)."""
    from cival.core.db import check_reachable
    from cival.database import migrate

    settings = _settings()

    async def run() -> str | None:
        if settings.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        await check_reachable(settings.effective_database_url)
        await migrate.upgrade(settings.effective_database_url, revision)
        return await migrate.current_revision(settings.effective_database_url)

    try:
        current = asyncio.run(run())
    except StartupError as exc:
        _fail(str(exc))
    typer.echo(f"database at revision {current}")


@db_cli.command("current")
def db_current() -> None:
    """Print the database's revision and the code's head revision."""
    from cival.database import migrate

    settings = _settings()
    current = asyncio.run(migrate.current_revision(settings.effective_database_url))
    typer.echo(f"database: {current or '(empty)'}  code: {migrate.head_revision()}")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
