"""Validated candles stored in bulk, one way per database (`candle_writer`): the candle import's writes.

Rows come as `CandleRow`s, already checked and in the form SQLite stores. SQLite gets an `executemany` of values in
their stored form, with ascending ids; PostgreSQL gets a text-format `COPY` into a temporary staging table, which it
parses itself, then one `INSERT ... SELECT ... ON CONFLICT` into the table. Rows are upserted on (symbol, exchange,
timeframe, open_time).
"""

from __future__ import annotations

import io
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncConnection

from cival.domain.candles import EPOCH

CandleRow = tuple[int, str, str, str, str, str]
"""One candle before it meets a database: its open time in ms, then open, high, low, close, volume as SQLite's
sortable fixed-width text (`ExactDecimal.encode`), which also orders correctly as plain strings because none is
negative."""

_DAY_MS = 86_400_000
_MINUTE_MS = 60_000

_OHLCV = ["open_price", "high_price", "low_price", "close_price", "volume"]
# The file is the truth for the candles it holds: a re-import replaces them whole, and the file has no quote volume
# or trade count, so those are cleared rather than left describing other trades.
_SQLITE_UPSERT = """
INSERT INTO market_data_ohlcv
    (id, symbol, exchange, timeframe, open_time, close_time,
     open_price, high_price, low_price, close_price, volume, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, exchange, timeframe, open_time) DO UPDATE SET
    close_time = excluded.close_time, open_price = excluded.open_price, high_price = excluded.high_price,
    low_price = excluded.low_price, close_price = excluded.close_price, volume = excluded.volume,
    quote_volume = NULL, trades_count = NULL
"""
_PG_STAGE = """
CREATE TEMPORARY TABLE cival_candle_import (
    open_time timestamptz NOT NULL, close_time timestamptz NOT NULL, open_price numeric NOT NULL,
    high_price numeric NOT NULL, low_price numeric NOT NULL, close_price numeric NOT NULL, volume numeric NOT NULL
) ON COMMIT DROP
"""
_STAGED = ["open_time", "close_time", *_OHLCV]
_PG_UPSERT = """
INSERT INTO market_data_ohlcv
    (symbol, exchange, timeframe, open_time, close_time, open_price, high_price, low_price, close_price, volume)
SELECT :symbol, :exchange, :timeframe, open_time, close_time,
       open_price, high_price, low_price, close_price, volume
FROM cival_candle_import
ON CONFLICT (symbol, exchange, timeframe, open_time) DO UPDATE SET
    close_time = excluded.close_time, open_price = excluded.open_price, high_price = excluded.high_price,
    low_price = excluded.low_price, close_price = excluded.close_price, volume = excluded.volume,
    quote_volume = NULL, trades_count = NULL
"""


class CandleWriter(Protocol):
    """`start`, then `write` each chunk of rows, then `finish`: how many rows were written."""

    async def start(self) -> None: ...

    async def write(self, rows: list[CandleRow]) -> None: ...

    async def finish(self) -> int: ...


def candle_writer(
    conn: AsyncConnection, *, sqlite: bool, exchange: str, symbol: str, timeframe: str, step: timedelta
) -> CandleWriter:
    """The writer of `conn`'s database for one series of candles (`step` long), inside `conn`'s transaction."""
    kind = _SqliteWriter if sqlite else _PostgresWriter
    return kind(conn, exchange, symbol, timeframe, step)


class _SqliteWriter:
    """`executemany` of values already in their stored form: ExactDecimal text, SQLAlchemy's DATETIME text."""

    def __init__(self, conn: AsyncConnection, exchange: str, symbol: str, timeframe: str, step: timedelta) -> None:
        self.conn = conn
        self.series = (symbol, exchange, timeframe)
        self.clock = _Clock(step)
        self.ids = _AscendingIds()
        self.created_at = _sqlite_datetime(datetime.now(UTC))
        self.written = 0

    async def start(self) -> None:
        return None

    async def write(self, rows: list[CandleRow]) -> None:
        if not rows:
            return
        symbol, exchange, timeframe = self.series
        created, times = self.created_at, self.clock.times
        ids = iter(self.ids.take(len(rows)))
        params = [
            (next(ids), symbol, exchange, timeframe, *times(ts), o, h, lo, c, v, created) for ts, o, h, lo, c, v in rows
        ]
        await self.conn.exec_driver_sql(_SQLITE_UPSERT, params)
        self.written += len(params)

    async def finish(self) -> int:
        return self.written


