"""Crash safety of the order path (issue 5): SIGKILL the server during a burst of orders, restart, check the books.

Each run starts `python -m cival serve` on a fresh database (market data on, so market orders fill and GTC limits
rest), registers a trader with a funded paper account and fires a burst of placements (market and limit, each with
its own `Idempotency-Key`) from 4 concurrent clients. After a seeded random number of acknowledged (2xx)
placements, plus a seeded random delay, the server is SIGKILLed: some requests are in flight then. The server is
restarted on the same database (and cache) and, once the restarted process has reconciled the paper orders, the run
checks that

- every acknowledged order exists (`GET /api/v1/orders/{id}`);
- no trade is stored twice (trades' `(exchange, external_trade_id)` are unique: row count == distinct count);
- free + locked = total and free, locked >= 0 for every balance; filled <= quantity for every order, and its filled
  quantity and fees are the sums of its trades; no order is left `unknown`, and only resting GTC limits are still
  working;
- every position equals the fold of its trades (`cival.domain.portfolio.fold_trades`, in the order they were applied);
- a retry of an acknowledged request with the same `Idempotency-Key` returns the same order, not a new one; a retry
  of a request that was in flight at the kill returns the order it stored, if it stored one, or is placed now —
  never twice — and the books still hold afterwards.

Three settings, 3 seeds each in the suite:
- SQLite with the in-process cache (always): the process dying between commit and send and mid-transaction, WAL
  recovery included; the checks read the database file directly.
- PostgreSQL + Redis (`CIVAL_TEST_DATABASE_URL` and `CIVAL_TEST_REDIS_URL`; a scratch database and a cache prefix
  per run): the deployment's setting, where the cache outlives the process — its market-data leader lease (the
  restarted process works paper orders only once the dead one's lease expires, within 5 s), the rows cached and the
  live streams; the checks read the tables as their owner, in one snapshot.
- Failover, on PostgreSQL + Redis: two servers, the second started once the first leads; half the clients on each;
  the LEADER is SIGKILLed and not restarted. The survivor takes the lead when the dead lease expires, reconciles,
  and is checked as above (the dead server's unanswered requests retried on it, as a load balancer would send
  them); then it must work a new paper order itself (a limit that rests on its book, and its cancel).

A manual soak runs many more: `CRASH_RUNS=50 .venv/bin/pytest tests/integration/test_crash_safety.py`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

from cival.services.market_data_service import LEADER_KEY
from tests.conftest import scratch_database
from tests.integration._books import Stored, check_books, read_postgres, read_sqlite, wait_until_reconciled

SEEDS = list(range(int(os.environ.get("CRASH_RUNS", "3"))))
BURST = 40  # placements per run
CLIENTS = 4
RUN_TIMEOUT = 90.0  # seconds: a whole run (two starts, the burst, the checks) is bounded by this
SETTLE_TIMEOUT = 40.0
"""Seconds for the paper orders to be settled after a kill: on Redis the next leader takes over once the dead one's
lease expires (<= 5 s) and reconciles; an order that became `unknown` just as it took over is cancelled by its sweep
(every 10 s, once unknown for 10 s)."""
SYMBOL = "BTC/USDT"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str


@contextmanager
def running_server(backend: Backend, log: Path) -> Iterator[Server]:
    """`python -m cival serve` on `backend`, yielded once healthy; killed (if still alive) on exit."""
    port = _free_port()
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")}
        | {
            "CIVAL_DATA_DIR": str(backend.data_dir),
            "CIVAL_LOG_LEVEL": "WARNING",
            "CIVAL_LOG_JSON": "false",
            "CIVAL_MARKET_DATA_ENABLED": "true",
            "CIVAL_MARKET_STEP_SECONDS": "0.2",
            "CIVAL_RATE_LIMIT_LOGIN": "1000/60",
            "CIVAL_RATE_LIMIT_REGISTER": "1000/60",
            "CIVAL_PAPER_STARTING_BALANCES": '{"USDT": "100000"}',
        }
        | backend.env
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI and interpreter
            [sys.executable, "-m", "cival", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(base + "/api/v1/system/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not healthy after 60 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)  # polling interval of a deadline-bounded health poll, not a synchronisation sleep
        yield Server(proc, base)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@dataclass
class Burst:
    acked: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)  # key -> (body, order id)
    unanswered: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # in flight at the kill
    refused: int = 0  # 4xx answers (e.g. a sell without the coins): nothing stored, nothing acknowledged


def _orders(rng: random.Random, account: str, bid: Decimal, ask: Decimal) -> list[dict[str, Any]]:
    """A seeded mix: market buys and sells, limits that rest (far from the market) and limits that cross."""
    cent = Decimal("0.01")
    out = []
    for _ in range(BURST):
        kind = rng.choice(["market_buy", "market_buy", "market_sell", "limit_rest", "limit_cross", "limit_sell"])
        qty = Decimal(rng.choice(["0.001", "0.002", "0.0015"]))
        body: dict[str, Any] = {"account_id": account, "symbol": SYMBOL, "quantity": str(qty)}
        if kind == "market_buy":
            body |= {"side": "buy", "type": "market"}
        elif kind == "market_sell":
            body |= {"side": "sell", "type": "market", "quantity": "0.0005"}
        elif kind == "limit_rest":
            body |= {"side": "buy", "type": "limit", "price": str((bid * Decimal("0.9")).quantize(cent))}
        elif kind == "limit_cross":
            body |= {"side": "buy", "type": "limit", "price": str((ask * Decimal("1.01")).quantize(cent))}
        else:
            body |= {"side": "sell", "type": "limit", "price": str((ask * Decimal("1.2")).quantize(cent)),
                     "quantity": "0.0005"}  # fmt: skip
        out.append(body)
    return out


async def _burst(
    victim: Server, token: str, bodies: list[dict[str, Any]], rng: random.Random, *, survivor: Server | None = None
) -> Burst:
    """Fire the placements from CLIENTS clients; SIGKILL `victim` after a random number of acks and delay. With a
    `survivor`, half the clients send half the placements to it instead, and go on after the kill."""
    result = Burst()
    kill_after = rng.randint(1, BURST - CLIENTS * 2)
    kill_delay = rng.uniform(0, 0.08)
    enough = asyncio.Event()
    keyed = [(f"crash-{uuid.uuid4().hex}", body) for body in bodies]
    servers = [victim] if survivor is None else [victim, survivor]
    queues = [keyed[i :: len(servers)] for i in range(len(servers))]
    headers = {"Authorization": f"Bearer {token}"}

    async def client(server: Server, queue: list[tuple[str, dict[str, Any]]]) -> None:
        async with httpx.AsyncClient(base_url=server.base, timeout=20, headers=headers) as http:
            while queue:
                key, body = queue.pop(0)
                try:
                    r = await http.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    result.unanswered.append((key, body))
                    continue
                if r.is_success:
                    result.acked[key] = (body, r.json()["id"])
                    if len(result.acked) >= kill_after:
                        enough.set()
                else:
                    assert r.status_code in (409, 422), r.text  # refused, e.g. insufficient funds: not an order
                    result.refused += 1

    async def killer() -> None:
        await enough.wait()
        await asyncio.sleep(kill_delay)  # the random moment itself, not a synchronisation
        victim.proc.send_signal(signal.SIGKILL)

    kill_task = asyncio.create_task(killer())
    await asyncio.gather(*(client(servers[i % len(servers)], queues[i % len(servers)]) for i in range(CLIENTS)))
    if not kill_task.done():  # every placement answered before the kill: kill now, the check is the same
        enough.set()
        await kill_task
    victim.proc.wait(timeout=10)
    return result


def _login(base: str, email: str, password: str) -> str:
    r = httpx.post(base + "/api/v1/auth/login", json={"email": email, "password": password}, timeout=20)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _wait_for_book(base: str, token: str, deadline: float) -> tuple[Decimal, Decimal]:
    while True:
        r = httpx.get(
            base + "/api/v1/market-data/orderbook",
            params={"exchange": "paper", "symbol": SYMBOL},
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        if r.status_code == 200 and r.json()["bids"] and r.json()["asks"]:
            return Decimal(r.json()["bids"][0][0]), Decimal(r.json()["asks"][0][0])
        assert time.monotonic() < deadline, f"no order book: {r.status_code} {r.text[:200]}"
        time.sleep(0.05)  # polling interval under a deadline


# --- where a run keeps its data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """The server's storage for a run: its data dir, its extra environment and how the checks read the tables."""

    data_dir: Path
    env: dict[str, str]
    read: Callable[[], Stored]


