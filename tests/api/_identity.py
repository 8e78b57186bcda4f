"""Helpers shared by the identity tests (auth, users, credentials, accounts). Not a conftest: import what you use.

The app is session-scoped and its rate limits live in the cache, keyed by client address. Every client made here
therefore gets its own random address, and every user its own unique email, so tests never share a limit.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from typing import Any, Self

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.sql import ColumnElement

from cival.core.service_registry import ServiceRegistry
from cival.database.models import Base, SystemLog, User
from cival.models.user_models import RegisterIn

BASE_URL = "http://cival.test"
DEFAULT_PASSWORD = "correct horse battery staple"

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
SESSIONS = "/api/v1/auth/sessions"
ME = "/api/v1/users/me"
ADMIN_USERS = "/api/v1/admin/users"
CREDENTIALS = "/api/v1/credentials"
ACCOUNTS = "/api/v1/accounts"


def random_address() -> str:
    """A client address no other test uses (so per-address rate limits are this test's own)."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:16]}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def error_fields(response: httpx.Response) -> set[str]:
    """The field names a 422 validation_error body names."""
    return {e["field"] for e in response.json().get("errors", [])}


@dataclass
class Caller:
    """A logged-in user with their own client (and so their own client address)."""

    client: httpx.AsyncClient
    email: str
    password: str
    token: str
    user: dict[str, Any]
    address: str

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(self.user["id"])

    async def request(self, method: str, url: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(token or self.token), **kwargs.pop("headers", {})}
        return await self.client.request(method, url, headers=headers, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)

    async def login_again(self, password: str | None = None) -> httpx.Response:
        """Another login of this user from the same address (a second session)."""
        return await self.client.post(LOGIN, json={"email": self.email, "password": password or self.password})


class Identities:
    """Makes clients with unique addresses and users that are registered and logged in; closes the clients."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.registry: ServiceRegistry = app.state.registry
        self._clients: list[httpx.AsyncClient] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for client in self._clients:
            await client.aclose()

    def client(self, address: str | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=self.app, raise_app_exceptions=False, client=(address or random_address(), 1234)
        )
        client = httpx.AsyncClient(transport=transport, base_url=BASE_URL)
        self._clients.append(client)
        return client

    async def new_user(
        self, *, role: str = "trader", password: str = DEFAULT_PASSWORD, full_name: str | None = None
    ) -> Caller:
        """A new user (trader through the API, admin through the service), logged in through the API."""
        address = random_address()
        client = self.client(address)
        email = unique_email(role)
        if role == "trader":
            body: dict[str, Any] = {"email": email, "password": password}
            if full_name is not None:
                body["full_name"] = full_name
            response = await client.post(REGISTER, json=body)
            assert response.status_code == 201, response.text
        else:
            await self.registry.auth.register(
                RegisterIn(email=email, password=password, full_name=full_name), role=role
            )
        response = await client.post(LOGIN, json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        body = response.json()
        return Caller(
            client=client,
            email=email,
            password=password,
            token=body["access_token"],
            user=body["user"],
            address=address,
        )


# --- database look-ups (as the platform, so row-level security does not hide anything) -------------------------


async def count_rows(registry: ServiceRegistry, model: type[Base], *where: ColumnElement[bool]) -> int:
    async with registry.database.system_session() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def audit_rows(registry: ServiceRegistry, action: str, *where: ColumnElement[bool]) -> list[SystemLog]:
    async with registry.database.system_session() as session:
        rows = await session.scalars(
            select(SystemLog)
            .where(SystemLog.module == "audit", SystemLog.message == action, *where)
            .order_by(SystemLog.created_at)
        )
        return list(rows.all())


async def get_user_row(registry: ServiceRegistry, user_id: uuid.UUID) -> User:
    async with registry.database.system_session() as session:
        user = await session.get(User, user_id)
    assert user is not None
    return user


def freeze_rate_limit_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    """Stop the rate limiter's clock at the current second, so a burst of requests cannot straddle two windows."""
    import cival.services.rate_limiter as rate_limiter

    now = time.time()
    monkeypatch.setattr(rate_limiter, "time", SimpleNamespace(time=lambda: now))
    return now
