"""Cost of authentication, measured over HTTP on loopback against one uvicorn worker (embedded SQLite).

1. Authenticated request overhead: the same trivial endpoint served with and without the bearer-token dependency
   (session look-up by token hash), requests per second with 16 concurrent clients, same run. The unauthenticated
   endpoint is the ceiling.
2. Login latency (Argon2id at the configured parameters dominates it), sequential, median and p99.

Run: `.venv/bin/python -m benchmarks.auth` (from the repository root). `REQUESTS=... LOGINS=...` to change sizes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid

import httpx

from benchmarks._server import hammer, serve
from cival.api.deps import CurrentUser  # noqa: TC001 - FastAPI resolves the annotation at run time

REQUESTS = int(os.environ.get("REQUESTS", "3000"))
LOGINS = int(os.environ.get("LOGINS", "40"))
CONCURRENCY = 16


def child(port: int) -> None:
    """The benchmark server: the real app plus two identical trivial routes, one behind authentication."""
    import uvicorn
    from fastapi import APIRouter

    from cival.app import create_app

    app = create_app()
    router = APIRouter()

    @router.get("/bench/open")
    async def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    @router.get("/bench/authed")
    async def authed_route(principal: CurrentUser) -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(router)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def measure(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", "benchmark-password"
        r = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        login_times = []
        token = ""
        for _ in range(LOGINS):
            start = time.perf_counter()
            r = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
            login_times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    await hammer(base, "/bench/open", requests=300, concurrency=CONCURRENCY)  # warm up
    await hammer(base, "/bench/authed", requests=300, concurrency=CONCURRENCY, headers=headers)
    # Interleave the two so machine noise hits both alike; keep the best of three each.
    open_rates, authed_rates = [], []
    for _ in range(3):
        open_rates.append(await hammer(base, "/bench/open", requests=REQUESTS, concurrency=CONCURRENCY))
        authed_rates.append(
            await hammer(base, "/bench/authed", requests=REQUESTS, concurrency=CONCURRENCY, headers=headers)
        )
    open_rps, authed_rps = max(open_rates), max(authed_rates)
    login_times.sort()
    p99 = login_times[min(len(login_times) - 1, int(len(login_times) * 0.99))]
    print(f"authentication cost, {REQUESTS} requests x{CONCURRENCY} concurrent, one uvicorn worker, SQLite")
    print(f"{'what':<42} {'value':>12} {'vs ceiling':>11}")
    print(f"{'ceiling: same endpoint, no auth (req/s)':<42} {open_rps:>12.0f} {'1.00':>11}")
    print(f"{'authenticated endpoint (req/s)':<42} {authed_rps:>12.0f} {authed_rps / open_rps:>11.2f}")
    print(f"{'auth cost per request (ms of server time)':<42} {(1 / authed_rps - 1 / open_rps) * 1000:>12.3f}")
    print(f"{'login latency median (ms), Argon2id':<42} {statistics.median(login_times) * 1000:>12.1f}")
    print(f"{'login latency p99 (ms)':<42} {p99 * 1000:>12.1f}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "serve-child":
        child(int(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "CIVAL_DATA_DIR": tmp,
            "CIVAL_LOG_LEVEL": "WARNING",
            "CIVAL_RATE_LIMIT_LOGIN": "1000000/60",
            "CIVAL_RATE_LIMIT_REGISTER": "1000000/60",
        }
        from cival.database import migrate

        asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{tmp}/cival.sqlite3"))
        with serve("benchmarks.auth", env) as base:
            asyncio.run(measure(base))


if __name__ == "__main__":
    main()
