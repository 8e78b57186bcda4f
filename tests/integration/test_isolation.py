"""Tenant isolation, checked on every route of the app: user B can neither see nor touch user A's objects.

The routes are discovered from the app, so a route added later is covered without editing this file, unless it
names an object kind (a `{something_id}` path parameter) this file does not know yet: then the test fails and says
which route needs a factory in `FACTORIES` below, the one place to teach it how A gets an object of that kind.

For every route and method, B calls it with A's ids and, separately, with random ids of no object at all. Both
answers must be identical (same status, same error code, same detail once the id is blanked out): a difference,
like 403 instead of 404, tells B that A's object exists. Both must be 404 `not_found`, or 403 `forbidden` on
admin-only routes (B is a trader). What B reads from routes without ids must not mention A's ids, email or token,
and once B is done, everything A reads about A's objects is exactly as it was and A's token still works. Apart from
PUBLIC_ROUTES, every route must answer 401 without a token and with an unknown one.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import TypeAdapter
from starlette.routing import Route

from cival.api.deps import get_admin
from cival.core.service_registry import ServiceRegistry
from cival.models.user_models import RegisterIn

PASSWORD = "isolation-test-password"

PUBLIC_ROUTES = {
    ("GET", "/api/v1/system/health"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/metrics"),
}
"""The only routes that answer without a session. Anything else must be 401 without a bearer token."""

BODY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    # A real change, so that if B's update ever went through, A's snapshot would show it.
    ("PATCH", "/api/v1/accounts/{account_id}"): {"account_type": "futures", "is_active": False},
}
"""Request bodies for routes whose minimal schema-generated body would not exercise them; others get that."""

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


# --- A's objects, by path-parameter name ------------------------------------------------------------------------


@dataclass
class World:
    """User A and the ids of A's objects, made on first use and then reused by every route that names them."""

    a: httpx.AsyncClient
    a_user_id: str
    ids: dict[str, str] = field(default_factory=dict)

    async def id_for(self, param: str) -> str:
        if param not in self.ids:
            self.ids[param] = await FACTORIES[param](self)
        return self.ids[param]


async def _created(response: httpx.Response) -> str:
    assert response.status_code == 201, f"{response.request.method} {response.request.url}: {response.text}"
    object_id: str = response.json()["id"]
    return object_id


async def _a_credential(world: World) -> str:
    body = {"exchange": "binance", "api_key": f"akey-{secrets.token_hex(8)}", "api_secret": secrets.token_hex(16)}
    return await _created(await world.a.post("/api/v1/credentials", json=body))


async def _a_account(world: World) -> str:
    body = {"exchange": "paper", "account_id": f"iso-a-{secrets.token_hex(4)}"}
    return await _created(await world.a.post("/api/v1/accounts", json=body))


async def _a_order(world: World) -> str:
    # A resting limit buy far below any market price: it works (pending) and stays cancelable.
    account = await world.id_for("account_id")
    body = {
        "account_id": account,
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "quantity": "0.001",
        "price": "10000",
    }
    return await _created(await world.a.post("/api/v1/orders", json=body))


async def _a_session(world: World) -> str:
    response = await world.a.get("/api/v1/auth/sessions")
    assert response.status_code == 200, response.text
    session_id: str = next(s["id"] for s in response.json() if s["current"])
    return session_id


async def _a_user(world: World) -> str:
    return world.a_user_id


async def _a_limit(world: World) -> str:
    body = {"limit_type": "order_notional", "symbol": "BTC/USDT", "limit_value": "1000000"}
    return await _created(await world.a.post("/api/v1/risk/limits", json=body))


async def _a_alert(world: World) -> str:
    # Engaging and releasing the kill switch each raise an alert, and leave A free to trade.
    for active in (True, False):
        response = await world.a.post("/api/v1/risk/kill-switch", json={"active": active})
        assert response.status_code == 200, response.text
    response = await world.a.get("/api/v1/risk/alerts")
    assert response.status_code == 200, response.text
    alert_id: str = response.json()["items"][0]["id"]
    return alert_id


async def _a_webhook(world: World) -> str:
    # Loopback on the discard port: nothing listens, so a delivery attempt fails at once and goes nowhere.
    body = {"url": "http://127.0.0.1:9/cival", "event_types": ["trades"]}
    return await _created(await world.a.post("/api/v1/notifications/webhooks", json=body))


FACTORIES: dict[str, Callable[[World], Awaitable[str]]] = {
    "credential_id": _a_credential,
    "account_id": _a_account,
    "order_id": _a_order,
    "session_id": _a_session,
    "user_id": _a_user,
    "limit_id": _a_limit,
    "alert_id": _a_alert,
    "webhook_id": _a_webhook,
}
"""Path-parameter name -> how A gets an object of that kind through the API. A new `*_id` route adds its kind here."""


