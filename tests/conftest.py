"""Shared fixtures: one freshly migrated database per test run, the app with its real services.

The suite runs on SQLite with the in-process cache by default. Set `CIVAL_TEST_DATABASE_URL` (PostgreSQL) and
`CIVAL_TEST_REDIS_URL` to run it on the real services: a fresh database is created on that server for the run and
dropped afterwards. Tests that need PostgreSQL or Redis skip without them on a laptop and fail in CI (`CI=true`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.app import create_app
from cival.config import Settings
from cival.core.db import Database, make_engine
from cival.core.service_registry import ServiceRegistry
from cival.database import migrate
from cival.database.models import Base
from cival.services.market_data_service import MarketDataService
from tests.api._identity import Identities

TEST_DATABASE_URL = os.environ.get("CIVAL_TEST_DATABASE_URL", "")
TEST_REDIS_URL = os.environ.get("CIVAL_TEST_REDIS_URL", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_service(what: str, how: str) -> None:
    """Skip (laptop) or fail (CI) a test whose service is not configured."""
    message = f"{what} is not configured: set {how}"
    if IN_CI:
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)


SERVICE_MARKERS = {"postgres_url": "postgres", "redis_url": "redis"}
"""The fixture a test asks for a service by, and the marker CI's SQLite run deselects it by."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for PostgreSQL or Redis carries its marker: without it, CI's run on SQLite would select it and
    fail it (the service is required in CI), so it is refused here, on every machine."""
    for item in items:
        for fixture, marker in SERVICE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
                raise pytest.UsageError(f"{item.nodeid} asks for {fixture}: mark it @pytest.mark.{marker}")


def _async_pg_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cival-data")


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A brand-new, migrated database named `prefix_<random>` on `server_url`'s PostgreSQL server (its URL, async
    driver), dropped afterwards."""
    server = make_url(_async_pg_url(server_url))
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server.render_as_string(hide_password=False), app_role=False)
    admin = admin.execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        await migrate.upgrade(url)
        yield url
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture(scope="session")
async def database_url(data_dir: Path) -> AsyncIterator[str]:
    """A brand-new, migrated database for this test run."""
    if not TEST_DATABASE_URL:
        url = f"sqlite+aiosqlite:///{data_dir / 'test.sqlite3'}"
        await migrate.upgrade(url)
        yield url
        return
    async with scratch_database(TEST_DATABASE_URL, "cival_test") as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str, data_dir: Path) -> Settings:
    return Settings(
        env="test",
        data_dir=data_dir,
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        redis_prefix=f"cival-test:{uuid.uuid4().hex[:12]}:",  # runs sharing a Redis never hear each other
        log_json=True,
        log_db_flush_seconds=0.05,
        market_data_enabled=False,  # tests step the market themselves, so every price is known
        portfolio_snapshot_seconds=0,  # every fill rewrites today's snapshot, so a test can check it at once
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def registry(app: FastAPI) -> ServiceRegistry:
    reg: ServiceRegistry = app.state.registry
    return reg


@pytest.fixture(scope="session")
def db(registry: ServiceRegistry) -> Database:
    return registry.database


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://cival.test") as c:
        yield c


@pytest.fixture(scope="session")
async def owner_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A connection as the schema owner (not bound by row-level security), for test set-up only."""
    engine = make_engine(database_url, app_role=False)
    yield engine
    await engine.dispose()


@pytest.fixture
async def clean_db(db: Database, owner_engine: AsyncEngine) -> Database:
    """The shared database, emptied before the test."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    async with owner_engine.begin() as conn:
        if db.is_sqlite:
            for name in tables:
                await conn.execute(text(f"DELETE FROM {name}"))  # noqa: S608 - names from metadata
        else:
            await conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
    return db


@pytest.fixture
def postgres_url(database_url: str) -> str:
    """The run's database URL when it is PostgreSQL; skips (laptop) or fails (CI) otherwise."""
    if not database_url.startswith("postgresql"):
        need_service("PostgreSQL", "CIVAL_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test")
    return database_url


@pytest.fixture
def redis_url() -> str:
    if not TEST_REDIS_URL:
        need_service("Redis", "CIVAL_TEST_REDIS_URL=redis://127.0.0.1:6379/0")
    return TEST_REDIS_URL


@pytest.fixture(autouse=True)
def _no_settings_cache() -> Iterator[None]:
    """Tests that change environment variables must see them: never reuse a cached Settings."""
    from cival.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


MARKET_START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
"""Where the tests' simulated market starts: the same seed and start give the same prices in every run."""


@pytest.fixture
async def market(registry: ServiceRegistry, clean_db: Any) -> MarketDataService:
    """The app's market data, leading from MARKET_START and stepped once: books and tickers exist."""
    service = registry.market_data
    await service.start(run=False)
    await service.become_leader(start_time=MARKET_START)
    await service.run_step()
    return service


@pytest.fixture
async def ids(app: FastAPI) -> AsyncIterator[Identities]:
    """Users and clients with unique addresses, closed after the test."""
    async with Identities(app) as kit:
        yield kit
