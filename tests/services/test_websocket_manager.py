"""The WebSocket manager at unit level: MemoryCache (or two RedisCaches as two workers) and fake sockets.

Every wait has a deadline and none is a fixed sleep: a test waits for the frame or event it expects.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from cival.core.cache import Cache, MemoryCache, RedisCache, Subscription
from cival.core.exceptions import ServiceUnavailable, ValidationFailed
from cival.services.auth_service import InvalidToken, Principal
from cival.services.websocket_manager import (
    UnknownChannel,
    WebSocketManager,
    frame,
    make_resolver,
    publish_public,
    publish_user,
)

DEADLINE = 5.0
BTC = "ticker:paper:BTC/USDT"
ETH = "ticker:paper:ETH/USDT"

ALICE_TOKEN = "token-alice"
ALICE = Principal(user_id=uuid.uuid4(), email="alice@example.com", role="trader", session_id=uuid.uuid4())
BOB = Principal(user_id=uuid.uuid4(), email="bob@example.com", role="trader", session_id=uuid.uuid4())


def validate_public(channel: str) -> None:
    """A stand-in for the market-data service's validator: exchange paper, two symbols, two timeframes."""
    kind, _, rest = channel.partition(":")
    parts = rest.split(":")
    if len(parts) != (3 if kind == "candles" else 2):
        raise UnknownChannel(f"malformed channel {channel!r}")
    exchange, symbol, *timeframe = parts
    if exchange != "paper":
        raise UnknownChannel(f"unknown exchange {exchange!r} in {channel!r}")
    if symbol not in ("BTC/USDT", "ETH/USDT"):
        raise UnknownChannel(f"unknown symbol {symbol!r} in {channel!r}")
    if timeframe and timeframe[0] not in ("1m", "5m"):
        raise UnknownChannel(f"unknown timeframe {timeframe[0]!r} in {channel!r}")


class Tokens:
    """A fake `authenticate`: token -> principal; a revoked token fails like a revoked session."""

    def __init__(self) -> None:
        self.valid = {"token-alice": ALICE, "token-bob": BOB}
        self.unavailable = False

    async def __call__(self, token: str) -> Principal:
        if self.unavailable:
            raise ServiceUnavailable("the session store is down")
        principal = self.valid.get(token)
        if principal is None:
            raise InvalidToken("the session does not exist or was revoked; log in again")
        return principal


