"""Live channels over WebSockets: per-worker fan-out of cache pub/sub messages to subscribed clients.

- Publishers (market data, orders, risk ...) publish the final client frame (`cival.services.channels.frame`) to a
  cache channel; the manager forwards it as it is, so a message is encoded once however many clients receive it.
  User events are numbered and kept for resume by `cival.services.user_stream`.
- Each worker holds ONE cache subscription per cache channel that any of its clients wants, shared by reference
  count: the first subscriber starts a reader task for it, the last one to leave stops it.
- The reader copies each message into every subscriber's bounded send queue without awaiting; a client whose queue
  is full is disconnected (4008 "slow consumer") rather than allowed to slow the others or grow memory. Between
  messages of a burst the reader lets the senders run, so only a client whose socket cannot keep up falls behind.
- One sender task per connection drains its queue to the socket. Messages of one channel reach a client in
  publish order; across channels there is no order.
- Subscribing to user channels reads the user's newest `seq` for the reply; with `since`, the missed events are
  replayed first. Meanwhile the new channels' live messages are held and then merged in, so nothing is sent twice
  and nothing is lost between replay and live delivery.
- One ticker per manager, every `heartbeat_seconds / 2`, queues a heartbeat for each connection that has been
  sent nothing since the last tick (so no client waits longer than `heartbeat_seconds` for a frame), and
  re-checks sessions every `reauthenticate_seconds`, so a revoked session stops receiving private updates.

The client protocol (JSON text frames) is documented on the endpoint, `cival.api.ws`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cival.core.cache import Cache
from cival.core.exceptions import CivalError, NotAuthenticated, ValidationFailed
from cival.core.logging import get_logger
from cival.services.auth_service import Principal
from cival.services.channels import (
    PUBLIC_PREFIXES,
    USER_CHANNELS,
    ProtocolError,
    Resolve,
    UnknownChannel,
    frame,
    make_resolver,
    parse_message,
    public_cache_channel,
    publish_public,
    publish_user,
    user_cache_channel,
)
from cival.services.channels import dumps as _dumps
from cival.services.user_stream import Catchup, UserStream, frame_seq

__all__ = [
    "PUBLIC_PREFIXES",
    "USER_CHANNELS",
    "ClientSocket",
    "UnknownChannel",
    "WebSocketManager",
    "frame",
    "make_resolver",
    "public_cache_channel",
    "publish_public",
    "publish_user",
    "user_cache_channel",
]

log = get_logger(__name__)

# WebSocket close codes (4000-4999 are the application's own).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHENTICATED = 4401

FAN_OUT_BURST = 64
"""Messages a reader fans out before it lets the senders run, when no subscriber's queue is crowded."""
CLOSE_TIMEOUT = 1.0
"""Seconds to wait for a close frame to go out; a stalled client must not hold its connection's clean-up."""


Authenticate = Callable[[str], Awaitable[Principal]]


class ClientSocket(Protocol):
    """What the manager needs of a WebSocket; Starlette's `WebSocket` is one, tests use fakes."""

    async def accept(self) -> None: ...

    async def receive(self) -> Mapping[str, Any]: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


# --- connections -------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Feed:
    """One cache subscription of this worker and the connections it fans out to."""

    channel: str
    subscribers: set[_Connection] = field(default_factory=set)
    # Connections subscribed or about to be: the feed stops when this falls to zero.
    claims: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Hold:
    """Live messages of newly subscribed feeds, kept back from a connection until its reply and replay are queued."""

    feeds: dict[_Feed, bool]
    """feed -> whether it is a user channel (numbered by `seq`, merged with the replay)"""
    messages: list[tuple[bool, str]] = field(default_factory=list)


@dataclass(eq=False)
class _Connection:
    socket: ClientSocket
    principal: Principal
    token: str
    # Frames to send; None asks the sender to close, with `close_code`, once what was queued before it is sent.
    queue: asyncio.Queue[str | None]
    auth_due: float
    # client channel -> its feed
    feeds: dict[str, _Feed] = field(default_factory=dict)
    # Set to end the connection now; `finished` once its clean-up is complete.
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # No longer taking updates or subscriptions (ending now, or closing once its queue is sent).
    is_ending: bool = False
    close_code: int | None = None
    close_reason: str = ""
    sent: int = 0
    sent_at_last_tick: int = 0
    hold: _Hold | None = None
    # user feed -> the newest seq its last replay sent: a live message numbered up to it was published before the
    # replay read the log, reached this worker after the hold ended, and was sent already (dropped, once).
    replayed_to: dict[_Feed, int] = field(default_factory=dict)


