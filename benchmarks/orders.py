"""End-to-end order placement through the HTTP API, beside the raw-SQL ceiling of the same writes (issue 5).

1. Orders per second and p50/p99 latency of `POST /api/v1/orders`: paper MARKET orders of BTC/USDT that fill
   (0.0002 BTC, each client alternating buy and sell on its own funded paper account, so funds never run out),
   8 concurrent keep-alive clients, against one uvicorn worker running the real app with the simulated market on
   (1 s step; measuring starts once `/api/v1/market-data/orderbook` answers and each client has placed
   `WARMUP_PER_CLIENT` orders, as many as each ceiling client's warm-up transactions).
2. The ceiling, same database, same run, while no server runs: per order ONE transaction that inserts an order
   and a trade, upserts a position and updates two balances, issued with raw SQL (sqlite3 via aiosqlite on SQLite,
   asyncpg on PostgreSQL) from 8 concurrent clients, each on its own account. Its CPU column is the raw client's
   own CPU per transaction, beside the server's CPU per order. Shown beside it, not a target: the same writes in
   the TWO transactions the order path must use (the order stored with its funds locked and committed before it
   is sent to the venue, then the fill), which says how much of the gap is that rule and how much is the path.
   Sections 1 and 2 alternate in `ROUNDS` rounds (3): each round starts a server on the same database, measures its
   share of the orders, stops it, then runs its share of each ceiling; the figures are over all rounds together
   (rates over the summed time, percentiles over all latencies), and each round's ratio is printed. This machine's
   speed drifts from one minute to the next (the same code's CPU per order has moved 2x between runs): measuring
   the API and its ceiling close together, several times, keeps a slow phase from landing on one side only.
3. `--gate` (the risk issue): the cost of the pre-trade risk gate. One server child, the same user and accounts,
   batches of orders with every limit type configured (`GATE_LIMITS`, sized so none refuses: the gate does all its
   work), with no limits at all (the gate still reads the user's standing to learn that), and with the gate taken
   out of the order path (`/bench/gate`), in a symmetric order so the growing tables weigh on all alike. Target: the
   gate costs < 15% of throughput (issue: all limits vs none; also shown: vs no gate). Throughput is wall clock;
   the server's CPU time per order is printed beside it, since other load on the machine moves the first. On SQLite,
   and on PostgreSQL when configured (with Redis as the cache when `CIVAL_BENCH_REDIS_URL=redis://host:6379/0`).

Targets (issue 5): at least 40% of the raw rate on PostgreSQL, p99 under 50 ms. Sections 1 and 2 run with the
platform's default risk limits, except `order_rate`, raised so the benchmark's burst is not refused.

Run: `.venv/bin/python -m benchmarks.orders [--gate] [--profile] [--sections]` from the repository root.
`PLAIN_HTTP=1` runs the servers on the standard asyncio loop and h11 instead of uvloop and httptools (D36).
PostgreSQL is measured too when `CIVAL_BENCH_DATABASE_URL=postgresql://user@host:port/any` is set (a scratch
database is created there, migrated, and dropped afterwards). `ORDERS=... RAW=...` change the sizes, `CLIENTS=`
the number of concurrent clients on both sides (8), `ROUNDS=` the rounds (3), `SKIP_FLOOR=1` skips the HTTP floor
run (measured in the last round). `--profile` runs one extra, smaller SQLite pass with cProfile inside the server
child (cProfile sees the event loop thread only: time inside aiosqlite's worker thread shows up as waiting);
`--sections` one with wall-clock timers around each step of the order path (awaits included, so lock waits show).
"""

from __future__ import annotations

import asyncio
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from benchmarks._server import serve

