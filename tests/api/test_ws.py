"""`/api/v1/ws` end to end: a real uvicorn server on loopback, the `websockets` client, real sessions and the
run's cache (MemoryCache, or Redis with CIVAL_TEST_REDIS_URL).

The server runs in the test's event loop, so it shares the session-scoped services; its app holds only the
WebSocket router and a manager built here (the real app gets both from the service registry).
Every wait is for a frame, bounded by a deadline; none is a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cival.api import ws
from cival.api.middleware import RequestIdMiddleware
from cival.core.service_registry import ServiceRegistry
from cival.models.user_models import LoginIn, RegisterIn
from cival.services.websocket_manager import (
    UnknownChannel,
    WebSocketManager,
    make_resolver,
    publish_public,
    publish_user,
)

DEADLINE = 5.0
BTC = "ticker:paper:BTC/USDT"
ETH = "ticker:paper:ETH/USDT"
PASSWORD = "correct horse battery staple"


def validate_public(channel: str) -> None:
    """The market-data service's part, stubbed: paper exchange, BTC/USDT and ETH/USDT, 1m and 5m candles."""
    kind, _, rest = channel.partition(":")
    parts = rest.split(":")
    if (
        len(parts) != (3 if kind == "candles" else 2)
        or parts[0] != "paper"
        or parts[1] not in ("BTC/USDT", "ETH/USDT")
        or (kind == "candles" and parts[2] not in ("1m", "5m"))
    ):
        raise UnknownChannel(f"no such market channel {channel!r}")


@dataclass
class User:
    id: uuid.UUID
    token: str


@dataclass
class Server:
    url: str
    manager: WebSocketManager


StartServer = Callable[..., Awaitable[Server]]


async def new_user(registry: ServiceRegistry) -> User:
    email = f"ws-{uuid.uuid4().hex[:16]}@example.com"
    user = await registry.auth.register(RegisterIn(email=email, password=PASSWORD))
    issued = await registry.auth.login(LoginIn(email=email, password=PASSWORD), client="127.0.0.1")
    return User(user.id, issued.token)


