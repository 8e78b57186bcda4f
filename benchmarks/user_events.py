"""User events: what numbering and keeping them for resume costs, how fast a resume is, and webhook throughput.

1. Publish: events per second and p50/p99 of `UserStream.append` (number, store, trim, publish) beside the plain
   unnumbered `publish_user` (publish only), same cache, same run; MemoryCache, and Redis when configured.
2. Resume: reading 1,000 missed events of one channel out of a log of 1,000 (the largest gap served), p50/p99.
3. Webhooks: events per second through `NotificationService.publish` to a local endpoint that answers 200 at once
   (one endpoint; deliveries signed, recorded in SQLite), measured from the first publish until every delivery is
   recorded; and the cost `publish` adds to its caller meanwhile.

Run: `.venv/bin/python -m benchmarks.user_events` from the repository root; `CIVAL_BENCH_REDIS_URL=redis://...` adds
Redis. `EVENTS=...` changes the sizes.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests._webhooks import webhook_receiver

from cival.config import Settings
from cival.core.cache import Cache, MemoryCache, RedisCache
from cival.core.db import Database
from cival.core.security import CredentialCipher, KeyRing
from cival.database import migrate
from cival.database.models import User
from cival.models.notification_models import WebhookIn
from cival.services.auth_service import Principal
from cival.services.channels import publish_user
from cival.services.notification_service import NotificationService
from cival.services.user_stream import UserStream

EVENTS = int(os.environ.get("EVENTS", "5000"))
REDIS = os.environ.get("CIVAL_BENCH_REDIS_URL", "")
DATA = {"id": str(uuid.uuid4()), "symbol": "BTC/USDT", "side": "buy", "quantity": "0.01000000", "price": "64000.1"}


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1000


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> tuple[float, list[float]]:
    samples = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - t)
    return n / (time.perf_counter() - start), samples


async def publish_and_resume(name: str, cache: Cache) -> None:
    stream = UserStream(cache)
    user = uuid.uuid4()
    async with cache.subscribe(f"user:{user}:trades"):  # one listener, as with a connected client
        plain, plain_s = await timed(EVENTS, lambda i: publish_user(cache, user, "trades", DATA))
        numbered, numbered_s = await timed(EVENTS, lambda i: stream.append(user, "trades", DATA))
    print(
        f"| {name} | publish_user | {plain:,.0f} | {pct(plain_s, 0.5):.3f} | {pct(plain_s, 0.99):.3f} |\n"
        f"| {name} | UserStream.append | {numbered:,.0f} | {pct(numbered_s, 0.5):.3f} | {pct(numbered_s, 0.99):.3f} |"
    )
    head = await stream.head(user)
    samples = []
    for _ in range(20):
        t = time.perf_counter()
        replay = await stream.replay(user, head - stream.retention_events, ["trades"])
        samples.append(time.perf_counter() - t)
        assert len(replay.events) == stream.retention_events, replay
    print(f"| {name} | replay 1,000 events | | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} |")


async def webhooks() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}"
        await migrate.upgrade(url)
        database = Database(Settings(env="test", data_dir=Path(tmp), database_url=url))
        user = User(id=uuid.uuid4(), email="bench@example.com")
        async with database.system_session() as session:
            session.add(user)
        cipher = CredentialCipher(KeyRing.load_or_create(Path(tmp) / "secret.key"))
        cache = MemoryCache()
        service = NotificationService(database, cache, cipher, env="test")
        await service.start()
        principal = Principal(user.id, user.email, "trader", uuid.uuid4())
        n = EVENTS // 5
        async with webhook_receiver() as receiver:
            await service.create_webhook(principal, WebhookIn(url=receiver.url, event_types=["trades"]))
            start = time.perf_counter()
            rate, samples = await timed(n, lambda i: service.publish(user.id, "trades", DATA))
            await service.webhooks.idle()
            elapsed = time.perf_counter() - start
            assert receiver.answered == n, (receiver.answered, n)
        await service.close()
        await database.close()
        print(
            f"| memory + SQLite | webhook deliveries | {n / elapsed:,.0f} | | |\n"
            f"| memory + SQLite | publish (caller's cost, deliveries running) | {rate:,.0f} | "
            f"{pct(samples, 0.5):.3f} | {pct(samples, 0.99):.3f} |"
        )


async def main() -> None:
    print(f"{EVENTS:,} events\n\n| cache | what | per second | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |")
    memory = MemoryCache()
    await publish_and_resume("memory", memory)
    if REDIS:
        redis = RedisCache(REDIS, prefix=f"cival-bench:{uuid.uuid4().hex}:")
        try:
            await publish_and_resume("redis", redis)
        finally:
            await redis.close()
    await webhooks()
    print("\n(p50/p99 of per-call times; one process, one event loop)")


if __name__ == "__main__":
    asyncio.run(main())
