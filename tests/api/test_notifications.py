"""`/api/v1/notifications/webhooks` end to end, and fills reaching a real webhook receiver from the order path."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from cival.core.service_registry import ServiceRegistry
from cival.database.models import NotificationWebhook, SystemLog
from cival.services.market_data_service import MarketDataService
from cival.services.webhook_delivery import secret_aad
from tests._webhooks import Receiver, webhook_receiver
from tests.api._identity import ACCOUNTS, Caller, Identities

WEBHOOKS = "/api/v1/notifications/webhooks"
ORDERS = "/api/v1/orders"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as running:
        yield running


async def create(user: Caller, url: str, **body: Any) -> dict[str, Any]:
    response = await user.post(WEBHOOKS, json={"url": url, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# --- the endpoints -----------------------------------------------------------------------------------------------


async def test_the_secret_is_shown_once_and_stored_encrypted(
    ids: Identities, registry: ServiceRegistry, receiver: Receiver
) -> None:
    user = await ids.new_user()
    created = await create(user, receiver.url)
    secret = created.pop("secret")
    assert created["event_types"] == ["trades", "alerts"]
    assert (created["status"], created["is_active"], created["consecutive_failures"]) == ("active", True, 0)
    assert created["url"] == receiver.url

    listed = (await user.get(WEBHOOKS)).json()
    fetched = (await user.get(f"{WEBHOOKS}/{created['id']}")).json()
    assert listed == [fetched] == [created]
    assert "secret" not in json.dumps(listed)

    async with registry.database.system_session() as session:
        row = await session.get(NotificationWebhook, uuid.UUID(created["id"]))
        audit = (await session.scalars(select(SystemLog).where(SystemLog.user_id == user.id))).all()
    assert row is not None
    assert secret not in row.secret_encrypted
    assert registry.credentials.cipher.decrypt(row.secret_encrypted, aad=secret_aad(user.id, row.id)) == secret
    assert "webhook.created" in [entry.message for entry in audit]
    assert all(secret not in entry.message + json.dumps(entry.data) for entry in audit)


async def test_update_and_delete(ids: Identities, receiver: Receiver) -> None:
    user = await ids.new_user()
    created = await create(user, receiver.url, event_types=["trades"])
    url = f"{WEBHOOKS}/{created['id']}"
    response = await user.patch(url, json={"url": receiver.url + "?v=2", "event_types": ["alerts"], "is_active": False})
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["url"], changed["event_types"], changed["is_active"]) == (receiver.url + "?v=2", ["alerts"], False)
    assert (await user.get(url)).json() == changed
    assert (await user.delete(url)).status_code == 204
    assert (await user.get(url)).status_code == 404
    assert (await user.delete(url)).status_code == 404
    assert (await user.get(WEBHOOKS)).json() == []


async def test_another_users_webhook_is_not_found(ids: Identities, receiver: Receiver) -> None:
    alice, bob = await ids.new_user(), await ids.new_user()
    hook = await create(alice, receiver.url)
    url = f"{WEBHOOKS}/{hook['id']}"
    for response in (
        await bob.get(url),
        await bob.patch(url, json={"is_active": False}),
        await bob.delete(url),
        await bob.get(f"{url}/deliveries"),
        await bob.post(f"{url}/test"),
        await bob.post(f"{url}/secret"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "not_found"
    assert (await bob.get(WEBHOOKS)).json() == []
    assert (await alice.get(url)).json()["is_active"] is True
    assert receiver.requests.empty()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "http://hooks.example.com/cival"}, "invalid_webhook_url"),
        ({"url": "not a url"}, "invalid_webhook_url"),
        ({"url": "https://user:pw@hooks.example.com/"}, "invalid_webhook_url"),
        ({"url": "https://hooks.example.com/", "event_types": ["orders"]}, "invalid_event_type"),
        ({"url": "https://hooks.example.com/", "event_types": []}, "validation_error"),
        ({"url": 5}, "validation_error"),
        ({"url": "https://hooks.example.com/", "secret": "mine"}, "validation_error"),
        ({}, "validation_error"),
    ],
)
async def test_bad_input_is_422_with_a_stable_code(ids: Identities, body: dict[str, Any], code: str) -> None:
    user = await ids.new_user()
    response = await user.post(WEBHOOKS, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code
    assert (await user.get(WEBHOOKS)).json() == []


async def test_bad_update_is_422_and_changes_nothing(ids: Identities, receiver: Receiver) -> None:
    user = await ids.new_user()
    hook = await create(user, receiver.url)
    url = f"{WEBHOOKS}/{hook['id']}"
    response = await user.patch(url, json={"url": "ftp://hooks.example.com/"})
    assert (response.status_code, response.json()["error"]) == (422, "invalid_webhook_url")
    response = await user.patch(url, json={"event_types": ["balances"]})
    assert (response.status_code, response.json()["error"]) == (422, "invalid_event_type")
    assert (await user.get(url)).json() == {k: v for k, v in hook.items() if k != "secret"}


async def test_at_most_five_webhooks(ids: Identities, receiver: Receiver) -> None:
    user = await ids.new_user()
    for n in range(5):
        await create(user, f"{receiver.url}?n={n}")
    response = await user.post(WEBHOOKS, json={"url": receiver.url})
    assert (response.status_code, response.json()["error"]) == (409, "too_many_webhooks")


async def test_test_event_and_secret_rotation(ids: Identities, receiver: Receiver) -> None:
    user = await ids.new_user()
    hook = await create(user, receiver.url)
    url = f"{WEBHOOKS}/{hook['id']}"
    response = await user.post(f"{url}/test")
    assert response.status_code == 200, response.text
    delivery = response.json()
    assert (delivery["status"], delivery["event_type"], delivery["attempts"], delivery["response_status"]) == (
        "delivered",
        "test",
        1,
        200,
    )
    first = await receiver.next()
    assert first.verifies(hook["secret"])
    assert first.json["type"] == "test"

    rotated = (await user.post(f"{url}/secret")).json()
    assert rotated["id"] == hook["id"]
    assert rotated["secret"] != hook["secret"]
    await user.post(f"{url}/test")
    second = await receiver.next()
    assert second.verifies(rotated["secret"])
    assert not second.verifies(hook["secret"])

    deliveries = (await user.get(f"{url}/deliveries")).json()
    assert [d["event_id"] for d in deliveries] == [second.json["id"], first.json["id"]]  # newest first
    assert (await user.get(f"{url}/deliveries", params={"limit": 1})).json() == deliveries[:1]
    assert (await user.get(f"{url}/deliveries", params={"limit": 0})).status_code == 422


async def test_a_failing_test_event_is_reported(ids: Identities, receiver: Receiver) -> None:
    user = await ids.new_user()
    hook = await create(user, receiver.url)
    receiver.answer(500)
    delivery = (await user.post(f"{WEBHOOKS}/{hook['id']}/test")).json()
    assert (delivery["status"], delivery["attempts"], delivery["response_status"], delivery["error"]) == (
        "failed",
        1,
        500,
        "HTTP 500",
    )
    shown = (await user.get(f"{WEBHOOKS}/{hook['id']}")).json()
    assert (shown["consecutive_failures"], shown["last_error"], shown["status"]) == (1, "HTTP 500", "active")


# --- from the order path -----------------------------------------------------------------------------------------


async def test_fills_reach_the_webhook_and_a_stuck_endpoint_never_delays_an_order(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, receiver: Receiver
) -> None:
    user = await ids.new_user()
    account = (await user.post(ACCOUNTS, json={"exchange": "paper"})).json()["id"]
    hook = await create(user, receiver.url, event_types=["trades"])
    receiver.answer(then="block")
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.01"}

    first = await user.post(ORDERS, json=body)
    assert first.status_code == 201, first.text
    held = await receiver.next()  # the fill's delivery, held open by the endpoint
    second = await user.post(ORDERS, json=body)
    assert second.status_code == 201, second.text
    assert second.json()["status"] == "filled"
    assert receiver.answered == 0  # the second order completed while the first delivery was still waiting

    receiver.release()
    trades = (await user.get("/api/v1/trades")).json()["items"]
    # Callers are answered before the change is published: wait for each fill's delivery, not for the queue.
    received = [held] + [await receiver.next() for _ in range(len(trades) - 1)]
    await registry.notifications.webhooks.idle()
    assert receiver.requests.empty()
    assert all(r.verifies(hook["secret"]) and r.json["type"] == "trades" for r in received)
    assert sorted(r.json["data"]["id"] for r in received) == sorted(t["id"] for t in trades)
    assert {r.json["data"]["order_id"] for r in received} == {first.json()["id"], second.json()["id"]}
    deliveries = (await user.get(f"{WEBHOOKS}/{hook['id']}/deliveries")).json()
    assert [d["status"] for d in deliveries] == ["delivered"] * len(trades)
