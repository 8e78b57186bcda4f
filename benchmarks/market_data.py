"""The market data benchmarks of the market data issue, one after another, each printing its figure beside the
ceiling it measured in the same run:

1. ingestion of 1,000,000 candle rows through Cival's importer vs raw executemany (SQLite) and raw COPY
   (PostgreSQL, when `CIVAL_BENCH_DATABASE_URL` is set) — `benchmarks/market_data_ingest.py`;
2. candle query latency for 10,000 rows through the HTTP API vs a raw SELECT — `benchmarks/candle_query.py`;
3. WebSocket fan-out of ticker messages to 100 and 1,000 clients vs in-process fan-out — `benchmarks/ws_fanout.py`.

Run: `.venv/bin/python -m benchmarks.market_data` (each part also runs on its own).
"""

from __future__ import annotations

import subprocess
import sys

PARTS = ("benchmarks.market_data_ingest", "benchmarks.candle_query", "benchmarks.ws_fanout")


def main() -> None:
    for module in PARTS:
        print(f"\n=== {module} ===", flush=True)
        subprocess.run([sys.executable, "-m", module], check=True)  # noqa: S603 - our own benchmark modules


if __name__ == "__main__":
    main()
