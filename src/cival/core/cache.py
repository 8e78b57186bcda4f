"""Cache and pub/sub: one small async interface, backed by Redis or by process memory.

- `RedisCache`: shared by every worker; keys and channels carry a prefix so deployments (and tests) can share
  one Redis without seeing each other.
- `MemoryCache`: a single process (development, tests, one-worker deployments); expiry follows a monotonic
  clock that tests can replace.

Values are bytes; counters are stored as their decimal text, as Redis does. A subscription is an async context
manager: it is fully subscribed once `async with` has entered, and unsubscribed once it has left.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self
from urllib.parse import unquote, urlsplit

from cival.core.exceptions import ServiceUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["Cache", "MemoryCache", "RedisCache", "Subscription", "create_cache"]

DEFAULT_PREFIX = "cival:"
DEFAULT_QUEUE_SIZE = 10_000

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INTEGER = re.compile(rb"-?[0-9]+")

# Creating the key and setting its expiry in one script keeps the window fixed: only the call that creates the
# key starts the clock, and no other client can slip in between the increment and the expiry.
_INCR_SCRIPT = """
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""


_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
"""`Cache.renew` on Redis: compare and extend in one step."""

# The entry keys are made from the number the script takes, so they cannot be declared in KEYS: fine on one Redis
# server (Cival's deployment), not on Redis Cluster. Numbers are formatted as integers (Lua's default `..` would
# switch to exponent notation past 1e14).
_NUMBERED_SCRIPT = """
local keep = tonumber(ARGV[3])
local seqs = {}
for i = 4, #ARGV, 4 do
  local seq = redis.call('INCR', KEYS[1])
  local number = string.format('%d', seq)
  local message = ARGV[i + 1] .. number .. ARGV[i + 2]
  redis.call('SET', ARGV[1] .. number, ARGV[i] .. message, 'PX', ARGV[2])
  local old = seq - keep
  if old > 0 then
    redis.call('DEL', ARGV[1] .. string.format('%d', old))
  end
  redis.call('PUBLISH', ARGV[i + 3], message)
  seqs[#seqs + 1] = seq
end
return seqs
"""


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


