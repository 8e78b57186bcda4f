"""Throughput of `import_candles` (parse + validate + upsert a CSV file) against the raw write rate of the database.

The ceiling is measured in the same run on the same, freshly migrated and emptied table, with the same rows already
encoded (so it includes no parsing at all):

- SQLite: one `sqlite3` `executemany` of plain INSERTs in one transaction, with the pragmas Cival's connections use.
- PostgreSQL (only with `CIVAL_BENCH_DATABASE_URL`, e.g. postgresql://postgres@127.0.0.1:5432/test): one asyncpg
  `COPY` of the finished records into the table. A scratch database is created on that server and dropped after.

Target: the importer reaches at least half the ceiling's rows per second. The rows are synthetic, deterministic 1m
candles with prices written the way exchange exports write them (no trailing zeros).

Run: `.venv/bin/python -m benchmarks.market_data_ingest` from the repository root. `ROWS=100000` for a quick run,
`RUNS=n` for the number of interleaved runs of each path (the best is kept).
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy.engine import make_url

from cival.config import Settings
from cival.core.db import Database
from cival.database import migrate
from cival.database.types import ExactDecimal
from cival.services.candle_importer import import_candles

ROWS = int(os.environ.get("ROWS", "1000000"))
RUNS = int(os.environ.get("RUNS", "2"))
PG_URL = os.environ.get("CIVAL_BENCH_DATABASE_URL", "")
TARGET = 0.5
EXCHANGE, SYMBOL, TIMEFRAME = "binance", "BTC/USDT", "1m"
START = datetime(2020, 1, 1, tzinfo=UTC)
COLUMNS = [
    "id",
    "symbol",
    "exchange",
    "timeframe",
    "open_time",
    "close_time",
    "open_price",
    "high_price",
    "low_price",
    "close_price",
    "volume",
    "quote_volume",
    "trades_count",
    "created_at",
]
RAW_INSERT = """
INSERT INTO market_data_ohlcv
    (id, symbol, exchange, timeframe, open_time, close_time, open_price, high_price, low_price, close_price, volume,
     quote_volume, trades_count, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Result:
    path: str
    rates: list[float]
    ceiling: bool


def synthetic_rows(count: int) -> list[tuple[int, str, str, str, str, str]]:
    """Deterministic 1m candles: a random walk in units of 1e-8, so no value ever passes through a float."""
    rng = random.Random(20240101)
    price = 30_000 * 10**8
    start_ms = (START - EPOCH) // timedelta(milliseconds=1)
    rows = []
    for i in range(count):
        open_ = price
        close = max(10**8, open_ + rng.randint(-2_000_000_000, 2_000_000_000))
        high = max(open_, close) + rng.randint(0, 1_000_000_000)
        low = max(1, min(open_, close) - rng.randint(0, 1_000_000_000))
        volume = rng.randint(0, 50_000_000_000)
        rows.append((start_ms + i * 60_000, *(units(v) for v in (open_, high, low, close, volume))))
        price = close
    return rows


def units(value: int) -> str:
    """`value` * 1e-8 as an exchange writes it: `30000.12`, `0.5`, `42`."""
    whole, frac = divmod(value, 10**8)
    return f"{whole}.{frac:08d}".rstrip("0").rstrip(".")


def write_csv(rows: list[tuple[int, str, str, str, str, str]], path: Path) -> None:
    with path.open("w") as fh:
        fh.write("ts_ms,open,high,low,close,volume\n")
        fh.writelines(",".join(map(str, row)) + "\n" for row in rows)


def sqlite_records(rows: list[tuple[int, str, str, str, str, str]]) -> list[tuple[object, ...]]:
    """The rows as the importer stores them on SQLite: its ascending ids, DATETIME text, ExactDecimal text."""
    money = ExactDecimal(20, 8)
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    prefix = f"{time.time_ns() // 1_000_000:012x}7{random.getrandbits(12):03x}"
    base = (0b10 << 62) | random.getrandbits(32)
    out: list[tuple[object, ...]] = []
    for i, (ts, *values) in enumerate(rows):
        opened = EPOCH + timedelta(milliseconds=ts)
        closed = opened + timedelta(minutes=1, microseconds=-1)
        out.append(
            (
                prefix + f"{base + (i << 32):016x}",
                SYMBOL,
                EXCHANGE,
                TIMEFRAME,
                opened.strftime("%Y-%m-%d %H:%M:%S.%f"),
                closed.strftime("%Y-%m-%d %H:%M:%S.%f"),
                *(money.encode(money.check(Decimal(v))) for v in values),
                None,
                None,
                created,
            )
        )
    return out


def postgres_records(rows: list[tuple[int, str, str, str, str, str]]) -> list[tuple[object, ...]]:
    """The rows as asyncpg sends them: random UUIDs (as the importer's column default), datetimes, Decimals."""
    created = datetime.now(UTC)
    out: list[tuple[object, ...]] = []
    for ts, *values in rows:
        opened = EPOCH + timedelta(milliseconds=ts)
        closed = opened + timedelta(minutes=1, microseconds=-1)
        out.append(
            (uuid.uuid4(), SYMBOL, EXCHANGE, TIMEFRAME, opened, closed, *map(Decimal, values), None, None, created)
        )
    return out


async def timed(work: Callable[[], Awaitable[int]]) -> float:
    start = time.perf_counter()
    written = await work()
    elapsed = time.perf_counter() - start
    if written != ROWS:
        raise RuntimeError(f"wrote {written} rows, expected {ROWS}")
    return ROWS / elapsed


async def importer(settings: Settings, csv_path: Path) -> int:
    database = Database(settings)
    try:
        result = await import_candles(database, csv_path, exchange=EXCHANGE, symbol=SYMBOL, timeframe=TIMEFRAME)
    finally:
        await database.close()
    return result.rows_written


async def bench_sqlite(rows: list[tuple[int, str, str, str, str, str]], csv_path: Path, tmp: Path) -> list[Result]:
    db_file = tmp / "cival.sqlite3"
    url = f"sqlite+aiosqlite:///{db_file}"
    await migrate.upgrade(url)
    settings = Settings(env="test", data_dir=tmp, database_url=url)
    records = sqlite_records(rows)

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db_file, isolation_level=None)
        for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL"):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def empty() -> None:
        with connect() as conn:
            conn.execute("DELETE FROM market_data_ohlcv")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def raw() -> int:
        conn = connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(RAW_INSERT, records)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return len(records)

    raw_rates, import_rates = [], []
    for _ in range(RUNS):
        empty()
        raw_rates.append(await timed(raw))
        empty()
        import_rates.append(await timed(lambda: importer(settings, csv_path)))
    return [Result("sqlite: raw executemany", raw_rates, True), Result("sqlite: import_candles", import_rates, False)]