class WebSocketManager:
    """Live channels of one worker: connections, their subscriptions, and the shared cache subscriptions."""

    def __init__(
        self,
        cache: Cache,
        authenticate: Authenticate,
        resolve: Resolve,
        *,
        heartbeat_seconds: float = 15.0,
        send_queue_size: int = 1000,
        max_channels: int = 100,
        reauthenticate_seconds: float = 60.0,
        stream: UserStream | None = None,
    ) -> None:
        if heartbeat_seconds <= 0 or reauthenticate_seconds <= 0:
            raise ValueError("heartbeat_seconds and reauthenticate_seconds must be positive")
        if send_queue_size < 1 or max_channels < 1:
            raise ValueError("send_queue_size and max_channels must be at least 1")
        self._cache = cache
        self._authenticate = authenticate
        self._resolve = resolve
        # The user event log, for the `seq` in replies and for replays; it must match the publishers' retention.
        self._stream = stream or UserStream(cache)
        self.heartbeat_seconds = heartbeat_seconds
        self.send_queue_size = send_queue_size
        self.max_channels = max_channels
        self.reauthenticate_seconds = reauthenticate_seconds
        self._feeds: dict[str, _Feed] = {}
        self._connections: set[_Connection] = set()
        self._is_closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # A reader yields to the senders once a subscriber's queue is half full, long before anyone overflows.
        self._crowded = send_queue_size // 2
        # Metrics: plain counters, read by whoever exports them.
        self.connections_total = 0  # authenticated connections since start
        self.messages_sent = 0  # frames written to sockets: updates, replies, heartbeats
        self.slow_consumer_disconnects = 0

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def active_channels(self) -> frozenset[str]:
        """Cache channels this worker is subscribed to now."""
        return frozenset(self._feeds)

    # --- one connection ------------------------------------------------------------------------------------------

    async def serve(self, socket: ClientSocket, token: str | None) -> None:
        """Run one client connection until it ends: authenticate, then handle its messages and send its updates."""
        try:
            await socket.accept()
        except Exception:
            return  # the client left during the handshake
        if not token:
            await self._refuse(
                socket,
                CLOSE_UNAUTHENTICATED,
                NotAuthenticated.code,
                "missing token: pass ?token=<session token> or `Authorization: Bearer <token>`",
            )
            return
        try:
            principal = await self._authenticate(token)
        except NotAuthenticated as exc:
            await self._refuse(socket, CLOSE_UNAUTHENTICATED, exc.code, exc.detail)
            return
        except CivalError as exc:
            await self._refuse(socket, CLOSE_TRY_AGAIN_LATER, exc.code, exc.detail)
            return
        if self._is_closed:
            await self._refuse(socket, CLOSE_GOING_AWAY, "shutting_down", "the server is shutting down")
            return
        loop = asyncio.get_running_loop()
        conn = _Connection(
            socket=socket,
            principal=principal,
            token=token,
            queue=asyncio.Queue(maxsize=self.send_queue_size),
            auth_due=loop.time() + self.reauthenticate_seconds,
        )
        self._connections.add(conn)
        self.connections_total += 1
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="ws-ticker")
        receiver = asyncio.create_task(self._receive_loop(conn), name="ws-receive")
        sender = asyncio.create_task(self._send_loop(conn), name="ws-send")
        try:
            await conn.done.wait()
        finally:
            self._drop(conn, None, "")
            receiver.cancel()
            sender.cancel()
            await asyncio.wait({receiver, sender})
            if conn.close_code is not None:
                await _close_quietly(socket, conn.close_code, conn.close_reason)
            self._connections.discard(conn)
            await self._release(conn.feeds.values())
            conn.finished.set()

    async def _refuse(self, socket: ClientSocket, close_code: int, error: str, detail: str) -> None:
        # Accepted first and told why, because a browser cannot read an HTTP status from a refused upgrade.
        with contextlib.suppress(Exception):
            await socket.send_text(_dumps({"type": "error", "error": error, "detail": detail}))
        await _close_quietly(socket, close_code, error)

    def _stop_updates(self, conn: _Connection) -> None:
        conn.is_ending = True
        for feed in conn.feeds.values():
            feed.subscribers.discard(conn)

    def _drop(self, conn: _Connection, code: int | None, reason: str) -> None:
        """End `conn` now (without awaiting), dropping what is queued; `code` None means the socket is gone."""
        if conn.done.is_set():
            return
        self._stop_updates(conn)
        if code is not None or conn.close_code is None:
            conn.close_code, conn.close_reason = code, reason
        conn.done.set()

    def _close_after_queued(self, conn: _Connection, code: int, reason: str) -> None:
        """Close `conn` with `code` once the frames already queued for it (an error saying why) are sent."""
        if conn.is_ending:
            return
        self._stop_updates(conn)
        conn.close_code, conn.close_reason = code, reason
        try:
            conn.queue.put_nowait(None)
        except asyncio.QueueFull:
            self._drop(conn, code, reason)

    def _enqueue(self, conn: _Connection, text: str) -> None:
        try:
            conn.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._drop_slow(conn)

    def _drop_slow(self, conn: _Connection) -> None:
        if not conn.done.is_set():
            self.slow_consumer_disconnects += 1
            log.info("websocket slow consumer disconnected", user_id=str(conn.principal.user_id))
        self._drop(conn, CLOSE_SLOW_CONSUMER, "slow consumer")

    async def _receive_loop(self, conn: _Connection) -> None:
        try:
            while True:
                message = await conn.socket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    raw = message.get("bytes") or b""
                    text = raw.decode("utf-8", errors="replace")
                await self._handle(conn, text)
            self._drop(conn, None, "")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("websocket receive failed", user_id=str(conn.principal.user_id))
            self._drop(conn, CLOSE_INTERNAL_ERROR, "internal error")

    async def _send_loop(self, conn: _Connection) -> None:
        queue, socket = conn.queue, conn.socket
        try:
            while True:
                text = await queue.get()
                # Drain without suspending between frames: one wake-up sends everything that is waiting.
                while True:
                    if text is None:
                        self._drop(conn, conn.close_code, conn.close_reason)
                        return
                    await socket.send_text(text)
                    conn.sent += 1
                    self.messages_sent += 1
                    if queue.empty():
                        break
                    text = queue.get_nowait()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The socket is gone (client vanished, connection reset): nothing left to tell it.
            self._drop(conn, None, "")

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_seconds / 2)
            now = loop.time()
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            heartbeat = _dumps({"type": "heartbeat", "ts": stamp})
            due = []
            for conn in self._connections:
                if conn.sent == conn.sent_at_last_tick and conn.queue.empty() and not conn.is_ending:
                    self._enqueue(conn, heartbeat)
                conn.sent_at_last_tick = conn.sent
                if now >= conn.auth_due:
                    conn.auth_due = now + self.reauthenticate_seconds
                    due.append(conn)
            if due:
                task = asyncio.create_task(self._reauthenticate(due), name="ws-reauthenticate")
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _reauthenticate(self, connections: list[_Connection]) -> None:
        await asyncio.gather(*(self._check_session(conn) for conn in connections))

    async def _check_session(self, conn: _Connection) -> None:
        """Re-check the session, so a revoked session or a deactivated user stops receiving private updates."""
        if conn.is_ending:
            return
        try:
            await self._authenticate(conn.token)
        except NotAuthenticated as exc:
            self._enqueue(conn, _dumps({"type": "error", "error": exc.code, "detail": exc.detail}))
            self._close_after_queued(conn, CLOSE_UNAUTHENTICATED, exc.code)
        except Exception:
            # The session store being down is not the client's fault: keep serving, check again next time.
            log.warning("websocket re-authentication failed", user_id=str(conn.principal.user_id), exc_info=True)

    # --- client messages -----------------------------------------------------------------------------------------

    async def _handle(self, conn: _Connection, text: str) -> None:
        try:
            op, channels, since = parse_message(text, self.max_channels)
            if op == "ping":
                self._enqueue(conn, _dumps({"type": "pong"}))
            elif op == "subscribe":
                await self._subscribe(conn, channels, since)
            else:
                await self._unsubscribe(conn, channels)
        except ProtocolError as exc:
            self._enqueue(conn, _dumps({"type": "error", "error": exc.code, "detail": exc.detail, **exc.extra}))

    async def _subscribe(self, conn: _Connection, channels: list[str], since: int | None) -> None:
        # All or nothing: every name is resolved and every feed running before any subscription takes effect.
        wanted: dict[str, str] = {}
        unknown: list[ValidationFailed] = []
        names: list[str] = []
        for channel in channels:
            if channel in conn.feeds:
                continue
            try:
                wanted[channel] = self._resolve(channel, conn.principal)
            # Any validation failure, not just UnknownChannel: a resolver passing on its validator's own errors
            # (unknown_symbol ...) still means "no such channel" to the client, never a broken connection.
            except ValidationFailed as exc:
                unknown.append(exc)
                names.append(channel)
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise ProtocolError("unknown_channel", unknown[0].detail + more, channels=names)
        if len(conn.feeds) + len(wanted) > self.max_channels:
            raise ProtocolError(
                "too_many_channels",
                f"at most {self.max_channels} channels per connection; {len(conn.feeds)} already subscribed",
            )
        feeds = {channel: self._claim(cache_channel) for channel, cache_channel in wanted.items()}
        try:
            starting = [feed.started.wait() for feed in feeds.values() if not feed.started.is_set()]
            if starting:
                await asyncio.gather(*starting)
            failed = next((feed.error for feed in feeds.values() if feed.error is not None), None)
        except BaseException:
            await self._release(feeds.values())
            raise
        if failed is not None or conn.is_ending:
            await self._release(feeds.values())
            if failed is not None:
                code = failed.code if isinstance(failed, CivalError) else "service_unavailable"
                raise ProtocolError(code, f"could not subscribe: {failed}")
            return
        # No await from here to the reply (or, with user channels, to holding the new channels' updates back until
        # the reply and the replay are queued): the reply precedes every update of the new channels.
        users = [channel for channel in feeds if channel in USER_CHANNELS]
        hold = None
        if users:
            hold = conn.hold = _Hold({feed: channel in USER_CHANNELS for channel, feed in feeds.items()})
        for channel, feed in feeds.items():
            feed.subscribers.add(conn)
            conn.feeds[channel] = feed
        if hold is not None:
            await self._catch_up(conn, hold, channels, users, since)
        else:
            self._enqueue(conn, _dumps({"type": "subscribed", "channels": channels}))

    async def _catch_up(
        self, conn: _Connection, hold: _Hold, channels: list[str], users: list[str], since: int | None
    ) -> None:
        """Reply with the user's newest seq, replay what the client missed (or say resync), then go live."""
        try:
            replay = await self._stream.replay(conn.principal.user_id, since, users)
            reply: dict[str, Any] = {"type": "subscribed", "channels": channels}
            if replay.head is not None:
                reply["seq"] = replay.head
            if since is not None and replay.resync is None:
                reply["replayed"] = len(replay.events)
            self._enqueue(conn, _dumps(reply))
            if replay.resync is not None:
                resync = {"type": "resync", "reason": replay.resync.value, "detail": replay.detail}
                self._enqueue(conn, _dumps(resync | {"channels": users, "since": since, "seq": replay.head}))
            catchup = Catchup(replay, since)
            while True:
                held, hold.messages = hold.messages, []
                live = catchup.take([text for is_user, text in held if is_user])
                for text in live + [text for is_user, text in held if not is_user]:
                    if not await self._put(conn, text):
                        return
                if not hold.messages:
                    break
            if since is not None and replay.resync is None and replay.head is not None:
                for feed, is_user in hold.feeds.items():
                    if is_user:
                        conn.replayed_to[feed] = replay.head
        finally:
            # Live from here: no await between the last held message and letting the next one through.
            if conn.hold is hold:
                conn.hold = None

    async def _put(self, conn: _Connection, text: str) -> bool:
        """Queue `text`, waiting for room (a replay can be longer than the queue); False once `conn` is ending."""
        if conn.is_ending:
            return False
        try:
            conn.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            pass
        room = asyncio.ensure_future(conn.queue.put(text))
        ending = asyncio.ensure_future(conn.done.wait())
        try:
            done, _ = await asyncio.wait({room, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
            if not room.done():
                room.cancel()
        return room in done

    async def _unsubscribe(self, conn: _Connection, channels: list[str]) -> None:
        leaving = [conn.feeds.pop(channel) for channel in channels if channel in conn.feeds]
        for feed in leaving:
            feed.subscribers.discard(conn)
        # Released before the reply, so a client that saw "unsubscribed" knows the cache subscription is gone too.
        await self._release(leaving)
        self._enqueue(conn, _dumps({"type": "unsubscribed", "channels": channels}))

    # --- shared cache subscriptions ------------------------------------------------------------------------------

    def _claim(self, cache_channel: str) -> _Feed:
        feed = self._feeds.get(cache_channel)
        if feed is None:
            feed = self._feeds[cache_channel] = _Feed(cache_channel)
            feed.task = asyncio.create_task(self._run_feed(feed), name=f"ws-feed:{cache_channel}")
        feed.claims += 1
        return feed

    async def _release(self, feeds: Iterable[_Feed]) -> None:
        stopping = set()
        for feed in feeds:
            feed.claims -= 1
            if feed.claims > 0:
                continue
            if self._feeds.get(feed.channel) is feed:
                del self._feeds[feed.channel]
            if feed.task is not None:
                feed.task.cancel()
                stopping.add(feed.task)
        if stopping:
            # Waiting means the cache has unsubscribed by the time the caller goes on.
            await asyncio.wait(stopping)

    async def _run_feed(self, feed: _Feed) -> None:
        error: Exception | None = None
        try:
            async with self._cache.subscribe(feed.channel) as subscription:
                feed.started.set()
                burst = 0
                async for _, message in subscription:
                    burst += 1
                    # A burst waiting in the subscription would otherwise be fanned out in one go, before any
                    # sender ran, overflowing fast clients too: yield so every writable client drains first.
                    if self._fan_out(feed, message) or burst >= FAN_OUT_BURST:
                        burst = 0
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            if not feed.started.is_set():
                feed.error = RuntimeError("the subscription was cancelled before it started")
                feed.started.set()
            raise
        except Exception as exc:
            error = exc
        if self._feeds.get(feed.channel) is feed:
            del self._feeds[feed.channel]
        if not feed.started.is_set():
            feed.error = error or RuntimeError("the subscription ended before it started")
            feed.started.set()
            return
        # The stream ended under its subscribers (cache closed or lost): they reconnect, and resubscribe afresh.
        if not self._is_closed:
            log.warning("websocket channel feed lost", channel=feed.channel, error=repr(error))
        for conn in list(feed.subscribers):
            self._drop(conn, CLOSE_INTERNAL_ERROR, "channel feed lost")

    def _fan_out(self, feed: _Feed, message: bytes) -> bool:
        """Queue `message` for every subscriber; True when some subscriber's queue is getting crowded."""
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("websocket dropped a message that is not UTF-8", channel=feed.channel)
            return False
        crowded = False
        slow: list[_Connection] = []
        for conn in feed.subscribers:
            hold = conn.hold
            if hold is not None and feed in hold.feeds:
                hold.messages.append((hold.feeds[feed], text))
                if len(hold.messages) > self.send_queue_size:
                    slow.append(conn)
                continue
            if conn.replayed_to and feed in conn.replayed_to:
                seq = frame_seq(text)
                if seq is not None and seq <= conn.replayed_to[feed]:
                    continue  # in the replay already
                del conn.replayed_to[feed]  # past the replay: messages on a feed arrive in seq order
            queue = conn.queue
            try:
                queue.put_nowait(text)
            except asyncio.QueueFull:
                slow.append(conn)
                continue
            if queue.qsize() > self._crowded:
                crowded = True
        for conn in slow:
            self._drop_slow(conn)
        return crowded

    # --- shutdown ------------------------------------------------------------------------------------------------

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bound on shutdown, not a request
        """Close every connection (1001) and stop every cache subscription."""
        self._is_closed = True
        housekeeping = {task for task in (self._ticker, *self._background) if task is not None}
        for task in housekeeping:
            task.cancel()
        self._ticker = None
        if housekeeping:
            await asyncio.wait(housekeeping, timeout=timeout)
        connections = list(self._connections)
        for conn in connections:
            self._drop(conn, CLOSE_GOING_AWAY, "server shutting down")
        if connections:
            waiters = [asyncio.create_task(c.finished.wait()) for c in connections]
            await asyncio.wait(waiters, timeout=timeout)
            for waiter in waiters:
                waiter.cancel()
        tasks = {feed.task for feed in self._feeds.values() if feed.task is not None}
        self._feeds.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


async def _close_quietly(socket: ClientSocket, code: int, reason: str) -> None:
    # The client may be gone already, or too slow to take the close frame; either way we are done with it.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await socket.close(code, reason)
