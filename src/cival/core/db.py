"""The database: one async engine, and the two kinds of transaction Cival runs.

- `Database.session(user_id)`: work on behalf of one user. On PostgreSQL the transaction carries the user's id
  (`request.jwt.claim.sub`, read by the Supabase-compatible `auth.uid()`) and runs as the `cival_app` role, so
  row-level security enforces the user boundary a second time.
- `Database.system_session()`: work on behalf of the platform (log writer, market data, login look-ups,
  reconciliation). On PostgreSQL it runs as `cival_system`, which bypasses row-level security.
- `Database.driver_transaction(user_id | None)`: either of the two, on the driver's own connection with no
  SQLAlchemy session, for the order path's statements (`database/driver_sql.py`, D42).

On SQLite both open a `BEGIN IMMEDIATE` transaction: writers are serialised up front, so a transaction never
fails half-way on a lock upgrade.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from decimal import Decimal
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import greenlet_spawn

from cival.config import Settings
from cival.core.exceptions import StartupError
from cival.database.driver_sql import DriverTx, unprepared_writes

READ_ONLY = "cival_read_only"
APP_ROLE = "cival_app"
SYSTEM_ROLE = "cival_system"

_SET_USER = text("SELECT set_config('request.jwt.claim.sub', :uid, true)")
_SET_SYSTEM = text(f"SET LOCAL ROLE {SYSTEM_ROLE}")
_BEGIN_SYSTEM = f"BEGIN; SET LOCAL ROLE {SYSTEM_ROLE}"
PREPARED_WRITES = "cival.prepared_writes"
"""Key, in a pooled connection's `info`, of the names of the batch writes prepared on it (None: ask the server)."""
_PREPARED_IN_DOUBT = ("26000", "42P05")
"""A prepared write missing (dropped behind our back), or there already (prepared by a BEGIN whose answer was never
read, its task cancelled): the connection's record of its prepared writes is wrong."""


def make_engine(url: str, *, pool_size: int = 10, app_role: bool = True) -> AsyncEngine:
    """An engine for `url`; with `app_role`, PostgreSQL connections run as the RLS-bound `cival_app` role."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
    _ping_after_idle(engine)

    @event.listens_for(engine.sync_engine, "connect")
    def _numeric_as_text(dbapi_connection: Any, _record: Any) -> None:
        # NUMERIC travels as text, parsed by `Decimal` (exact either way): asyncpg's binary numeric codec costs twice
        # the CPU per value, and an order moves ~100 of them (D42).
        dbapi_connection.run_async(
            lambda conn: conn.set_type_codec(
                "numeric", encoder=str, decoder=Decimal, schema="pg_catalog", format="text"
            )
        )

    if app_role:

        @event.listens_for(engine.sync_engine, "connect")
        def _set_role(dbapi_connection: Any, _record: Any) -> None:
            # Run on the raw asyncpg connection, outside the adapter's implicit transaction: a SET inside a
            # transaction that is later rolled back would be undone, silently leaving the connection as the login
            # role, which row-level security does not bind.
            dbapi_connection.run_async(lambda conn: conn.execute(f"SET ROLE {APP_ROLE}"))

    return engine


PING_AFTER_IDLE_SECONDS = 5.0
"""A pooled PostgreSQL connection idle longer than this is pinged before it is handed out (D40)."""


def _ping_after_idle(engine: AsyncEngine) -> None:
    """Ping a connection on check-out only when it sat idle in the pool for `PING_AFTER_IDLE_SECONDS`.

    SQLAlchemy's `pool_pre_ping` pings on every check-out: 0.22 ms of CPU and a round trip each time, ~30% of a short
    transaction's client cost. A connection used a moment ago is alive; one that sat idle may have been closed by a
    server restart or a proxy, and is pinged (a dead one is replaced, the caller never sees it). If the server dies
    under load, the statements in flight fail, and SQLAlchemy then replaces every pooled connection at once.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN IMMEDIATE below is what starts a transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Readers start deferred and run beside the writer (WAL); writers take the write lock up front.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


class HeldConnection:
    """A pooled connection that one writer keeps between its transactions while it has work (D46): the order
    intake and the fill applier each run one driver transaction after another, in one task. See
    `Database.driver_transaction(held=...)` and `Database.release`."""

    __slots__ = ("begun", "pooled")

    def __init__(self) -> None:
        self.pooled: Any = None
        self.begun: asyncio.Future[None] | None = None
        """The answer, not yet awaited, of the platform's BEGIN sent ahead on `pooled` (`Database.begin_ahead`, D59)."""