class Subscription(abc.ABC):
    """Messages from channels: `async with cache.subscribe("a") as sub: async for channel, message in sub`."""

    def __init__(self, channels: tuple[str, ...], queue_size: int) -> None:
        if not channels:
            raise ValueError("subscribe() needs at least one channel")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(channels))
        # Messages dropped because this subscriber fell `queue_size` messages behind.
        self.dropped = 0
        # None is the end-of-stream marker.
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=queue_size)
        self._state = "new"
        self._ended = False
        self._error: Exception | None = None

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a Subscription can be entered only once")
        self._state = "opening"
        try:
            await self._open()
        except BaseException:
            self._state = "closed"
            self._end()
            raise
        self._state = "open"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe and end every iterator over this subscription; safe to call twice."""
        if self._state == "closed":
            return
        opened = self._state == "open"
        self._state = "closed"
        self._end()
        if opened:
            await self._close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        item = await self._next(None)
        if item is None:
            raise StopAsyncIteration
        return item

    # A polling read with its own deadline is part of the interface (tests, health checks), hence `timeout`.
    async def get_message(self, timeout: float) -> tuple[str, bytes] | None:  # noqa: ASYNC109
        """The next `(channel, message)`; None if none comes within `timeout` seconds or the stream ended."""
        return await self._next(timeout)

    async def _next(self, wait: float | None) -> tuple[str, bytes] | None:
        if self._state in ("new", "opening"):
            raise RuntimeError("enter the subscription with `async with` before reading from it")
        if self._state == "closed":
            return None
        if not self._queue.empty():
            item = self._queue.get_nowait()
        elif wait is None:
            item = await self._queue.get()
        else:
            try:
                async with asyncio.timeout(wait):
                    item = await self._queue.get()
            except TimeoutError:
                return None
        if item is None:
            # Put the marker back so every other reader, and every later read, sees the end too.
            self._queue.put_nowait(None)
            if self._error is not None:
                raise self._error
        return item

    def _deliver(self, channel: str, message: bytes) -> None:
        if self._ended:
            return
        if self._queue.full():
            # A slow subscriber loses its oldest messages rather than holding up the publisher or using
            # unbounded memory.
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait((channel, message))

    def _end(self, error: Exception | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(None)

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class NumberedLog:
    """A numbered log kept in the cache: a counter, and entry n at `entry_prefix + str(n)` (`publish_numbered`)."""

    counter: str
    entry_prefix: str
    keep: int
    """Entries kept: numbering entry n drops entry n - keep."""
    ttl: float
    """Seconds each entry is kept."""

    def entry(self, seq: int) -> str:
        return f"{self.entry_prefix}{seq}"


class Numbered(NamedTuple):
    """One message for `publish_numbered`: published as `before + seq + after` on `channel`, kept with `stored_prefix`
    in front."""

    before: bytes
    after: bytes
    channel: str
    stored_prefix: bytes = b""


class Cache(abc.ABC):
    """Key/value with expiry, atomic counters, and fan-out pub/sub."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The backend's name: "redis" or "memory"."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value at `key`, or None."""

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values at `keys`, in order (None for a missing one), in one step."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value` at `key`, expiring after `ttl` seconds (None: never); replaces any earlier expiry."""

    @abc.abstractmethod
    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store `value` at `key` only if the key is absent; True when this call stored it (a lease, a lock)."""

    @abc.abstractmethod
    async def renew(self, key: str, value: bytes, ttl: float) -> bool:
        """In one atomic step: if `key` still holds `value`, make it expire `ttl` seconds from now; True when it did
        (a lease's holder keeping it: a lease that expired and went to another holder is never taken back)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove `key` if present."""

    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add `amount` to the counter at `key`; a key created by this call expires after `ttl`."""

    @abc.abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds until `key` expires; None when the key is missing or never expires."""

    @abc.abstractmethod
    async def publish(self, channel: str, message: bytes) -> int:
        """Send `message` to the subscribers of `channel`; returns how many received it: 0 when nobody listens
        (in memory, the subscriptions; on Redis, the processes subscribed, each fanning out to its own)."""

    @abc.abstractmethod
    async def publish_numbered(self, log: NumberedLog, messages: Sequence[Numbered]) -> list[int]:
        """In one atomic step, for each message in order: take the next number `seq` of `log.counter`, make
        `message = before + seq + after`, keep `stored_prefix + message` at `log.entry(seq)` for `log.ttl` seconds,
        drop `log.entry(seq - log.keep)`, and publish `message` on `channel`. Returns the numbers taken."""

    @abc.abstractmethod
    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to `channels`, active inside `async with`."""

    @abc.abstractmethod
    async def ping(self) -> float:
        """Round-trip time in seconds; raises ServiceUnavailable when the backend is unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End all subscriptions and release connections."""


class _MemorySubscription(Subscription):
    def __init__(self, cache: MemoryCache, channels: tuple[str, ...], queue_size: int) -> None:
        super().__init__(channels, queue_size)
        self._cache = cache

    async def _open(self) -> None:
        for channel in self.channels:
            self._cache._subscribers.setdefault(channel, set()).add(self)
        self._cache._subscriptions.add(self)

    async def _close(self) -> None:
        for channel in self.channels:
            subscribers = self._cache._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(self)
                if not subscribers:
                    del self._cache._subscribers[channel]
        self._cache._subscriptions.discard(self)


class MemoryCache(Cache):
    """The cache inside this process. Every method runs without awaiting, so each one is atomic."""

    # How often (in clock seconds) writes sweep out expired keys nobody reads again, such as old rate windows.
    PURGE_INTERVAL = 60.0

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        subscriber_queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if subscriber_queue_size < 1:
            raise ValueError("subscriber_queue_size must be at least 1")
        self._clock = clock
        self._queue_size = subscriber_queue_size
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._subscribers: dict[str, set[_MemorySubscription]] = {}
        self._subscriptions: set[_MemorySubscription] = set()
        self._last_purge = clock()

    @property
    def name(self) -> str:
        """Always "memory"."""
        return "memory"

    def _live(self, key: str, now: float) -> tuple[bytes, float | None] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= now:
            del self._data[key]
            return None
        return entry

    def _maybe_purge(self, now: float) -> None:
        if now - self._last_purge < self.PURGE_INTERVAL:
            return
        self._last_purge = now
        expired = [k for k, (_, expires) in self._data.items() if expires is not None and expires <= now]
        for key in expired:
            del self._data[key]

    async def get(self, key: str) -> bytes | None:
        """The value at `key`, or None."""
        entry = self._live(key, self._clock())
        return None if entry is None else entry[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values at `keys`, in order (None for a missing one)."""
        now = self._clock()
        return [None if (entry := self._live(key, now)) is None else entry[0] for key in keys]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value` at `key`, expiring after `ttl` seconds (None: never); replaces any earlier expiry."""
        _check_ttl(ttl)
        now = self._clock()
        self._maybe_purge(now)
        self._data[key] = (bytes(value), None if ttl is None else now + ttl)

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store `value` at `key` only if the key is absent; True when this call stored it (a lease, a lock)."""
        _check_ttl(ttl)
        now = self._clock()
        if self._live(key, now) is not None:
            return False
        self._data[key] = (bytes(value), None if ttl is None else now + ttl)
        return True

    async def renew(self, key: str, value: bytes, ttl: float) -> bool:
        """If `key` still holds `value`, make it expire `ttl` seconds from now; True when it did (no await: atomic)."""
        _check_ttl(ttl)
        now = self._clock()
        entry = self._live(key, now)
        if entry is None or entry[0] != value:
            return False
        self._data[key] = (entry[0], now + ttl)
        return True

    async def delete(self, key: str) -> None:
        """Remove `key` if present."""
        self._data.pop(key, None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add `amount` to the counter at `key`; a key created by this call expires after `ttl`."""
        _check_ttl(ttl)
        now = self._clock()
        self._maybe_purge(now)
        return self._add(key, amount, ttl, now)

    def _add(self, key: str, amount: int, ttl: float | None, now: float) -> int:
        """`incr`'s step itself (no await: atomic)."""
        entry = self._live(key, now)
        if entry is None:
            value, expires = amount, (None if ttl is None else now + ttl)
        else:
            current, expires = entry
            if not _INTEGER.fullmatch(current):
                raise ValueError(f"the value at {key!r} is not an integer")
            value = int(current) + amount
        # Same range as Redis, so code that works here does not overflow there.
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"incrementing {key!r} would overflow a 64-bit integer")
        self._data[key] = (str(value).encode(), expires)
        return value

    async def ttl(self, key: str) -> float | None:
        """Seconds until `key` expires; None when the key is missing or never expires."""
        now = self._clock()
        entry = self._live(key, now)
        if entry is None or entry[1] is None:
            return None
        return entry[1] - now

    async def publish(self, channel: str, message: bytes) -> int:
        """Send `message` to the subscribers of `channel`; returns how many received it."""
        return self._fan_out(channel, bytes(message))

    def _fan_out(self, channel: str, message: bytes) -> int:
        subscribers = self._subscribers.get(channel, ())
        for subscription in subscribers:
            subscription._deliver(channel, message)
        return len(subscribers)

    async def publish_numbered(self, log: NumberedLog, messages: Sequence[Numbered]) -> list[int]:
        """Number, keep and publish messages in one step (no await in between: atomic here): as `incr` of the
        counter, `set` of the entry and `publish` would, message after message, with the counter added to once."""
        _check_ttl(log.ttl)
        if not messages:
            return []
        now = self._clock()
        self._maybe_purge(now)
        last = self._add(log.counter, len(messages), None, now)
        seqs = list(range(last - len(messages) + 1, last + 1))
        kept_until = now + log.ttl
        for seq, (before, after, channel, stored_prefix) in zip(seqs, messages, strict=True):
            message = before + str(seq).encode() + after
            self._data[log.entry(seq)] = (stored_prefix + message, kept_until)
            self._data.pop(log.entry(seq - log.keep), None)
            self._fan_out(channel, message)
        return seqs

    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to `channels`, active inside `async with`."""
        return _MemorySubscription(self, channels, self._queue_size)

    async def ping(self) -> float:
        """Round-trip time in seconds: none, in memory."""
        return 0.0

    async def close(self) -> None:
        """End all subscriptions and drop all keys."""
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        self._data.clear()


class _RedisSubscription(Subscription):
    """A subscription on the cache's one pub/sub connection (`_RedisHub`)."""

    def __init__(self, cache: RedisCache, channels: tuple[str, ...], queue_size: int) -> None:
        super().__init__(channels, queue_size)
        self._cache = cache
        self.by_wire_name = {(cache.prefix + channel).encode(): channel for channel in self.channels}

    async def _open(self) -> None:
        cache = self._cache
        if len(cache._subscriptions) >= cache.max_subscriptions:
            raise cache._unavailable(f"too many subscriptions in this process (at most {cache.max_subscriptions})")
        cache._subscriptions.add(self)
        try:
            await cache._hub.add(self)
        except BaseException:
            cache._subscriptions.discard(self)
            raise

    async def _close(self) -> None:
        self._cache._subscriptions.discard(self)
        await self._cache._hub.remove(self)


class _RedisHub:
    """The ONE pub/sub connection a RedisCache keeps for all of its subscriptions (D51).

    A channel is subscribed when it gets its first subscriber in this process and unsubscribed when it loses its
    last; one reader hands each message to every local subscriber of its channel. So a process holds one Redis
    connection for its live updates however many websockets it serves, and messages on all channels arrive in the
    order they were published. Entering a subscription returns once Redis has confirmed its new channels (a publish
    made after `async with` is then guaranteed to arrive), and leaving the last subscriber of a channel returns once
    Redis has confirmed the UNSUBSCRIBE. Changes take turns; a lost connection ends every subscription with
    `ServiceUnavailable`, and the next subscription opens a new connection.
    """

    def __init__(self, cache: RedisCache) -> None:
        self._cache = cache
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._local: dict[bytes, set[_RedisSubscription]] = {}
        self._confirmations: dict[tuple[str, bytes], asyncio.Future[None]] = {}
        self._turn = asyncio.Lock()

    async def add(self, subscription: _RedisSubscription) -> None:
        async with self._turn:
            new = [wire for wire in subscription.by_wire_name if wire not in self._local]
            # Registered first: a message that follows the confirmation closely is delivered, not dropped.
            for wire in subscription.by_wire_name:
                self._local.setdefault(wire, set()).add(subscription)
            try:
                if new:
                    await self._command("subscribe", new)
            except BaseException:
                self._forget(subscription)
                raise

    async def remove(self, subscription: _RedisSubscription) -> None:
        async with self._turn:
            gone = self._forget(subscription)
            if gone and self._pubsub is not None:
                # Best effort: a connection that is gone has unsubscribed everything already.
                with contextlib.suppress(ServiceUnavailable):
                    await self._command("unsubscribe", gone)

    async def close(self) -> None:
        pubsub, reader = self._pubsub, self._reader
        self._pubsub = self._reader = None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
        if pubsub is not None:
            with contextlib.suppress(*self._cache._connection_errors):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    def _forget(self, subscription: _RedisSubscription) -> list[bytes]:
        """Drop `subscription` from its channels; the channels it was the last local subscriber of."""
        gone = []
        for wire in subscription.by_wire_name:
            subscribers = self._local.get(wire)
            if subscribers is None:
                continue
            subscribers.discard(subscription)
            if not subscribers:
                del self._local[wire]
                gone.append(wire)
        return gone

    async def _command(self, kind: str, wires: list[bytes]) -> None:
        """SUBSCRIBE or UNSUBSCRIBE `wires`, and wait until Redis has confirmed each."""
        loop = asyncio.get_running_loop()
        waiting = {wire: loop.create_future() for wire in wires}
        for wire, future in waiting.items():
            self._confirmations[(kind, wire)] = future
        try:
            if self._pubsub is None:
                self._pubsub = self._cache._pubsub_client.pubsub()
            pubsub = self._pubsub
            try:
                with self._cache._translate_errors():
                    await (pubsub.subscribe(*wires) if kind == "subscribe" else pubsub.unsubscribe(*wires))
                if self._reader is None:
                    self._reader = asyncio.create_task(self._read(pubsub), name="cache-subscriptions")
                async with asyncio.timeout(self._cache.timeout):
                    await asyncio.gather(*waiting.values())
            except TimeoutError:
                error = self._cache._unavailable(f"no {kind} confirmation")
                self._fail(error, pubsub)  # a connection that stopped answering serves no subscription
                raise error from None
            except ServiceUnavailable as error:
                self._fail(error, pubsub)
                raise
        finally:
            for wire, future in waiting.items():
                if self._confirmations.get((kind, wire)) is future:
                    del self._confirmations[(kind, wire)]
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # failed with the connection: reported by raising above

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind, wire = message["type"], message["channel"]
                if kind == "message":
                    for subscription in tuple(self._local.get(wire, ())):
                        subscription._deliver(subscription.by_wire_name[wire], message["data"])
                elif kind in ("subscribe", "unsubscribe"):
                    future = self._confirmations.pop((kind, wire), None)
                    if future is not None and not future.done():
                        future.set_result(None)
        except Exception as exc:
            connection_lost = isinstance(exc, self._cache._connection_errors)
            self._fail(self._cache._unavailable(exc) if connection_lost else exc, pubsub)

    def _fail(self, error: Exception, pubsub: PubSub) -> None:
        """The connection is lost: every subscription ends with `error`; the next one starts a new connection."""
        if self._pubsub is not pubsub:
            return  # failed already
        reader, self._pubsub, self._reader = self._reader, None, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        for future in self._confirmations.values():
            if not future.done():
                future.set_exception(error)
        self._confirmations.clear()
        ended = {subscription for subscribers in self._local.values() for subscription in subscribers}
        self._local.clear()
        for subscription in ended:
            subscription._end(error)
        closing = asyncio.ensure_future(pubsub.aclose())  # type: ignore[no-untyped-call]
        closing.add_done_callback(lambda done: done.cancelled() or done.exception())


class RedisCache(Cache):
    """The cache in Redis, shared by every worker. Keys and channels are stored under `prefix`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        subscriber_queue_size: int = DEFAULT_QUEUE_SIZE,
        timeout: float = 5.0,
        max_connections: int = 50,
        max_subscriptions: int = 1000,
    ) -> None:
        # Imported here so that importing this module (and running on MemoryCache) does not load redis.
        from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if subscriber_queue_size < 1:
            raise ValueError("subscriber_queue_size must be at least 1")
        self.prefix = prefix
        self.timeout = timeout
        self._queue_size = subscriber_queue_size
        self._location, self._password = _describe_url(url)
        self._connection_errors: tuple[type[Exception], ...] = (
            RedisConnectionError,
            RedisTimeoutError,
            OSError,
        )
        self._response_error = ResponseError

        def options() -> dict[str, Any]:
            return {
                "socket_connect_timeout": timeout,
                "socket_timeout": timeout,
                # A few quick retries ride out a failover; an unreachable server is reported within a second.
                "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3),
            }

        # A burst of commands waits for a free connection instead of failing with "Too many connections".
        commands = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout, **options())
        self._client: Redis = Redis(connection_pool=commands)
        # Every subscription shares ONE connection (`_RedisHub`, D51), from a pool of its own so that it never
        # waits behind ordinary commands (two: a lost one may still be closing while the next opens).
        # Named, so `CLIENT LIST` tells each deployment's (and each process's) subscription connection apart.
        subscriptions = ConnectionPool.from_url(
            url, max_connections=2, client_name=f"{prefix}subscriptions", **options()
        )
        self._pubsub_client: Redis = Redis(connection_pool=subscriptions)
        self.max_subscriptions = max_subscriptions
        self._hub = _RedisHub(self)
        self._incr_script: AsyncScript = self._client.register_script(_INCR_SCRIPT)
        self._numbered_script: AsyncScript = self._client.register_script(_NUMBERED_SCRIPT)
        self._renew_script: AsyncScript = self._client.register_script(_RENEW_SCRIPT)
        self._subscriptions: set[_RedisSubscription] = set()

    @property
    def name(self) -> str:
        """Always "redis"."""
        return "redis"

    def _unavailable(self, cause: Exception | str) -> ServiceUnavailable:
        reason = cause if isinstance(cause, str) else (str(cause) or type(cause).__name__)
        if self._password:
            reason = reason.replace(self._password, "***")
        return ServiceUnavailable(f"Cache 'redis' at {self._location} is unreachable: {reason}")

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except self._connection_errors as exc:
            raise self._unavailable(exc) from exc

    async def get(self, key: str) -> bytes | None:
        """The value at `key`, or None."""
        with self._translate_errors():
            value = await self._client.get(self.prefix + key)
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values at `keys`, in order (None for a missing one): one MGET."""
        if not keys:
            return []
        with self._translate_errors():
            values = await self._client.mget([self.prefix + key for key in keys])
        return [v if v is None or isinstance(v, bytes) else str(v).encode() for v in values]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value` at `key`, expiring after `ttl` seconds (None: never); replaces any earlier expiry."""
        _check_ttl(ttl)
        px = None if ttl is None else max(1, math.ceil(ttl * 1000))
        with self._translate_errors():
            await self._client.set(self.prefix + key, value, px=px)

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store `value` at `key` only if the key is absent; True when this call stored it (a lease, a lock)."""
        _check_ttl(ttl)
        px = None if ttl is None else max(1, math.ceil(ttl * 1000))
        with self._translate_errors():
            return bool(await self._client.set(self.prefix + key, value, px=px, nx=True))

    async def renew(self, key: str, value: bytes, ttl: float) -> bool:
        """If `key` still holds `value`, make it expire `ttl` seconds from now; True when it did: one script."""
        _check_ttl(ttl)
        with self._translate_errors():
            return bool(await self._renew_script(keys=[self.prefix + key], args=[value, max(1, math.ceil(ttl * 1000))]))

    async def delete(self, key: str) -> None:
        """Remove `key` if present."""
        with self._translate_errors():
            await self._client.delete(self.prefix + key)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add `amount` to the counter at `key`; a key created by this call expires after `ttl`."""
        _check_ttl(ttl)
        try:
            if ttl is None:
                return int(await self._client.incrby(self.prefix + key, amount))
            px = max(1, math.ceil(ttl * 1000))
            return int(await self._incr_script(keys=[self.prefix + key], args=[amount, px]))
        except self._connection_errors as exc:
            raise self._unavailable(exc) from exc
        except self._response_error as exc:
            raise ValueError(f"the value at {key!r} is not an integer or would overflow") from exc

    async def ttl(self, key: str) -> float | None:
        """Seconds until `key` expires; None when the key is missing or never expires."""
        with self._translate_errors():
            ms = int(await self._client.pttl(self.prefix + key))
        # PTTL answers -2 for a missing key and -1 for a key without expiry.
        return None if ms < 0 else ms / 1000

    async def publish(self, channel: str, message: bytes) -> int:
        """Send `message` to the subscribers of `channel`; returns how many processes received it (PUBLISH's count:
        one connection per process, D51), 0 when nobody listens."""
        with self._translate_errors():
            return int(await self._client.publish(self.prefix + channel, message))

    async def publish_numbered(self, log: NumberedLog, messages: Sequence[Numbered]) -> list[int]:
        """Number, keep and publish messages in one round trip (a Lua script: atomic in Redis)."""
        _check_ttl(log.ttl)
        if not messages:
            return []
        px = max(1, math.ceil(log.ttl * 1000))
        args: list[bytes | str | int] = [self.prefix + log.entry_prefix, px, log.keep]
        for before, after, channel, stored_prefix in messages:
            args += [stored_prefix, before, after, self.prefix + channel]
        with self._translate_errors():
            return [int(seq) for seq in await self._numbered_script(keys=[self.prefix + log.counter], args=args)]

    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to `channels`, active inside `async with`."""
        return _RedisSubscription(self, channels, self._queue_size)

    async def ping(self) -> float:
        """Round-trip time in seconds; raises ServiceUnavailable when Redis is unreachable."""
        start = time.perf_counter()
        with self._translate_errors():
            await self._client.ping()
        return time.perf_counter() - start

    async def close(self) -> None:
        """End all subscriptions and close the connection pools."""
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        await self._hub.close()
        await self._client.aclose(close_connection_pool=True)
        await self._pubsub_client.aclose(close_connection_pool=True)


def _describe_url(url: str) -> tuple[str, str | None]:
    """The URL without credentials (for messages), and the password to scrub from error texts."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        password = unquote(parts.password) if parts.password else None
    except ValueError:
        return "redis (unparsable URL)", None
    return f"{parts.scheme}://{host}{port}{parts.path}", password


def create_cache(redis_url: str, *, prefix: str = DEFAULT_PREFIX) -> Cache:
    """A RedisCache when `redis_url` is set, else a MemoryCache."""
    if redis_url:
        return RedisCache(redis_url, prefix=prefix)
    return MemoryCache()
