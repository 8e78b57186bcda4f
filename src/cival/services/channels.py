"""Live channels' names and wire format, shared by every publisher and the WebSocket manager.

- A publisher builds the final client frame once (`frame()`: UTF-8 JSON, Decimal as text, datetimes ISO 8601) and
  publishes it to a cache channel: public client channel `C` lives at `md:C`, user `U`'s channel `orders` at
  `user:U:orders`. Every worker's manager forwards the frame as it is.
- User channels are numbered per user (`seq`) by `cival.services.user_stream`, which also keeps the recent ones
  for clients that reconnect; `publish_user` here sends an unnumbered update (tests, tools).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from cival.core.cache import Cache
from cival.core.exceptions import ValidationFailed
from cival.services.auth_service import Principal

__all__ = [
    "PUBLIC_PREFIXES",
    "USER_CHANNELS",
    "ProtocolError",
    "FramedData",
    "Resolve",
    "UnknownChannel",
    "UserPublisher",
    "dumps",
    "frame",
    "framed",
    "make_resolver",
    "parse_message",
    "public_cache_channel",
    "publish_public",
    "publish_user",
    "user_cache_channel",
]

USER_CHANNELS = frozenset({"orders", "trades", "positions", "balances", "portfolio", "alerts"})
"""Channels private to the caller: each resolves with the caller's own user id."""

UserPublisher = Callable[[uuid.UUID, Sequence[tuple[str, Mapping[str, Any]]]], Awaitable[Any]]
"""Publishes one user's events (channel, data), in order (`NotificationService.publish_many`)."""

PUBLIC_PREFIXES = ("ticker:", "book:", "candles:")
"""Public channel kinds; the market-data service validates the rest of the name."""

PUBLIC_NAMESPACE = "md:"

MAX_CHANNEL_NAME = 200
MAX_MESSAGE_CHARS = 64 * 1024
MAX_SEQ = 2**63 - 1


class UnknownChannel(ValidationFailed):
    code = "unknown_channel"


Resolve = Callable[[str, Principal], str]
"""Client channel name and caller -> cache channel; raises UnknownChannel."""


def _json_default(value: Any) -> Any:
    # Money travels as text, never float: Decimal keeps its exact digits. (orjson writes the other types itself and
    # calls this for Decimals only, so they are looked for first; the standard library's encoder calls it for all.)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def iso(ts: datetime) -> str:
    """A timestamp in the shape Pydantic gives HTTP responses, so clients parse one format."""
    return ts.isoformat().replace("+00:00", "Z")


_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)
"""For what orjson refuses (integers beyond 64 bits): built once, as `json.dumps` with options builds an encoder
per call."""


