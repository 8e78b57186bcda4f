"""The user event log at unit level: numbering, retention by count and by age, replay filtering, and the merge of a
replay with live messages held meanwhile. MemoryCache with a clock the test moves."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Collection, Sequence

import pytest

from cival.core.cache import MemoryCache, Numbered, NumberedLog
from cival.core.exceptions import ServiceUnavailable
from cival.services.channels import frame, framed, make_resolver, publish_public, user_cache_channel
from cival.services.user_stream import Catchup, Replay, ResyncReason, UserStream, frame_seq
from cival.services.websocket_manager import WebSocketManager
from tests.services.test_websocket_manager import ALICE, BTC, DEADLINE, FakeSocket, Tokens, validate_public

USER = uuid.uuid4()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> MemoryCache:
    return MemoryCache(clock=clock)


def seqs(replay: Replay) -> list[int]:
    return [seq for seq, _ in replay.events]


async def test_events_are_numbered_stored_and_published(cache: MemoryCache) -> None:
    stream = UserStream(cache)
    async with cache.subscribe(user_cache_channel(USER, "orders")) as subscription:
        assert [await stream.append(USER, "orders", {"n": n}) for n in range(3)] == [1, 2, 3]
        published = [await subscription.get_message(1.0) for _ in range(3)]
    frames = [json.loads(item[1]) for item in published if item is not None]
    assert frames == [{"type": "update", "channel": "orders", "data": {"n": n}, "seq": n + 1} for n in range(3)]
    assert await stream.head(USER) == 3
    assert await stream.head(uuid.uuid4()) == 0
    with pytest.raises(ValueError, match="not a user channel"):
        await stream.append(USER, "ticker:paper:BTC/USDT", {})


async def test_many_events_go_in_one_step_whatever_their_channels(
    cache: MemoryCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = UserStream(cache)
    steps: list[list[str]] = []
    real = cache.publish_numbered

    async def counted(log: NumberedLog, messages: Sequence[Numbered]) -> list[int]:
        steps.append([m.stored_prefix.decode().strip() for m in messages])
        return await real(log, messages)

    monkeypatch.setattr(cache, "publish_numbered", counted)
    events = [("orders", {"n": 0}), ("orders", {"n": 1}), ("balances", {"n": 2}), ("orders", {"n": 3})]
    assert await stream.append_many(USER, events) == [1, 2, 3, 4]
    # One step (one round trip on Redis): a process receives all its channels on one connection, in order (D51).
    assert steps == [["orders", "orders", "balances", "orders"]]
    replay = await stream.replay(USER, 0, ["orders", "balances"])
    assert [json.loads(text)["data"]["n"] for _, text in replay.events] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not a user channel"):
        await stream.append_many(USER, [("orders", {}), ("ticker:paper:BTC/USDT", {})])
    assert await stream.head(USER) == 4  # nothing of a refused call is published


async def test_replay_returns_the_wanted_channels_in_order(cache: MemoryCache) -> None:
    stream = UserStream(cache)
    for channel in ("orders", "trades", "orders", "balances", "orders"):
        await stream.append(USER, channel, {"c": channel})
    replay = await stream.replay(USER, 1, ["orders", "balances"])
    assert (replay.head, replay.resync) == (5, None)
    assert seqs(replay) == [3, 4, 5]
    assert [json.loads(text)["channel"] for _, text in replay.events] == ["orders", "balances", "orders"]
    assert seqs(await stream.replay(USER, 0, ["trades"])) == [2]
    assert await stream.replay(USER, 5, ["orders"]) == Replay(5)
    assert await stream.replay(USER, None, ["orders"]) == Replay(5)


async def test_only_the_last_n_events_are_kept(cache: MemoryCache) -> None:
    stream = UserStream(cache, retention_events=3)
    for n in range(6):
        await stream.append(USER, "orders", {"n": n})
    assert seqs(await stream.replay(USER, 3, ["orders"])) == [4, 5, 6]
    too_old = await stream.replay(USER, 2, ["orders"])
    assert (too_old.resync, too_old.events) == (ResyncReason.TOO_OLD, [])
    assert "only the last 3" in too_old.detail
    assert await cache.get("ustream:" + str(USER) + ":2") is None  # deleted, not left to expire
    assert await cache.get("ustream:" + str(USER) + ":3") is not None  # the anchor of the oldest replay


async def test_events_older_than_the_retention_need_a_resync(cache: MemoryCache, clock: Clock) -> None:
    stream = UserStream(cache, retention_seconds=60)
    for n in range(3):
        await stream.append(USER, "alerts", {"n": n})
    clock.now += 30
    assert seqs(await stream.replay(USER, 1, ["alerts"])) == [2, 3]
    clock.now += 29.5  # the client's last event would expire within the margin
    expired = await stream.replay(USER, 1, ["alerts"])
    assert (expired.head, expired.resync) == (3, ResyncReason.EXPIRED)


async def test_a_since_beyond_the_head_needs_a_resync(cache: MemoryCache) -> None:
    stream = UserStream(cache)
    await stream.append(USER, "alerts", {})
    ahead = await stream.replay(USER, 7, ["alerts"])
    assert (ahead.head, ahead.resync) == (1, ResyncReason.AHEAD)


class DownCache(MemoryCache):
    async def get(self, key: str) -> bytes | None:
        raise ServiceUnavailable("Cache 'redis' is unreachable: connection refused")


async def test_an_unreadable_log_needs_a_resync() -> None:
    stream = UserStream(DownCache())
    down = await stream.replay(USER, 3, ["orders"])
    assert (down.head, down.resync) == (None, ResyncReason.UNAVAILABLE)
    assert await stream.replay(USER, None, ["orders"]) == Replay(None)


def numbered(seq: int | None) -> str:
    body: dict[str, object] = {"type": "update", "channel": "orders", "data": {}}
    if seq is not None:
        body["seq"] = seq
    return json.dumps(body)


def test_catchup_merges_held_messages_with_the_replay_once_each() -> None:
    replay = Replay(12, [(11, numbered(11)), (12, numbered(12))])
    catchup = Catchup(replay, since=10)
    # Held while the log was read: an old one, one the replay holds, newer ones out of order, an unnumbered one.
    first = catchup.take([numbered(9), numbered(12), numbered(14), numbered(13), numbered(None)])
    assert [frame_seq(text) for text in first] == [11, 12, 13, 14, None]
    # Later arrivals keep their order; repeats are dropped.
    assert [frame_seq(text) for text in catchup.take([numbered(13), numbered(16), numbered(15)])] == [16, 15]
    assert catchup.take([]) == []


def test_after_a_resync_only_repeats_are_dropped() -> None:
    catchup = Catchup(Replay(20, resync=ResyncReason.TOO_OLD), since=3)
    assert [frame_seq(text) for text in catchup.take([numbered(2), numbered(21), numbered(21)])] == [2, 21]


def test_retention_must_be_meaningful(cache: MemoryCache) -> None:
    with pytest.raises(ValueError, match="retention"):
        UserStream(cache, retention_events=0)
    with pytest.raises(ValueError, match="retention"):
        UserStream(cache, retention_seconds=1)


# --- the manager's side: live updates held back during a replay ----------------------------------------------------


class GatedStream(UserStream):
    """Pauses every replay after reading the log, until the test lets it go."""

    def __init__(self, cache: MemoryCache) -> None:
        super().__init__(cache)
        self.read = asyncio.Event()
        self.go = asyncio.Event()

    async def replay(self, user_id: uuid.UUID | str, since: int | None, channels: Collection[str]) -> Replay:
        result = await super().replay(user_id, since, channels)
        self.read.set()
        await self.go.wait()
        return result


async def test_live_updates_during_a_replay_come_after_it_once_each() -> None:
    cache = MemoryCache()
    stream = GatedStream(cache)
    manager = WebSocketManager(cache, Tokens(), make_resolver(validate_public), stream=stream)
    user = ALICE.user_id
    for n in range(3):
        await stream.append(user, "orders", {"n": n})  # seq 1, 2, 3
    socket = FakeSocket()
    task = asyncio.create_task(manager.serve(socket, "token-alice"))
    try:
        socket.send({"op": "subscribe", "channels": [BTC, "orders", "trades"], "since": 1})
        async with asyncio.timeout(DEADLINE):
            await stream.read.wait()
        # The log has been read (up to seq 3); these arrive live while the replay is still to be sent.
        await publish_public(cache, BTC, {"price": "1"})
        await cache.publish(f"user:{user}:orders", frame("orders", {"n": 2}, 3))  # a late copy of a replayed event
        await cache.publish(f"user:{user}:orders", frame("orders", {"n": 0}, 1))  # one the client already had
        await stream.append(user, "trades", {"n": 3})  # seq 4: not in the replay
        stream.go.set()
        frames = [await socket.recv() for _ in range(5)]
        assert frames[0] == {"type": "subscribed", "channels": [BTC, "orders", "trades"], "seq": 3, "replayed": 2}
        assert [(f["channel"], f.get("seq")) for f in frames[1:]] == [
            ("orders", 2),
            ("orders", 3),
            ("trades", 4),
            (BTC, None),
        ]
        socket.send({"op": "ping"})
        assert await socket.recv() == {"type": "pong"}  # nothing else was queued
        await stream.append(user, "orders", {"n": 5})
        assert (await socket.recv())["seq"] == 5  # and live delivery goes on
    finally:
        socket.disconnect()
        await task
        await manager.close()


async def test_an_event_framed_ahead_is_published_as_it_would_have_been(cache: MemoryCache) -> None:
    stream = UserStream(cache)
    data = {"id": "1", "price": "64123.12345678", "note": 'ünïcødé "quoted"'}
    async with cache.subscribe(user_cache_channel(USER, "orders"), user_cache_channel(USER, "trades")) as sub:
        await stream.append_many(USER, [("orders", data), framed("orders", data), framed("trades", data)])
        published = [await sub.get_message(1.0) for _ in range(3)]
    frames = [item[1] for item in published if item is not None]
    assert frames == [frame("orders", data, 1), frame("orders", data, 2), frame("trades", data, 3)]
    assert framed("orders", data)[1] == data  # still the event's data, for what reads it (webhooks)
