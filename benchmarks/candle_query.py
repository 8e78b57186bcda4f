"""Candle query latency: 10,000 1m candles through `GET /api/v1/market-data/candles?limit=10000`, over HTTP on
loopback against one uvicorn worker (embedded SQLite), beside the ceiling measured in the same run: the same rows
fetched with a raw `sqlite3` query in this process (no HTTP, no ORM, no JSON).

Run: `.venv/bin/python -m benchmarks.candle_query`. `RUNS=...` to change the number of timed requests.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from benchmarks._server import serve

ROWS = 10_000
RUNS = int(os.environ.get("RUNS", "15"))
START = datetime(2025, 1, 1, tzinfo=UTC)


def child(port: int) -> None:
    import uvicorn

    from cival.app import create_app

    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def seed(data_dir: str) -> None:
    """A migrated database holding 10,000 consecutive 1m BTC/USDT candles on the paper exchange."""
    from cival.config import Settings
    from cival.core.db import Database
    from cival.database import migrate
    from cival.database.models import MarketDataOHLCV, TradingPair
    from cival.database.upsert import upsert

    settings = Settings(data_dir=data_dir)
    await migrate.upgrade(settings.effective_database_url)
    database = Database(settings)
    rows = []
    for n in range(ROWS):
        price = Decimal(60000) + Decimal(n % 997) / 10
        rows.append(
            {
                "id": uuid.uuid4(),
                "symbol": "BTC/USDT",
                "exchange": "paper",
                "timeframe": "1m",
                "open_time": START + timedelta(minutes=n),
                "close_time": START + timedelta(minutes=n + 1, microseconds=-1),
                "open_price": price,
                "high_price": price + 5,
                "low_price": price - 5,
                "close_price": price + 1,
                "volume": Decimal("1.23456"),
                "quote_volume": Decimal("74074.07407"),
                "trades_count": 42,
            }
        )
    async with database.system_session() as session:
        await upsert(
            session,
            TradingPair.__table__,  # type: ignore[arg-type]
            [
                {
                    "id": uuid.uuid4(),
                    "symbol": "BTC/USDT",
                    "base_asset": "BTC",
                    "quote_asset": "USDT",
                    "exchange": "paper",
                }
            ],
            keys=("symbol", "exchange"),
            update=("base_asset",),
        )
        for chunk in range(0, ROWS, 1000):
            await upsert(
                session, MarketDataOHLCV.__table__, rows[chunk : chunk + 1000], keys=("id",), update=("volume",)
            )  # type: ignore[arg-type]
    await database.close()


def raw_query(path: str) -> float:
    with sqlite3.connect(path) as conn:
        start = time.perf_counter()
        rows = conn.execute(
            "SELECT open_time, close_time, open_price, high_price, low_price, close_price, volume, quote_volume, "
            "trades_count FROM market_data_ohlcv WHERE exchange = 'paper' AND symbol = 'BTC/USDT' AND timeframe = '1m' "
            "ORDER BY open_time DESC LIMIT 10000"
        ).fetchall()
        elapsed = time.perf_counter() - start
    assert len(rows) == ROWS
    return elapsed


async def measure(base: str, db_path: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        await client.post("/api/v1/auth/register", json={"email": email, "password": "benchmark-password"})
        login = await client.post("/api/v1/auth/login", json={"email": email, "password": "benchmark-password"})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        params = {"exchange": "paper", "symbol": "BTC/USDT", "timeframe": "1m", "limit": ROWS}
        api, raw = [], []
        for _ in range(RUNS + 2):
            start = time.perf_counter()
            response = await client.get("/api/v1/market-data/candles", params=params, headers=headers)
            api.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
            assert len(response.json()["candles"]) == ROWS
            raw.append(raw_query(db_path))
    api, raw = api[2:], raw[2:]  # warm-up
    api_ms, raw_ms = statistics.median(api) * 1000, statistics.median(raw) * 1000
    print(f"candle query: {ROWS} candles, median of {RUNS} (one uvicorn worker, SQLite)")
    print(f"{'what':<44} {'ms':>9} {'x ceiling':>10}")
    print(f"{'ceiling: raw sqlite3 SELECT of the same rows':<44} {raw_ms:>9.1f} {'1.00':>10}")
    print(f"{'GET /api/v1/market-data/candles?limit=10000':<44} {api_ms:>9.1f} {api_ms / raw_ms:>10.1f}")
    p95 = sorted(api)[int(len(api) * 0.95) - 1] * 1000
    print(f"{'  p95':<44} {p95:>9.1f}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "serve-child":
        child(int(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(seed(tmp))
        env = {"CIVAL_DATA_DIR": tmp, "CIVAL_LOG_LEVEL": "WARNING", "CIVAL_MARKET_DATA_ENABLED": "false"}
        with serve("benchmarks.candle_query", env) as base:
            asyncio.run(measure(base, f"{tmp}/cival.sqlite3"))


if __name__ == "__main__":
    main()