def _lease_holder(backend: Backend) -> bytes | None:
    """The instance holding the market-data leader lease in the run's Redis (which works the paper orders)."""
    with redis.Redis.from_url(backend.env["CIVAL_REDIS_URL"]) as cache:
        value = cache.get(backend.env["CIVAL_REDIS_PREFIX"] + LEADER_KEY)
    assert value is None or isinstance(value, bytes)
    return value


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    data_dir = tmp_path / "data"
    return Backend(data_dir, {}, lambda: read_sqlite(data_dir / "cival.sqlite3"))


@pytest.fixture
async def postgres_backend(tmp_path: Path, postgres_url: str, redis_url: str) -> AsyncIterator[Backend]:
    """A scratch database on the test server (migrated, dropped afterwards) and a cache prefix of its own on the test
    Redis (its keys deleted afterwards): the restarted server finds the dead one's cache as it left it."""
    prefix = f"cival-crash:{uuid.uuid4().hex[:12]}:"
    try:
        async with scratch_database(postgres_url, "cival_crash") as url:
            plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            yield Backend(
                tmp_path / "data",
                {"CIVAL_DATABASE_URL": plain, "CIVAL_REDIS_URL": redis_url, "CIVAL_REDIS_PREFIX": prefix},
                lambda: read_postgres(plain),
            )
    finally:
        cache = aioredis.from_url(redis_url)
        try:
            keys = [key async for key in cache.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await cache.delete(*keys)
        finally:
            await cache.aclose()


# --- the run ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_during_an_order_burst_loses_nothing_acknowledged(
    sqlite_backend: Backend, tmp_path: Path, seed: int
) -> None:
    _crash_run(sqlite_backend, tmp_path / "server.log", seed)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_on_postgres_and_redis_loses_nothing_acknowledged(
    postgres_backend: Backend, tmp_path: Path, seed: int
) -> None:
    _crash_run(postgres_backend, tmp_path / "server.log", seed)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_of_the_leading_worker_hands_its_paper_orders_to_the_other(
    postgres_backend: Backend, tmp_path: Path, seed: int
) -> None:
    _failover_run(postgres_backend, tmp_path, seed)


