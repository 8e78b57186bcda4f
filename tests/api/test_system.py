"""Health, metrics and the error contract."""

from __future__ import annotations

import os

import httpx
import pytest
import structlog
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from cival.api.middleware import RequestIdMiddleware, new_request_id
from cival.core.exceptions import Conflict


async def test_health_reports_database_cache_and_version(client: httpx.AsyncClient, app: FastAPI) -> None:
    response = await client.get("/api/v1/system/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == app.version
    assert body["database"]["status"] == "ok"
    assert body["database"]["backend"] in ("sqlite", "postgresql")
    assert body["cache"]["status"] == "ok"
    assert body["cache"]["backend"] in ("memory", "redis")
    assert response.headers["x-request-id"]


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/api/v1/system/health")
    text = (await client.get("/metrics")).text
    assert 'cival_http_requests_total{method="GET",route="/api/v1/system/health",status="200"}' in text
    assert "cival_http_request_duration_seconds_bucket" in text


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Not Found"}


async def test_request_id_is_echoed_when_well_formed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/system/health", headers={"X-Request-ID": "abc12345-trace"})
    assert response.headers["x-request-id"] == "abc12345-trace"
    response = await client.get("/api/v1/system/health", headers={"X-Request-ID": "bad id\twith junk"})
    assert response.headers["x-request-id"] != "bad id\twith junk"


@pytest.fixture(scope="module")
def failing_routes(app: FastAPI) -> None:
    """Two test-only routes: one raising a domain error, one a bug."""

    @app.get("/_test/conflict")
    async def conflict() -> None:
        raise Conflict("order 42 is already filled; it cannot be cancelled")

    @app.get("/_test/bug")
    async def bug() -> None:
        raise RuntimeError("secret internals: password=hunter2")


@pytest.mark.usefixtures("failing_routes")
async def test_domain_error_renders_code_and_detail(client: httpx.AsyncClient) -> None:
    response = await client.get("/_test/conflict")
    assert response.status_code == 409
    assert response.json() == {
        "error": "conflict",
        "detail": "order 42 is already filled; it cannot be cancelled",
    }


async def test_request_id_is_bound_to_log_lines_only_while_its_request_runs() -> None:
    seen: list[dict[str, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(structlog.contextvars.get_contextvars())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    headers = [(b"x-request-id", b"first-id-0001"), (b"x-request-id", b"second-id-0002")]
    structlog.contextvars.bind_contextvars(request_id="outer-value")
    try:
        await RequestIdMiddleware(app)({"type": "http", "headers": headers}, receive, send)
        assert structlog.contextvars.get_contextvars()["request_id"] == "outer-value"  # put back as it was
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    assert seen == [{"request_id": "second-id-0002"}]  # the last one sent
    assert (b"x-request-id", b"second-id-0002") in sent[0]["headers"]


@pytest.mark.usefixtures("failing_routes")
async def test_made_up_request_ids_are_distinct(client: httpx.AsyncClient) -> None:
    ids = [(await client.get("/api/v1/system/health")).headers["x-request-id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:16] for i in ids}) == 1  # this process's prefix, then a counter


def test_a_forked_child_makes_request_ids_of_its_own() -> None:
    parent = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what would its next request id be?
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32
    assert child[:16] != parent[:16]  # a forked worker never repeats its parent's ids


async def test_unexpected_error_is_a_500_with_request_id_and_no_leak(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/_test/bug", headers={"X-Request-ID": "req-0000-bug"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error"
    assert body["request_id"] == "req-0000-bug"
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert any("unhandled error" in str(r.msg) for r in caplog.records)
