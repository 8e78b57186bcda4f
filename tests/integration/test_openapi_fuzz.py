"""A bounded Schemathesis run over the app's own OpenAPI schema: no 5xx, and documented responses match their schema.

Each operation of the schema is one test item, fed MAX_EXAMPLES Schemathesis-generated requests, valid and invalid
(`APIOperation.as_strategy`, driven by Hypothesis: derandomized and without an example database, so a run is
repeatable). Every response is checked with Schemathesis' `not_a_server_error` and `response_schema_conformance`:
the test fails on a 5xx, or on a body that does not match the schema of its documented status. Status codes the
schema does not document are schema gaps, not failures: they are collected and printed at the end of the run.

Schemathesis calls the app in-process on a loop of its own (and runs the app's lifespan there), so the calls go to a
dedicated app on a dedicated, freshly migrated database of the run's kind (SQLite, or PostgreSQL and Redis when
configured), reached through `TARGET`; the schema itself is read at import from an app that is never started. A
trader and an admin are made through the services, not the rate-limited API: operations that document 403 (admin
only) are called as the admin, the others as the trader, so authenticated routes are exercised beyond 401.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.types import Receive, Scope, Send

from cival.app import create_app
from cival.config import Settings
from cival.core.db import make_engine
from cival.core.service_registry import ServiceRegistry
from cival.database import migrate
from cival.models.user_models import LoginIn, RegisterIn

MAX_EXAMPLES = 20
PASSWORD = "fuzz-test-password"


# --- a dedicated app on a dedicated database ---------------------------------------------------------------------


def _postgres_async_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


@pytest.fixture(scope="module")
async def fuzz_settings(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    data_dir: Path = tmp_path_factory.mktemp("cival-fuzz")
    server_url = os.environ.get("CIVAL_TEST_DATABASE_URL", "")
    settings = {
        "env": "test",
        "data_dir": data_dir,
        "redis_url": os.environ.get("CIVAL_TEST_REDIS_URL", ""),
        "log_json": True,
        "market_data_enabled": False,  # as in conftest: no simulated market leading in the background
    }
    if not server_url:
        url = f"sqlite+aiosqlite:///{data_dir / 'fuzz.sqlite3'}"
        await migrate.upgrade(url)
        yield Settings(**settings, database_url=url)
        return
    server = make_url(_postgres_async_url(server_url))
    name = f"cival_fuzz_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server.render_as_string(hide_password=False), app_role=False)
    admin = admin.execution_options(isolation_level="AUTOCOMMIT")  # type: ignore[assignment]
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        await migrate.upgrade(url)
        yield Settings(**settings, database_url=url)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@dataclass
class User:
    """A user of the dedicated app and the session the fuzzed calls use; `renew` replaces a session a call ended."""

    email: str
    token: str
    portal: BlockingPortal
    registry: ServiceRegistry

    def renew(self) -> None:
        login = LoginIn(email=self.email, password=PASSWORD)
        self.token = self.portal.call(partial(self.registry.auth.login, login, client="fuzz-setup")).token


@dataclass
class Users:
    trader: User
    admin: User


@pytest.fixture(scope="module")
def fuzz_users(fuzz_settings: Settings) -> Iterator[Users]:
    """A trader and an admin, made and logged in through the services (no rate limits) on a loop of their own."""
    with start_blocking_portal() as portal:
        registry = ServiceRegistry(fuzz_settings)
        portal.call(registry.start)
        try:
            users = {}
            for role in ("trader", "admin"):
                email = f"fuzz-{role}-{secrets.token_hex(4)}@example.com"
                portal.call(partial(registry.auth.register, RegisterIn(email=email, password=PASSWORD), role=role))
                users[role] = User(email, "", portal, registry)
                users[role].renew()
            yield Users(trader=users["trader"], admin=users["admin"])
        finally:
            portal.call(registry.close)


class Target:
    """The ASGI app Schemathesis calls: forwards everything, lifespan included, to the module's dedicated app."""

    app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "the fuzz_app fixture sets the app under test"
        await self.app(scope, receive, send)


TARGET = Target()


@pytest.fixture(scope="module")
def fuzz_app(fuzz_settings: Settings) -> Iterator[FastAPI]:
    TARGET.app = create_app(fuzz_settings)
    try:
        yield TARGET.app
    finally:
        asgi.shutdown_lifespans()  # Schemathesis started the app's lifespan on its own loop: end it before the DB goes
        TARGET.app = None


