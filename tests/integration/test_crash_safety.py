"""Crash safety of the order path (issue 5): SIGKILL the server during a burst of orders, restart, check the books.

Each run starts `python -m cival serve` on a fresh SQLite data dir (market data on, so market orders fill and GTC
limits rest), registers a trader with a funded paper account and fires a burst of placements (market and limit,
each with its own `Idempotency-Key`) from 4 concurrent clients. After a seeded random number of acknowledged
(2xx) placements, plus a seeded random delay, the server is SIGKILLed: some requests are in flight then. The server
is restarted on the same data dir and the run checks that

- every acknowledged order exists (`GET /api/v1/orders/{id}`);
- no trade is stored twice (trades' `(exchange, external_trade_id)` are unique: row count == distinct count);
- free + locked = total and free, locked >= 0 for every balance; filled <= quantity for every order; no order is
  left `unknown`, and only resting GTC limits are still working;
- every position equals the fold of its trades (`cival.domain.portfolio.fold_trades`, in the order they were stored);
- a retry of an acknowledged request with the same `Idempotency-Key` returns the same order, not a new one.

The suite runs 3 seeds; a manual soak runs many more:
`CRASH_RUNS=50 .venv/bin/pytest tests/integration/test_crash_safety.py`.

SQLite only, by design: the point is the process dying between commit and send and mid-transaction, which the
embedded database exercises in full (WAL recovery included); the checks read the database file directly. The
PostgreSQL suite run (`CIVAL_TEST_DATABASE_URL`) runs these same SQLite crash runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.dialects import sqlite as sqlite_dialect

from cival.database.types import ExactDecimal
from cival.domain.portfolio import fold_trades

SEEDS = list(range(int(os.environ.get("CRASH_RUNS", "3"))))
BURST = 40  # placements per run
CLIENTS = 4
RUN_TIMEOUT = 90.0  # seconds: a whole run (two starts, the burst, the checks) is bounded by this
SYMBOL = "BTC/USDT"
_MONEY = ExactDecimal(20, 8)
_DIALECT = sqlite_dialect.dialect()


def _dec(value: Any) -> Decimal:
    """A money column as stored in SQLite (fixed-width text, nines' complement for negatives) back to a Decimal."""
    result = _MONEY.process_result_value(value, _DIALECT)
    assert result is not None
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str


@contextmanager
def running_server(data_dir: Path, log: Path) -> Iterator[Server]:
    """`python -m cival serve` on `data_dir`, yielded once healthy; killed (if still alive) on exit."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")} | {
        "CIVAL_DATA_DIR": str(data_dir),
        "CIVAL_LOG_LEVEL": "WARNING",
        "CIVAL_LOG_JSON": "false",
        "CIVAL_MARKET_DATA_ENABLED": "true",
        "CIVAL_MARKET_STEP_SECONDS": "0.2",
        "CIVAL_RATE_LIMIT_LOGIN": "1000/60",
        "CIVAL_RATE_LIMIT_REGISTER": "1000/60",
        "CIVAL_PAPER_STARTING_BALANCES": '{"USDT": "100000"}',
    }
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


async def _burst(server: Server, token: str, bodies: list[dict[str, Any]], rng: random.Random) -> Burst:
    """Fire the placements from CLIENTS clients; SIGKILL the server after a random number of acks and delay."""
    result = Burst()
    kill_after = rng.randint(1, BURST - CLIENTS * 2)
    kill_delay = rng.uniform(0, 0.08)
    enough = asyncio.Event()
    queue = [(f"crash-{uuid.uuid4().hex}", body) for body in bodies]
    headers = {"Authorization": f"Bearer {token}"}

    async def client() -> None:
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
        server.proc.send_signal(signal.SIGKILL)

    kill_task = asyncio.create_task(killer())
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    if not kill_task.done():  # every placement answered before the kill: kill now, the check is the same
        enough.set()
        await kill_task
    server.proc.wait(timeout=10)
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


def _check_storage(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT exchange || '|' || external_trade_id) FROM trades"
        ).fetchone()
        assert total == distinct, f"{total - distinct} duplicated trades"
        assert conn.execute("SELECT count(*) FROM trades WHERE external_trade_id IS NULL").fetchone()[0] == 0

        for asset, free, locked, balance_total in conn.execute("SELECT asset, free, locked, total FROM balances"):
            f, lk, t = _dec(free), _dec(locked), _dec(balance_total)
            assert f + lk == t, (asset, f, lk, t)
            assert f >= 0, (asset, f)
            assert lk >= 0, (asset, lk)

        orders = conn.execute(
            "SELECT id, type, time_in_force, status, quantity, filled_quantity, fees FROM orders"
        ).fetchall()
        fills: dict[str, tuple[Decimal, Decimal]] = {}
        for order_id, quantity, fee in conn.execute("SELECT order_id, quantity, fees FROM trades"):
            q, f = fills.get(order_id, (Decimal(0), Decimal(0)))
            fills[order_id] = (q + _dec(quantity), f + _dec(fee))
        for order_id, kind, tif, status, quantity, filled, fees in orders:
            assert _dec(filled) <= _dec(quantity), (order_id, filled, quantity)
            assert (_dec(filled), _dec(fees)) == fills.get(order_id, (Decimal(0), Decimal(0))), order_id
            assert status != "unknown", order_id
            if status in ("pending", "partial"):  # after reconciliation only a resting limit can still work
                assert (kind, tif) == ("limit", "GTC"), (order_id, kind, tif, status)

        trades = conn.execute(
            "SELECT o.account_id, t.symbol, t.side, t.quantity, t.price, t.fees "
            "FROM trades t JOIN orders o ON o.id = t.order_id ORDER BY t.rowid"
        ).fetchall()
        positions = conn.execute("SELECT account_id, symbol, size, average_price FROM positions").fetchall()

    @dataclass
    class _Trade:
        symbol: str
        side: str
        quantity: Decimal
        price: Decimal
        fees: Decimal

    by_key: dict[tuple[str, str], list[_Trade]] = {}
    for account_id, symbol, side, quantity, price, fee in trades:
        by_key.setdefault((account_id, symbol), []).append(_Trade(symbol, side, _dec(quantity), _dec(price), _dec(fee)))
    stored = {(a, s): (_dec(size), _dec(avg)) for a, s, size, avg in positions}
    for (account_id, symbol), rows in by_key.items():
        folded = fold_trades(symbol, rows)
        assert stored.get((account_id, symbol)) == (folded.size, folded.average_price), (symbol, folded)
    for key, (size, _) in stored.items():
        assert key in by_key or size == 0, f"position {key} without trades"


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_during_an_order_burst_loses_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    started = time.monotonic()
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    email, password = f"crash-{seed}@example.com", "a crash-test password"

    with running_server(data_dir, log) as server:
        r = httpx.post(server.base + "/api/v1/auth/register", json={"email": email, "password": password}, timeout=20)
        assert r.status_code == 201, r.text
        token = _login(server.base, email, password)
        r = httpx.post(
            server.base + "/api/v1/accounts",
            json={"exchange": "paper"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=20,
        )
        assert r.status_code == 201, r.text
        account = r.json()["id"]
        bid, ask = _wait_for_book(server.base, token, started + 30)
        bodies = _orders(rng, account, bid, ask)
        burst = asyncio.run(asyncio.wait_for(_burst(server, token, bodies, rng), RUN_TIMEOUT / 2))
        assert server.proc.returncode == -signal.SIGKILL
    assert burst.acked, "nothing was acknowledged before the kill"
    print(
        f"seed {seed}: {len(burst.acked)} acknowledged, {len(burst.unanswered)} unanswered at the kill, "
        f"{burst.refused} refused"
    )

    with running_server(data_dir, log) as server:
        token = _login(server.base, email, password)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.base, headers=headers, timeout=20) as http:
            for key, (_, order_id) in burst.acked.items():
                r = http.get(f"/api/v1/orders/{order_id}")
                assert r.status_code == 200, (key, order_id, r.status_code, r.text)
                assert r.json()["client_order_id"] == f"idem:{key}"
            _check_storage(data_dir / "cival.sqlite3")
            orders_before = http.get("/api/v1/orders", params={"limit": 500}).json()["total"]
            for key, (body, order_id) in burst.acked.items():
                r = http.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
                assert r.is_success, (key, r.status_code, r.text)
                assert r.json()["id"] == order_id, (key, r.json()["id"], order_id)
            assert http.get("/api/v1/orders", params={"limit": 500}).json()["total"] == orders_before
        _check_storage(data_dir / "cival.sqlite3")
    assert time.monotonic() - started < RUN_TIMEOUT