def dumps_bytes(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: Decimal as text, UUIDs as text, datetimes ISO 8601 (UTC as `Z`, as `iso`), dates ISO
    8601, enums as their values (orjson: an order event's encoding cost 17 µs with the standard library's encoder,
    2 µs here). What orjson refuses goes through the standard library's encoder, which writes the same text for
    what both take and raises for what neither does. Floats (never money) are written in their shortest exact
    digits, a NaN or an infinity as null."""
    try:
        return orjson.dumps(value, default=_json_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value).encode()


def dumps(value: Mapping[str, Any]) -> str:
    """`dumps_bytes` as text."""
    return dumps_bytes(value).decode()


def frame(channel: str, data: Mapping[str, Any], seq: int | None = None) -> bytes:
    """The client frame for an update on `channel`, as UTF-8 JSON bytes (Decimal as text, datetimes ISO 8601)."""
    body: dict[str, Any] = {"type": "update", "channel": channel, "data": data}
    if seq is not None:
        body["seq"] = seq
    return dumps_bytes(body)


def frame_around_seq(channel: str, data: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The numbered frame for an update on `channel` in two parts, to put its `seq` between them:
    `before + str(seq).encode() + after == frame(channel, data, seq)` (so the cache can number it, D39)."""
    head = _FRAME_HEADS.get(channel)
    if head is None:  # the frame up to its data, the same for every update on the channel
        head = dumps_bytes({"type": "update", "channel": channel, "data": None})[: -len(b"null}")]
        if len(_FRAME_HEADS) < MAX_FRAME_HEADS:
            _FRAME_HEADS[channel] = head
    return head + dumps_bytes(data) + b',"seq":', b"}"


_FRAME_HEADS: dict[str, bytes] = {}
MAX_FRAME_HEADS = 256
"""Channels whose frame head is kept (there are a few dozen; past this many, the rest are built each time)."""


class FramedData(dict[str, Any]):
    """An event's data together with its numbered frame for `channel`, built ahead (`framed`): the user stream
    publishes these parts as they are. A writer builds its batch's frames while the batch's COMMIT is in flight and
    publishes them once it returns (D55)."""

    __slots__ = ("channel", "parts")

    def __init__(self, channel: str, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self.channel = channel
        self.parts = frame_around_seq(channel, data)


def framed(channel: str, data: Mapping[str, Any]) -> tuple[str, FramedData]:
    """The event (`channel`, `data`) with its frame built now."""
    return channel, FramedData(channel, data)


def public_cache_channel(channel: str) -> str:
    """The cache channel of public client channel `channel`."""
    return PUBLIC_NAMESPACE + channel


def user_cache_channel(user_id: uuid.UUID | str, channel: str) -> str:
    """The cache channel of user `user_id`'s client channel `channel`."""
    return f"user:{user_id}:{channel}"


async def publish_public(cache: Cache, channel: str, data: Mapping[str, Any], *, seq: int | None = None) -> int:
    """Publish an update on public channel `channel` to every worker; returns how many workers listen."""
    if not channel.startswith(PUBLIC_PREFIXES):
        raise ValueError(f"{channel!r} is not a public channel (it must start with one of {PUBLIC_PREFIXES})")
    return await cache.publish(public_cache_channel(channel), frame(channel, data, seq))


async def publish_user(
    cache: Cache, user_id: uuid.UUID | str, channel: str, data: Mapping[str, Any], *, seq: int | None = None
) -> int:
    """Publish an update on user `user_id`'s channel `channel` to every worker; returns how many listen.

    Neither numbered nor kept for resume: the platform publishes user events through `UserStream.append`.
    """
    if channel not in USER_CHANNELS:
        raise ValueError(f"{channel!r} is not a user channel (one of {sorted(USER_CHANNELS)})")
    return await cache.publish(user_cache_channel(user_id, channel), frame(channel, data, seq))


def make_resolver(public_validator: Callable[[str], None]) -> Resolve:
    """The resolver for `WebSocketManager`: user channels here, public names checked by `public_validator`.

    The validator may raise any `ValidationFailed` (unknown exchange, symbol, timeframe); it becomes UnknownChannel.
    """

    def resolve(channel: str, principal: Principal) -> str:
        if channel in USER_CHANNELS:
            return user_cache_channel(principal.user_id, channel)
        if channel.startswith(PUBLIC_PREFIXES):
            try:
                public_validator(channel)
            except UnknownChannel:
                raise
            except ValidationFailed as exc:
                raise UnknownChannel(exc.detail) from exc
            return public_cache_channel(channel)
        raise UnknownChannel(
            f"unknown channel {_shorten(channel)!r}: expected one of {', '.join(sorted(USER_CHANNELS))}, "
            "or ticker:<exchange>:<symbol>, book:<exchange>:<symbol>, candles:<exchange>:<symbol>:<timeframe>"
        )

    return resolve


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- client messages ---------------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """An error frame for the client (`{"type":"error","error":code,"detail":...}`); the connection stays open."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra


def parse_message(text: str, max_channels: int) -> tuple[str, list[str], int | None]:
    """A client message as (op, channels without duplicates, since); ProtocolError says what is wrong with it."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError("invalid_message", f"messages are limited to {MAX_MESSAGE_CHARS} characters")
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("invalid_message", 'a message is a JSON object such as {"op": "ping"}')
    op = message.get("op")
    if op == "ping":
        return op, [], None
    if op not in ("subscribe", "unsubscribe"):
        raise ProtocolError("invalid_message", '"op" must be "subscribe", "unsubscribe" or "ping"')
    channels = message.get("channels")
    if not (
        isinstance(channels, list)
        and channels
        and all(isinstance(c, str) and 0 < len(c) <= MAX_CHANNEL_NAME for c in channels)
    ):
        raise ProtocolError(
            "invalid_message",
            f'"channels" must be a non-empty list of channel names (each 1-{MAX_CHANNEL_NAME} characters)',
        )
    if len(channels) > max_channels:
        raise ProtocolError("too_many_channels", f"at most {max_channels} channels per connection")
    since = message.get("since")
    if since is not None and (
        op != "subscribe" or not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= MAX_SEQ
    ):
        raise ProtocolError("invalid_message", '"since" is the last seq received (an integer >= 0), on subscribe')
    return op, list(dict.fromkeys(channels)), since