class Database:
    """Owns the engine and hands out transactions."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.effective_database_url
        self.is_sqlite = settings.is_sqlite
        if self.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(self.url, pool_size=settings.database_pool_size)
        # autoflush on: a query inside a transaction must see the rows that transaction added (a fill's own trade).
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._readers = async_sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        # SQLite has one writer: this process's writers queue here, in order, rather than in SQLite's busy handler
        # (which sleeps and retries, adding up to 100 ms per wait under load). Other processes still meet it there.
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self, user_id: uuid.UUID, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """A transaction on behalf of `user_id`; commits on success, rolls back on any error.

        `read_only` promises no writes, so SQLite need not serialise it behind the writer.
        """
        async with (
            self._write_turn(read_only),
            (self._readers if read_only else self.sessionmaker)() as session,
            session.begin(),
        ):
            if not self.is_sqlite:
                await session.execute(_SET_USER, {"uid": str(user_id)})
            yield session

    @asynccontextmanager
    async def system_session(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """A transaction on behalf of the platform itself (not bound by row-level security)."""
        async with (
            self._write_turn(read_only),
            (self._readers if read_only else self.sessionmaker)() as session,
            session.begin(),
        ):
            if not self.is_sqlite:
                await session.execute(_SET_SYSTEM)
            yield session

    @asynccontextmanager
    async def driver_transaction(
        self, user_id: uuid.UUID | None, *, held: HeldConnection | None = None
    ) -> AsyncIterator[DriverTx]:
        """A write transaction on a pooled connection's driver, with no SQLAlchemy session (D42): on behalf of
        `user_id` (row-level security binds it, as in `session`), or of the platform when None (as in
        `system_session`). Commits on success (on PostgreSQL with the batch writes it deferred, D53), rolls back on
        any error.

        For the order path, whose statements are `database/driver_sql.py`'s: an ORM session, its begin, its
        `set_config`, its commit and its close cost 0.5–0.6 ms of CPU per transaction, 0.15 ms here, where BEGIN and
        the user's id go in one round trip. A connection lost on the way is discarded from the pool and reported as
        SQLAlchemy's `OperationalError`; one that cannot be made raises the socket's `ConnectionError`, as for a
        session. The API answers 503 for both.

        With `held`, the connection is the one `held` keeps (checked out on first use) and stays with it afterwards,
        unless it was lost or the transaction was interrupted: a writer that runs one transaction after another
        saves the pool's check-out and check-in each time (D46). `release` returns it to the pool.
        """
        async with self._write_turn(False):
            pooled: Any = held.pooled if held is not None else None
            if pooled is None:
                # The engine's own pool: its connect events (role, codec) and D40's idle ping apply.
                pooled = await greenlet_spawn(self.engine.sync_engine.raw_connection)
            keep = held is not None
            driver: Any = pooled.driver_connection
            try:
                if self.is_sqlite:
                    await driver.execute("BEGIN IMMEDIATE")
                else:
                    # A UUID's text is hex digits and dashes: nothing from input reaches the statement's text.
                    begin = (
                        _BEGIN_SYSTEM
                        if user_id is None
                        else f"BEGIN; SELECT set_config('request.jwt.claim.sub', '{user_id}', true)"
                    )
                    if not await self._begun_ahead(held, system=user_id is None):
                        await self._begin_with_writes_prepared(pooled, begin)
                tx = DriverTx(driver, self.engine.dialect, defers=True)
                yield tx
                await tx.commit()  # with the writes it deferred (D53)
            except BaseException as exc:
                if getattr(exc, "sqlstate", None) in _PREPARED_IN_DOUBT:
                    pooled.info[PREPARED_WRITES] = None  # the record was wrong: ask the server next time
                lost = False
                keep = keep and isinstance(exc, Exception)  # interrupted (cancelled): back to the pool, reset there
                try:
                    if not self.is_sqlite or driver.in_transaction:  # SQLite: BEGIN itself may have failed
                        await driver.execute("ROLLBACK")
                except Exception:  # the connection is gone (or broken mid-statement): never hand it out again
                    await greenlet_spawn(pooled.invalidate, exc)
                    lost = True
                    keep = False
                if isinstance(exc, Exception) and _unavailable(exc, lost=lost):
                    raise OperationalError("driver transaction", None, exc, connection_invalidated=lost) from exc
                raise
            finally:
                if held is not None:
                    held.pooled = pooled if keep else None
                if not keep:
                    await greenlet_spawn(pooled.close)

    async def _begin_with_writes_prepared(self, pooled: Any, begin: str) -> None:
        """`begin` on `pooled`'s connection, after the `PREPARE` of every batch write not prepared on it yet, in the
        same round trip (D58). Which are prepared is kept in the pooled connection's `info`, which lives as long as
        the server connection; when that is in doubt (None), the server is asked."""
        driver = pooled.driver_connection
        prepared: set[str] | None = pooled.info.setdefault(PREPARED_WRITES, set())
        if prepared is None:
            rows = await driver.fetch("SELECT name FROM pg_prepared_statements WHERE name LIKE 'cival\\_write\\_%'")
            prepared = pooled.info[PREPARED_WRITES] = {row[0] for row in rows}
        script, names = unprepared_writes(prepared, self.engine.dialect)
        await driver.execute(script + begin)
        prepared.update(names)

    def begin_ahead(self, held: HeldConnection) -> None:
        """Send the BEGIN of the platform's next driver transaction on `held`'s connection now, without waiting for
        its answer (D59): a writer with work queued calls this before it lets more calls arrive, so the round trip
        runs while the event loop does other work instead of at the start of the transaction. Only on PostgreSQL,
        only on a connection already held, at most one ahead. `driver_transaction(None, held=held)` takes it up;
        a writer that then runs no transaction calls `end_ahead`, so a connection never stays idle in a
        transaction."""
        if self.is_sqlite or held.pooled is None or held.begun is not None:
            return
        held.begun = asyncio.ensure_future(self._begin_with_writes_prepared(held.pooled, _BEGIN_SYSTEM))

    async def _begun_ahead(self, held: HeldConnection | None, *, system: bool) -> bool:
        """Whether `held`'s connection is in the platform's transaction begun ahead (its failure raised here); a
        transaction on behalf of a user cannot take it up, and it is ended first."""
        if held is None or held.begun is None:
            return False
        if not system:
            await self.end_ahead(held)
            return False
        answer, held.begun = held.begun, None
        await answer
        return True

    async def end_ahead(self, held: HeldConnection) -> None:
        """End a transaction begun ahead on `held` and not taken up (rolled back; a connection that fails to is
        discarded)."""
        if held.begun is None:
            return
        answer, held.begun = held.begun, None
        await asyncio.gather(answer, return_exceptions=True)  # its failure is the ROLLBACK's to meet
        try:
            await held.pooled.driver_connection.execute("ROLLBACK")
        except Exception as exc:
            pooled, held.pooled = held.pooled, None
            await greenlet_spawn(pooled.invalidate, exc)
            await greenlet_spawn(pooled.close)

    async def release(self, held: HeldConnection) -> None:
        """Return the connection `held` keeps (if any) to the pool."""
        await self.end_ahead(held)
        pooled, held.pooled = held.pooled, None
        if pooled is not None:
            await greenlet_spawn(pooled.close)

    def _write_turn(self, read_only: bool) -> AbstractAsyncContextManager[Any]:
        if read_only or self._sqlite_writer is None:
            return nullcontext()
        return self._sqlite_writer

    async def ping(self) -> float:
        """Round-trip a trivial query; returns seconds taken. Raises on failure."""
        start = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return time.perf_counter() - start

    async def close(self) -> None:
        await self.engine.dispose()


async def check_reachable(url: str) -> None:
    """Fail start-up with a readable message when the database cannot be reached (before any role exists)."""
    engine = make_engine(url, app_role=False)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (OSError, OperationalError, DBAPIError) as exc:
        raise StartupError(f"cannot reach the database at {redact_url(url)}: {_first_line(exc)}") from exc
    finally:
        await engine.dispose()


def _unavailable(exc: Exception, *, lost: bool) -> bool:
    """Whether the driver's `exc` means the database is unavailable (the API's 503), as SQLAlchemy would report it:
    SQLite's operational errors (a database locked past the busy timeout, ...), or any driver error on a connection
    that then could not even roll back (`lost`: asyncpg may report a connection the server closed as any of its
    errors, depending on when the closing message was read). Not the caller's own exceptions."""
    if isinstance(exc, DBAPIError):
        return False
    if isinstance(exc, sqlite3.OperationalError):
        return True
    return lost and (isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("asyncpg"))


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
