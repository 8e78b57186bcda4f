"""Health of the platform's dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cival.core.service_registry import ServiceRegistry
from cival.models.system_models import ComponentHealth, HealthOut


async def check_health(registry: ServiceRegistry) -> HealthOut:
    """Ping the database and the cache; either failing makes the platform `degraded`."""
    database = await _probe(registry.database.dialect, registry.database.ping)
    cache = await _probe(registry.cache.name, registry.cache.ping)
    status = "ok" if database.status == cache.status == "ok" else "degraded"
    return HealthOut(status=status, version=registry.version, database=database, cache=cache)


async def _probe(backend: str, ping: Callable[[], Awaitable[float]]) -> ComponentHealth:
    try:
        seconds = await ping()
    except Exception as exc:  # noqa: BLE001 - health reports the failure instead of raising it
        return ComponentHealth(status="error", backend=backend, detail=type(exc).__name__)
    return ComponentHealth(status="ok", backend=backend, latency_ms=round(seconds * 1000, 3))