class FakeSocket:
    """A server-side WebSocket whose client is the test: `send()` as the client, `recv()` what the server sent."""

    def __init__(self) -> None:
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._frames: asyncio.Queue[str] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # --- the server's side (ClientSocket) ---

    async def accept(self) -> None:
        return None

    async def receive(self) -> dict[str, Any]:
        return await self._incoming.get()

    async def send_text(self, data: str) -> None:
        # A stalled client: the send waits, as a real one does once the socket's buffers are full.
        await self._writable.wait()
        self._frames.put_nowait(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.close_code, self.close_reason = code, reason
        self._closed.set()
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": code})

    # --- the client's side ---

    def send(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self._incoming.put_nowait({"type": "websocket.receive", "text": text})

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            frame_: dict[str, Any] = json.loads(await self._frames.get())
        return frame_

    def pending(self) -> int:
        return self._frames.qsize()

    def stall(self) -> None:
        self._writable.clear()

    def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def closed(self) -> tuple[int | None, str | None]:
        async with asyncio.timeout(DEADLINE):
            await self._closed.wait()
        return self.close_code, self.close_reason


class GatedCache(MemoryCache):
    """A MemoryCache whose subscriptions wait at a gate before subscribing (and can fail there, as Redis can)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.is_down = False
        self.opened: list[str] = []
        self.waiting: set[str] = set()
        self._waiting_changed = asyncio.Event()

    def subscribe(self, *channels: str) -> Subscription:
        return _GatedSubscription(self, channels)

    async def wait_for(self, *channels: str) -> None:
        """Until subscriptions to every one of `channels` are waiting at the gate."""
        async with asyncio.timeout(DEADLINE):
            while not self.waiting.issuperset(channels):
                self._waiting_changed.clear()
                await self._waiting_changed.wait()

    def arrived(self, channels: tuple[str, ...]) -> None:
        self.waiting.update(channels)
        self._waiting_changed.set()


class _GatedSubscription(Subscription):
    def __init__(self, cache: GatedCache, channels: tuple[str, ...]) -> None:
        super().__init__(channels, 1000)
        self._cache = cache
        self._inner = MemoryCache.subscribe(cache, *channels)
        self._pump: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        self._cache.arrived(self.channels)
        await self._cache.gate.wait()
        if self._cache.is_down:
            raise ServiceUnavailable("Cache 'redis' is unreachable: connection refused")
        self._cache.opened.extend(self.channels)
        await self._inner.__aenter__()
        self._pump = asyncio.create_task(self._forward())

    async def _forward(self) -> None:
        async for channel, message in self._inner:
            self._deliver(channel, message)

    async def _close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        await self._inner.aclose()


@dataclass
class Client:
    socket: FakeSocket
    task: asyncio.Task[None]

    async def request(self, message: dict[str, Any] | str) -> dict[str, Any]:
        self.socket.send(message)
        return await self.socket.recv()

    async def subscribe(self, *channels: str) -> dict[str, Any]:
        return await self.request({"op": "subscribe", "channels": list(channels)})

    async def unsubscribe(self, *channels: str) -> dict[str, Any]:
        return await self.request({"op": "unsubscribe", "channels": list(channels)})

    async def updates(self, count: int) -> list[dict[str, Any]]:
        return [await self.socket.recv() for _ in range(count)]

    async def leave(self) -> None:
        """Disconnect and wait until the server has cleaned up after this client."""
        self.socket.disconnect()
        async with asyncio.timeout(DEADLINE):
            await self.task


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def cache() -> AsyncIterator[MemoryCache]:
    backend = MemoryCache()
    yield backend
    await backend.close()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
async def make_manager(cache: Cache, tokens: Tokens) -> AsyncIterator[Callable[..., WebSocketManager]]:
    """Builds managers on the test's cache; closes them (and so every connection) afterwards."""
    managers: list[WebSocketManager] = []

    def build(**options: Any) -> WebSocketManager:
        manager = WebSocketManager(cache, tokens, make_resolver(validate_public), **options)
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        await manager.close()


@pytest.fixture
def manager(make_manager: Callable[..., WebSocketManager]) -> WebSocketManager:
    return make_manager()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens a fake connection to a manager; every connection has ended by the end of the test."""
    tasks: list[asyncio.Task[None]] = []

    async def open_(manager: WebSocketManager, token: str | None = ALICE_TOKEN) -> Client:
        socket = FakeSocket()
        task = asyncio.create_task(manager.serve(socket, token))
        tasks.append(task)
        return Client(socket, task)

    yield open_
    for task in tasks:
        if not task.done():
            task.cancel()
    if tasks:
        await asyncio.wait(tasks)


# --- publishing helpers and resolution ---------------------------------------------------------------------------


def test_frame_is_the_final_client_frame() -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = json.loads(frame(BTC, {"price": Decimal("64000.10"), "at": ts, "id": ALICE.user_id}, seq=7))
    assert body == {
        "type": "update",
        "channel": BTC,
        "data": {"price": "64000.10", "at": "2026-01-02T03:04:05Z", "id": str(ALICE.user_id)},
        "seq": 7,
    }
    assert "seq" not in json.loads(frame(BTC, {}))
    # JSON has no NaN or infinity: such a float (never money, which is Decimal) is written as null.
    assert json.loads(frame(BTC, {"ratio": float("nan"), "max": float("inf")}))["data"] == {"ratio": None, "max": None}


async def test_publish_helpers_refuse_the_wrong_kind_of_channel(cache: MemoryCache) -> None:
    with pytest.raises(ValueError, match="not a public channel"):
        await publish_public(cache, "orders", {})
    with pytest.raises(ValueError, match="not a user channel"):
        await publish_user(cache, ALICE.user_id, BTC, {})


class UnknownSymbol(ValidationFailed):
    code = "unknown_symbol"


def test_resolver_turns_any_validation_failure_into_unknown_channel() -> None:
    def strict(channel: str) -> None:
        raise UnknownSymbol(f"unknown symbol in {channel!r}")

    with pytest.raises(UnknownChannel, match="unknown symbol in 'ticker:paper:BTC/USDT'"):
        make_resolver(strict)(BTC, ALICE)


async def test_a_resolver_raising_other_validation_errors_still_answers_unknown_channel(
    tokens: Tokens, cache: MemoryCache, connect: Connect
) -> None:
    def resolve(channel: str, principal: Principal) -> str:
        raise UnknownSymbol(f"unknown symbol in {channel!r}")

    manager = WebSocketManager(cache, tokens, resolve)
    try:
        client = await connect(manager)
        reply = await client.subscribe(BTC)
        assert (reply["error"], reply["channels"]) == ("unknown_channel", [BTC])
        assert await client.request({"op": "ping"}) == {"type": "pong"}
    finally:
        await manager.close()


def test_resolver_maps_user_channels_to_the_callers_own_stream() -> None:
    resolve = make_resolver(validate_public)
    assert resolve("orders", ALICE) == f"user:{ALICE.user_id}:orders"
    assert resolve("orders", BOB) == f"user:{BOB.user_id}:orders"
    assert resolve(BTC, ALICE) == f"md:{BTC}"
    assert resolve("candles:paper:ETH/USDT:5m", ALICE) == "md:candles:paper:ETH/USDT:5m"
    for name in (f"user:{BOB.user_id}:orders", "md:" + BTC, "ticker:binance:BTC/USDT", "candles:paper:BTC/USDT:2h"):
        with pytest.raises(UnknownChannel) as caught:
            resolve(name, ALICE)
        assert caught.value.code == "unknown_channel"


# --- subscriptions -----------------------------------------------------------------------------------------------


async def test_clients_on_one_channel_share_one_cache_subscription(
    manager: WebSocketManager, connect: Connect, cache: MemoryCache
) -> None:
    first, second = await connect(manager), await connect(manager, "token-bob")
    assert await first.subscribe(BTC) == {"type": "subscribed", "channels": [BTC]}
    assert await second.subscribe(BTC) == {"type": "subscribed", "channels": [BTC]}
    assert manager.active_channels == {f"md:{BTC}"}
    # PUBLISH counts subscriptions: one, however many clients this worker serves.
    assert await publish_public(cache, BTC, {"price": "1"}) == 1
    assert (await first.socket.recv())["data"] == {"price": "1"}
    assert (await second.socket.recv())["data"] == {"price": "1"}

    assert await first.unsubscribe(BTC) == {"type": "unsubscribed", "channels": [BTC]}
    assert await publish_public(cache, BTC, {"price": "2"}) == 1
    assert (await second.socket.recv())["data"] == {"price": "2"}

    await second.leave()
    assert manager.active_channels == frozenset()
    assert await publish_public(cache, BTC, {"price": "3"}) == 0
    # The last one out stopped the subscription; the first one in starts it again.
    assert await first.subscribe(BTC) == {"type": "subscribed", "channels": [BTC]}
    assert await publish_public(cache, BTC, {"price": "4"}) == 1
    assert (await first.socket.recv())["data"] == {"price": "4"}


async def test_clients_subscribing_at_once_start_one_cache_subscription(tokens: Tokens, connect: Connect) -> None:
    cache = GatedCache()
    manager = WebSocketManager(cache, tokens, make_resolver(validate_public))
    try:
        first, second = await connect(manager), await connect(manager, "token-bob")
        first.socket.send({"op": "subscribe", "channels": [BTC]})
        second.socket.send({"op": "subscribe", "channels": [BTC, ETH]})
        # Both have claimed BTC while its subscription is still starting (the second claims BTC and ETH together).
        await cache.wait_for(f"md:{BTC}", f"md:{ETH}")
        cache.gate.set()
        assert await first.socket.recv() == {"type": "subscribed", "channels": [BTC]}
        assert await second.socket.recv() == {"type": "subscribed", "channels": [BTC, ETH]}
        assert sorted(cache.opened) == [f"md:{BTC}", f"md:{ETH}"]
        assert await publish_public(cache, BTC, {}) == 1
    finally:
        await manager.close()
        await cache.close()


async def test_cache_failure_subscribes_nothing_and_keeps_the_connection(tokens: Tokens, connect: Connect) -> None:
    cache = GatedCache()
    cache.gate.set()
    cache.is_down = True
    manager = WebSocketManager(cache, tokens, make_resolver(validate_public))
    try:
        client = await connect(manager)
        reply = await client.subscribe(BTC, ETH)
        assert (reply["type"], reply["error"]) == ("error", "service_unavailable")
        assert manager.active_channels == frozenset()
        assert await client.request({"op": "ping"}) == {"type": "pong"}
        cache.is_down = False
        assert await client.subscribe(BTC, ETH) == {"type": "subscribed", "channels": [BTC, ETH]}
        assert await publish_public(cache, ETH, {"ok": True}) == 1
        assert (await client.socket.recv())["data"] == {"ok": True}
    finally:
        await manager.close()
        await cache.close()


async def test_last_unsubscribe_stops_the_cache_subscription(
    manager: WebSocketManager, connect: Connect, cache: MemoryCache
) -> None:
    client = await connect(manager)
    await client.subscribe(BTC, ETH)
    assert manager.active_channels == {f"md:{BTC}", f"md:{ETH}"}
    await client.unsubscribe(BTC)
    assert manager.active_channels == {f"md:{ETH}"}
    assert await publish_public(cache, BTC, {}) == 0


async def test_fan_out_keeps_publish_order(manager: WebSocketManager, connect: Connect, cache: MemoryCache) -> None:
    clients = [await connect(manager) for _ in range(3)]
    for client in clients:
        await client.subscribe(BTC)
    for seq in range(500):
        await publish_public(cache, BTC, {"n": seq}, seq=seq)
    for client in clients:
        assert [update["seq"] for update in await client.updates(500)] == list(range(500))


async def test_slow_client_is_disconnected_and_never_slows_the_others(
    make_manager: Callable[..., WebSocketManager], connect: Connect, cache: MemoryCache
) -> None:
    manager = make_manager(send_queue_size=8)
    fast, slow = await connect(manager), await connect(manager)
    await fast.subscribe(BTC)
    await slow.subscribe(BTC)
    slow.socket.stall()
    for seq in range(100):
        await publish_public(cache, BTC, {}, seq=seq)
    assert [update["seq"] for update in await fast.updates(100)] == list(range(100))
    assert await slow.socket.closed() == (4008, "slow consumer")
    async with asyncio.timeout(DEADLINE):
        await slow.task
    assert manager.slow_consumer_disconnects == 1
    # Stalled from the start, it received nothing more; its queue was dropped with it.
    assert slow.socket.pending() == 0
    assert manager.connections == 1
    assert await fast.request({"op": "ping"}) == {"type": "pong"}


async def test_subscribe_is_all_or_nothing(manager: WebSocketManager, connect: Connect, cache: MemoryCache) -> None:
    client = await connect(manager)
    reply = await client.subscribe(BTC, "ticker:paper:DOGE/USDT", "weather")
    assert reply["type"] == "error"
    assert reply["error"] == "unknown_channel"
    assert reply["channels"] == ["ticker:paper:DOGE/USDT", "weather"]
    assert "DOGE/USDT" in reply["detail"]
    assert "and 1 more" in reply["detail"]
    assert manager.active_channels == frozenset()
    assert await publish_public(cache, BTC, {}) == 0

    # Still open; BTC was not subscribed: the next update it sees is ETH's.
    assert await client.subscribe(ETH) == {"type": "subscribed", "channels": [ETH]}
    await publish_public(cache, BTC, {"which": "btc"})
    await publish_public(cache, ETH, {"which": "eth"})
    update = await client.socket.recv()
    assert (update["channel"], update["data"]) == (ETH, {"which": "eth"})


async def test_user_channels_resolve_with_the_callers_id(
    manager: WebSocketManager, connect: Connect, cache: MemoryCache
) -> None:
    alice, bob = await connect(manager, "token-alice"), await connect(manager, "token-bob")
    await alice.subscribe("orders")
    assert manager.active_channels == {f"user:{ALICE.user_id}:orders"}
    assert await publish_user(cache, BOB.user_id, "orders", {"id": "bob-1"}) == 0
    await bob.subscribe("orders")
    assert await publish_user(cache, BOB.user_id, "orders", {"id": "bob-2"}) == 1
    assert await publish_user(cache, ALICE.user_id, "orders", {"id": "alice-1"}) == 1
    assert await alice.socket.recv() == {"type": "update", "channel": "orders", "data": {"id": "alice-1"}}
    assert (await bob.socket.recv())["data"] == {"id": "bob-2"}
    # Naming another user's stream outright is just an unknown channel.
    reply = await alice.subscribe(f"user:{BOB.user_id}:orders")
    assert (reply["type"], reply["error"]) == ("error", "unknown_channel")


async def test_channel_cap_per_connection(
    make_manager: Callable[..., WebSocketManager], connect: Connect, cache: MemoryCache
) -> None:
    manager = make_manager(max_channels=2)
    client = await connect(manager)
    assert (await client.subscribe(BTC, ETH, "orders"))["error"] == "too_many_channels"
    assert await client.subscribe(BTC, ETH) == {"type": "subscribed", "channels": [BTC, ETH]}
    assert await client.subscribe(BTC) == {"type": "subscribed", "channels": [BTC]}  # already had it
    assert (await client.subscribe("orders"))["error"] == "too_many_channels"
    assert manager.active_channels == {f"md:{BTC}", f"md:{ETH}"}


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ({"op": "shout"}, "invalid_message"),
        ({"op": "subscribe"}, "invalid_message"),
        ({"op": "subscribe", "channels": []}, "invalid_message"),
        ({"op": "subscribe", "channels": BTC}, "invalid_message"),
        ({"op": "subscribe", "channels": [BTC, 3]}, "invalid_message"),
        ({"op": "subscribe", "channels": ["x" * 201]}, "invalid_message"),
        ({"op": "subscribe", "channels": [f"c{i}" for i in range(101)]}, "too_many_channels"),
        ("x" * 70_000, "invalid_message"),
    ],
)
async def test_bad_messages_get_an_error_and_the_connection_stays_open(
    manager: WebSocketManager, connect: Connect, message: dict[str, Any] | str, error: str
) -> None:
    client = await connect(manager)
    reply = await client.request(message)
    assert (reply["type"], reply["error"]) == ("error", error)
    assert reply["detail"]
    assert await client.request({"op": "ping"}) == {"type": "pong"}


# --- authentication, heartbeats, shutdown ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "error"), [(None, "not_authenticated"), ("", "not_authenticated"), ("nope", "invalid_token")]
)
async def test_unauthenticated_gets_an_error_frame_then_4401(
    manager: WebSocketManager, connect: Connect, token: str | None, error: str
) -> None:
    client = await connect(manager, token)
    reply = await client.socket.recv()
    assert (reply["type"], reply["error"]) == ("error", error)
    assert await client.socket.closed() == (4401, error)
    assert manager.connections_total == 0


async def test_auth_backend_down_closes_with_try_again_later(
    manager: WebSocketManager, connect: Connect, tokens: Tokens
) -> None:
    tokens.unavailable = True
    client = await connect(manager)
    assert (await client.socket.recv())["error"] == "service_unavailable"
    assert await client.socket.closed() == (1013, "service_unavailable")


async def test_heartbeat_after_silence(make_manager: Callable[..., WebSocketManager], connect: Connect) -> None:
    client = await connect(make_manager(heartbeat_seconds=0.02))
    beat = await client.socket.recv()
    assert beat["type"] == "heartbeat"
    assert datetime.fromisoformat(beat["ts"]).tzinfo is not None


async def test_revoked_session_is_disconnected(
    make_manager: Callable[..., WebSocketManager], connect: Connect, tokens: Tokens
) -> None:
    manager = make_manager(heartbeat_seconds=0.02, reauthenticate_seconds=0.05)
    client = await connect(manager)
    assert await client.subscribe("orders") == {"type": "subscribed", "channels": ["orders"], "seq": 0}
    del tokens.valid["token-alice"]
    while (reply := await client.socket.recv())["type"] == "heartbeat":
        pass
    assert (reply["type"], reply["error"]) == ("error", "invalid_token")
    assert await client.socket.closed() == (4401, "invalid_token")
    async with asyncio.timeout(DEADLINE):
        await client.task
    assert manager.active_channels == frozenset()


async def test_session_store_outage_does_not_disconnect(
    make_manager: Callable[..., WebSocketManager], connect: Connect, tokens: Tokens
) -> None:
    manager = make_manager(heartbeat_seconds=0.01, reauthenticate_seconds=0.01)
    client = await connect(manager)
    await client.subscribe(BTC)
    tokens.unavailable = True
    for _ in range(5):  # several re-checks fail for want of the store, none for the client
        assert (await client.socket.recv())["type"] == "heartbeat"
    client.socket.send({"op": "ping"})
    while (reply := await client.socket.recv())["type"] == "heartbeat":
        pass
    assert reply == {"type": "pong"}
    assert manager.connections == 1


async def test_close_ends_connections_and_subscriptions(
    manager: WebSocketManager, connect: Connect, cache: MemoryCache
) -> None:
    clients = [await connect(manager) for _ in range(3)]
    for client in clients:
        await client.subscribe(BTC, "orders")
    assert manager.connections == 3
    await manager.close()
    for client in clients:
        assert await client.socket.closed() == (1001, "server shutting down")
        assert client.task.done()
    assert manager.connections == 0
    assert manager.active_channels == frozenset()
    assert await publish_public(cache, BTC, {}) == 0
    late = await connect(manager)
    assert (await late.socket.recv())["error"] == "shutting_down"
    assert await late.socket.closed() == (1001, "shutting_down")


async def test_lost_feed_disconnects_its_subscribers(
    manager: WebSocketManager, connect: Connect, cache: MemoryCache
) -> None:
    client = await connect(manager)
    await client.subscribe(BTC)
    await cache.close()  # ends every subscription, as a lost Redis connection does
    assert await client.socket.closed() == (1011, "channel feed lost")
    async with asyncio.timeout(DEADLINE):
        await client.task
    assert manager.connections == 0


async def test_metrics_count_connections_and_messages(
    manager: WebSocketManager, connect: Connect, cache: MemoryCache
) -> None:
    client = await connect(manager)
    await client.subscribe(BTC)  # 1 frame
    await publish_public(cache, BTC, {})
    await client.socket.recv()  # 2 frames
    await client.leave()
    assert (manager.connections_total, manager.connections) == (1, 0)
    assert manager.messages_sent == 2
    assert manager.slow_consumer_disconnects == 0


# --- two workers on one Redis ------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_cross_worker_delivery_exactly_once(redis_url: str, tokens: Tokens, connect: Connect) -> None:
    prefix = f"cival-test:{uuid.uuid4().hex}:"
    caches = [RedisCache(redis_url, prefix=prefix) for _ in range(2)]
    workers = [WebSocketManager(c, tokens, make_resolver(validate_public)) for c in caches]
    try:
        on_one = await connect(workers[0])
        on_two = [await connect(workers[1]), await connect(workers[1], "token-bob")]
        for client in (on_one, *on_two):
            await client.subscribe(BTC)
        # One subscription per worker, not per client: PUBLISH reaches exactly two.
        for seq in range(50):
            assert await publish_public(caches[0], BTC, {"n": seq}, seq=seq) == 2
        for client in (on_one, *on_two):
            assert [update["seq"] for update in await client.updates(50)] == list(range(50))
        # Nothing doubled: Redis keeps order per subscription, so a duplicate would arrive before this marker.
        await publish_public(caches[1], BTC, {"marker": True}, seq=50)
        for client in (on_one, *on_two):
            assert (await client.socket.recv())["seq"] == 50
        # User channels cross workers the same way, still only to their owner.
        await on_two[1].subscribe("orders")
        assert await publish_user(caches[0], ALICE.user_id, "orders", {}) == 0
        assert await publish_user(caches[0], BOB.user_id, "orders", {"id": 1}) == 1
        assert (await on_two[1].socket.recv())["data"] == {"id": 1}
    finally:
        for worker in workers:
            await worker.close()
        for c in caches:
            await c.close()
