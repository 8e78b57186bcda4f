"""Numbered user events and their recent history, so a client that reconnects gets what it missed (or a resync).

Every event on a user's channels (`orders`, `trades`, `positions`, `balances`, `portfolio`, `alerts`) gets the
next number of that user's sequence, `seq`: an atomic cache counter, so it is shared by every worker and never
reused while the cache lives. One sequence spans all the user's channels; a client subscribed to some of them sees
gaps, which are the other channels' events, not losses.

The cache keeps the event log (D31):
- `ustream:<user>:seq` — the counter (no expiry);
- `ustream:<user>:<seq>` — `<channel>\\n<frame>`, the exact frame live clients got, for `retention_seconds`
  (15 minutes) and among the last `retention_events + 1` (1,001) events: appending event N deletes event N-1,001.

`replay(since=N)` returns the events after N on the wanted channels, in order, when the log still holds all of
them: at most `retention_events` back, and event N itself (the client's last one) still present, so none after it
has expired. Otherwise it says why the client must resync over REST. An event numbered but not yet stored (its
publisher is between the two steps) is not in the log yet: it reaches the client live, since it is published after
the client's subscription started.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cival.core.cache import Cache, Numbered, NumberedLog
from cival.core.exceptions import ServiceUnavailable
from cival.services.channels import USER_CHANNELS, FramedData, frame_around_seq, user_cache_channel

__all__ = ["RETENTION_EVENTS", "RETENTION_SECONDS", "Catchup", "Replay", "ResyncReason", "UserStream", "frame_seq"]

_STORED_PREFIX = {channel: channel.encode() + b"\n" for channel in USER_CHANNELS}
"""Each kept event starts with its channel's name (a replay reads only the channels asked for)."""

RETENTION_EVENTS = 1000
"""How many of a user's most recent events a reconnecting client can ask for."""
RETENTION_SECONDS = 15 * 60.0
"""How long an event is kept for resume."""
ANCHOR_MARGIN_SECONDS = 1.0
"""The client's last event must have at least this long to live: events stored just after it expire just after it."""
FETCH_BATCH = 500
"""Events read from the cache at once during a replay."""


class ResyncReason(StrEnum):
    TOO_OLD = "too_old"  # more events since `since` than the log keeps
    EXPIRED = "expired"  # the events after `since` are older than the log keeps them
    AHEAD = "ahead"  # `since` is beyond the newest event: the log was reset (cache flushed)
    UNAVAILABLE = "unavailable"  # the cache could not be read


@dataclass(frozen=True, slots=True)
class Replay:
    head: int | None
    """The user's newest seq when the replay was read; None when the cache could not say."""
    events: list[tuple[int, str]] = field(default_factory=list)
    """(seq, frame) after `since` on the wanted channels, in seq order."""
    resync: ResyncReason | None = None
    detail: str = ""