ORDERS = int(os.environ.get("ORDERS", "400"))
RAW = int(os.environ.get("RAW", "4000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONCURRENCY = int(os.environ.get("CLIENTS", "8"))
WARMUP_PER_CLIENT = 20
"""Requests (or raw transactions) each client makes before measuring starts, the same on both sides: pooled
connections opened, statements prepared, caches filled."""
WARMUP = WARMUP_PER_CLIENT * CONCURRENCY
SYMBOL = "BTC/USDT"
QUANTITY = "0.0002"
PROFILE_ORDERS = 600
BENCH_DB = os.environ.get("CIVAL_BENCH_DATABASE_URL", "")
BENCH_REDIS = os.environ.get("CIVAL_BENCH_REDIS_URL", "")  # --gate on PostgreSQL: Redis as the cache, when set


# --- the server child ---------------------------------------------------------------------------------------


def child(port: int) -> None:
    """The real app under uvicorn (plus `/bench/cpu` and `/bench/gate`); `BENCH_PROFILE=file` runs cProfile."""
    import uvicorn

    from cival.app import app_factory

    app = app_factory()  # as `cival serve` builds it
    _gate_routes(app)
    if os.environ.get("BENCH_SECTIONS") == "1":
        _time_sections(app)
    profile_to = os.environ.get("BENCH_PROFILE")
    if not profile_to:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **_loop())
        return
    import cProfile

    from fastapi import APIRouter

    profiler = cProfile.Profile()
    router = APIRouter()

    @router.post("/bench/profile")
    async def profile_control(action: str) -> dict[str, str]:
        # uvicorn re-raises SIGTERM after shutdown, so the stats are written on request, not at exit.
        if action == "start":
            profiler.enable()
        else:
            profiler.disable()
            profiler.dump_stats(profile_to)
        return {"ok": action}

    app.include_router(router)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **_loop())


def _loop() -> dict[str, str]:
    """`PLAIN_HTTP=1`: uvicorn on the standard asyncio loop and h11 (what it uses without uvloop and httptools)."""
    return {"loop": "asyncio", "http": "h11"} if os.environ.get("PLAIN_HTTP") == "1" else {}


def _gate_routes(app: Any) -> None:
    """`GET /bench/cpu`: the server process's CPU seconds so far (threads included), which other load on the machine
    does not distort the way it distorts wall-clock rates. `POST /bench/gate?on=false` takes the risk gate out of the
    order path (`on=true` puts it back), so the gate's whole cost is measured on the same server and data."""
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/bench/cpu")
    async def cpu() -> dict[str, float]:
        return {"cpu": time.process_time()}

    from cival.api.deps import CurrentUser
    from cival.models.trading_models import OrderIn

    async def floor(body: Any, principal: Any) -> dict[str, str]:
        """The HTTP floor: the same request through the same middleware, authentication and body parsing, and no
        order work at all."""
        return {"status": "floor", "user": str(principal.user_id), "symbol": body.symbol}

    # This module's annotations are strings and these names are local: give FastAPI the types themselves.
    floor.__annotations__ = {"body": OrderIn, "principal": CurrentUser, "return": dict[str, str]}
    router.post("/bench/floor", status_code=201)(floor)

    from cival.services.risk_standing import Loaded

    class NoGate:
        async def load(self, *args: Any, **kwargs: Any) -> Loaded:
            return Loaded()  # nothing read

        async def load_many(self, keys: list[Any], *args: Any) -> list[Loaded]:
            return [Loaded() for _ in keys]  # nothing read (the order intake reads a batch's standings at once)

        async def judge(self, *args: Any, **kwargs: Any) -> None:
            return None

        async def judged(self, _user_id: Any, attempt: Any) -> Any:
            return await attempt(False)

    @router.post("/bench/gate")
    async def gate(on: bool) -> dict[str, bool]:
        registry = app.state.registry
        registry.orders.risk = registry.orders.intake.risk = registry.risk if on else NoGate()
        return {"on": on}

    app.include_router(router)


SECTIONS: dict[str, list[float]] = {}