# --- findings ----------------------------------------------------------------------------------------------------


@dataclass
class Findings:
    """Status codes the schema does not document, per operation, with one request that got each."""

    undocumented: dict[str, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    calls: int = 0

    def record(self, case: schemathesis.Case, response: schemathesis.Response) -> None:
        self.calls += 1
        if not _documented(case.operation, response.status_code):
            self.undocumented[case.operation.label].setdefault(
                response.status_code, f"{case.as_curl_command()} -> {response.text[:200]}"
            )

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Printed after the run, whatever the capture mode."""
        terminalreporter.write_sep("-", f"OpenAPI fuzz: {self.calls} calls")
        if not self.undocumented:
            terminalreporter.write_line("every status code the app answered is documented in its OpenAPI schema")
            return
        terminalreporter.write_line("status codes the OpenAPI schema does not document (schema gaps):")
        for operation, codes in sorted(self.undocumented.items()):
            for code, example in sorted(codes.items()):
                terminalreporter.write_line(f"  {operation}: {code}   e.g. {example}")


@pytest.fixture(scope="module")
def findings(request: pytest.FixtureRequest) -> Findings:
    found = Findings()
    name = f"{__name__}.findings"
    if request.config.pluginmanager.has_plugin(name):  # the module ran before in this session
        request.config.pluginmanager.unregister(name=name)
    request.config.pluginmanager.register(found, name)
    return found


def _documented(operation: schemathesis.APIOperation, status_code: int) -> bool:
    return operation.responses.find_by_status_code(status_code) is not None


# --- the run -----------------------------------------------------------------------------------------------------

# Each operation is a test item of its own. (`@schema.parametrize()` gives every item the same node id on pytest 9.2,
# and `schemathesis.pytest.from_fixture` fails there on `Function._nodeid`, hence the plain parametrization.)
schema = schemathesis.openapi.from_dict(
    create_app(Settings(env="test", data_dir=Path(tempfile.gettempdir()) / "cival-openapi-only")).openapi()
)
schema.app = TARGET
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


def _session_alive(token: str) -> bool:
    with asgi.get_client(TARGET) as client:
        return client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code != 401


@pytest.mark.usefixtures("fuzz_app")
@pytest.mark.parametrize("operation", OPERATIONS, ids=[operation.label for operation in OPERATIONS])
def test_openapi_fuzz(operation: schemathesis.APIOperation, fuzz_users: Users, findings: Findings) -> None:
    user = fuzz_users.admin if _documented(operation, 403) else fuzz_users.trader
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no `explain`: its coverage notes are noise here
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: schemathesis.Case) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {user.token}"}  # so the curl shows it
        response = case.call()
        findings.record(case, response)
        checks = [not_a_server_error]
        if response.status_code != 429 or _documented(operation, 429):
            # An undocumented 429 (rate limit) is listed in the summary; only its body is not checked.
            checks.append(response_schema_conformance)
        case.validate_response(response, checks=checks)
        if operation.method.upper() != "GET" and response.status_code < 300 and not _session_alive(user.token):
            user.renew()  # the call ended the session it used (logout)

    fuzz()


# --- what the fuzz can only find by chance -----------------------------------------------------------------------


@pytest.mark.usefixtures("fuzz_app")
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/api/v1/users/me", {"full_name": "nul\u0000name"}),
        ("POST", "/api/v1/accounts", {"exchange": "paper", "account_id": "nul\u0000id"}),
    ],
)
def test_nul_character_in_text_is_a_validation_error(
    method: str, path: str, body: dict[str, str], fuzz_users: Users
) -> None:
    """Regression: PostgreSQL text cannot hold NUL, and a NUL in a stored text field used to be a 500 there."""
    with asgi.get_client(TARGET) as client:
        try:
            response = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {fuzz_users.trader.token}"}
            )
        except Exception as exc:  # the in-process client re-raises what the app's 500 handler saw
            pytest.fail(f"{method} {path} {body!r} -> 500: {exc!r}"[:500])
    assert response.status_code == 422, f"{method} {path} {body!r} -> {response.status_code} {response.text}"
    assert response.json()["error"] == "validation_error"