async def bench_postgres(rows: list[tuple[int, str, str, str, str, str]], csv_path: Path, tmp: Path) -> list[Result]:
    import asyncpg

    server = make_url(PG_URL).set(drivername="postgresql")
    name = f"cival_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server.render_as_string(hide_password=False))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = server.set(database=name).render_as_string(hide_password=False)
        url = server.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
        await migrate.upgrade(url)
        settings = Settings(env="test", data_dir=tmp, database_url=url)
        records = postgres_records(rows)
        conn = await asyncpg.connect(dsn)

        async def raw() -> int:
            async with conn.transaction():
                await conn.copy_records_to_table("market_data_ohlcv", records=records, columns=COLUMNS)
            return len(records)

        async def empty() -> None:
            await conn.execute("TRUNCATE market_data_ohlcv")
            await conn.execute("VACUUM ANALYZE market_data_ohlcv")

        raw_rates, import_rates = [], []
        try:
            for _ in range(RUNS):
                await empty()
                raw_rates.append(await timed(raw))
                await empty()
                import_rates.append(await timed(lambda: importer(settings, csv_path)))
        finally:
            await conn.close()
        return [
            Result("postgresql: raw COPY", raw_rates, True),
            Result("postgresql: import_candles", import_rates, False),
        ]
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def report(results: list[Result]) -> bool:
    print(f"{'path':<30} {'rows/s':>10} {'x ceiling':>10}  target >= {TARGET}x")
    passed = True
    ceiling = 0.0
    for result in results:
        rate = max(result.rates)
        if result.ceiling:
            ceiling = rate
            print(f"{result.path:<30} {rate:>10,.0f} {1.0:>10.2f}")
            continue
        ratio = rate / ceiling
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        passed = passed and ratio >= TARGET
        print(f"{result.path:<30} {rate:>10,.0f} {ratio:>10.2f}  {verdict}")
    return passed


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = synthetic_rows(ROWS)
        csv_path = tmp / "BTC_USDT-1m.csv"
        write_csv(rows, csv_path)
        size = csv_path.stat().st_size / 2**20
        print(f"market data ingest: {ROWS:,} 1m candles, CSV {size:.1f} MiB, best of {RUNS} interleaved runs")
        results = await bench_sqlite(rows, csv_path, tmp)
        if PG_URL:
            results += await bench_postgres(rows, csv_path, tmp)
        else:
            print("(PostgreSQL skipped: set CIVAL_BENCH_DATABASE_URL to measure it)")
    passed = report(results)
    print("PASS" if passed else "FAIL")


if __name__ == "__main__":
    asyncio.run(main())
