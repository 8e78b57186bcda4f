"""Fixed-window rate limits kept in the cache (Redis when configured, so every API worker shares them).

A window that is exceeded is recorded once in `api_rate_limits` for review.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime

from cival.core.cache import Cache
from cival.core.db import Database
from cival.core.exceptions import RateLimited
from cival.core.logging import get_logger
from cival.database.models import ApiRateLimit

log = get_logger(__name__)


class RateLimiter:
    def __init__(self, cache: Cache, database: Database) -> None:
        self.cache = cache
        self.database = database

    async def hit(
        self, endpoint: str, subject: str, limit: int, window_seconds: int, *, user_id: uuid.UUID | None = None
    ) -> None:
        """Count one request of `subject` (a user id or client address) on `endpoint`; raise 429 past `limit`."""
        window_start = int(time.time()) // window_seconds * window_seconds
        key = f"rl:{endpoint}:{subject}:{window_start}"
        count = await self.cache.incr(key, ttl=window_seconds)
        if count <= limit:
            return
        retry_after = max(1, math.ceil(window_start + window_seconds - time.time()))
        if count == limit + 1:
            await self._record(endpoint, user_id, window_start, window_seconds, count)
        raise RateLimited(
            f"too many requests to {endpoint}: at most {limit} per {window_seconds} s; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    async def _record(
        self, endpoint: str, user_id: uuid.UUID | None, window_start: int, window_seconds: int, count: int
    ) -> None:
        try:
            async with self.database.system_session() as session:
                session.add(
                    ApiRateLimit(
                        user_id=user_id,
                        endpoint=endpoint,
                        requests_count=count,
                        window_start=datetime.fromtimestamp(window_start, UTC),
                        window_duration_seconds=window_seconds,
                        limit_exceeded=True,
                    )
                )
        except Exception:  # the 429 matters more than its record
            log.exception("could not record an exceeded rate limit", endpoint=endpoint)
