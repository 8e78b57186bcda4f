"""The `cival` command: serve, db, and (as capabilities land) data, user, keys."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from cival import __version__
from cival.config import Settings, SettingsError, get_settings
from cival.core.exceptions import StartupError

if TYPE_CHECKING:
    from cival.core.service_registry import ServiceRegistry

T = TypeVar("T")

cli = typer.Typer(name="cival", help="Cival trading platform backend.", no_args_is_help=True, add_completion=False)
db_cli = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
keys_cli = typer.Typer(help="Credential encryption keys.", no_args_is_help=True)
user_cli = typer.Typer(help="Users.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(user_cli, name="user")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"cival: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        _fail(f"bad configuration: {exc}", 2)


async def _preflight(settings: Settings) -> None:
    """Reachable and current before the server starts: the embedded SQLite migrates itself.

    Imports neither the service stack nor, unless a migration runs, Alembic: a refusal is quick, and with several
    workers the parent process never imports the app.
    """
    from cival.database import migrate

    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await migrate.ensure_current(settings)


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default CIVAL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CIVAL_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API worker processes.")] = 1,
    replay: Annotated[
        str | None,
        typer.Option(help="Drive the paper pair of the same symbol with stored candles `exchange:BASE/QUOTE:tf`."),
    ] = None,
) -> None:
    """Run the API server (migrating an embedded SQLite database first)."""
    import uvicorn

    from cival.core.logging import configure_logging

    if workers == 1:
        # Start-up makes ~200k objects that live as long as the process and almost no garbage: collecting while
        # importing walks them all, again and again, for nothing (~10% of the time to the first answer).
        gc.disable()
    if replay is not None:
        os.environ["CIVAL_REPLAY_SOURCE"] = replay  # read by every worker's settings
        get_settings.cache_clear()
    settings = _settings()
    configure_logging(settings.log_level, json=settings.log_json)
    try:
        asyncio.run(_preflight(settings))
    except StartupError as exc:
        _fail(str(exc))
    options: dict[str, Any] = {
        "host": host or settings.host,
        "port": port or settings.port,
        "log_config": None,
        "access_log": False,
        "ws_per_message_deflate": False,  # compression costs ~1.7x server CPU per delivered frame
    }
    if workers > 1:  # each worker process imports and builds its own app
        uvicorn.run("cival.app:app_factory", factory=True, workers=workers, **options)
        return
    from cival.app import app_factory

    app = app_factory()
    gc.freeze()  # what start-up made is permanent: later collections need not walk it
    gc.enable()
    uvicorn.run(app, **options)


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


async def _with_services(settings: Settings, work: Callable[[ServiceRegistry], Awaitable[T]]) -> T:
    """Start the services (as the API does), run `work`, close them."""
    from cival.core.service_registry import ServiceRegistry, ensure_database

    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await ensure_database(settings)
    registry = ServiceRegistry(settings)
    try:
        await registry.start()
        return await work(registry)
    finally:
        await registry.close()


def _run_with_services(work: Callable[[ServiceRegistry], Awaitable[T]]) -> T:
    from cival.core.logging import configure_logging

    # A one-shot command must not lead the market: a step cut off at exit would leave a connection behind.
    settings = _settings().model_copy(update={"market_data_enabled": False})
    configure_logging("ERROR", json=settings.log_json)  # the command reports its own outcome
    try:
        return asyncio.run(_with_services(settings, work))
    except StartupError as exc:
        _fail(str(exc))


@keys_cli.command("rotate")
def keys_rotate(
    new_key: Annotated[
        bool, typer.Option(help="Add a fresh primary key to the key file first (not with CIVAL_SECRET_KEY).")
    ] = True,
) -> None:
    """Re-encrypt every stored credential and webhook signing secret under the primary key, without downtime.

    With a key file (the default), a new primary key is generated and saved first; running API workers pick it up
    on their next decrypt. With CIVAL_SECRET_KEY, put the new key first in the variable on every worker, then run
    `cival keys rotate --no-new-key`. Old keys stay in the ring until you remove them. An unfinished rotation is
    resumed rather than starting another.
    """
    from cival.core.security import KeyRing

    settings = _settings()
    if new_key and settings.secret_key:
        _fail("CIVAL_SECRET_KEY is set: put the new key first in it on every worker, then use --no-new-key")

    async def work(registry: ServiceRegistry) -> tuple[str, int, int, list[uuid.UUID]]:
        credentials, notifications = registry.credentials, registry.notifications
        pending = await credentials.pending_rotation() + await notifications.pending_rotation()
        if new_key and not pending:
            ring = KeyRing.load_file(settings.key_file).with_new_primary()
            ring.save_file(settings.key_file)
            credentials.cipher.use(ring)  # the one cipher every service holds
        count, unreadable = await credentials.reencrypt_all()
        secrets, unreadable_secrets = await notifications.reencrypt_secrets()
        return credentials.cipher.keyring.primary_id, count, secrets, unreadable + unreadable_secrets

    primary, count, secrets, unreadable = _run_with_services(work)
    typer.echo(f"re-encrypted {count} credential(s) and {secrets} webhook secret(s) under key {primary}")
    if unreadable:
        ids = ", ".join(str(i) for i in unreadable[:10]) + (" …" if len(unreadable) > 10 else "")
        _fail(
            f"{len(unreadable)} credential(s) or webhook secret(s) cannot be decrypted with any key in the ring; "
            f"left as they are: {ids}"
        )


@user_cli.command("create")
def user_create(
    email: Annotated[str, typer.Argument(help="The user's email.")],
    admin: Annotated[bool, typer.Option("--admin", help="Give the user the admin role.")] = False,
    full_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Create a user; the password is read from standard input (or prompted for)."""
    from pydantic import ValidationError

    from cival.models.user_models import RegisterIn

    password = (
        sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else typer.prompt("Password", hide_input=True)
    )
    try:
        body = RegisterIn(email=email, password=password, full_name=full_name)
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 2)

    async def work(registry: ServiceRegistry) -> str:
        user = await registry.auth.register(body, role="admin" if admin else "trader")
        return str(user.id)

    from cival.core.exceptions import CivalError

    try:
        user_id = _run_with_services(work)
    except CivalError as exc:
        _fail(exc.detail)
    typer.echo(f"created {'admin' if admin else 'trader'} {body.email} ({user_id})")


