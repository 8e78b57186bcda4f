"""User channels on `/api/v1/ws` end to end: the real app served by uvicorn on loopback, orders placed through the
API against the paper exchange, and the run's cache (MemoryCache, or Redis with CIVAL_TEST_REDIS_URL).

Every event of a user carries the user's next `seq`; these tests check isolation between users, that the messages
of one order follow its status changes, resume (`since`) and resync, and, on Redis and PostgreSQL, two API workers.
Every wait is for a frame, bounded by a deadline; none is a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from cival.app import create_app
from cival.config import Settings
from cival.core.service_registry import ServiceRegistry
from cival.services.market_data_service import MarketDataService
from tests.api._identity import ACCOUNTS, Caller, Identities

DEADLINE = 10.0
ORDERS = "/api/v1/orders"
ALL = ["orders", "trades", "positions", "balances", "portfolio", "alerts"]

Frame = dict[str, Any]


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve an already started app (its services run in this event loop) on a free loopback port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(DEADLINE):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/api/v1/ws"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def ws_url(app: FastAPI) -> AsyncIterator[str]:
    async with serve(app) as url:
        yield url


Open = Callable[..., Awaitable[ClientConnection]]


@pytest.fixture
async def open_ws() -> AsyncIterator[Open]:
    sockets: list[ClientConnection] = []

    async def open_(url: str, token: str) -> ClientConnection:
        socket = await connect(f"{url}?token={quote(token)}")
        sockets.append(socket)
        return socket

    yield open_
    for socket in sockets:
        await socket.close()


async def recv(socket: ClientConnection) -> Frame:
    """The next frame that is not a heartbeat."""
    async with asyncio.timeout(DEADLINE):
        while True:
            frame: Frame = json.loads(await socket.recv())
            if frame["type"] != "heartbeat":
                return frame


async def request(socket: ClientConnection, message: dict[str, Any]) -> Frame:
    await socket.send(json.dumps(message))
    return await recv(socket)


async def updates_until(socket: ClientConnection, done: Callable[[Frame], bool]) -> list[Frame]:
    """Updates up to and including the first one `done` accepts."""
    frames = []
    while True:
        frame = await recv(socket)
        assert frame["type"] == "update", frame
        frames.append(frame)
        if done(frame):
            return frames


def is_portfolio(frame: Frame) -> bool:
    """The last message of every change of the order path."""
    return bool(frame["channel"] == "portfolio")


async def trader(ids: Identities) -> tuple[Caller, str]:
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return user, response.json()["id"]


def market_buy(account: str, quantity: str = "0.01") -> dict[str, str]:
    return {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": quantity}


async def place(user: Caller, body: dict[str, str]) -> Frame:
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    order: Frame = response.json()
    return order


# --- isolation and order --------------------------------------------------------------------------------------------


async def test_a_user_never_receives_another_users_events(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, ws_url: str, open_ws: Open
) -> None:
    (alice, alice_account), (bob, bob_account) = await trader(ids), await trader(ids)
    alice_ws, bob_ws = await open_ws(ws_url, alice.token), await open_ws(ws_url, bob.token)
    for socket in (alice_ws, bob_ws):
        reply = await request(socket, {"op": "subscribe", "channels": ALL})
        assert (reply["type"], reply["seq"]) == ("subscribed", 0)  # new users: nothing published yet

    await place(bob, market_buy(bob_account))
    await place(alice, market_buy(alice_account))
    await place(bob, market_buy(bob_account))
    alice_frames = await updates_until(alice_ws, is_portfolio)
    bob_frames = await updates_until(bob_ws, is_portfolio) + await updates_until(bob_ws, is_portfolio)

    for user, account, frames in ((alice, alice_account, alice_frames), (bob, bob_account, bob_frames)):
        orders = {o["id"] for o in (await user.get(ORDERS)).json()["items"]}
        trades = {t["id"] for t in (await user.get("/api/v1/trades")).json()["items"]}
        for frame in frames:
            data = frame["data"]
            match frame["channel"]:
                case "orders":
                    assert (data["id"] in orders, data["account_id"]) == (True, account)
                case "trades":
                    assert data["id"] in trades
                case "positions" | "balances":
                    assert data["account_id"] == account
        # Each user's own numbering, every number once: another user's event would repeat or skip one.
        assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
        assert len(frames) == await registry.notifications.stream.head(user.id)


async def test_messages_of_one_order_follow_its_status_changes(
    ids: Identities, market: MarketDataService, ws_url: str, open_ws: Open
) -> None:
    user, account = await trader(ids)
    socket = await open_ws(ws_url, user.token)
    await request(socket, {"op": "subscribe", "channels": ALL})

    # A market buy: stored pending (its funds locked), then filled, with its fills, position, balances, portfolio.
    order = await place(user, market_buy(account))
    frames = await updates_until(socket, is_portfolio)
    mine = [f["data"] for f in frames if f["channel"] == "orders" and f["data"]["id"] == order["id"]]
    assert [o["status"] for o in mine] == ["pending", "filled"]
    assert mine[-1] == (await user.get(f"{ORDERS}/{order['id']}")).json()  # enough to update a screen
    fills = (await user.get("/api/v1/trades", params={"order_id": order["id"]})).json()["items"]
    assert sorted(f["data"]["id"] for f in frames if f["channel"] == "trades") == sorted(t["id"] for t in fills)
    assert {f["channel"] for f in frames} == {"orders", "trades", "positions", "balances", "portfolio"}
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs))

    # A limit far below the market rests; cancelling it is its next (and last) change.
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01"}
    resting = await place(user, body | {"price": "10000"})
    assert resting["status"] == "pending"
    cancelled = await user.delete(f"{ORDERS}/{resting['id']}")
    assert cancelled.status_code == 200, cancelled.text
    frames = await updates_until(socket, lambda f: f["channel"] == "orders" and f["data"]["status"] == "cancelled")
    statuses = [f["data"]["status"] for f in frames if f["channel"] == "orders" and f["data"]["id"] == resting["id"]]
    assert statuses == ["pending", "cancelled"]
    assert frames[-1]["data"] == cancelled.json()


# --- resume and resync -----------------------------------------------------------------------------------------------


async def test_resume_since_n_returns_exactly_the_missed_events(
    ids: Identities, market: MarketDataService, ws_url: str, open_ws: Open
) -> None:
    user, account = await trader(ids)
    witness = await open_ws(ws_url, user.token)  # connected throughout, on every channel
    await request(witness, {"op": "subscribe", "channels": ALL})
    wanted = ["orders", "trades"]

    client = await open_ws(ws_url, user.token)
    await request(client, {"op": "subscribe", "channels": wanted})
    await place(user, market_buy(account))
    seen = [f for f in await updates_until(witness, is_portfolio) if f["channel"] in wanted]
    got = [await recv(client) for _ in seen]
    assert got == seen
    last = got[-1]["seq"]
    await client.close()

    # Missed while disconnected: a second fill and a resting order.
    await place(user, market_buy(account, "0.02"))
    missed = await updates_until(witness, is_portfolio)
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01"}
    resting = await place(user, body | {"price": "10000"})
    await user.delete(f"{ORDERS}/{resting['id']}")
    missed += await updates_until(witness, is_portfolio)
    missed_wanted = [f for f in missed if f["channel"] in wanted]
    head = missed[-1]["seq"]

    client = await open_ws(ws_url, user.token)
    reply = await request(client, {"op": "subscribe", "channels": wanted, "since": last})
    assert reply == {"type": "subscribed", "channels": wanted, "seq": head, "replayed": len(missed_wanted)}
    assert [await recv(client) for _ in missed_wanted] == missed_wanted

    # Then live, without a gap or a repeat.
    await place(user, market_buy(account))
    live = [f for f in await updates_until(witness, is_portfolio) if f["channel"] in wanted]
    assert [await recv(client) for _ in live] == live
    assert live[0]["seq"] > head
    assert await request(client, {"op": "ping"}) == {"type": "pong"}  # nothing else was queued


async def test_resume_with_nothing_missed_replays_nothing(
    ids: Identities, registry: ServiceRegistry, ws_url: str, open_ws: Open
) -> None:
    user = await ids.new_user()
    for n in range(3):
        await registry.notifications.publish(user.id, "alerts", {"n": n})
    client = await open_ws(ws_url, user.token)
    reply = await request(client, {"op": "subscribe", "channels": ["alerts"], "since": 3})
    assert reply == {"type": "subscribed", "channels": ["alerts"], "seq": 3, "replayed": 0}
    await registry.notifications.publish(user.id, "alerts", {"n": 3})
    assert await recv(client) == {"type": "update", "channel": "alerts", "data": {"n": 3}, "seq": 4}


async def test_a_gap_too_old_to_serve_gets_a_resync(
    ids: Identities, registry: ServiceRegistry, ws_url: str, open_ws: Open
) -> None:
    user = await ids.new_user()
    stream = registry.notifications.stream
    for n in range(stream.retention_events + 5):
        await registry.notifications.publish(user.id, "balances", {"n": n})
    head = stream.retention_events + 5
    client = await open_ws(ws_url, user.token)

    reply = await request(client, {"op": "subscribe", "channels": ["balances", "orders"], "since": 4})
    assert reply == {"type": "subscribed", "channels": ["balances", "orders"], "seq": head}
    resync = await recv(client)
    assert resync["type"] == "resync"
    assert (resync["reason"], resync["since"], resync["seq"]) == ("too_old", 4, head)
    assert resync["channels"] == ["balances", "orders"]
    assert "1000" in resync["detail"]
    # Live updates continue on the same connection.
    await registry.notifications.publish(user.id, "balances", {"n": "live"})
    assert await recv(client) == {"type": "update", "channel": "balances", "data": {"n": "live"}, "seq": head + 1}

    # The oldest gap still served: exactly `retention_events` back.
    client = await open_ws(ws_url, user.token)
    since = head + 1 - stream.retention_events
    reply = await request(client, {"op": "subscribe", "channels": ["balances"], "since": since})
    assert reply["replayed"] == stream.retention_events
    replayed = [await recv(client) for _ in range(stream.retention_events)]
    assert [f["seq"] for f in replayed] == list(range(since + 1, head + 2))


async def test_a_seq_beyond_the_stream_gets_a_resync(
    ids: Identities, registry: ServiceRegistry, ws_url: str, open_ws: Open
) -> None:
    user = await ids.new_user()
    await registry.notifications.publish(user.id, "orders", {"n": 1})
    client = await open_ws(ws_url, user.token)
    await request(client, {"op": "subscribe", "channels": ["orders"], "since": 99})
    resync = await recv(client)
    assert (resync["type"], resync["reason"], resync["seq"]) == ("resync", "ahead", 1)


@pytest.mark.parametrize("since", [-1, 1.5, "3", True, 2**63])
async def test_a_bad_since_is_refused(ids: Identities, ws_url: str, open_ws: Open, since: Any) -> None:
    user = await ids.new_user()
    client = await open_ws(ws_url, user.token)
    reply = await request(client, {"op": "subscribe", "channels": ["orders"], "since": since})
    assert (reply["type"], reply["error"]) == ("error", "invalid_message")
    assert await request(client, {"op": "ping"}) == {"type": "pong"}


async def test_replay_and_live_delivery_never_overlap(
    ids: Identities, registry: ServiceRegistry, ws_url: str, open_ws: Open
) -> None:
    """Events keep coming while a client resumes: each arrives once, in order, with nothing lost in between."""
    user = await ids.new_user()
    publish = registry.notifications.publish
    for n in range(50):
        await publish(user.id, "orders" if n % 2 else "trades", {"n": n})
    total = 250

    async def keep_publishing() -> None:
        for n in range(50, total):
            await publish(user.id, "orders" if n % 2 else "trades", {"n": n})
            await asyncio.sleep(0)  # let the subscription interleave with the publishing

    client = await open_ws(ws_url, user.token)
    publisher = asyncio.create_task(keep_publishing())
    reply = await request(client, {"op": "subscribe", "channels": ["orders", "trades"], "since": 20})
    assert reply["type"] == "subscribed"
    assert reply["replayed"] == reply["seq"] - 20
    frames = [await recv(client) for _ in range(total - 20)]
    await publisher
    assert [f["seq"] for f in frames] == list(range(21, total + 1))
    assert [f["data"]["n"] for f in frames] == list(range(20, total))
    assert await request(client, {"op": "ping"}) == {"type": "pong"}  # and no duplicate after them


# --- two API workers on one Redis ------------------------------------------------------------------------------------


@pytest.fixture
async def second_worker(settings: Settings, redis_url: str, postgres_url: str) -> AsyncIterator[FastAPI]:
    """Another app with its own services (its own registry, cache connections, WebSocket manager)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.redis