@pytest.fixture
async def start_server(registry: ServiceRegistry) -> AsyncIterator[StartServer]:
    """Starts uvicorn on a free loopback port with a manager built from the registry's cache and auth."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None], WebSocketManager]] = []

    async def start(**options: Any) -> Server:
        manager = WebSocketManager(
            registry.cache, registry.auth.authenticate, make_resolver(validate_public), **options
        )
        app = FastAPI()
        app.state.registry = SimpleNamespace(websockets=manager)
        app.add_middleware(RequestIdMiddleware)
        app.include_router(ws.router)
        # log_config=None, as `cival serve` runs it: uvicorn leaves the process's logging configuration alone.
        config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        running.append((server, task, manager))
        async with asyncio.timeout(DEADLINE):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        return Server(f"ws://127.0.0.1:{port}/api/v1/ws", manager)

    yield start
    for server, task, manager in running:
        await manager.close()
        server.should_exit = True
        await task


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
async def alice(registry: ServiceRegistry) -> User:
    return await new_user(registry)


async def recv(socket: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(DEADLINE):
        message: dict[str, Any] = json.loads(await socket.recv())
    return message


async def request(socket: ClientConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    await socket.send(message if isinstance(message, str) else json.dumps(message))
    return await recv(socket)


async def closed_with(socket: ClientConnection) -> tuple[int, str]:
    """The close code and reason the server sent, once the connection has closed."""
    with pytest.raises(ConnectionClosed) as caught:
        await recv(socket)
    assert caught.value.rcvd is not None, "the server closed without a close frame"
    return caught.value.rcvd.code, caught.value.rcvd.reason


def with_token(url: str, token: str) -> str:
    return f"{url}?token={quote(token)}"


# --- authentication ----------------------------------------------------------------------------------------------


async def test_missing_token_gets_error_frame_then_4401(server: Server) -> None:
    async with connect(server.url) as socket:
        reply = await recv(socket)
        assert (reply["type"], reply["error"]) == ("error", "not_authenticated")
        assert "token" in reply["detail"]
        assert await closed_with(socket) == (4401, "not_authenticated")


@pytest.mark.parametrize("where", ["query", "header"])
async def test_bad_token_gets_error_frame_then_4401(server: Server, where: str) -> None:
    bogus = "cvl_" + "x" * 43
    url, headers = (
        (with_token(server.url, bogus), {}) if where == "query" else (server.url, {"Authorization": f"Bearer {bogus}"})
    )
    async with connect(url, additional_headers=headers) as socket:
        assert (await recv(socket))["error"] == "invalid_token"
        assert await closed_with(socket) == (4401, "invalid_token")


async def test_bearer_header_authenticates(server: Server, alice: User) -> None:
    async with connect(server.url, additional_headers={"Authorization": f"Bearer {alice.token}"}) as socket:
        assert await request(socket, {"op": "ping"}) == {"type": "pong"}


async def test_revoked_session_is_closed_with_4401(start_server: StartServer, registry: ServiceRegistry) -> None:
    server = await start_server(heartbeat_seconds=0.05, reauthenticate_seconds=0.05)
    user = await new_user(registry)
    async with connect(with_token(server.url, user.token)) as socket:
        assert await request(socket, {"op": "subscribe", "channels": ["orders"]}) == {
            "type": "subscribed",
            "channels": ["orders"],
            "seq": 0,  # the user's newest event number: nothing published yet
        }
        await registry.auth.logout(await registry.auth.authenticate(user.token))
        while (reply := await recv(socket))["type"] == "heartbeat":
            pass
        assert (reply["type"], reply["error"]) == ("error", "invalid_token")
        assert await closed_with(socket) == (4401, "invalid_token")


# --- the protocol ------------------------------------------------------------------------------------------------


async def test_subscribe_receive_unsubscribe(server: Server, alice: User, registry: ServiceRegistry) -> None:
    async with connect(with_token(server.url, alice.token)) as socket:
        assert await request(socket, {"op": "subscribe", "channels": [BTC, ETH]}) == {
            "type": "subscribed",
            "channels": [BTC, ETH],
        }
        await publish_public(registry.cache, BTC, {"price": "64000.10"}, seq=1)
        assert await recv(socket) == {"type": "update", "channel": BTC, "data": {"price": "64000.10"}, "seq": 1}

        assert await request(socket, {"op": "unsubscribe", "channels": [BTC]}) == {
            "type": "unsubscribed",
            "channels": [BTC],
        }
        # No more BTC: ETH, published after it, is the next frame to arrive.
        await publish_public(registry.cache, BTC, {"price": "64000.20"}, seq=2)
        await publish_public(registry.cache, ETH, {"price": "3000.00"}, seq=1)
        assert await recv(socket) == {"type": "update", "channel": ETH, "data": {"price": "3000.00"}, "seq": 1}
    assert server.manager.active_channels == frozenset()


async def test_unknown_channel_subscribes_nothing(server: Server, alice: User, registry: ServiceRegistry) -> None:
    async with connect(with_token(server.url, alice.token)) as socket:
        reply = await request(socket, {"op": "subscribe", "channels": [BTC, "ticker:paper:NOPE/USDT"]})
        assert (reply["type"], reply["error"], reply["channels"]) == (
            "error",
            "unknown_channel",
            ["ticker:paper:NOPE/USDT"],
        )
        await request(socket, {"op": "subscribe", "channels": [ETH]})
        await publish_public(registry.cache, BTC, {}, seq=1)
        await publish_public(registry.cache, ETH, {}, seq=2)
        assert (await recv(socket))["channel"] == ETH


async def test_user_channel_is_the_callers_own(server: Server, alice: User, registry: ServiceRegistry) -> None:
    bob = await new_user(registry)
    async with connect(with_token(server.url, alice.token)) as socket:
        await request(socket, {"op": "subscribe", "channels": ["orders"]})
        await publish_user(registry.cache, bob.id, "orders", {"id": "bob's"})
        await publish_user(registry.cache, alice.id, "orders", {"id": "alice's"})
        assert await recv(socket) == {"type": "update", "channel": "orders", "data": {"id": "alice's"}}


async def test_ping_pong_and_invalid_json_keeps_the_connection(server: Server, alice: User) -> None:
    async with connect(with_token(server.url, alice.token)) as socket:
        assert await request(socket, {"op": "ping"}) == {"type": "pong"}
        reply = await request(socket, "{this is not json")
        assert (reply["type"], reply["error"]) == ("error", "invalid_json")
        reply = await request(socket, {"op": "dance"})
        assert (reply["type"], reply["error"]) == ("error", "invalid_message")
        assert await request(socket, {"op": "ping"}) == {"type": "pong"}


async def test_heartbeat_after_silence(start_server: StartServer, alice: User) -> None:
    server = await start_server(heartbeat_seconds=0.05)
    async with connect(with_token(server.url, alice.token)) as socket:
        first, second = await recv(socket), await recv(socket)
        assert first["type"] == second["type"] == "heartbeat"
        assert datetime.fromisoformat(first["ts"]) <= datetime.fromisoformat(second["ts"])


async def test_server_shutdown_closes_with_1001(server: Server, alice: User) -> None:
    async with connect(with_token(server.url, alice.token)) as socket:
        await request(socket, {"op": "subscribe", "channels": [BTC]})
        await server.manager.close()
        assert await closed_with(socket) == (1001, "server shutting down")
