"""Ticker fan-out over WebSockets: deliveries per second to 100 and to 1,000 clients on one channel.

- Server: one uvicorn worker in a child process, the WebSocket endpoint with a `WebSocketManager` on MemoryCache
  (authentication stubbed; its cost is `benchmarks.auth`'s subject) and a benchmark-only route that publishes.
- Clients: the `websockets` library, all in this process, each counting the frames it receives.
- Ceiling, same run: the same manager fanning out to in-process fake sockets that only count, no I/O at all, so
  the ratio shows what the sockets (framing, syscalls, the client side) cost.

Publishing goes in windows: a window of ticker messages is published, and the next one only once every client has
all of it, so no client ever falls a send queue (1,000 messages) behind and the count is exact: every client must
receive every message. Both processes share the machine's cores; the CPU seconds each used are printed beside.

Run: `.venv/bin/python -m benchmarks.ws_fanout` (from the repository root). `CLIENTS=100,1000 SECONDS=...` to change;
`DEFLATE=1` has the clients negotiate permessage-deflate, as browsers do (uvicorn then compresses every frame for
every client separately).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks._server import serve
from cival.core.cache import MemoryCache
from cival.services.auth_service import Principal
from cival.services.websocket_manager import WebSocketManager, make_resolver, publish_public

CLIENT_COUNTS = [int(n) for n in os.environ.get("CLIENTS", "100,1000").split(",")]
SECONDS = float(os.environ.get("SECONDS", "4"))  # per measurement, roughly
DEFLATE = os.environ.get("DEFLATE", "") not in ("", "0")
CHANNEL = "ticker:paper:BTC/USDT"
WINDOW_DELIVERIES = 50_000  # messages per window x clients
MAX_WINDOW = 500  # messages per window at most: half a send queue, so even a lone client can never overflow
PRINCIPAL = Principal(user_id=uuid.uuid4(), email="bench@example.com", role="trader", session_id=uuid.uuid4())
TICK = {
    "exchange": "paper",
    "symbol": "BTC/USDT",
    "price": "64123.45000000",
    "bid_price": "64123.40000000",
    "ask_price": "64123.50000000",
    "volume_24h": "1234.56780000",
    "change_24h": "1.2345",
    "updated_at": "2026-01-02T03:04:05.678Z",
}


def _raise_fd_limit() -> None:
    # 1,000 clients and their server ends each hold a descriptor.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard or (soft < hard and hard < 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))


def _accept_ticker(channel: str) -> None:
    if channel != CHANNEL:
        from cival.services.websocket_manager import UnknownChannel

        raise UnknownChannel(f"only {CHANNEL} exists here")


async def _authenticate(token: str) -> Principal:
    return PRINCIPAL


def _manager(cache: MemoryCache) -> WebSocketManager:
    # No heartbeats during the run: every frame a client counts is a ticker update.
    return WebSocketManager(cache, _authenticate, make_resolver(_accept_ticker), heartbeat_seconds=3600)


async def _publish(cache: MemoryCache, start: int, count: int) -> None:
    for seq in range(start, start + count):
        await publish_public(cache, CHANNEL, TICK, seq=seq)


# --- the server (child process) ----------------------------------------------------------------------------------


def child(port: int) -> None:
    """The benchmark server: the WebSocket endpoint, a health route for `serve`, and a publish route."""
    import uvicorn
    from fastapi import APIRouter, FastAPI

    from cival.api import ws

    cache = MemoryCache()
    manager = _manager(cache)
    app = FastAPI()
    app.state.registry = type("Registry", (), {"websockets": manager})()
    router = APIRouter()

    @router.get("/api/v1/system/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.post("/bench/publish")
    async def publish(start: int, count: int) -> dict[str, int]:
        await _publish(cache, start, count)
        return {"published": count}

    @router.get("/bench/stats")
    async def stats() -> dict[str, float]:
        return {
            "connections": manager.connections,
            "messages_sent": manager.messages_sent,
            "slow_consumer_disconnects": manager.slow_consumer_disconnects,
            "cpu_seconds": time.process_time(),
        }

    app.include_router(router)
    app.include_router(ws.router)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- measuring ---------------------------------------------------------------------------------------------------


@dataclass
class Result:
    clients: int
    deliveries: int
    seconds: float
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    slow_disconnects: int = 0

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


class Tally:
    """Frames received per client, and an event set once every client has reached the target."""

    def __init__(self, clients: int) -> None:
        self.counts = [0] * clients
        self.target = 0
        self.behind = clients
        self.reached = asyncio.Event()

    def advance(self, messages: int) -> None:
        self.target += messages
        self.behind = sum(1 for count in self.counts if count < self.target)
        self.reached.clear()
        if self.behind == 0:
            self.reached.set()

    def received(self, client: int) -> None:
        count = self.counts[client] = self.counts[client] + 1
        if count == self.target:
            self.behind -= 1
            if self.behind == 0:
                self.reached.set()


async def _run_windows(tally: Tally, publish: Any, clients: int) -> tuple[int, float]:
    """Publish window after window for about SECONDS; returns (messages published, seconds)."""
    window = max(1, min(MAX_WINDOW, WINDOW_DELIVERIES // clients))
    published = 0
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        tally.advance(window)
        await publish(published, window)
        published += window
        async with asyncio.timeout(60):
            await tally.reached.wait()
    return published, time.perf_counter() - start


class CountingSocket:
    """A socket that only counts what it is sent: the ceiling without any I/O."""

    def __init__(self, tally: Tally, index: int) -> None:
        self._tally, self._index = tally, index
        self._incoming: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        self.subscribed = asyncio.Event()

    async def accept(self) -> None:
        self._incoming.put_nowait(
            {"type": "websocket.receive", "text": json.dumps({"op": "subscribe", "channels": [CHANNEL]})}
        )

    async def receive(self) -> Mapping[str, Any]:
        return await self._incoming.get()

    async def send_text(self, data: str) -> None:
        if self.subscribed.is_set():
            self._tally.received(self._index)
        else:
            self.subscribed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": code})


async def ceiling(clients: int) -> Result:
    """The manager's own fan-out rate: in-process sockets that count frames, nothing sent anywhere."""
    cache = MemoryCache()
    manager = _manager(cache)
    tally = Tally(clients)
    sockets = [CountingSocket(tally, i) for i in range(clients)]
    tasks = [asyncio.create_task(manager.serve(s, "token")) for s in sockets]
    for s in sockets:
        await s.subscribed.wait()

    async def publish(start: int, count: int) -> None:
        await _publish(cache, start, count)

    cpu = time.process_time()
    published, seconds = await _run_windows(tally, publish, clients)
    cpu = time.process_time() - cpu
    await manager.close()
    await asyncio.gather(*tasks)
    await cache.close()
    return Result(
        clients, published * clients, seconds, client_cpu=cpu, slow_disconnects=manager.slow_consumer_disconnects
    )