@pytest.mark.postgres
async def test_two_workers_sharing_redis_deliver_each_event_once(
    ids: Identities,
    registry: ServiceRegistry,
    market: MarketDataService,
    ws_url: str,
    second_worker: FastAPI,
    open_ws: Open,
) -> None:
    user, account = await trader(ids)
    transport = httpx.ASGITransport(app=second_worker, client=("10.9.8.7", 1234))
    async with serve(second_worker) as other_url, httpx.AsyncClient(transport=transport, base_url="http://w2") as w2:
        on_one, on_two = await open_ws(ws_url, user.token), await open_ws(other_url, user.token)
        for socket in (on_one, on_two):
            await request(socket, {"op": "subscribe", "channels": ALL})

        await place(user, market_buy(account))  # through worker one
        body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01"}
        headers = {"Authorization": f"Bearer {user.token}"}
        resting = await w2.post(ORDERS, json=body | {"price": "10000"}, headers=headers)  # through worker two
        assert resting.status_code == 201, resting.text
        assert (await w2.delete(f"{ORDERS}/{resting.json()['id']}", headers=headers)).status_code == 200

        received = []
        for socket in (on_one, on_two):
            # Up to the cancel's change, which ends (like every change) with a portfolio message.
            frames = await updates_until(
                socket, lambda f: f["channel"] == "orders" and f["data"]["status"] == "cancelled"
            )
            frames += await updates_until(socket, is_portfolio)
            received.append(frames)
            assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))  # every event, each once
        head = len(received[0])
        assert head == await registry.notifications.stream.head(user.id)
        assert received[0] == received[1]
        cancelled = [f for f in received[0] if f["channel"] == "orders" and f["data"]["status"] == "cancelled"]
        assert [f["data"]["id"] for f in cancelled] == [resting.json()["id"]]
        # An event published by worker two reaches both, once, as the next frame.
        await second_worker.state.registry.notifications.publish(user.id, "alerts", {"marker": True})
        for socket in (on_one, on_two):
            marker = await recv(socket)
            assert (marker["channel"], marker["data"], marker["seq"]) == ("alerts", {"marker": True}, head + 1)