# --- the app's routes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    dependant: Dependant | None
    route: APIRoute | None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    @property
    def is_admin(self) -> bool:
        return self.dependant is not None and _depends_on(self.dependant, get_admin)

    @property
    def public(self) -> bool:
        return (self.method, self.path) in PUBLIC_ROUTES


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every HTTP route x method of the app (routers are included lazily: flatten them), minus test-only routes."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, Route) or context.path is None:  # APIRoute is a Route; websockets are not
            continue
        if getattr(route.endpoint, "__module__", "").startswith("tests."):  # e.g. test_system's /_test/* routes
            continue
        dependant = getattr(context, "dependant", None) if isinstance(route, APIRoute) else None
        api_route = route if isinstance(route, APIRoute) else None
        for method in sorted(set(context.methods or ()) - {"HEAD"}):
            found.append(Endpoint(method, context.path, dependant, api_route))
    return found


def _sample(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A minimal value valid against a (pydantic-generated) JSON schema: only required properties."""
    if "$ref" in schema:
        return _sample(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _sample(options[0], defs)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _sample(props[name], defs) for name in schema.get("required", [])}
    if kind == "array":
        return [_sample(schema.get("items", {}), defs) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "email":
            return f"iso-{secrets.token_hex(6)}@example.com"
        if fmt == "uuid":
            return str(uuid.uuid4())
        if fmt == "date-time":
            return datetime.now(UTC).isoformat()
        return "a" * max(schema.get("minLength", 1), 1)
    if kind in ("integer", "number"):
        return schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
    if kind == "boolean":
        return False
    return None


def _sample_for(annotation: Any) -> Any:
    schema = TypeAdapter(annotation).json_schema()
    return _sample(schema, schema.get("$defs", {}))


def request_body(endpoint: Endpoint) -> Any:
    if (endpoint.method, endpoint.path) in BODY_OVERRIDES:
        return BODY_OVERRIDES[(endpoint.method, endpoint.path)]
    if endpoint.route is None or endpoint.route.body_field is None:
        return None
    return _sample_for(endpoint.route.body_field.field_info.annotation)


def query_params(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.dependant is None:
        return {}
    return {
        p.alias: _sample_for(p.field_info.annotation)
        for p in endpoint.dependant.query_params
        if p.field_info.is_required()
    }


async def call(
    client: httpx.AsyncClient, endpoint: Endpoint, ids: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    path = _PATH_PARAM.sub(lambda m: ids[m.group(1)], endpoint.path)
    return await client.request(
        endpoint.method, path, params=query_params(endpoint), json=request_body(endpoint), headers=headers
    )


# --- users and clients -------------------------------------------------------------------------------------------


def _random_address() -> str:
    """Each client gets its own address, so the per-address login and registration limits never interfere."""
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


@pytest.fixture
async def clients(app: FastAPI) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    opened: list[httpx.AsyncClient] = []

    def make() -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(_random_address(), 1234))
        client = httpx.AsyncClient(transport=transport, base_url="http://cival.test")
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.aclose()


async def _login(client: httpx.AsyncClient, email: str) -> str:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return token


async def _trader(registry: ServiceRegistry, client: httpx.AsyncClient, name: str) -> tuple[str, str, str]:
    """(user id, email, token): registered through the service (no registration limit), logged in via the API."""
    email = f"iso-{name}-{secrets.token_hex(6)}@example.com"
    user = await registry.auth.register(RegisterIn(email=email, password=PASSWORD, full_name=f"Isolation {name}"))
    return str(user.id), email, await _login(client, email)


def _blank(text: str, ids: dict[str, str]) -> str:
    for param, value in ids.items():
        text = text.replace(value, f"{{{param}}}")
    return text


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _error(response: httpx.Response) -> Any:
    body = _body(response)
    return body.get("error") if isinstance(body, dict) else None


def _outcome(response: httpx.Response, ids: dict[str, str]) -> tuple[int, Any]:
    """What a response tells the caller, with the ids it was asked about blanked out."""
    return response.status_code, json.loads(_blank(json.dumps(_body(response), sort_keys=True), ids))


async def _snapshot(client: httpx.AsyncClient, routes: list[Endpoint], ids: dict[str, str]) -> dict[str, Any]:
    """What A reads from every authenticated GET route, with A's ids."""
    out = {}
    for endpoint in routes:
        if endpoint.method == "GET" and not endpoint.public:
            response = await call(client, endpoint, ids)
            out[str(endpoint)] = (response.status_code, response.text, _body(response))
    return out


def _about(snapshot: dict[str, Any], routes: list[Endpoint], ids: dict[str, str]) -> dict[str, Any]:
    """The routes of a snapshot that show A's objects: they name one, or answer with their ids.

    (Shared data, like market prices, may change on its own: it is not A's, and not compared; nor are A's figures
    marked to those prices.)
    """
    named = {str(e) for e in routes if e.params}
    return {
        route: (status, _without_marks(body))
        for route, (status, text, body) in snapshot.items()
        if route in named or any(value in text for value in ids.values())
    }


MARKED = frozenset({"current_value", "mark_price", "market_value", "unrealized_pnl", "usd_value"})
"""Fields computed from the latest market prices, which move (or expire) on their own."""


def _without_marks(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _without_marks(v) for k, v in body.items() if k not in MARKED}
    if isinstance(body, list):
        return [_without_marks(v) for v in body]
    return body


# --- the tests ---------------------------------------------------------------------------------------------------


def test_every_object_route_has_a_factory(app: FastAPI) -> None:
    missing = [
        f"{endpoint} has path parameter {{{param}}} but FACTORIES in {__name__} has no factory for {param!r}"
        for endpoint in endpoints(app)
        for param in endpoint.params
        if param not in FACTORIES
    ]
    assert not missing, "register how user A creates each object kind:\n" + "\n".join(missing)


def test_public_routes_allow_list_is_current(app: FastAPI) -> None:
    known = {(e.method, e.path) for e in endpoints(app)}
    assert sorted(PUBLIC_ROUTES - known) == [], "PUBLIC_ROUTES names routes the app no longer has"


async def test_every_other_route_needs_a_session(app: FastAPI, clients: Callable[[], httpx.AsyncClient]) -> None:
    anonymous = clients()
    random_ids = {param: str(uuid.uuid4()) for e in endpoints(app) for param in e.params}
    wrong = []
    for endpoint in endpoints(app):
        if endpoint.public:
            continue
        for headers, code in (
            ({}, "not_authenticated"),
            ({"Authorization": f"Bearer cvl_{uuid.uuid4().hex}"}, "invalid_token"),
        ):
            response = await call(anonymous, endpoint, random_ids, headers)
            if response.status_code != 401 or _error(response) != code:
                how = "with an unknown token" if headers else "without a token"
                wrong.append(f"{endpoint} {how} -> {response.status_code} {response.text[:200]} (expected 401 {code})")
    assert not wrong, "routes that answer without a valid session (add to PUBLIC_ROUTES only if meant):\n" + "\n".join(
        wrong
    )


async def test_user_b_cannot_see_or_touch_user_a_objects(
    app: FastAPI, registry: ServiceRegistry, clients: Callable[[], httpx.AsyncClient]
) -> None:
    routes = endpoints(app)
    unknown = sorted({p for e in routes for p in e.params} - FACTORIES.keys())
    assert not unknown, f"no factory for path parameters {unknown}: see test_every_object_route_has_a_factory"

    a_client, b_client = clients(), clients()
    a_user_id, a_email, a_token = await _trader(registry, a_client, "a")
    _, b_email, _ = await _trader(registry, b_client, "b")
    world = World(a=a_client, a_user_id=a_user_id)
    a_ids = {param: await world.id_for(param) for param in sorted({p for e in routes for p in e.params})}
    before = _about(await _snapshot(a_client, routes, a_ids), routes, a_ids)
    secrets_of_a = {**a_ids, "a_email": a_email, "a_token": a_token}

    problems: list[str] = []
    for endpoint in routes:
        if endpoint.public:
            continue
        if endpoint.params:
            mine = await call(b_client, endpoint, a_ids)
            variants = [{p: str(uuid.uuid4()) for p in endpoint.params}]
            if len(endpoint.params) > 1:  # each of A's ids alone, the others random
                variants += [{**variants[0], p: a_ids[p]} for p in endpoint.params]
            expected_status, expected_code = (403, "forbidden") if endpoint.is_admin else (404, "not_found")
            mine_outcome = _outcome(mine, {p: a_ids[p] for p in endpoint.params})
            if mine.status_code != expected_status or _error(mine) != expected_code:
                problems.append(
                    f"{endpoint} as B with A's ids -> {mine.status_code} {mine.text[:300]} "
                    f"(expected {expected_status} {expected_code})"
                )
            for ids in variants:
                other = await call(b_client, endpoint, ids)
                if _outcome(other, ids) != mine_outcome:
                    problems.append(
                        f"{endpoint} as B tells A's objects from absent ones: with A's ids {mine_outcome}, "
                        f"with {ids} {_outcome(other, ids)}"
                    )
        else:
            response = await call(b_client, endpoint, {})
            if response.status_code >= 500:
                problems.append(f"{endpoint} as B -> {response.status_code} {response.text[:300]}")
            leaked = [name for name, value in secrets_of_a.items() if value in response.text]
            if leaked:
                problems.append(f"{endpoint} as B shows A's {leaked}: {response.text[:500]}")
        if (await b_client.get("/api/v1/users/me")).status_code == 401:  # B logged itself out: log in again
            await _login(b_client, b_email)

    me = await a_client.get("/api/v1/users/me")
    if me.status_code != 200 or me.json()["id"] != a_user_id:
        problems.append(f"A's token stopped working after B's calls: {me.status_code} {me.text[:300]}")
    after = {
        route: (status, _without_marks(body))
        for route, (status, _, body) in (await _snapshot(a_client, routes, a_ids)).items()
    }
    problems += [
        f"B's calls changed what A reads from {route}: before {before[route]}, after {after[route]}"
        for route in before
        if before[route] != after[route]
    ]
    assert not problems, "isolation broken:\n" + "\n".join(problems)