async def over_websockets(base: str, clients: int) -> Result:
    """Deliveries per second to `clients` real WebSocket clients on loopback."""
    from websockets.asyncio.client import ClientConnection, connect

    url = base.replace("http://", "ws://") + "/api/v1/ws?token=bench"
    tally = Tally(clients)

    async def open_client() -> ClientConnection:
        socket = await connect(url, max_queue=None, compression="deflate" if DEFLATE else None)
        await socket.send(json.dumps({"op": "subscribe", "channels": [CHANNEL]}))
        reply = json.loads(await socket.recv())
        assert reply["type"] == "subscribed", reply
        return socket

    async def count(socket: ClientConnection, index: int) -> None:
        async for _ in socket:
            tally.received(index)

    sockets: list[ClientConnection] = []
    for batch in range(0, clients, 100):
        sockets += await asyncio.gather(*(open_client() for _ in range(batch, min(clients, batch + 100))))
    readers = [asyncio.create_task(count(s, i)) for i, s in enumerate(sockets)]
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def publish(start: int, count_: int) -> None:
            r = await http.post("/bench/publish", params={"start": start, "count": count_})
            r.raise_for_status()

        before = (await http.get("/bench/stats")).json()
        cpu = time.process_time()
        published, seconds = await _run_windows(tally, publish, clients)
        cpu = time.process_time() - cpu
        after = (await http.get("/bench/stats")).json()
    await asyncio.gather(*(s.close() for s in sockets))
    await asyncio.gather(*readers)
    assert all(c == published for c in tally.counts), "a client missed or doubled a message"
    return Result(
        clients,
        published * clients,
        seconds,
        client_cpu=cpu,
        server_cpu=after["cpu_seconds"] - before["cpu_seconds"],
        slow_disconnects=int(after["slow_consumer_disconnects"] - before["slow_consumer_disconnects"]),
    )


def report(rows: list[tuple[Result, Result]]) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"ticker fan-out on one channel, one uvicorn worker, loopback, permessage-deflate "
        f"{'on' if DEFLATE else 'off'}; {os.cpu_count()} cores, load average {load}"
    )
    print(f"{'':>7} {'---- deliveries per second ----':>33}  {'-- per CPU-second of the server --':>35}")
    print(
        f"{'clients':>7} {'ceiling':>10} {'WebSockets':>11} {'ratio':>10}  {'ceiling':>11} {'WebSockets':>11} "
        f"{'ratio':>11}  {'server cpu':>10} {'client cpu':>10} {'slow drops':>10}"
    )
    for raw, real in rows:
        raw_per_cpu, real_per_cpu = raw.deliveries / raw.client_cpu, real.deliveries / real.server_cpu
        print(
            f"{real.clients:>7} {raw.rate:>10,.0f} {real.rate:>11,.0f} {real.rate / raw.rate:>10.3f}  "
            f"{raw_per_cpu:>11,.0f} {real_per_cpu:>11,.0f} {real_per_cpu / raw_per_cpu:>11.3f}  "
            f"{real.server_cpu / real.seconds:>10.0%} {real.client_cpu / real.seconds:>10.0%} "
            f"{real.slow_disconnects:>10}"
        )
    print("ceiling: the same manager fanning out to in-process sockets that only count (no I/O), same run")
    print("cpu: share of one core the server process / this client process used while measuring; on a busy machine")
    print("the per-CPU-second columns are the steadier comparison")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "serve-child":
        _raise_fd_limit()
        child(int(sys.argv[2]))
        return
    _raise_fd_limit()
    rows = []
    with serve("benchmarks.ws_fanout", {}) as base:
        for clients in CLIENT_COUNTS:
            raw = asyncio.run(ceiling(clients))
            real = asyncio.run(over_websockets(base, clients))
            rows.append((raw, real))
    report(rows)


if __name__ == "__main__":
    main()
