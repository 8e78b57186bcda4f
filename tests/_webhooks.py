"""A real webhook receiver for tests: uvicorn on 127.0.0.1, answering each POST from a script. Not a conftest.

Every request is recorded (headers and raw body) on a queue the test awaits; an answer can be a status code or
"block", which holds the request until `release()` (a slow or dead endpoint). Receiver-side signature checking is
written here from the documented scheme, not with Cival's own `sign`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

DEADLINE = 10.0

Answer = int | Literal["block"]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    """When it arrived (event-loop clock)."""

    @property
    def json(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload

    def verifies(self, secret: str) -> bool:
        """What a receiver does: HMAC-SHA256 of "<timestamp>.<raw body>" under the secret, compared in constant time."""
        timestamp = self.headers["x-cival-timestamp"]
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers["x-cival-signature"], f"sha256={expected}")


class Receiver:
    def __init__(self) -> None:
        self.url = ""
        self.script: list[Answer] = []
        self.default: Answer = 200
        self.requests: asyncio.Queue[Received] = asyncio.Queue()
        self.answered = 0
        self._released = asyncio.Event()

    def answer(self, *answers: Answer, then: Answer = 200) -> None:
        """Answer the next requests with `answers` in turn, and every later one with `then`."""
        self.script = list(answers)
        self.default = then

    def release(self) -> None:
        """Let blocked requests (and every later "block") answer 200."""
        self._released.set()

    async def next(self) -> Received:
        async with asyncio.timeout(DEADLINE):
            return await self.requests.get()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.put_nowait(Received(headers, body, asyncio.get_running_loop().time()))
        answer = self.script.pop(0) if self.script else self.default
        if answer == "block":
            await self._released.wait()
            answer = 200
        await send({"type": "http.response.start", "status": answer, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
        self.answered += 1


@asynccontextmanager
async def webhook_receiver(path: str = "/hook") -> AsyncIterator[Receiver]:
    receiver = Receiver()
    config = uvicorn.Config(receiver, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(DEADLINE):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        receiver.url = f"http://127.0.0.1:{port}{path}"
        yield receiver
    finally:
        receiver.release()
        server.should_exit = True
        await task