def _register(base: str, seed: int) -> tuple[str, str]:
    """A new trader with a funded paper account: (bearer token, account id)."""
    email, password = f"crash-{seed}-{uuid.uuid4().hex[:8]}@example.com", "a crash-test password"
    r = httpx.post(base + "/api/v1/auth/register", json={"email": email, "password": password}, timeout=20)
    assert r.status_code == 201, r.text
    token = _login(base, email, password)
    r = httpx.post(base + "/api/v1/accounts", json={"exchange": "paper"}, headers=_bearer(token), timeout=20)
    assert r.status_code == 201, r.text
    return token, str(r.json()["id"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _crash_run(backend: Backend, log: Path, seed: int) -> None:
    rng = random.Random(seed)
    started = time.monotonic()
    with running_server(backend, log) as server:
        token, account = _register(server.base, seed)
        bid, ask = _wait_for_book(server.base, token, started + 30)
        burst = asyncio.run(
            asyncio.wait_for(_burst(server, token, _orders(rng, account, bid, ask), rng), RUN_TIMEOUT / 2)
        )
        assert server.proc.returncode == -signal.SIGKILL
    _report(seed, burst)

    with running_server(backend, log) as server:
        _check_after(server, token, backend, burst)
    assert time.monotonic() - started < RUN_TIMEOUT


def _failover_run(backend: Backend, logs: Path, seed: int) -> None:
    rng = random.Random(seed)
    started = time.monotonic()
    with running_server(backend, logs / "leader.log") as leader:
        token, account = _register(leader.base, seed)
        bid, ask = _wait_for_book(leader.base, token, started + 30)  # a book: the first server leads
        first = _lease_holder(backend)
        assert first is not None
        with running_server(backend, logs / "follower.log") as follower:
            bodies = _orders(rng, account, bid, ask)
            burst = asyncio.run(
                asyncio.wait_for(_burst(leader, token, bodies, rng, survivor=follower), RUN_TIMEOUT / 2)
            )
            assert leader.proc.returncode == -signal.SIGKILL
            _report(seed, burst)
            _check_after(follower, token, backend, burst)

            # Once the follower holds the lease it works paper orders itself (while it is still taking over, an
            # order placed on it waits for that): a limit far from the market rests there, and cancels there.
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while _lease_holder(backend) in (first, None):
                assert time.monotonic() < deadline, "the follower did not take the lead"
                time.sleep(0.1)  # polling interval under a deadline
            price = str((bid * Decimal("0.8")).quantize(Decimal("0.01")))
            body = {
                "account_id": account,
                "symbol": SYMBOL,
                "side": "buy",
                "type": "limit",
                "price": price,
                "quantity": "0.001",
            }
            with httpx.Client(base_url=follower.base, headers=_bearer(token), timeout=20) as http:
                r = http.post("/api/v1/orders", json=body)
                assert r.status_code == 201, r.text
                assert r.json()["status"] == "pending", r.json()
                r = http.delete(f"/api/v1/orders/{r.json()['id']}")
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "cancelled", r.json()
            check_books(wait_until_reconciled(backend.read, SETTLE_TIMEOUT))
    assert time.monotonic() - started < RUN_TIMEOUT


def _report(seed: int, burst: Burst) -> None:
    assert burst.acked, "nothing was acknowledged before the kill"
    print(
        f"seed {seed}: {len(burst.acked)} acknowledged, {len(burst.unanswered)} unanswered at the kill, "
        f"{burst.refused} refused"
    )


def _check_after(server: Server, token: str, backend: Backend, burst: Burst) -> None:
    """On `server`, once the paper orders are reconciled: the books hold, every acknowledged order is there, and
    retries with the same `Idempotency-Key` never place an order twice."""
    stored = wait_until_reconciled(backend.read, SETTLE_TIMEOUT)
    with httpx.Client(base_url=server.base, headers=_bearer(token), timeout=20) as http:
        for key, (_, order_id) in burst.acked.items():
            r = http.get(f"/api/v1/orders/{order_id}")
            assert r.status_code == 200, (key, order_id, r.status_code, r.text)
            assert r.json()["client_order_id"] == f"idem:{key}"
        check_books(stored)
        orders_before = http.get("/api/v1/orders", params={"limit": 500}).json()["total"]
        for key, (body, order_id) in burst.acked.items():
            r = http.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
            assert r.is_success, (key, r.status_code, r.text)
            assert r.json()["id"] == order_id, (key, r.json()["id"], order_id)
        assert http.get("/api/v1/orders", params={"limit": 500}).json()["total"] == orders_before

        # What a client does with a request that got no answer: send it again, with the same key.
        by_key = {client_id: order_id for order_id, client_id, *_ in stored.orders if client_id}
        placed = 0
        for key, body in burst.unanswered:
            r = http.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
            if f"idem:{key}" in by_key:  # stored before the kill: that order, not a second one
                assert r.is_success, (key, r.status_code, r.text)
                assert uuid.UUID(r.json()["id"]) == by_key[f"idem:{key}"], (key, r.json())
            elif r.is_success:
                placed += 1
            else:
                assert r.status_code in (409, 422), r.text  # refused, e.g. insufficient funds
        total = http.get("/api/v1/orders", params={"limit": 500}).json()["total"]
        assert total == orders_before + placed, (total, orders_before, placed)
    check_books(wait_until_reconciled(backend.read, SETTLE_TIMEOUT))
