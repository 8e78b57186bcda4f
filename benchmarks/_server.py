"""Shared by the benchmarks: run a Cival app (plus benchmark-only routes) under uvicorn in a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(module: str, env: dict[str, str]) -> Iterator[str]:
    """Start `python -m <module> serve-child PORT` and yield its base URL once healthy."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")} | env
    proc = subprocess.Popen(  # noqa: S603 - our own benchmark child
        [sys.executable, "-m", module, "serve-child", str(port)],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"benchmark server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(base + "/api/v1/system/health", timeout=1):  # noqa: S310 - loopback
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def hammer(
    base: str, path: str, *, requests: int, concurrency: int, headers: dict[str, str] | None = None
) -> float:
    """Requests per second for `requests` GETs of `path` over `concurrency` keep-alive connections.

    A minimal HTTP/1.1 client on raw asyncio streams: a general-purpose client (httpx) costs more per request than
    the server under test and would measure itself.
    """
    import asyncio

    host, port = base.removeprefix("http://").split(":")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    remaining = requests

    async def connection() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while remaining > 0:
                remaining -= 1
                writer.write(request)
                status_line = await reader.readline()
                if b" 200 " not in status_line:
                    raise RuntimeError(f"{path}: {status_line!r}")
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start)