def _time_sections(app: Any) -> None:
    """Wrap the order path's steps with wall-clock timers (await time included: a step that waits shows it)."""
    import functools

    from fastapi import APIRouter

    from cival.core import service_registry
    from cival.services import order_applier as oa
    from cival.services import order_management as om

    def timed(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                SECTIONS.setdefault(name, []).append(time.perf_counter() - start)

        return wrapper

    cls = om.OrderManagementService
    for name in ("place_order", "_by_client_id", "_account_exchange", "_book", "_store", "_send"):
        setattr(cls, name, timed(name, getattr(cls, name)))
    for name in ("apply", "_store", "_load"):
        setattr(oa.EventApplier, name, timed(f"applier.{name}", getattr(oa.EventApplier, name)))
    from cival.services import order_intake as oi

    setattr(oi, "lock_funds", timed("lock_funds", oi.lock_funds))  # noqa: B010
    setattr(oi, "write_new_orders", timed("write_new_orders", oi.write_new_orders))  # noqa: B010
    oi.OrderIntake.write_batch = timed("intake.write_batch", oi.OrderIntake.write_batch)  # type: ignore[method-assign]
    setattr(oa, "record_snapshot", timed("record_snapshot", oa.record_snapshot))  # noqa: B010
    from cival.services import risk_manager

    risk_manager.RiskGate.load = timed("risk.load", risk_manager.RiskGate.load)  # type: ignore[method-assign]
    registry = service_registry.ServiceRegistry
    registry.usd_prices = timed("usd_prices", registry.usd_prices)  # type: ignore[method-assign]
    import cival.connectors.paper as paper

    paper.PaperExchange.submit = timed("paper.submit", paper.PaperExchange.submit)  # type: ignore[method-assign]

    router = APIRouter()

    @router.post("/bench/sections")
    async def sections(action: str) -> dict[str, Any]:
        if action == "start":
            SECTIONS.clear()
            return {}
        return {k: [len(v), sum(v) / len(v) * 1000, sorted(v)[int(len(v) * 0.99)] * 1000] for k, v in SECTIONS.items()}

    app.include_router(router)


# --- the client ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    cpu_ms: float | None = None  # the server's CPU time per request (threads included), when measured
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, one per order (or transaction)
    elapsed: float = 0.0  # seconds


def combined(runs: list[Run]) -> Run:
    """Several rounds' runs as one: the rate over their summed time, percentiles over all their latencies, CPU per
    order over all their orders."""
    latencies = sorted(x for run in runs for x in run.latencies)
    count, elapsed = len(latencies), sum(run.elapsed for run in runs)
    statuses: dict[str, int] = {}
    for run in runs:
        for status, n in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    cpu = None
    if all(run.cpu_ms is not None for run in runs):
        cpu = sum((run.cpu_ms or 0.0) * len(run.latencies) for run in runs) / count
    p99 = latencies[min(count - 1, int(count * 0.99))]
    return Run(count / elapsed, statistics.median(latencies) * 1000, p99 * 1000, statuses, cpu, latencies, elapsed)


async def place_orders(base: str, token: str, accounts: list[str], total: int, path: str = "/api/v1/orders") -> Run:
    """`total` market orders over len(accounts) keep-alive connections (raw asyncio HTTP/1.1: see `hammer`)."""
    host, port = base.removeprefix("http://").split(":")
    remaining = total
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def connection(account: str) -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, int(port))
        side = "buy"
        try:
            while remaining > 0:
                remaining -= 1
                body = json.dumps(
                    {"account_id": account, "symbol": SYMBOL, "side": side, "type": "market", "quantity": QUANTITY}
                ).encode()
                request = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                start = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if b" 201 " not in status_line:
                    raise RuntimeError(f"POST {path}: {status_line!r} {payload[:300]!r}")
                status = json.loads(payload)["status"]
                statuses[status] = statuses.get(status, 0) + 1
                side = "sell" if side == "buy" else "buy"
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(a) for a in accounts))
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Run(total / elapsed, statistics.median(latencies) * 1000, p99 * 1000, statuses, None, latencies, elapsed)


GATE_LIMITS = {
    "order_notional": "50000",
    "position_size": "100000",
    "daily_loss": "5000",
    "leverage": "2",
    "order_rate": "1000000000",
    "open_orders": "200",
    "price_collar": "50",
}
"""Every limit type, at the defaults where there is one, none of them refusing the benchmark's small market orders."""


async def configure_limits(client: httpx.AsyncClient, headers: dict[str, str], mode: str) -> None:
    """`defaults`: the platform's defaults, order_rate raised; `all`: every limit type (plus a per-symbol one and the
    automatic kill switch trip); `none`: no limits at all."""
    r = await client.get("/api/v1/risk/limits", headers=headers)
    assert r.status_code == 200, r.text
    existing = r.json()
    if mode == "defaults":
        rate = next(limit for limit in existing if limit["limit_type"] == "order_rate")
        r = await client.patch(
            f"/api/v1/risk/limits/{rate['id']}", json={"limit_value": GATE_LIMITS["order_rate"]}, headers=headers
        )
        assert r.status_code == 200, r.text
        return
    for limit in existing:
        r = await client.delete(f"/api/v1/risk/limits/{limit['id']}", headers=headers)
        assert r.status_code == 204, r.text
    wanted = [{"limit_type": t, "limit_value": v} for t, v in GATE_LIMITS.items()] if mode == "all" else []
    if mode == "all":
        wanted.append({"limit_type": "position_size", "symbol": SYMBOL, "limit_value": "200000"})
    for body in wanted:
        r = await client.post("/api/v1/risk/limits", json=body, headers=headers)
        assert r.status_code == 201, r.text
    r = await client.post("/api/v1/risk/kill-switch", json={"trip_on_daily_loss": mode == "all"}, headers=headers)
    assert r.status_code == 200, r.text