def frame_seq(text: str) -> int | None:
    """The `seq` of a frame, None for an unnumbered one."""
    try:
        seq = json.loads(text).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class UserStream:
    """Appends numbered user events (store, then publish) and reads them back for resume."""

    def __init__(
        self, cache: Cache, *, retention_events: int = RETENTION_EVENTS, retention_seconds: float = RETENTION_SECONDS
    ) -> None:
        if retention_events < 1 or retention_seconds <= ANCHOR_MARGIN_SECONDS:
            raise ValueError("retention_events must be at least 1 and retention_seconds more than a second")
        self.cache = cache
        self.retention_events = retention_events
        self.retention_seconds = retention_seconds

    @staticmethod
    def _seq_key(user_id: uuid.UUID | str) -> str:
        return f"ustream:{user_id}:seq"

    @staticmethod
    def _entry_prefix(user_id: uuid.UUID | str) -> str:
        return f"ustream:{user_id}:"

    @classmethod
    def _event_key(cls, user_id: uuid.UUID | str, seq: int) -> str:
        return f"{cls._entry_prefix(user_id)}{seq}"

    async def append(self, user_id: uuid.UUID | str, channel: str, data: Mapping[str, Any]) -> int:
        """Number one event, keep it for resume, and publish it to every worker (`append_many`); returns its seq."""
        (seq,) = await self.append_many(user_id, [(channel, data)])
        return seq

    async def append_many(self, user_id: uuid.UUID | str, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """Number the user's `events` (channel, data) in order, keep them for resume, and publish them to every
        worker, in ONE atomic cache step (one round trip on Redis, D39); returns their seqs. Every subscription of a
        receiving process shares one connection (D51), so events on different channels arrive as they were
        numbered."""
        log = NumberedLog(
            counter=self._seq_key(user_id),
            entry_prefix=self._entry_prefix(user_id),
            keep=self.retention_events + 1,
            ttl=self.retention_seconds,
        )
        messages = []
        for channel, data in events:  # all checked before any is published
            if channel not in USER_CHANNELS:
                raise ValueError(f"{channel!r} is not a user channel (one of {sorted(USER_CHANNELS)})")
            if isinstance(data, FramedData) and data.channel == channel:
                before, after = data.parts  # built ahead (D55)
            else:
                before, after = frame_around_seq(channel, data)
            messages.append(Numbered(before, after, user_cache_channel(user_id, channel), _STORED_PREFIX[channel]))
        return await self.cache.publish_numbered(log, messages)

    async def head(self, user_id: uuid.UUID | str) -> int:
        """The user's newest seq (0 before the first event)."""
        value = await self.cache.get(self._seq_key(user_id))
        return int(value) if value else 0

    async def replay(self, user_id: uuid.UUID | str, since: int | None, channels: Collection[str]) -> Replay:
        """The events after `since` on `channels`, or why they cannot be had; `since` None reads the head only."""
        try:
            head = await self.head(user_id)
        except ServiceUnavailable as exc:
            if since is None:
                return Replay(None)
            return Replay(None, resync=ResyncReason.UNAVAILABLE, detail=f"the event log cannot be read: {exc.detail}")
        if since is None or since == head:
            return Replay(head)
        if since > head:
            return Replay(
                head,
                resync=ResyncReason.AHEAD,
                detail=f"seq {since} is beyond the newest event ({head}): the event log was reset",
            )
        if head - since > self.retention_events:
            return Replay(
                head,
                resync=ResyncReason.TOO_OLD,
                detail=f"{head - since} events since seq {since}; only the last {self.retention_events} are kept",
            )
        try:
            return await self._read(user_id, since, head, channels)
        except ServiceUnavailable as exc:
            return Replay(head, resync=ResyncReason.UNAVAILABLE, detail=f"the event log cannot be read: {exc.detail}")

    async def _read(self, user_id: uuid.UUID | str, since: int, head: int, channels: Collection[str]) -> Replay:
        # The client's own last event still being there (with a margin) means every later one is too.
        anchor_ttl = await self.cache.ttl(self._event_key(user_id, max(since, 1)))
        if anchor_ttl is None or anchor_ttl < ANCHOR_MARGIN_SECONDS:
            return Replay(
                head,
                resync=ResyncReason.EXPIRED,
                detail=f"the events after seq {since} are no longer kept ({self.retention_seconds:g} s)",
            )
        wanted = {channel.encode() for channel in channels}
        events: list[tuple[int, str]] = []
        for start in range(since + 1, head + 1, FETCH_BATCH):
            seqs = range(start, min(start + FETCH_BATCH, head + 1))
            values = await self.cache.get_many([self._event_key(user_id, seq) for seq in seqs])
            for seq, value in zip(seqs, values, strict=True):
                if value is None:
                    continue  # numbered but not stored yet: it arrives live
                channel, _, body = value.partition(b"\n")
                if channel in wanted:
                    events.append((seq, body.decode()))
        return Replay(head, events)


class Catchup:
    """What a subscription with `since` sends after its reply: the replay, then live events held meanwhile, once each.

    Live events of the new channels are held while the replay is read. The first `take` merges them with the replay
    in seq order, dropping those the replay holds and those the client already had (seq <= since); later calls
    pass on what arrived since, in arrival order, with the same filter. After a resync nothing is dropped but
    duplicates: the client refetches anyway, and every live event still counts.
    """

    def __init__(self, replay: Replay, since: int | None) -> None:
        self._floor = since if replay.resync is None else None
        self._sent = {seq for seq, _ in replay.events}
        self._replay: list[tuple[int, str]] | None = list(replay.events)

    def take(self, held: list[str]) -> list[str]:
        fresh: list[tuple[int | None, str]] = []
        for text in held:
            seq = frame_seq(text)
            if seq is not None:
                if seq in self._sent or (self._floor is not None and seq <= self._floor):
                    continue
                self._sent.add(seq)
            fresh.append((seq, text))
        if self._replay is None:
            return [text for _, text in fresh]
        numbered = sorted(self._replay + [(seq, text) for seq, text in fresh if seq is not None])
        self._replay = None
        return [text for _, text in numbered] + [text for seq, text in fresh if seq is None]