@user_cli.command("demo")
def user_demo() -> None:
    """Create (once) a demo trader with a funded paper account, and print its login."""
    from cival.services.demo import ensure_demo_user

    async def work(registry: ServiceRegistry) -> tuple[str, str | None, bool]:
        return await ensure_demo_user(registry)

    email, password, created = _run_with_services(work)
    settings = _settings()
    base = f"http://{settings.host}:{settings.port}"
    typer.echo("")
    typer.echo(f"  Demo trader {'created' if created else 'ready'}: {email} / {password or '(password changed)'}")
    typer.echo(f"  API docs:    {base}/docs")
    typer.echo(
        f"  Log in:      curl -s -X POST {base}/api/v1/auth/login -H 'Content-Type: application/json' "
        f'-d \'{{"email": "{email}", "password": "{password}"}}\''
    )
    typer.echo("")


# --- data: market data import ------------------------------------------------------------------------------------

data_cli = typer.Typer(help="Market data.", no_args_is_help=True)
cli.add_typer(data_cli, name="data")


@data_cli.command("import")
def data_import(
    path: Annotated[str, typer.Argument(help="A .csv or .json file of rows ts_ms,open,high,low,close,volume.")],
    exchange: Annotated[str, typer.Option(help="Exchange id, e.g. binance.")],
    symbol: Annotated[str, typer.Option(help="Pair as BASE/QUOTE, e.g. ETH/BTC.")],
    timeframe: Annotated[str, typer.Option(help="Candle timeframe: 1m, 5m, 15m, 1h, 4h or 1d.")],
    fmt: Annotated[str | None, typer.Option("--format", help="csv or json (default: from the extension).")] = None,
    skip_bad_rows: Annotated[
        bool, typer.Option("--skip-bad-rows", help="Import the good rows and list the bad ones (default: abort).")
    ] = False,
) -> None:
    """Import historical candles; a re-import updates them. Any bad row aborts, importing nothing of the file."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cival.core.db import Database
    from cival.core.logging import configure_logging
    from cival.services.candle_importer import (
        Format,
        ImportFormatError,
        ImportResult,
        InvalidImportTarget,
        import_candles,
    )

    settings = _settings()
    configure_logging("WARNING", json=settings.log_json)
    source = Path(path)
    if not source.is_file():
        _fail(f"no such file: {source}")
    if fmt not in (None, "csv", "json"):
        _fail(f"--format must be csv or json, not {fmt!r}", 2)
    kind: Format | None = "csv" if fmt == "csv" else "json" if fmt == "json" else None
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a log or a pipe gets the summary only
    )

    async def run() -> ImportResult:
        await _preflight(settings)
        database = Database(settings)
        try:
            with bar:
                task = bar.add_task(f"importing {source.name}", total=None)
                return await import_candles(
                    database,
                    source,
                    exchange=exchange,
                    symbol=symbol,
                    timeframe=timeframe,
                    fmt=kind,
                    skip_bad_rows=skip_bad_rows,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        finally:
            await database.close()

    try:
        result = asyncio.run(run())
    except StartupError as exc:
        _fail(str(exc))
    except InvalidImportTarget as exc:
        _fail(exc.detail, 2)
    except ImportFormatError as exc:
        _fail(f"{source}: {exc.detail} (nothing imported; --skip-bad-rows imports the good rows)")
    except OSError as exc:
        _fail(f"cannot read {source}: {exc.strerror}")
    typer.echo(
        f"{symbol} {timeframe} candles on {exchange}: read {result.rows_read} rows, "
        f"wrote {result.rows_written}, skipped {result.rows_skipped}"
    )
    if result.first_open_time is not None and result.last_open_time is not None:
        typer.echo(f"time span: {result.first_open_time.isoformat()} to {result.last_open_time.isoformat()}")
    for error in result.errors:
        typer.echo(f"skipped {error.detail}", err=True)
    if result.rows_skipped > len(result.errors):
        typer.echo(f"... and {result.rows_skipped - len(result.errors)} more bad rows", err=True)


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
