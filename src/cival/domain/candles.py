"""OHLCV candles: bucketing trades into 1m candles and 1m candles into longer timeframes.

Conventions, used by every function here:

- Buckets are aligned to the Unix epoch in UTC, so a 1d candle opens at 00:00 UTC and a 4h candle at 00:00, 04:00,
  08:00 ... UTC. A trade at exactly a bucket boundary belongs to the bucket that starts there.
- `close_time` is defined as `open_time + timeframe - 1 microsecond`: the last instant inside the bucket. This is
  Binance's kline convention (`closeTime = openTime + interval - 1 ms`) at microsecond resolution, which is what
  Python datetimes and PostgreSQL timestamps hold.
- Gaps: a bucket with no trades produces NO candle; nothing synthetic (no flat candle repeating the last close) is
  ever invented. A longer-timeframe candle is built from whatever 1m candles exist inside it: its open is the first
  existing 1m candle's open, its close the last one's close. Consumers that want a continuous series fill it
  themselves, visibly.
- Within a bucket, trades are ordered by timestamp; trades with equal timestamps keep their arrival order.
- Sums (volume, quote volume) are exact: a result the decimal context could not hold exactly raises
  `decimal.Inexact` rather than being rounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from types import MappingProxyType

TIMEFRAMES: Mapping[str, timedelta] = MappingProxyType(
    {
        "1m": timedelta(minutes=1),
        "5m": timedelta(minutes=5),
        "15m": timedelta(minutes=15),
        "1h": timedelta(hours=1),
        "4h": timedelta(hours=4),
        "1d": timedelta(days=1),
    }
)
"""The supported candle timeframes, shortest first."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Enough digits for any sum of DECIMAL(20,8) products; Inexact is trapped so a sum is never silently rounded.
_EXACT = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


class UnknownTimeframe(ValueError):
    """A timeframe label that is not one of `TIMEFRAMES`."""


class InvalidCandle(ValueError):
    """A candle whose values contradict each other or its bucket."""


class InvalidTrade(ValueError):
    """A trade tick with a non-positive price or quantity, or a naive timestamp."""


class LateTrade(ValueError):
    """A trade for a bucket whose candle has already closed."""


def parse_timeframe(label: str) -> timedelta:
    """The duration of a timeframe label such as `"5m"`."""
    try:
        return TIMEFRAMES[label]
    except KeyError:
        raise UnknownTimeframe(f"unknown timeframe {label!r}; valid: {', '.join(TIMEFRAMES)}") from None


def _utc(ts: datetime, what: str, error: type[ValueError]) -> datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise error(f"{what} {ts.isoformat()} is naive; timestamps must be timezone-aware (UTC)")
    return ts.astimezone(UTC)


def _require_decimal(value: object, what: str, error: type[ValueError]) -> None:
    if not isinstance(value, Decimal):
        raise error(f"{what} {value!r} is a {type(value).__name__}; it must be a Decimal")
    if not value.is_finite():
        raise error(f"{what} {value} is not a finite number")