class _PostgresWriter:
    """`COPY` (text format) into a temporary staging table, then one upsert from it into `market_data_ohlcv`."""

    def __init__(self, conn: AsyncConnection, exchange: str, symbol: str, timeframe: str, step: timedelta) -> None:
        self.conn = conn
        self.params = {"symbol": symbol, "exchange": exchange, "timeframe": timeframe}
        self.clock = _Clock(step)
        self._driver: Any = None

    async def start(self) -> None:
        await self.conn.exec_driver_sql(_PG_STAGE)
        raw = await self.conn.get_raw_connection()
        self._driver = raw.driver_connection

    async def write(self, rows: list[CandleRow]) -> None:
        if not rows:
            return
        # Text COPY: PostgreSQL parses the exact decimal text itself, several times faster than asyncpg encodes
        # Decimals for a binary COPY. The values hold only digits, '.', '-', ':' and ' ', so nothing needs escaping.
        times = self.clock.times
        lines = []
        for ts, o, h, lo, c, v in rows:
            opened, closed = times(ts)
            lines.append(f"{opened}+00\t{closed}+00\t{o}\t{h}\t{lo}\t{c}\t{v}\n")
        payload = io.BytesIO("".join(lines).encode("ascii"))
        await self._driver.copy_to_table("cival_candle_import", source=payload, columns=_STAGED, format="text")

    async def finish(self) -> int:
        result = await self.conn.execute(sql_text(_PG_UPSERT), self.params)
        return result.rowcount


class _Clock:
    """Open and close times of candles as naive UTC text in SQLAlchemy's SQLite DATETIME form, from ms timestamps."""

    def __init__(self, step: timedelta) -> None:
        self.last_minute = step // timedelta(minutes=1) - 1
        self._days: dict[int, str] = {}

    def times(self, ts: int) -> tuple[str, str]:
        day, ms = divmod(ts, _DAY_MS)
        date = self._days.get(day)
        if date is None:
            date = self._days[day] = (EPOCH + timedelta(days=day)).strftime("%Y-%m-%d ")
        # Every timeframe divides a day and buckets are epoch-aligned, so a candle closes on the day it opens.
        minute = ms // _MINUTE_MS
        return date + _OPEN_AT[minute], date + _CLOSE_AT[minute + self.last_minute]


def _sqlite_datetime(moment: datetime) -> str:
    """The text SQLAlchemy's SQLite DATETIME stores for an aware `moment` (naive UTC, microseconds always)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_OPEN_AT = [f"{m // 60:02d}:{m % 60:02d}:00.000000" for m in range(24 * 60)]
_CLOSE_AT = [f"{m // 60:02d}:{m % 60:02d}:59.999999" for m in range(24 * 60)]


class _AscendingIds:
    """UUIDs (RFC 9562 version 7 layout) that ascend within an import, as the 32 hex digits SQLite stores.

    Random keys scatter inserts over the whole primary-key index, which outgrows SQLite's page cache: at a million
    rows that halves the insert rate. These share one prefix (the import's start in ms, 12 random bits) and count
    up in the top of `rand_b` above 32 random bits, so the index grows at its end and two imports in the same
    millisecond still differ in 44 random bits.
    """

    _COUNTER_LIMIT = 1 << 30

    def __init__(self) -> None:
        self._reseed()

    def _reseed(self) -> None:
        now_ms = time.time_ns() // 1_000_000
        self._prefix = f"{now_ms:012x}7{secrets.randbits(12):03x}"
        self._base = (0b10 << 62) | secrets.randbits(32)  # the RFC 4122 variant, then the random tail
        self._next = 0

    def take(self, count: int) -> list[str]:
        if self._next + count >= self._COUNTER_LIMIT:
            self._reseed()
        start, self._next = self._next, self._next + count
        prefix, base = self._prefix, self._base
        return [prefix + f"{base + (i << 32):016x}" for i in range(start, start + count)]
