"""The cache contract, run against MemoryCache and (with CIVAL_TEST_REDIS_URL) RedisCache.

Expiry is checked without sleeping: MemoryCache runs on a fake clock that the tests move; on Redis the tests
check the remaining time that Redis reports.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from cival.core.cache import Cache, MemoryCache, Numbered, NumberedLog, RedisCache, Subscription, create_cache
from cival.core.exceptions import ServiceUnavailable

REDIS_URL = os.environ.get("CIVAL_TEST_REDIS_URL", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
UNREACHABLE_URL = "redis://:secret@127.0.0.1:1/0"


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def redis_url() -> str:
    """The test Redis; skips the test on a laptop without one, fails it in CI."""
    if not REDIS_URL:
        if IN_CI:
            pytest.fail("CIVAL_TEST_REDIS_URL is required in CI")
        pytest.skip("Redis tests need CIVAL_TEST_REDIS_URL=redis://127.0.0.1:6379/0")
    return REDIS_URL


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def cache(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Cache]:
    if request.param == "memory":
        backend: Cache = MemoryCache(clock=clock)
    else:
        backend = RedisCache(redis_url(), prefix=f"cival-test:{uuid.uuid4().hex}:")
    try:
        yield backend
    finally:
        if isinstance(backend, RedisCache):
            await _drop_keys(backend)
        await backend.close()


async def _drop_keys(backend: RedisCache) -> None:
    """Remove the keys this test left behind, so a shared Redis does not fill up with test data."""
    client = backend._client
    keys = [key async for key in client.scan_iter(match=backend.prefix + "*")]
    if keys:
        await client.delete(*keys)


def assert_expires_within(remaining: float | None, ttl: float) -> None:
    """`remaining` is in (0, ttl], give or take float rounding (the memory clock adds and subtracts)."""
    assert remaining is not None, "the key has no expiry"
    assert 0 < remaining <= ttl + 1e-9


async def receive(sub: Subscription, count: int) -> list[tuple[str, bytes]]:
    """`count` messages, failing the test if one does not arrive within a generous deadline."""
    received: list[tuple[str, bytes]] = []
    for _ in range(count):
        message = await sub.get_message(timeout=5)
        assert message is not None, f"only {len(received)} of {count} messages arrived: {received}"
        received.append(message)
    return received


# --- keys ---------------------------------------------------------------------------------------------------


async def test_get_set_delete(cache: Cache) -> None:
    assert await cache.get("k") is None
    await cache.set("k", b"v1")
    assert await cache.get("k") == b"v1"
    await cache.set("k", b"\x00\xffbinary")
    assert await cache.get("k") == b"\x00\xffbinary"
    await cache.set("other", b"o")
    await cache.delete("k")
    assert await cache.get("k") is None
    assert await cache.get("other") == b"o"
    await cache.delete("k")  # deleting a missing key is not an error


async def test_get_many_reads_in_order_with_none_for_missing_and_expired(cache: Cache, clock: FakeClock) -> None:
    await cache.set("a", b"1")
    await cache.set("c", b"3", ttl=0.5)
    await cache.set("d", b"4")
    assert await cache.get_many(["d", "missing", "a", "c"]) == [b"4", None, b"1", b"3"]
    assert await cache.get_many([]) == []
    if isinstance(cache, MemoryCache):  # Redis's own clock cannot be moved: its expiry is tested above
        clock.advance(1)
        assert await cache.get_many(["a", "c"]) == [b"1", None]


async def test_set_without_ttl_never_expires(cache: Cache, clock: FakeClock) -> None:
    await cache.set("k", b"v")
    assert await cache.ttl("k") is None
    assert await cache.ttl("missing") is None
    clock.advance(10**6)
    assert await cache.get("k") == b"v"


async def test_set_with_ttl_expires(cache: Cache, clock: FakeClock) -> None:
    await cache.set("k", b"v", ttl=0.2)
    assert_expires_within(await cache.ttl("k"), 0.2)
    assert await cache.get("k") == b"v"
    if cache.name == "memory":
        clock.advance(0.19)
        assert await cache.get("k") == b"v"
        clock.advance(0.02)
        assert await cache.get("k") is None
        assert await cache.ttl("k") is None


async def test_set_replaces_the_expiry(cache: Cache) -> None:
    await cache.set("k", b"v", ttl=30)
    await cache.set("k", b"w")
    assert await cache.ttl("k") is None
    await cache.set("k", b"x", ttl=5)
    assert_expires_within(await cache.ttl("k"), 5)


async def test_ttl_must_be_positive(cache: Cache) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", b"v", ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        await cache.incr("n", ttl=-1)


async def test_memory_expired_keys_are_purged_without_being_read(clock: FakeClock) -> None:
    cache = MemoryCache(clock=clock)
    await cache.set("old", b"v", ttl=1)
    clock.advance(MemoryCache.PURGE_INTERVAL + 1)
    await cache.set("new", b"v")
    assert "old" not in cache._data


# --- counters -----------------------------------------------------------------------------------------------


async def test_add_stores_only_when_absent(cache: Cache) -> None:
    assert await cache.add("lease", b"worker-1", ttl=30) is True
    assert await cache.add("lease", b"worker-2", ttl=30) is False
    assert await cache.get("lease") == b"worker-1"
    ttl = await cache.ttl("lease")
    assert ttl is not None
    assert 0 < ttl <= 30
    await cache.delete("lease")
    assert await cache.add("lease", b"worker-2") is True
    assert await cache.get("lease") == b"worker-2"


async def test_memory_add_succeeds_once_the_key_expired(clock: FakeClock) -> None:
    cache = MemoryCache(clock=clock)
    assert await cache.add("lease", b"worker-1", ttl=5)
    clock.advance(5)
    assert await cache.add("lease", b"worker-2", ttl=5)


async def test_renew_extends_only_the_holders_lease(cache: Cache, clock: FakeClock) -> None:
    assert await cache.renew("lease", b"worker-1", ttl=30) is False  # nothing to renew
    assert await cache.add("lease", b"worker-1", ttl=5)
    assert await cache.renew("lease", b"worker-2", ttl=30) is False  # not its lease: unchanged
    assert_expires_within(await cache.ttl("lease"), 5)
    assert await cache.renew("lease", b"worker-1", ttl=30) is True
    remaining = await cache.ttl("lease")
    assert remaining is not None
    assert 5 < remaining <= 30
    assert await cache.get("lease") == b"worker-1"


async def test_memory_renew_never_takes_back_a_lease_that_expired_and_moved(clock: FakeClock) -> None:
    cache = MemoryCache(clock=clock)
    assert await cache.add("lease", b"worker-1", ttl=5)
    clock.advance(5)  # worker-1 was too slow: its lease expired
    assert await cache.add("lease", b"worker-2", ttl=5)
    assert await cache.renew("lease", b"worker-1", ttl=5) is False
    assert await cache.get("lease") == b"worker-2"


async def test_incr_counts(cache: Cache) -> None:
    assert await cache.incr("n") == 1
    assert await cache.incr("n") == 2
    assert await cache.incr("n", 5) == 7
    assert await cache.incr("n", -10) == -3
    assert await cache.get("n") == b"-3"
    assert await cache.ttl("n") is None


async def test_incr_continues_a_set_value(cache: Cache) -> None:
    await cache.set("n", b"41")
    assert await cache.incr("n") == 42


async def test_incr_refuses_a_non_integer(cache: Cache) -> None:
    await cache.set("n", b"not a number")
    with pytest.raises(ValueError, match="integer"):
        await cache.incr("n")


async def test_incr_is_atomic_under_concurrency(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.incr("n", ttl=60) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await cache.get("n") == b"200"


async def test_incr_ttl_is_a_fixed_window(cache: Cache, clock: FakeClock) -> None:
    assert await cache.incr("w", ttl=10) == 1
    first = await cache.ttl("w")
    assert first is not None
    assert_expires_within(first, 10)
    if cache.name == "memory":
        clock.advance(6)
    # A later increment, even one asking for a longer ttl, does not move the end of the window.
    assert await cache.incr("w", ttl=100) == 2
    later = await cache.ttl("w")
    assert_expires_within(later, first)
    if cache.name == "memory":
        assert later == pytest.approx(4)
        clock.advance(4)
        assert await cache.get("w") is None
        assert await cache.incr("w", ttl=10) == 1  # a new window starts
        assert await cache.ttl("w") == pytest.approx(10)


async def test_incr_ttl_only_applies_to_a_key_it_creates(cache: Cache) -> None:
    await cache.incr("n")
    await cache.incr("n", ttl=10)
    assert await cache.ttl("n") is None


# --- pub/sub ------------------------------------------------------------------------------------------------


async def test_publish_delivers_in_order(cache: Cache) -> None:
    async with cache.subscribe("events") as sub:
        for i in range(50):
            assert await cache.publish("events", f"m{i}".encode()) == 1
        assert await receive(sub, 50) == [("events", f"m{i}".encode()) for i in range(50)]
        assert sub.dropped == 0


async def test_publish_numbered_numbers_keeps_trims_and_publishes_in_one_step(cache: Cache) -> None:
    log = NumberedLog(counter="log:seq", entry_prefix="log:", keep=3, ttl=60.0)
    async with cache.subscribe("out") as sub:
        seqs = [await cache.publish_numbered(log, [Numbered(b'{"n":', b"}", "out", b"orders\n")]) for _ in range(5)]
        assert seqs == [[1], [2], [3], [4], [5]]
        assert await receive(sub, 5) == [("out", f'{{"n":{n}}}'.encode()) for n in range(1, 6)]
    assert [await cache.get(log.entry(n)) for n in range(1, 6)] == [None, None, b'orders\n{"n":3}', b'orders\n{"n":4}',
                                                                    b'orders\n{"n":5}']  # fmt: skip
    assert_expires_within(await cache.ttl(log.entry(5)), 60.0)
    assert await cache.get("log:seq") == b"5"


async def test_many_messages_are_numbered_in_order_in_one_step(cache: Cache) -> None:
    log = NumberedLog(counter="many:seq", entry_prefix="many:", keep=4, ttl=60.0)
    first = [Numbered(b"<", b">", "a", b"a\n"), Numbered(b"[", b"]", "b", b"b\n"), Numbered(b"", b"", "a")]
    async with cache.subscribe("a", "b") as sub:
        assert await cache.publish_numbered(log, first) == [1, 2, 3]
        assert await cache.publish_numbered(log, [Numbered(b"(", b")", "b")] * 3) == [4, 5, 6]
        assert await cache.publish_numbered(log, []) == []
        received = await receive(sub, 6)
    assert received == [("a", b"<1>"), ("b", b"[2]"), ("a", b"3"), ("b", b"(4)"), ("b", b"(5)"), ("b", b"(6)")]
    # Each message kept with its own prefix; numbering 5 and 6 dropped 1 and 2 within the step that took them.
    assert [await cache.get(log.entry(n)) for n in range(1, 7)] == [None, None, b"3", b"(4)", b"(5)", b"(6)"]


async def test_publish_numbered_is_atomic_under_concurrency(cache: Cache) -> None:
    log = NumberedLog(counter="c:seq", entry_prefix="c:", keep=1000, ttl=60.0)
    async with cache.subscribe("out") as sub:
        batches = await asyncio.gather(
            *(cache.publish_numbered(log, [Numbered(b"", b"", "out")] * 2) for _ in range(50))
        )
        assert sorted(seq for batch in batches for seq in batch) == list(range(1, 101))
        assert all(batch[1] == batch[0] + 1 for batch in batches)  # a step's numbers are never interleaved
        received = await receive(sub, 100)
    # Each number once, published in the order it was taken.
    assert [int(message) for _, message in received] == list(range(1, 101))
    assert [await cache.get(log.entry(n)) for n in range(1, 101)] == [str(n).encode() for n in range(1, 101)]


async def test_publish_numbered_writes_large_numbers_as_integers(cache: Cache) -> None:
    log = NumberedLog(counter="big:seq", entry_prefix="big:", keep=2, ttl=60.0)
    await cache.set("big:seq", b"123456789012344")
    assert await cache.publish_numbered(log, [Numbered(b"<", b">", "out")]) == [123456789012345]
    assert await cache.get(log.entry(123456789012345)) == b"<123456789012345>"


async def test_subscription_is_an_async_iterator(cache: Cache) -> None:
    async with cache.subscribe("a", "b") as sub:
        await cache.publish("a", b"1")
        await cache.publish("b", b"2")
        received: list[tuple[str, bytes]] = []
        async for channel, message in sub:
            received.append((channel, message))
            if len(received) == 2:
                break
    assert received == [("a", b"1"), ("b", b"2")]


async def test_two_subscribers_both_receive(cache: Cache) -> None:
    async with cache.subscribe("c") as first, cache.subscribe("c") as second:
        # In memory each subscription counts; on Redis the one connection of this process (D51).
        assert await cache.publish("c", b"hello") == (2 if isinstance(cache, MemoryCache) else 1)
        assert await receive(first, 1) == [("c", b"hello")]
        assert await receive(second, 1) == [("c", b"hello")]


async def _subscription_connections(cache: RedisCache) -> list[dict[str, str]]:
    """The Redis connections `cache` subscribes on (named after its prefix)."""
    return [c for c in await cache._client.client_list() if c.get("name") == f"{cache.prefix}subscriptions"]


@pytest.mark.redis
async def test_redis_subscriptions_of_a_process_share_one_connection() -> None:
    cache = RedisCache(redis_url(), prefix=f"cival-test:{uuid.uuid4().hex}:")
    try:
        async with (
            cache.subscribe("a") as first,
            cache.subscribe("a", "b") as second,
            cache.subscribe("b") as third,
        ):
            channels = [cache.prefix + "a", cache.prefix + "b"]
            assert await cache._client.pubsub_numsub(*channels) == [(c.encode(), 1) for c in channels]
            [connection] = await _subscription_connections(cache)  # one, holding both channels
            assert connection["sub"] == "2"
            await cache.publish("a", b"1")
            await cache.publish("b", b"2")
            assert await receive(first, 1) == [("a", b"1")]
            assert await receive(second, 2) == [("a", b"1"), ("b", b"2")]  # in publish order, across channels
            assert await receive(third, 1) == [("b", b"2")]
            await first.aclose()  # "a" keeps a subscriber here: still subscribed
            assert await cache.publish("a", b"3") == 1
            assert await receive(second, 1) == [("a", b"3")]
        assert await cache.publish("a", b"4") == 0  # the last one left: unsubscribed
        assert await cache.publish("b", b"5") == 0
    finally:
        await cache.close()


@pytest.mark.redis
async def test_a_killed_subscription_connection_comes_back_with_every_channel() -> None:
    cache = RedisCache(redis_url(), prefix=f"cival-test:{uuid.uuid4().hex}:")
    channels = [cache.prefix + "a", cache.prefix + "b"]
    try:
        async with cache.subscribe("a") as first, cache.subscribe("b") as second:
            [connection] = await _subscription_connections(cache)
            await cache._client.client_kill_filter(_id=connection["id"])
            # redis-py reconnects and subscribes again inside its reader: nothing here can signal it, so ask Redis
            # until it says so (bounded).
            async with asyncio.timeout(5):
                while await cache._client.pubsub_numsub(*channels) != [(c.encode(), 1) for c in channels]:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            [again] = await _subscription_connections(cache)
            assert again["id"] != connection["id"]
            await cache.publish("a", b"1")
            await cache.publish("b", b"2")
            assert await receive(first, 1) == [("a", b"1")]
            assert await receive(second, 1) == [("b", b"2")]
    finally:
        await cache.close()


async def test_publish_without_subscribers_reaches_nobody(cache: Cache) -> None:
    assert await cache.publish("nobody", b"x") == 0


async def test_leaving_the_context_unsubscribes(cache: Cache) -> None:
    async with cache.subscribe("c") as sub:
        assert await cache.publish("c", b"before") == 1
    assert await cache.publish("c", b"after") == 0
    assert await sub.get_message(timeout=0) is None
    async with cache.subscribe("c") as again:
        assert await cache.publish("c", b"again") == 1
        assert await receive(again, 1) == [("c", b"again")]


async def test_iterator_ends_cleanly_on_exit(cache: Cache) -> None:
    first_seen = asyncio.Event()
    received: list[tuple[str, bytes]] = []

    async def consume(sub: Subscription) -> None:
        async for item in sub:
            received.append(item)
            first_seen.set()

    async with cache.subscribe("c") as sub:
        consumer = asyncio.create_task(consume(sub))
        await cache.publish("c", b"1")
        async with asyncio.timeout(5):
            await first_seen.wait()
    async with asyncio.timeout(5):
        await consumer  # would hang if the iterator did not end, and raises if it ended with an error
    assert received == [("c", b"1")]


async def test_channels_are_isolated(cache: Cache) -> None:
    async with cache.subscribe("a") as only_a, cache.subscribe("a", "b") as both:
        assert await cache.publish("b", b"for b") == 1
        assert await cache.publish("a", b"for a") == (2 if isinstance(cache, MemoryCache) else 1)  # D51
        # Messages arrive in publish order, so a leak of "for b" would have shown up before "for a".
        assert await receive(only_a, 1) == [("a", b"for a")]
        assert await only_a.get_message(timeout=0) is None
        assert await receive(both, 2) == [("b", b"for b"), ("a", b"for a")]


@pytest.mark.redis
async def test_prefix_isolates_caches_sharing_a_redis() -> None:
    url = redis_url()
    one = RedisCache(url, prefix=f"cival-test:{uuid.uuid4().hex}:")
    two = RedisCache(url, prefix=f"cival-test:{uuid.uuid4().hex}:")
    try:
        await one.set("k", b"one")
        assert await two.get("k") is None
        async with two.subscribe("c"):
            assert await one.publish("c", b"x") == 0
    finally:
        await _drop_keys(one)
        await one.close()
        await two.close()


class GatedProxy:
    """A TCP proxy in front of Redis that can hold back one command, to show what the client waits for."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._gate: bytes | None = None
        self.held = asyncio.Event()
        self._release = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def hold(self, command: bytes) -> None:
        """Stop forwarding at the next client message carrying `command`, until `release()`."""
        self._gate = b"$%d\r\n%s\r\n" % (len(command), command)
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        self._gate = None
        self._release.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        for task in (
            asyncio.create_task(self._pipe(reader, upstream_writer, gated=True)),
            asyncio.create_task(self._pipe(upstream_reader, writer, gated=False)),
        ):
            self._tasks.add(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, gated: bool) -> None:
        try:
            while data := await reader.read(65536):
                if gated and self._gate is not None and self._gate in data:
                    self.held.set()
                    await self._release.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def gated() -> AsyncIterator[tuple[RedisCache, RedisCache, GatedProxy]]:
    """A RedisCache reached through a GatedProxy, and one reaching Redis directly, sharing a prefix."""
    url = urlsplit(redis_url())
    if url.scheme != "redis":
        pytest.skip("the gated proxy reads commands, so it needs a plain redis:// URL")
    proxy = GatedProxy(url.hostname or "127.0.0.1", url.port or 6379)
    port = await proxy.start()
    userinfo = url.netloc.rpartition("@")[0]
    proxied_url = urlunsplit(url._replace(netloc=f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"))
    prefix = f"cival-test:{uuid.uuid4().hex}:"
    via_proxy = RedisCache(proxied_url, prefix=prefix)
    direct = RedisCache(url.geturl(), prefix=prefix)
    try:
        yield via_proxy, direct, proxy
    finally:
        proxy.release()
        await via_proxy.close()
        await direct.close()
        await proxy.close()


@pytest.mark.redis
async def test_redis_entering_waits_until_redis_has_subscribed(
    gated: tuple[RedisCache, RedisCache, GatedProxy],
) -> None:
    via_proxy, direct, proxy = gated
    proxy.hold(b"SUBSCRIBE")
    sub = via_proxy.subscribe("c")
    entering = asyncio.create_task(sub.__aenter__())
    try:
        async with asyncio.timeout(5):
            await proxy.held.wait()
        # Redis has not seen the SUBSCRIBE, so a publish now reaches nobody: entering must not be finished.
        assert await direct.publish("c", b"early") == 0
        assert not entering.done()
    finally:
        proxy.release()
        await entering
    try:
        assert await direct.publish("c", b"on time") == 1
        assert await receive(sub, 1) == [("c", b"on time")]
    finally:
        await sub.__aexit__(None, None, None)


@pytest.mark.redis
async def test_redis_leaving_waits_until_redis_has_unsubscribed(
    gated: tuple[RedisCache, RedisCache, GatedProxy],
) -> None:
    via_proxy, direct, proxy = gated
    sub = via_proxy.subscribe("c")
    await sub.__aenter__()
    proxy.hold(b"UNSUBSCRIBE")
    leaving = asyncio.create_task(sub.__aexit__(None, None, None))
    try:
        async with asyncio.timeout(5):
            await proxy.held.wait()
        # Redis has not seen the UNSUBSCRIBE, so the subscription still receives: leaving must not be finished.
        assert await direct.publish("c", b"late") == 1
        assert not leaving.done()
    finally:
        proxy.release()
        await leaving
    assert await direct.publish("c", b"after") == 0


async def test_close_ends_open_subscriptions(cache: Cache) -> None:
    sub = cache.subscribe("c")
    await sub.__aenter__()
    await cache.close()
    async with asyncio.timeout(5):
        assert [item async for item in sub] == []
    await sub.__aexit__(None, None, None)


async def test_a_subscription_needs_entering(cache: Cache) -> None:
    sub = cache.subscribe("c")
    with pytest.raises(RuntimeError, match="async with"):
        await sub.get_message(timeout=0)
    with pytest.raises(ValueError, match="channel"):
        cache.subscribe()


async def test_memory_slow_subscriber_drops_oldest() -> None:
    cache = MemoryCache(subscriber_queue_size=3)
    async with cache.subscribe("c") as slow, cache.subscribe("c") as fast:
        for i in range(5):
            assert await cache.publish("c", f"m{i}".encode()) == 2
            if i < 3:
                assert await receive(fast, 1) == [("c", f"m{i}".encode())]
        assert slow.dropped == 2
        assert await receive(slow, 3) == [("c", b"m2"), ("c", b"m3"), ("c", b"m4")]
        assert await slow.get_message(timeout=0) is None
        assert fast.dropped == 0
        assert await receive(fast, 2) == [("c", b"m3"), ("c", b"m4")]


# --- backends and errors ------------------------------------------------------------------------------------


async def test_ping_answers(cache: Cache) -> None:
    assert await cache.ping() >= 0


async def test_create_cache_picks_the_backend() -> None:
    memory = create_cache("")
    assert isinstance(memory, MemoryCache)
    assert memory.name == "memory"
    # Building a RedisCache does not connect, so an unreachable URL is fine here.
    redis = create_cache(UNREACHABLE_URL, prefix="p:")
    assert isinstance(redis, RedisCache)
    assert redis.name == "redis"
    assert redis.prefix == "p:"
    await redis.close()


async def test_unreachable_redis_raises_service_unavailable_without_the_password() -> None:
    cache = RedisCache(UNREACHABLE_URL)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await cache.ping()
        message = str(caught.value)
        assert "redis" in message
        assert "unreachable" in message
        assert "secret" not in message
        assert "secret" not in caught.value.detail
        # incr has its own error handling (it also maps Redis's "not an integer"), so check it separately.
        with pytest.raises(ServiceUnavailable):
            await cache.incr("k", ttl=1)
        with pytest.raises(ServiceUnavailable, match="unreachable"):
            async with cache.subscribe("c"):
                pass
    finally:
        await cache.close()


def test_importing_the_module_does_not_load_redis() -> None:
    code = "import sys, cival.core.cache; sys.exit('redis' in sys.modules)"
    # A fresh interpreter: this test process has imported redis already.
    result = subprocess.run([sys.executable, "-c", code], check=False)  # noqa: S603
    assert result.returncode == 0