def bucket_start(ts: datetime, timeframe: str) -> datetime:
    """The UTC, epoch-aligned start of the `timeframe` bucket containing `ts`."""
    step = parse_timeframe(timeframe)
    since_epoch = _utc(ts, "timestamp", ValueError) - EPOCH
    return EPOCH + (since_epoch // step) * step


@dataclass(frozen=True)
class TradeTick:
    """One public trade: when, at what price, how much of the base asset."""

    ts: datetime
    price: Decimal
    quantity: Decimal
    trade_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", _utc(self.ts, "trade ts", InvalidTrade))
        _require_decimal(self.price, "trade price", InvalidTrade)
        _require_decimal(self.quantity, "trade quantity", InvalidTrade)
        if self.price <= 0:
            raise InvalidTrade(f"trade price {self.price} must be positive")
        if self.quantity <= 0:
            raise InvalidTrade(f"trade quantity {self.quantity} must be positive")


@dataclass(frozen=True)
class Candle:
    """One OHLCV bar; `close_time` is derived (`open_time + timeframe - 1µs`), never passed in."""

    symbol: str
    exchange: str
    timeframe: str
    open_time: datetime
    close_time: datetime = field(init=False)
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades_count: int

    def __post_init__(self) -> None:
        step = parse_timeframe(self.timeframe)
        open_time = _utc(self.open_time, "open_time", InvalidCandle)
        object.__setattr__(self, "open_time", open_time)
        object.__setattr__(self, "close_time", open_time + step - _MICROSECOND)
        self._validate(open_time)

    def _validate(self, open_time: datetime) -> None:
        for name in ("open", "high", "low", "close", "volume", "quote_volume"):
            _require_decimal(getattr(self, name), name, InvalidCandle)
        if bucket_start(open_time, self.timeframe) != open_time:
            raise InvalidCandle(f"open_time {open_time.isoformat()} is not aligned to a {self.timeframe} bucket")
        if self.low <= 0:
            raise InvalidCandle(f"low {self.low} must be positive")
        if self.high < self.low:
            raise InvalidCandle(f"high {self.high} is below low {self.low}")
        for name in ("open", "close"):
            value = getattr(self, name)
            if self.high < value:
                raise InvalidCandle(f"high {self.high} is below {name} {value}")
            if self.low > value:
                raise InvalidCandle(f"low {self.low} is above {name} {value}")
        if self.volume < 0:
            raise InvalidCandle(f"volume {self.volume} is negative")
        if self.quote_volume < 0:
            raise InvalidCandle(f"quote_volume {self.quote_volume} is negative")
        if self.trades_count < 0:
            raise InvalidCandle(f"trades_count {self.trades_count} is negative")

    @property
    def duration(self) -> timedelta:
        """The length of the candle's bucket."""
        return parse_timeframe(self.timeframe)


@dataclass
class _FormingCandle:
    """A candle still collecting trades; tracks the timestamps of its open and close trades."""

    open_time: datetime
    first_ts: datetime
    last_ts: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades_count: int

    @classmethod
    def start(cls, open_time: datetime, tick: TradeTick) -> _FormingCandle:
        return cls(
            open_time=open_time,
            first_ts=tick.ts,
            last_ts=tick.ts,
            open=tick.price,
            high=tick.price,
            low=tick.price,
            close=tick.price,
            volume=tick.quantity,
            quote_volume=_EXACT.multiply(tick.price, tick.quantity),
            trades_count=1,
        )

    def add(self, tick: TradeTick) -> None:
        # Strict `<` for the open and `>=` for the close give the same answer as a stable sort by timestamp, so an
        # out-of-order trade inside the bucket lands where batch aggregation would put it.
        if tick.ts < self.first_ts:
            self.first_ts, self.open = tick.ts, tick.price
        if tick.ts >= self.last_ts:
            self.last_ts, self.close = tick.ts, tick.price
        self.high = max(self.high, tick.price)
        self.low = min(self.low, tick.price)
        self.volume = _EXACT.add(self.volume, tick.quantity)
        self.quote_volume = _EXACT.add(self.quote_volume, _EXACT.multiply(tick.price, tick.quantity))
        self.trades_count += 1

    def to_candle(self, symbol: str, exchange: str, timeframe: str) -> Candle:
        return Candle(
            symbol=symbol,
            exchange=exchange,
            timeframe=timeframe,
            open_time=self.open_time,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            quote_volume=self.quote_volume,
            trades_count=self.trades_count,
        )


def aggregate_trades(trades: Iterable[TradeTick], symbol: str, exchange: str, *, timeframe: str = "1m") -> list[Candle]:
    """Candles (1m by default) from trades in any order; buckets without trades yield no candle."""
    parse_timeframe(timeframe)
    candles: list[Candle] = []
    forming: _FormingCandle | None = None
    for tick in sorted(trades, key=lambda t: t.ts):
        start = bucket_start(tick.ts, timeframe)
        if forming is not None and forming.open_time == start:
            forming.add(tick)
            continue
        if forming is not None:
            candles.append(forming.to_candle(symbol, exchange, timeframe))
        forming = _FormingCandle.start(start, tick)
    if forming is not None:
        candles.append(forming.to_candle(symbol, exchange, timeframe))
    return candles


def aggregate_candles(candles: Iterable[Candle], timeframe: str) -> list[Candle]:
    """Candles of `timeframe` from shorter candles of one series; built from whichever candles exist in each bucket."""
    target = parse_timeframe(timeframe)
    ordered = sorted(candles, key=lambda c: c.open_time)
    if not ordered:
        return []
    first = ordered[0]
    if first.duration > target or target % first.duration:
        raise ValueError(f"{first.timeframe} candles cannot be aggregated into {timeframe} candles")
    groups: dict[datetime, list[Candle]] = {}
    previous: Candle | None = None
    for candle in ordered:
        if (candle.symbol, candle.exchange, candle.timeframe) != (first.symbol, first.exchange, first.timeframe):
            raise ValueError(
                f"cannot aggregate {candle.timeframe} {candle.symbol} on {candle.exchange} together with "
                f"{first.timeframe} {first.symbol} on {first.exchange}"
            )
        if previous is not None and previous.open_time == candle.open_time:
            raise ValueError(f"two {candle.timeframe} candles open at {candle.open_time.isoformat()}")
        groups.setdefault(bucket_start(candle.open_time, timeframe), []).append(candle)
        previous = candle
    return [_merge(open_time, group, timeframe) for open_time, group in groups.items()]


def _merge(open_time: datetime, group: list[Candle], timeframe: str) -> Candle:
    volume = quote_volume = Decimal(0)
    for candle in group:
        volume = _EXACT.add(volume, candle.volume)
        quote_volume = _EXACT.add(quote_volume, candle.quote_volume)
    return Candle(
        symbol=group[0].symbol,
        exchange=group[0].exchange,
        timeframe=timeframe,
        open_time=open_time,
        open=group[0].open,
        high=max(c.high for c in group),
        low=min(c.low for c in group),
        close=group[-1].close,
        volume=volume,
        quote_volume=quote_volume,
        trades_count=sum(c.trades_count for c in group),
    )


class CandleBuilder:
    """Builds candles incrementally from a live trade feed; the result equals `aggregate_trades` on the same feed."""

    def __init__(self, symbol: str, exchange: str, timeframe: str = "1m") -> None:
        parse_timeframe(timeframe)
        self.symbol = symbol
        self.exchange = exchange
        self.timeframe = timeframe
        self._forming: _FormingCandle | None = None
        # Start of the earliest bucket still open for trades; anything before it has been emitted already.
        self._open_from: datetime | None = None

    def add_trade(self, tick: TradeTick) -> list[Candle]:
        """Add a trade; return the candles that closed because it falls in a later bucket."""
        start = bucket_start(tick.ts, self.timeframe)
        if self._open_from is not None and start < self._open_from:
            raise LateTrade(
                f"trade at {tick.ts.isoformat()} belongs to the {self.timeframe} candle opened at "
                f"{start.isoformat()}, which has already closed"
            )
        if self._forming is not None and self._forming.open_time == start:
            self._forming.add(tick)
            return []
        closed = self._close()
        self._forming = _FormingCandle.start(start, tick)
        self._open_from = start
        return closed

    def advance(self, now: datetime) -> list[Candle]:
        """Close the forming candle if `now` is past its bucket, even though no later trade arrived."""
        start = bucket_start(now, self.timeframe)
        if self._forming is None or start <= self._forming.open_time:
            return []
        closed = self._close()
        self._open_from = start
        return closed

    def current(self) -> Candle | None:
        """The candle still forming, or None before the first trade and right after one closed."""
        if self._forming is None:
            return None
        return self._forming.to_candle(self.symbol, self.exchange, self.timeframe)

    def _close(self) -> list[Candle]:
        if self._forming is None:
            return []
        candle = self._forming.to_candle(self.symbol, self.exchange, self.timeframe)
        self._forming = None
        return [candle]
