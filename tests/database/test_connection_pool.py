"""Pooled PostgreSQL connections are pinged only after sitting idle (core/db.py, D40): a connection the server closed
while it was idle is replaced unseen; one closed while in use fails once (a session's or a driver transaction's, D42),
and the pool is then renewed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Integer, literal_column, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.api.errors import install_error_handlers
from cival.config import Settings
from cival.core import db as db_module
from cival.core.db import Database, HeldConnection, make_engine
from cival.database.driver_sql import DriverStatement

pytestmark = pytest.mark.postgres

BACKEND_PID = DriverStatement("SELECT pg_backend_pid()", {}, [literal_column("pid", Integer())])


@pytest.fixture
async def engine_and_admin(postgres_url: str) -> AsyncIterator[tuple[Database, AsyncEngine]]:
    database = Database(Settings(env="test", database_url=postgres_url))
    admin = make_engine(postgres_url, app_role=False)
    try:
        yield database, admin
    finally:
        await database.close()
        await admin.dispose()


async def _backend_pid(database: Database) -> int:
    async with database.system_session(read_only=True) as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(admin: AsyncEngine, pid: int) -> None:
    async with admin.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await conn.commit()


async def test_an_idle_connection_the_server_closed_is_replaced_unseen(
    engine_and_admin: tuple[Database, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, admin = engine_and_admin
    pid = await _backend_pid(database)
    await _terminate(admin, pid)
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has been idle "long enough"
    assert await _backend_pid(database) != pid  # pinged, found dead, replaced: the caller saw nothing


async def test_a_connection_used_a_moment_ago_is_not_pinged_and_the_pool_recovers_after_one_failure(
    engine_and_admin: tuple[Database, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, admin = engine_and_admin
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    pid = await _backend_pid(database)
    await _terminate(admin, pid)
    with pytest.raises(DBAPIError) as caught:  # no ping: the statement itself meets the closed connection
        await _backend_pid(database)
    assert caught.value.connection_invalidated
    fresh = await _backend_pid(database)
    assert fresh != pid
    marker = uuid.uuid4().hex
    async with database.system_session(read_only=True) as session:
        assert (await session.execute(text("SELECT :m"), {"m": marker})).scalar_one() == marker


async def test_a_lost_connection_answers_503_database_unavailable_not_500(
    engine_and_admin: tuple[Database, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, admin = engine_and_admin
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/pid")
    async def pid() -> int:
        return await _backend_pid(database)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://cival.test") as client:
        first = await client.get("/pid")
        assert first.status_code == 200
        await _terminate(admin, first.json())
        lost = await client.get("/pid")
        assert lost.status_code == 503, lost.text
        assert lost.json()["error"] == "database_unavailable"
        assert lost.headers["Retry-After"] == "1"
        assert (await client.get("/pid")).status_code == 200  # the pool was renewed


async def test_a_lost_connection_is_operational_error_and_the_pool_replaces_it(
    engine_and_admin: tuple[Database, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, admin = engine_and_admin
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 3600.0)  # no ping: the transaction meets the loss
    async with database.driver_transaction(None) as tx:
        [(pid,)] = await BACKEND_PID.fetch(tx)
    await _terminate(admin, pid)

    async def meet_the_loss() -> None:
        async with database.driver_transaction(None) as tx:
            await BACKEND_PID.fetch(tx)

    with pytest.raises(OperationalError) as caught:
        await meet_the_loss()
    assert caught.value.connection_invalidated  # the API answers 503 database_unavailable for it
    async with database.driver_transaction(None) as tx:
        [(fresh,)] = await BACKEND_PID.fetch(tx)
    assert fresh != pid


async def test_a_database_that_cannot_be_reached_answers_503_not_500(postgres_url: str) -> None:
    database = Database(Settings(env="test", database_url="postgresql://postgres@127.0.0.1:1/test"))
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/session")
    async def by_session() -> int:
        return await _backend_pid(database)

    @app.get("/driver")
    async def by_driver() -> int:
        async with database.driver_transaction(None) as tx:
            return int((await BACKEND_PID.fetch(tx))[0][0])

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://cival.test") as client:
            for path in ("/session", "/driver"):
                response = await client.get(path)
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "database_unavailable"
                assert response.headers["Retry-After"] == "1"
    finally:
        await database.close()


async def test_a_held_connection_that_was_lost_is_dropped_and_the_next_transaction_gets_a_fresh_one(
    engine_and_admin: tuple[Database, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, admin = engine_and_admin
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)  # a pooled one would be pinged: a held one is not
    held = HeldConnection()
    async with database.driver_transaction(None, held=held) as tx:
        [(pid,)] = await BACKEND_PID.fetch(tx)
    await _terminate(admin, pid)

    async def meet_the_loss() -> None:
        async with database.driver_transaction(None, held=held) as tx:
            await BACKEND_PID.fetch(tx)

    with pytest.raises(OperationalError) as caught:
        await meet_the_loss()
    assert caught.value.connection_invalidated
    assert held.pooled is None  # never used again
    async with database.driver_transaction(None, held=held) as tx:
        [(fresh,)] = await BACKEND_PID.fetch(tx)
    assert fresh != pid
    await database.release(held)
