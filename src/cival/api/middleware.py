"""Request id: taken from a well-formed `X-Request-ID` or made up, echoed back and bound to every log line."""

from __future__ import annotations

import itertools
import os
import re

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_VALID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_process = ""
_next = itertools.count(1)


def _new_process() -> None:
    global _process, _next  # noqa: PLW0603 - one prefix and one counter per process, renewed in a forked child
    _process, _next = os.urandom(8).hex(), itertools.count(1)


_new_process()
os.register_at_fork(after_in_child=_new_process)


def new_request_id() -> str:
    """Unique across processes and restarts (a random per-process prefix and a counter), and cheap: no system call
    per request, unlike a random UUID."""
    return f"{_process}{next(_next):016x}"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = b""
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                incoming = value  # the last one, if sent twice
        text = incoming.decode("latin-1")
        request_id = text if _VALID.match(text) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("X-Request-ID", request_id)
            await send(message)

        # Bound for this request's log lines, and put back as it was after (`bound_contextvars` does the same, but
        # reads every context variable of the context first: a few microseconds per request).
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
