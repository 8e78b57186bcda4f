"""Builds, owns and closes every long-lived service, in dependency order (the spec's dependency injection).

The app's lifespan calls `start()` and `close()`; routers reach services through `api/deps.py`. Later
capabilities add their service here, built after what it depends on and closed before it.
"""

from __future__ import annotations

from cival import __version__
from cival.config import Settings
from cival.core.cache import Cache, create_cache
from cival.core.db import Database, check_reachable, redact_url
from cival.core.exceptions import ServiceUnavailable, StartupError
from cival.core.logging import DatabaseLogSink, get_logger
from cival.core.metrics import Metrics
from cival.database import migrate

log = get_logger(__name__)


async def ensure_schema(settings: Settings) -> None:
    """Make sure the schema is current: the embedded SQLite upgrades itself, PostgreSQL must be migrated first."""
    url = settings.effective_database_url
    current, head = await migrate.current_revision(url), migrate.head_revision()
    if current == head:
        return
    if settings.is_sqlite:
        await migrate.upgrade(url)
        log.info("database migrated", revision=head, url=redact_url(url))
        return
    raise StartupError(
        f"the database schema is at revision {current or '(empty)'} but this Cival needs {head}: "
        "run `cival db upgrade` first"
    )


class ServiceRegistry:
    """Every service of one running Cival, built by `start()`."""

    database: Database
    cache: Cache
    log_sink: DatabaseLogSink

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = __version__
        self.metrics = Metrics()
        self._started: list[str] = []

    async def start(self) -> None:
        s = self.settings
        await check_reachable(s.effective_database_url)
        await ensure_schema(s)
        self.database = Database(s)
        self._started.append("database")

        self.cache = create_cache(s.redis_url)
        self._started.append("cache")
        try:
            await self.cache.ping()
        except ServiceUnavailable as exc:
            raise StartupError(exc.detail) from exc

        self.log_sink = DatabaseLogSink(
            self.database, batch_size=s.log_db_batch_size, flush_seconds=s.log_db_flush_seconds
        )
        self.log_sink.start()
        self._started.append("log_sink")

    async def close(self) -> None:
        """Close what was started, newest first; one failing close does not stop the others."""
        for name in reversed(self._started):
            try:
                if name == "log_sink":
                    await self.log_sink.stop()
                elif name == "cache":
                    await self.cache.close()
                elif name == "database":
                    await self.database.close()
            except Exception:
                log.exception("service failed to close", service=name)
        self._started.clear()
