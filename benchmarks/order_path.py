"""CPU per order through the app itself, in process, with one client and with eight (issue 5).

The same paper MARKET orders as `benchmarks/orders.py` (0.0002 BTC/USDT, each client alternating buy and sell on its
own paper account), sent through the ASGI app as uvicorn would call it, but with no sockets and no server process:
what is left is the app's own CPU (FastAPI, authentication, the order path, the writers, the database driver, the
event loop). Clients wait for each answer before the next order, as in `benchmarks/orders.py`, so with N clients a
write cycle holds up to N orders. From the two runs the cost splits into a part per write cycle (the intake's and
the applier's transactions, whatever they hold) and a part per order:

    cpu(1) = cycle + order,  cpu(N) = cycle / N + order   (batches hold all N clients' orders)

Beside it, the ceiling: the raw client's own CPU per transaction for the same writes in one transaction (as in
`benchmarks/orders.py`), same database, same run. CPU time rather than wall time: other load on the machine moves it
less (still ±5-10% between runs here: compare runs made one after another). The eight-client run's wall time per
order is printed too and, on the standard event loop (`PLAIN_HTTP=1`; uvloop does not show it), how much of it the
loop spent blocked in its selector: waiting, with nothing to run (for the database, since nothing else is here).

Run: `.venv/bin/python -m benchmarks.order_path` (SQLite), with `CIVAL_BENCH_DATABASE_URL=postgresql://...` for
PostgreSQL (a scratch database, dropped after). `ORDERS=` per run (3000), `CLIENTS=` the larger run's clients (8),
`USERS=` how many users the clients' accounts belong to (1: one trader's accounts; `USERS=8`: eight traders, as a
multi-tenant load is, so a write cycle judges and stores orders of several users).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.orders import BENCH_DB, QUANTITY, SYMBOL, raw_postgres, raw_sqlite, scratch_postgres, server_env

ORDERS = int(os.environ.get("ORDERS", "3000"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
USERS = int(os.environ.get("USERS", "1"))
WARMUP_PER_CLIENT = 20
IDLE_SECONDS = 3.0

Call = Callable[..., Awaitable[tuple[int, bytes]]]


def asgi_caller(app: Any) -> Call:
    """`call(method, path, body, token, query)`: one request through the ASGI app; (status, body)."""

    async def call(method: str, path: str, body: bytes = b"", token: str = "", query: bytes = b"") -> tuple[int, bytes]:
        headers = [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    return call


async def set_up(call: Call) -> tuple[str, list[tuple[str, str]]]:
    """`USERS` traders with `order_rate` raised and a paper account per client between them, the market's book ready:
    the first trader's id, and each client's (token, account)."""
    users: list[tuple[str, str]] = []  # (token, user id)
    for n in range(USERS):
        login = json.dumps({"email": f"order-path-{n}@example.com", "password": "benchmark-password"}).encode()
        status, body = await call("POST", "/api/v1/auth/register", login)
        assert status == 201, body
        status, body = await call("POST", "/api/v1/auth/login", login)
        token = json.loads(body)["access_token"]
        status, body = await call("GET", "/api/v1/users/me", token=token)
        users.append((token, json.loads(body)["id"]))
        status, body = await call("GET", "/api/v1/risk/limits", token=token)
        rate = next(limit for limit in json.loads(body) if limit["limit_type"] == "order_rate")
        raised = b'{"limit_value": "1000000000"}'
        status, body = await call("PATCH", f"/api/v1/risk/limits/{rate['id']}", raised, token)
        assert status == 200, body
    clients = []
    for i in range(CLIENTS):
        token = users[i % USERS][0]
        account = json.dumps({"exchange": "paper", "account_id": f"bench-{i}"}).encode()
        status, body = await call("POST", "/api/v1/accounts", account, token)
        assert status == 201, body
        clients.append((token, json.loads(body)["id"]))
    for _ in range(600):  # the simulated market's first step
        query = b"exchange=paper&symbol=" + SYMBOL.encode()
        status, body = await call("GET", "/api/v1/market-data/orderbook", token=users[0][0], query=query)
        if status == 200 and json.loads(body)["asks"]:
            return users[0][1], clients
        await asyncio.sleep(0.05)
    raise RuntimeError("no order book after 30 s")


async def background() -> float:
    """Milliseconds of CPU per second this process spends with no order coming (the simulated market's steps, the
    publisher, the timers), over IDLE_SECONDS."""
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(IDLE_SECONDS)
    return (time.process_time() - cpu) / (time.perf_counter() - started) * 1000


@dataclass
class Measured:
    cpu_ms: float
    """This process's CPU per order, less the background's share."""
    wall_ms: float
    waiting_ms: float | None
    """Per order, the time the event loop was blocked in its selector (None on uvloop, which does not show it)."""


class Waits:
    """The time the running loop spends blocked in its selector, on the standard asyncio loop (make one per loop)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.known = False
        selector = getattr(asyncio.get_running_loop(), "_selector", None)  # uvloop has none
        if selector is None:
            return
        self.known = True
        select = selector.select

        def timed(timeout: float | None = None) -> Any:
            started = time.perf_counter()
            try:
                return select(timeout)
            finally:
                self.seconds += time.perf_counter() - started

        selector.select = timed