@dataclass
class Trader:
    """The benchmark's trader: a session token, one paper account per client, the user id."""

    token: str
    accounts: list[str]
    user_id: str


async def set_up(base: str, limits: str = "defaults") -> Trader:
    """Register a trader, open one paper account per client, wait for the market's book."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", "benchmark-password"
        r = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        accounts = []
        for i in range(CONCURRENCY):
            r = await client.post(
                "/api/v1/accounts", json={"exchange": "paper", "account_id": f"bench-{i}"}, headers=headers
            )
            assert r.status_code == 201, r.text
            accounts.append(r.json()["id"])
        await configure_limits(client, headers, limits)
        r = await client.get("/api/v1/users/me", headers=headers)
        user_id = r.json()["id"] if r.status_code == 200 else ""
    await book_ready(base, token)
    return Trader(token, accounts, user_id)


async def book_ready(base: str, token: str) -> None:
    """Wait for the simulated market's first book (a server just started has none)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 30
        while True:
            r = await client.get(
                "/api/v1/market-data/orderbook",
                params={"exchange": "paper", "symbol": SYMBOL},
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code == 200 and r.json()["asks"] and r.json()["bids"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no order book after 30 s: {r.status_code} {r.text[:200]}")
            await asyncio.sleep(0.05)


def server_env(data_dir: str, database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "CIVAL_DATA_DIR": data_dir,
        "CIVAL_LOG_LEVEL": "WARNING",
        "CIVAL_RATE_LIMIT_LOGIN": "1000000/60",
        "CIVAL_RATE_LIMIT_REGISTER": "1000000/60",
        "CIVAL_MARKET_DATA_ENABLED": "true",
        "CIVAL_MARKET_STEP_SECONDS": "1",
        "CIVAL_PAPER_STARTING_BALANCES": '{"USDT": "1000000"}',
        "PLAIN_HTTP": os.environ.get("PLAIN_HTTP", ""),
    }
    if database_url:
        env["CIVAL_DATABASE_URL"] = database_url
    return env | (extra or {})


FLOORS: dict[str, Run] = {}
"""The HTTP floor measured by each database's `http_run` (keyed by its URL, "" for SQLite)."""


def http_run(
    data_dir: str,
    database_url: str,
    total: int,
    extra: dict[str, str] | None = None,
    trader: Trader | None = None,
    *,
    floor: bool = False,
) -> tuple[Run, Trader]:
    """One server child: set up (or, given the `trader` of an earlier child on the same database, wait for the
    market's book), warm up, measure; with `floor`, the HTTP floor after. The run and the trader."""
    with serve("benchmarks.orders", server_env(data_dir, database_url, extra)) as base:

        async def go() -> tuple[Run, Trader]:
            if trader is None:
                who = await set_up(base)
            else:
                who = trader
                await book_ready(base, who.token)
            await place_orders(base, who.token, who.accounts, WARMUP)
            profiling, timing = "BENCH_PROFILE" in (extra or {}), "BENCH_SECTIONS" in (extra or {})
            control = httpx.AsyncClient(base_url=base, timeout=30)
            if profiling:
                (await control.post("/bench/profile", params={"action": "start"})).raise_for_status()
            if timing:
                (await control.post("/bench/sections", params={"action": "start"})).raise_for_status()
            before = (await control.get("/bench/cpu")).json()["cpu"]
            run = await place_orders(base, who.token, who.accounts, total)
            run.cpu_ms = ((await control.get("/bench/cpu")).json()["cpu"] - before) / total * 1000
            if profiling:
                (await control.post("/bench/profile", params={"action": "stop"})).raise_for_status()
            if timing:
                r = await control.post("/bench/sections", params={"action": "stop"})
                print(f"\nsections (wall ms per call, awaits included), {total} orders:")
                print(f"{'section':<22} {'calls':>6} {'mean ms':>9} {'p99 ms':>9}")
                for name, (calls, mean, p99) in sorted(r.json().items(), key=lambda kv: -kv[1][0] * kv[1][1]):
                    print(f"{name:<22} {calls:>6} {mean:>9.2f} {p99:>9.2f}")
            if floor:
                before = (await control.get("/bench/cpu")).json()["cpu"]
                measured = await place_orders(base, who.token, who.accounts, total, "/bench/floor")
                measured.cpu_ms = ((await control.get("/bench/cpu")).json()["cpu"] - before) / total * 1000
                FLOORS[database_url] = measured
            await control.aclose()
            return run, who

        return asyncio.run(go())


# --- the raw-SQL ceiling ------------------------------------------------------------------------------------


ORDER_SQL = (
    "INSERT INTO orders (id, user_id, account_id, symbol, side, type, quantity, time_in_force, status, "
    "filled_quantity, average_price, fees, exchange, reserved) VALUES "
    "({p}, {p}, {p}, 'BTC/USDT', 'buy', 'market', {p}, 'IOC', 'filled', {p}, {p}, {p}, 'paper', {p})"
)
TRADE_SQL = (
    "INSERT INTO trades (id, order_id, user_id, external_trade_id, symbol, side, quantity, price, fees, exchange, "
    "executed_at) VALUES ({p}, {p}, {p}, {p}, 'BTC/USDT', 'buy', {p}, {p}, {p}, 'paper', {p})"
)
POSITION_SQL = (
    "INSERT INTO positions (id, user_id, account_id, symbol, size, average_price, exchange) "
    "VALUES ({p}, {p}, {p}, 'BTC/USDT', {p}, {p}, 'paper') "
    "ON CONFLICT (user_id, account_id, symbol) DO UPDATE SET size = excluded.size, "
    "average_price = excluded.average_price, updated_at = excluded.updated_at"
)
BALANCE_SQL = "UPDATE balances SET free = {p}, locked = {p}, total = {p} WHERE account_id = {p} AND asset = {p}"
FILL_ORDER_SQL = (
    "UPDATE orders SET status = 'filled', filled_quantity = {p}, average_price = {p}, fees = {p}, reserved = {p} "
    "WHERE id = {p}"
)
"""The second transaction of `--two-step`'s ceiling: the order stored first (with its funds locked), filled after."""


def _sql(template: str, style: str) -> str:
    if style == "?":
        return template.replace("{p}", "?")
    n = 0
    out = template
    while "{p}" in out:
        n += 1
        out = out.replace("{p}", f"${n}", 1)
    return out


async def raw_rate(
    connect: Callable[[], Awaitable[Any]],
    run_one: Callable[[Any, str, str], Awaitable[None]],
    accounts: list[str],
    total: int = RAW,
) -> Run:
    """`total` transactions from one connection per account, timed from when every connection is open and warmed up
    (as the API's run starts after its warm-up) until the last one ends."""
    remaining = total
    latencies: list[float] = []
    conns: list[Any] = []

    async def warm_up(conn: Any, account: str) -> None:
        for _ in range(WARMUP_PER_CLIENT):  # statement cache, pages
            await run_one(conn, account, uuid.uuid4().hex)

    async def client(conn: Any, account: str) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await run_one(conn, account, uuid.uuid4().hex)
            latencies.append(time.perf_counter() - start)

    try:
        for _ in accounts:
            conns.append(await connect())
        await asyncio.gather(*(warm_up(c, a) for c, a in zip(conns, accounts, strict=True)))
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(c, a) for c, a in zip(conns, accounts, strict=True)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for conn in conns:
            await conn.close()
    latencies.sort()
    p50, p99 = statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    # The raw client's own CPU per transaction: the same measure as the server's CPU per order, for a comparison
    # that other load on the machine moves less.
    return Run(total / elapsed, p50, p99, {}, cpu / total * 1000, latencies, elapsed)


async def raw_sqlite(path: str, user_id: str, accounts: list[str], *, two_step: bool = False, total: int = RAW) -> Run:
    import aiosqlite

    from cival.database.types import ExactDecimal

    # Bind values as the app stores them (ExactDecimal's fixed-width text, Uuid as 32 hex digits).
    money = ExactDecimal(20, 8)
    dialect = __import__("sqlalchemy.dialects.sqlite", fromlist=["dialect"]).dialect()
    to_db = money.process_bind_param

    def m(value: str) -> Any:
        return to_db(Decimal(value), dialect)

    user = uuid.UUID(user_id).hex
    order_sql, trade_sql, fill_sql = _sql(ORDER_SQL, "?"), _sql(TRADE_SQL, "?"), _sql(FILL_ORDER_SQL, "?")
    position_sql, balance_sql = _sql(POSITION_SQL, "?"), _sql(BALANCE_SQL, "?")
    now = "2025-01-01 00:00:00.000000"

    async def connect() -> Any:
        conn = await aiosqlite.connect(path, isolation_level=None)
        for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def run_one(conn: Any, account: str, oid: str) -> None:
        acct = uuid.UUID(account).hex
        await conn.execute("BEGIN IMMEDIATE")
        await conn.execute(order_sql, (oid, user, acct, m(QUANTITY), m(QUANTITY), m("60000"), m("0.012"), m("0")))
        if two_step:
            await conn.execute(balance_sql, (m("990000"), m("12"), m("990012"), acct, "USDT"))
            await conn.execute("COMMIT")
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(fill_sql, (m(QUANTITY), m("60000"), m("0.012"), m("0"), oid))
        await conn.execute(
            trade_sql, (uuid.uuid4().hex, oid, user, oid + ":1", m(QUANTITY), m("60000"), m("0.012"), now)
        )
        await conn.execute(position_sql, (uuid.uuid4().hex, user, acct, m("0.0002"), m("60000")))
        await conn.execute(balance_sql, (m("990000"), m("0"), m("990000"), acct, "USDT"))
        await conn.execute(balance_sql, (m("1"), m("0"), m("1"), acct, "BTC"))
        await conn.execute("COMMIT")

    return await raw_rate(connect, run_one, accounts, total)


async def raw_postgres(url: str, user_id: str, accounts: list[str], *, two_step: bool = False, total: int = RAW) -> Run:
    from datetime import UTC, datetime

    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    user = uuid.UUID(user_id)
    order_sql, trade_sql, fill_sql = _sql(ORDER_SQL, "$"), _sql(TRADE_SQL, "$"), _sql(FILL_ORDER_SQL, "$")
    position_sql = _sql(POSITION_SQL, "$").replace("excluded.updated_at", "now()")
    balance_sql = _sql(BALANCE_SQL, "$")
    q, price, fee = Decimal(QUANTITY), Decimal(60000), Decimal("0.012")

    async def connect() -> Any:
        return await asyncpg.connect(dsn)

    async def run_one(conn: Any, account: str, oid: str) -> None:
        acct, order_id = uuid.UUID(account), uuid.UUID(oid)
        if two_step:
            async with conn.transaction():
                await conn.execute(order_sql, order_id, user, acct, q, q, price, fee, Decimal(0))
                await conn.execute(balance_sql, Decimal(990000), Decimal(12), Decimal(990012), acct, "USDT")
        async with conn.transaction():
            if two_step:
                await conn.execute(fill_sql, q, price, fee, Decimal(0), order_id)
            else:
                await conn.execute(order_sql, order_id, user, acct, q, q, price, fee, Decimal(0))
            await conn.execute(trade_sql, uuid.uuid4(), order_id, user, oid + ":1", q, price, fee, datetime.now(UTC))
            await conn.execute(position_sql, uuid.uuid4(), user, acct, q, price)
            await conn.execute(balance_sql, Decimal(990000), Decimal(0), Decimal(990000), acct, "USDT")
            await conn.execute(balance_sql, Decimal(1), Decimal(0), Decimal(1), acct, "BTC")

    return await raw_rate(connect, run_one, accounts, total)


def account_ids(database_url: str, data_dir: str) -> list[str]:
    """The benchmark's paper accounts (created through the API), read back for the raw clients."""

    async def go() -> list[str]:
        from sqlalchemy import text

        from cival.core.db import make_engine

        url = database_url or f"sqlite+aiosqlite:///{data_dir}/cival.sqlite3"
        engine = make_engine(url, app_role=False)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id FROM trading_accounts WHERE account_id LIKE 'bench-%'"))).all()
        await engine.dispose()
        return [str(r[0]) for r in rows]

    return asyncio.run(go())


# --- PostgreSQL scratch database ----------------------------------------------------------------------------


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    """A fresh, migrated database on `server_url`'s server (as tests/conftest.py does), dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from cival.core.db import make_engine
    from cival.database import migrate

    for prefix in ("postgres://", "postgresql://"):
        if server_url.startswith(prefix):
            server_url = "postgresql+asyncpg://" + server_url[len(prefix) :]
    server = make_url(server_url)
    name = f"cival_bench_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        engine = make_engine(server.render_as_string(hide_password=False), app_role=False)
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        asyncio.run(migrate.upgrade(url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- report -------------------------------------------------------------------------------------------------


def measure(label: str, database_url: str, data_dir: str) -> tuple[Run, Run]:
    """The API and its ceilings in `ROUNDS` rounds: each starts a server, measures its share of the orders, stops the
    server, then runs its share of each ceiling's transactions; figures over all rounds together."""
    if not database_url:
        from cival.database import migrate

        asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{data_dir}/cival.sqlite3"))
    apis: list[Run] = []
    raws: list[Run] = []
    two_steps: list[Run] = []
    trader: Trader | None = None
    accounts: list[str] = []
    for n in range(ROUNDS):
        last = n == ROUNDS - 1
        floor = last and not os.environ.get("SKIP_FLOOR")
        api, trader = http_run(data_dir, database_url, ORDERS // ROUNDS, trader=trader, floor=floor)
        apis.append(api)
        if not trader.user_id:
            trader.user_id = _user_id(database_url, data_dir)
        accounts = accounts or account_ids(database_url, data_dir)
        share = RAW // ROUNDS
        if database_url:
            raws.append(asyncio.run(raw_postgres(database_url, trader.user_id, accounts, total=share)))
            two_steps.append(
                asyncio.run(raw_postgres(database_url, trader.user_id, accounts, two_step=True, total=share))
            )
        else:
            path = f"{data_dir}/cival.sqlite3"
            raws.append(asyncio.run(raw_sqlite(path, trader.user_id, accounts, total=share)))
            two_steps.append(asyncio.run(raw_sqlite(path, trader.user_id, accounts, two_step=True, total=share)))
    api, raw, two_step = combined(apis), combined(raws), combined(two_steps)
    print(
        f"\n{label}: {len(api.latencies)} market orders x{CONCURRENCY} clients; ceiling "
        f"{len(raw.latencies)} raw transactions x{CONCURRENCY}; in {ROUNDS} rounds (server, then ceilings)"
    )
    print(f"{'what':<44} {'orders/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs raw':>7} {'CPU ms/order':>14}")
    raw_cpu = "" if raw.cpu_ms is None else f"{raw.cpu_ms:.2f} (client)"
    print(
        f"{'ceiling: raw SQL, 1 txn per order':<44} {raw.rate:>9.0f} {raw.p50_ms:>8.2f} {raw.p99_ms:>8.2f} {1:>7.2f}"
        f" {raw_cpu:>14}"
    )
    rows = [("raw SQL, 2 txns per order (store, then fill)", two_step), ("POST /api/v1/orders (market, fills)", api)]
    floor_run = FLOORS.get(database_url)
    if floor_run is not None:
        rows.append(("HTTP floor: same request, no order work", floor_run))
    for what, run in rows:
        cpu = "" if run.cpu_ms is None else f"{run.cpu_ms:.2f}" + (" (client)" if run is two_step else "")
        print(
            f"{what:<44} {run.rate:>9.0f} {run.p50_ms:>8.2f} {run.p99_ms:>8.2f} {run.rate / raw.rate:>7.2f} {cpu:>14}"
        )
    by_round = ", ".join(f"{a.rate:.0f}/{r.rate:.0f} = {a.rate / r.rate:.2f}" for a, r in zip(apis, raws, strict=True))
    print(f"  order statuses returned: {api.statuses}; vs the 2-txn ceiling: {api.rate / two_step.rate:.2f}")
    print(f"  round by round, orders/s vs raw transactions/s: {by_round}")
    if database_url:
        share_met, latency = api.rate >= 0.4 * raw.rate, api.p99_ms < 50
        print(
            f"  targets: >= 40% of raw: {'MET' if share_met else 'NOT MET'} ({api.rate / raw.rate:.2f}); "
            f"p99 < 50 ms: {'MET' if latency else 'NOT MET'} ({api.p99_ms:.1f} ms)"
        )
    return api, raw


def _user_id(database_url: str, data_dir: str) -> str:
    async def go() -> str:
        from sqlalchemy import text

        from cival.core.db import make_engine

        engine = make_engine(database_url or f"sqlite+aiosqlite:///{data_dir}/cival.sqlite3", app_role=False)
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT user_id FROM trading_accounts LIMIT 1"))).one()
        await engine.dispose()
        return str(row[0])

    return asyncio.run(go())


GATE_BATCHES = ("none", "all", "removed", "removed", "all", "none") * 2


def gate_runs(data_dir: str, database_url: str) -> tuple[dict[str, list[Run]], dict[str, list[float]]]:
    """Batches with all limits, with none, and with the gate taken out, on one server (see the module docstring);
    also the server's CPU milliseconds per order of each batch."""
    runs: dict[str, list[Run]] = {"all": [], "none": [], "removed": []}
    cpu: dict[str, list[float]] = {"all": [], "none": [], "removed": []}
    extra = {"CIVAL_REDIS_URL": BENCH_REDIS} if database_url and BENCH_REDIS else {}
    with serve("benchmarks.orders", server_env(data_dir, database_url, extra)) as base:

        async def go() -> None:
            trader = await set_up(base, "none")
            token, accounts = trader.token, trader.accounts
            await place_orders(base, token, accounts, WARMUP)
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                for mode in GATE_BATCHES:
                    (await client.post("/bench/gate", params={"on": mode != "removed"})).raise_for_status()
                    limits = "none" if mode == "removed" else mode
                    await configure_limits(client, {"Authorization": f"Bearer {token}"}, limits)
                    before = (await client.get("/bench/cpu")).json()["cpu"]
                    runs[mode].append(await place_orders(base, token, accounts, ORDERS))
                    cpu[mode].append(((await client.get("/bench/cpu")).json()["cpu"] - before) / ORDERS * 1000)

        asyncio.run(go())
    return runs, cpu


@contextmanager
def scratch_or_sqlite(data_dir: str, *, postgres: bool) -> Iterator[str]:
    """A fresh database: a scratch one on CIVAL_BENCH_DATABASE_URL's server (its URL), or a migrated SQLite ("")."""
    if postgres:
        with scratch_postgres(BENCH_DB) as url:
            yield url
        return
    from cival.database import migrate

    asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{data_dir}/cival.sqlite3"))
    yield ""


def gate_section() -> None:
    postgres_label = "PostgreSQL" + (" + Redis" if BENCH_REDIS else "")
    for label, postgres in [("SQLite", False)] + ([(postgres_label, True)] if BENCH_DB else []):
        with tempfile.TemporaryDirectory() as tmp, scratch_or_sqlite(tmp, postgres=postgres) as url:
            runs, cpu = gate_runs(tmp, url)
        rate = {mode: statistics.median(r.rate for r in batch) for mode, batch in runs.items()}
        cpu_ms = {mode: statistics.median(v) for mode, v in cpu.items()}
        print(
            f"\nrisk gate, {label}: {ORDERS} market orders x{CONCURRENCY} clients per batch, batches "
            f"{'/'.join(GATE_BATCHES)} on one server (medians)"
        )
        print(f"{'what':<36} {'orders/s':>9} {'vs none':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/order':>20}")
        print("(orders/s is wall clock: other load on the machine moves it; CPU per order is what the gate adds)")
        names = {"all": "all 7 limit types configured", "none": "no limits configured", "removed": "gate removed"}
        for mode, batch in runs.items():
            p50 = statistics.median(r.p50_ms for r in batch)
            p99 = max(r.p99_ms for r in batch)
            per_order = f"{cpu_ms[mode]:.2f}"
            print(
                f"{names[mode]:<36} {rate[mode]:>9.0f} {rate[mode] / rate['none']:>8.2f} {p50:>8.2f} {p99:>8.2f} "
                f"{per_order:>20}"
            )
        for base_mode, what in (("none", "no limits"), ("removed", "no gate")):
            cost = 1 - rate["all"] / rate[base_mode]
            cpu_cost = 1 - cpu_ms[base_mode] / cpu_ms["all"]  # one worker is CPU bound: rate ~ 1 / CPU per order
            verdict = "MET" if cpu_cost < 0.15 else "NOT MET"
            print(
                f"  every limit vs {what}: the gate costs {cost:.1%} of throughput (wall clock), {cpu_cost:.1%} of "
                f"server CPU per order; target < 15% (by CPU): {verdict}"
            )


def profile_section() -> None:
    postgres = bool(BENCH_DB)
    with tempfile.TemporaryDirectory() as tmp, scratch_or_sqlite(tmp, postgres=postgres) as url:
        stats_file = str(Path(tmp) / "profile.out")
        run = http_run(tmp, url, PROFILE_ORDERS, {"BENCH_PROFILE": stats_file})[0]
        label = "PostgreSQL" if postgres else "SQLite"
        print(f"\nprofile: {PROFILE_ORDERS} orders under cProfile ({run.rate:.0f} orders/s profiled), {label}")
        stats = pstats.Stats(stats_file)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(40)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "serve-child":
        child(int(sys.argv[2]))
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measure("SQLite (embedded, WAL)", "", tmp)
    if BENCH_DB:
        with tempfile.TemporaryDirectory() as tmp, scratch_postgres(BENCH_DB) as url:
            measure("PostgreSQL", url, tmp)
    else:
        print("\nPostgreSQL: skipped (set CIVAL_BENCH_DATABASE_URL=postgresql://user@host:5432/any)")
    if "--gate" in sys.argv:
        gate_section()
    if "--profile" in sys.argv:
        profile_section()
    if "--sections" in sys.argv:  # wall time per step of the order path, awaits included
        with tempfile.TemporaryDirectory() as tmp, scratch_or_sqlite(tmp, postgres=bool(BENCH_DB)) as url:
            http_run(tmp, url, PROFILE_ORDERS // 2, {"BENCH_SECTIONS": "1"})
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