async def cpu_per_order(
    call: Call, clients: list[tuple[str, str]], total: int, idle_ms: float, waits: Waits
) -> Measured:
    """This process's CPU per order (milliseconds), `total` orders over the `clients` (token, account), less the
    background's share of the time they took (`idle_ms` per second); the wall time and the loop's waits per order."""
    remaining = total

    async def client(token: str, account: str) -> None:
        nonlocal remaining
        side = "buy"
        while remaining > 0:
            remaining -= 1
            order = {"account_id": account, "symbol": SYMBOL, "side": side, "type": "market", "quantity": QUANTITY}
            status, body = await call("POST", "/api/v1/orders", json.dumps(order).encode(), token)
            if status != 201:
                raise RuntimeError(f"POST /api/v1/orders: {status} {body[:300]!r}")
            side = "sell" if side == "buy" else "buy"

    remaining = WARMUP_PER_CLIENT * len(clients)
    await asyncio.gather(*(client(*c) for c in clients))
    remaining = total
    started, cpu, waited = time.perf_counter(), time.process_time(), waits.seconds
    await asyncio.gather(*(client(*c) for c in clients))
    elapsed, cpu, waited = time.perf_counter() - started, time.process_time() - cpu, waits.seconds - waited
    waiting = waited * 1000 / total if waits.known else None
    return Measured((cpu * 1000 - idle_ms * elapsed) / total, elapsed * 1000 / total, waiting)


def measure(database_url: str, data_dir: str) -> tuple[Measured, Measured, float, float]:
    """One client's and CLIENTS' figures per order (the background's CPU taken out), the background's CPU ms per
    second, and the raw client's CPU ms per transaction."""
    os.environ.update(server_env(data_dir, database_url))
    from cival.app import app_factory

    app = app_factory()  # as `cival serve` builds it
    call = asgi_caller(app)

    async def go() -> tuple[Measured, Measured, float, str, list[str]]:
        async with app.router.lifespan_context(app):
            user_id, clients = await set_up(call)
            accounts = [account for _, account in clients]
            idle_ms = await background()
            waits = Waits()
            one = await cpu_per_order(call, clients[:1], ORDERS // 2, idle_ms, waits)
            many = await cpu_per_order(call, clients, ORDERS, idle_ms, waits)
        return one, many, idle_ms, user_id, accounts

    one, many, idle_ms, user_id, accounts = _run(go())
    if database_url:
        raw = _run(raw_postgres(database_url, user_id, accounts))
    else:
        raw = _run(raw_sqlite(f"{data_dir}/cival.sqlite3", user_id, accounts))
    return one, many, idle_ms, raw.cpu_ms or 0.0


def _run(coroutine: Awaitable[Any]) -> Any:
    """On uvloop, as the server runs (`PLAIN_HTTP=1`: the standard loop)."""
    if os.environ.get("PLAIN_HTTP") == "1":
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    import uvloop

    return uvloop.run(coroutine)  # type: ignore[arg-type]


def report(label: str, one_client: Measured, clients: Measured, idle_ms: float, raw: float) -> None:
    one, many = one_client.cpu_ms, clients.cpu_ms
    cycle = (one - many) * CLIENTS / (CLIENTS - 1)
    order = one - cycle
    traders = "one trader's accounts" if USERS == 1 else f"the accounts of {USERS} traders"
    print(f"\n{label}: CPU per order in process (ASGI, no sockets), {ORDERS} orders with {CLIENTS} clients ({traders})")
    print(f"(the background, {idle_ms:.0f} ms of CPU per second with no orders, is taken out of the figures)")
    print(f"{'what':<52} {'CPU ms':>8}")
    print(f"{'ceiling: raw client, the same writes in 1 txn':<52} {raw:>8.2f}")
    print(f"{'the app, 1 client (one order per write cycle)':<52} {one:>8.2f}")
    print(f"{f'the app, {CLIENTS} clients':<52} {many:>8.2f}   ({many / raw:.1f}x the raw client)")
    per_order = f"(/{CLIENTS}: {cycle / CLIENTS:.2f} per order)"
    print(f"{'  of which per write cycle (2 transactions)':<52} {cycle:>8.2f}   {per_order}")
    print(f"{'  of which per order':<52} {order:>8.2f}")
    wall = clients.wall_ms
    waiting = clients.waiting_ms
    waits = (
        "unknown on uvloop (PLAIN_HTTP=1 shows it)" if waiting is None else f"{waiting:.2f} ms ({waiting / wall:.0%})"
    )
    print(f"{CLIENTS} clients: {wall:.2f} ms of wall time per order ({1000 / wall:.0f} orders/s), loop waiting {waits}")


def main() -> None:
    if CLIENTS < 2:
        raise SystemExit("CLIENTS must be at least 2")
    with tempfile.TemporaryDirectory() as tmp:
        if BENCH_DB:
            with scratch_postgres(BENCH_DB) as url:
                report("PostgreSQL", *measure(url, tmp))
        else:
            from cival.database import migrate

            asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{tmp}/cival.sqlite3"))
            report("SQLite", *measure("", tmp))


if __name__ == "__main__":
    main()
