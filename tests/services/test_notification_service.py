"""The notification service against a real webhook receiver (uvicorn on 127.0.0.1) and the run's database and cache.

Each test builds its own service with small retry delays; waits are on the receiver's request queue or on the
dispatcher becoming idle, never on a fixed sleep.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from cival.core.cache import MemoryCache, Numbered, NumberedLog
from cival.core.exceptions import ServiceUnavailable
from cival.core.service_registry import ServiceRegistry
from cival.database.models import NotificationWebhook
from cival.models.notification_models import WebhookIn, WebhookUpdateIn
from cival.models.user_models import RegisterIn
from cival.services.auth_service import Principal
from cival.services.notification_service import (
    InvalidEventType,
    InvalidWebhookUrl,
    NotificationService,
    check_event_types,
    check_url,
)
from cival.services.webhook_delivery import WebhookPolicy
from tests._webhooks import Receiver, webhook_receiver

FAST = WebhookPolicy(timeout=5.0, max_attempts=3, backoff_base=0.05, backoff_max=1.0, failing_after=2)
TRADE = {"id": "trade-1", "order_id": "order-1", "symbol": "BTC/USDT", "price": "64000.10", "quantity": "0.01"}

MakeService = Callable[..., Awaitable[NotificationService]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as running:
        yield running


@pytest.fixture
async def make_service(registry: ServiceRegistry) -> AsyncIterator[MakeService]:
    """Started services on the run's database, cache and key ring; closed after the test."""
    services: list[NotificationService] = []

    async def make(policy: WebhookPolicy = FAST, *, cache: Any = None, start: bool = True) -> NotificationService:
        service = NotificationService(
            registry.database, cache or registry.cache, registry.credentials.cipher, env="test", policy=policy
        )
        if start:
            await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.close()


async def new_principal(registry: ServiceRegistry) -> Principal:
    user = await registry.auth.register(
        RegisterIn(email=f"notify-{uuid.uuid4().hex[:16]}@example.com", password="correct horse battery staple")
    )
    return Principal(user_id=user.id, email=user.email, role="trader", session_id=uuid.uuid4())


async def webhook_row(registry: ServiceRegistry, webhook_id: uuid.UUID) -> NotificationWebhook:
    async with registry.database.system_session() as session:
        row = await session.get(NotificationWebhook, webhook_id)
    assert row is not None
    return row


# --- signing and payload -----------------------------------------------------------------------------------------


async def test_a_fill_is_posted_signed_with_the_users_secret(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service()
    user = await new_principal(registry)
    hook = await service.create_webhook(user, WebhookIn(url=receiver.url, event_types=["trades"]))
    assert hook.secret.startswith("whsec_")
    assert len(hook.secret) > 40

    before = int(time.time())
    await service.publish(user.user_id, "trades", TRADE)
    request = await receiver.next()

    assert request.verifies(hook.secret)
    assert not request.verifies("whsec_" + "x" * 43)
    tampered = type(request)(request.headers, request.body.replace(b"64000.10", b"64000.11"), request.at)
    assert not tampered.verifies(hook.secret)
    assert before <= int(request.headers["x-cival-timestamp"]) <= int(time.time())
    payload = request.json
    assert payload["type"] == "trades"
    assert payload["data"] == TRADE
    assert payload["user_id"] == str(user.user_id)
    assert payload["id"] == request.headers["x-cival-event-id"]
    assert payload["seq"] == await service.stream.head(user.user_id)  # the same number the live frame carries
    assert request.headers["content-type"] == "application/json"

    await service.webhooks.idle()
    (delivery,) = await service.list_deliveries(user, hook.id, 10)
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.error) == ("delivered", 1, 200, None)
    assert str(delivery.id) == request.headers["x-cival-delivery-id"]
    assert str(delivery.event_id) == payload["id"]


async def test_only_fills_and_alerts_of_the_chosen_types_are_sent(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service()
    user, other = await new_principal(registry), await new_principal(registry)
    await service.create_webhook(user, WebhookIn(url=receiver.url, event_types=["alerts"]))
    for channel in ("orders", "trades", "positions", "balances", "portfolio"):
        await service.publish(user.user_id, channel, {"n": channel})
    await service.publish(other.user_id, "alerts", {"n": "someone else's"})
    await service.publish(user.user_id, "alerts", {"n": "mine"})
    await service.webhooks.idle()
    assert receiver.requests.qsize() == 1
    assert (await receiver.next()).json["data"] == {"n": "mine"}


async def test_inactive_and_deleted_endpoints_get_nothing(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service()
    user = await new_principal(registry)
    paused = await service.create_webhook(user, WebhookIn(url=receiver.url + "?paused"))
    deleted = await service.create_webhook(user, WebhookIn(url=receiver.url + "?deleted"))
    await service.update_webhook(user, paused.id, WebhookUpdateIn(is_active=False))
    await service.delete_webhook(user, deleted.id)
    await service.publish(user.user_id, "trades", TRADE)
    await service.webhooks.idle()
    assert receiver.requests.empty()


async def test_an_endpoint_created_on_another_worker_is_seen_at_the_next_fill(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    """Who has endpoints is read once and re-read when any worker changes one (a version in the shared cache)."""
    here, elsewhere = await make_service(), await make_service()
    user = await new_principal(registry)
    await here.publish(user.user_id, "trades", TRADE)  # no endpoint yet: `here` now remembers that
    await here.webhooks.idle()
    assert receiver.requests.empty()
    hook = await elsewhere.create_webhook(user, WebhookIn(url=receiver.url, event_types=["trades"]))
    await here.publish(user.user_id, "trades", TRADE)
    assert (await receiver.next()).verifies(hook.secret)
    await elsewhere.delete_webhook(user, hook.id)
    await here.publish(user.user_id, "trades", TRADE)
    await here.webhooks.idle()
    assert receiver.requests.empty()


# --- retries, timeouts, failing ----------------------------------------------------------------------------------


async def test_5xx_is_retried_with_exponential_backoff_then_delivered(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service()
    user = await new_principal(registry)
    hook = await service.create_webhook(user, WebhookIn(url=receiver.url))
    receiver.answer(500, 503, then=200)
    await service.publish(user.user_id, "trades", TRADE)
    attempts = [await receiver.next() for _ in range(3)]
    await service.webhooks.idle()

    assert len({a.headers["x-cival-event-id"] for a in attempts}) == 1  # one event, for receiver-side dedup
    assert len({a.body for a in attempts}) == 1
    assert all(a.verifies(hook.secret) for a in attempts)
    # Waits of at least 0.05 s, then 0.1 s (base 0.05, doubled).
    assert attempts[1].at - attempts[0].at >= FAST.backoff(1)
    assert attempts[2].at - attempts[1].at >= FAST.backoff(2) == 2 * FAST.backoff(1)
    (delivery,) = await service.list_deliveries(user, hook.id, 10)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 3, 200)
    row = await webhook_row(registry, hook.id)
    assert (row.status, row.consecutive_failures, row.last_success_at is not None) == ("active", 0, True)
    assert receiver.requests.empty()


async def test_a_timeout_is_retried_and_recorded(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service(WebhookPolicy(timeout=0.2, max_attempts=2, backoff_base=0.01, failing_after=5))
    user = await new_principal(registry)
    hook = await service.create_webhook(user, WebhookIn(url=receiver.url))
    receiver.answer("block", "block")
    await service.publish(user.user_id, "alerts", {"severity": "high"})
    await receiver.next()
    await receiver.next()
    await service.webhooks.idle()
    (delivery,) = await service.list_deliveries(user, hook.id, 10)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 2, None)
    assert delivery.error == "no answer within 0.2 s"
    row = await webhook_row(registry, hook.id)
    assert (row.status, row.consecutive_failures, row.last_error) == ("active", 1, "no answer within 0.2 s")


async def test_a_refused_connection_is_retried(registry: ServiceRegistry, make_service: MakeService) -> None:
    service = await make_service(WebhookPolicy(timeout=1.0, max_attempts=2, backoff_base=0.01))
    user = await new_principal(registry)
    async with webhook_receiver() as gone:
        url = gone.url
    hook = await service.create_webhook(user, WebhookIn(url=url))  # nothing listens there any more
    await service.publish(user.user_id, "trades", TRADE)
    await service.webhooks.idle()
    (delivery,) = await service.list_deliveries(user, hook.id, 10)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 2, None)
    assert (delivery.error or "").startswith("ConnectError")


async def test_a_4xx_is_final(registry: ServiceRegistry, make_service: MakeService, receiver: Receiver) -> None:
    service = await make_service()
    user = await new_principal(registry)
    hook = await service.create_webhook(user, WebhookIn(url=receiver.url))
    receiver.answer(404)
    await service.publish(user.user_id, "trades", TRADE)
    await service.webhooks.idle()
    (delivery,) = await service.list_deliveries(user, hook.id, 10)
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.error) == (
        "failed",
        1,
        404,
        "HTTP 404",
    )
    assert receiver.requests.qsize() == 1


async def test_consecutive_failures_mark_the_endpoint_failing_until_a_success(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cival.services.webhook_delivery")
    service = await make_service()  # failing after 2 failed deliveries, 3 attempts each
    user = await new_principal(registry)
    hook = await service.create_webhook(user, WebhookIn(url=receiver.url))
    receiver.answer(then=500)
    for _ in range(2):
        await service.publish(user.user_id, "trades", TRADE)
        await service.webhooks.idle()
    row = await webhook_row(registry, hook.id)
    assert (row.status, row.consecutive_failures, row.last_error) == ("failing", 2, "HTTP 500")
    assert row.last_failure_at is not None
    assert receiver.requests.qsize() == 2 * FAST.max_attempts

    # Failing: one attempt per event, no retries.
    await service.publish(user.user_id, "trades", TRADE)
    await service.webhooks.idle()
    assert receiver.requests.qsize() == 2 * FAST.max_attempts + 1
    assert [d.status for d in await service.list_deliveries(user, hook.id, 10)] == ["failed"] * 3
    assert (await service.get_webhook(user, hook.id)).consecutive_failures == 3

    # Logged (WARNING, structlog), with the endpoint and the error but never the secret.
    logged = [r.msg for r in caplog.records if r.name == "cival.services.webhook_delivery"]
    events = [
        entry["event"] for entry in logged if isinstance(entry, dict) and entry.get("user_id") == str(user.user_id)
    ]
    assert events.count("webhook endpoint marked failing") == 1
    assert events.count("webhook delivery failed") == 3
    assert all(hook.secret not in str(entry) for entry in logged)

    # A success (here a test event) makes it active again.
    receiver.answer(then=200)
    delivery = await service.send_test(user, hook.id)
    assert (delivery.status, delivery.event_type, delivery.response_status) == ("delivered", "test", 200)
    assert (await receiver.next()).verifies(hook.secret)
    healthy = await service.get_webhook(user, hook.id)
    assert (healthy.status, healthy.consecutive_failures) == ("active", 0)


async def test_publish_is_not_delayed_by_a_stuck_endpoint(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service(WebhookPolicy(timeout=30.0, per_endpoint=1))
    user = await new_principal(registry)
    await service.create_webhook(user, WebhookIn(url=receiver.url))
    receiver.answer(then="block")
    await service.publish(user.user_id, "trades", TRADE | {"n": 0})
    first = await receiver.next()  # held by the endpoint: it will not answer until released
    for n in range(1, 50):
        await service.publish(user.user_id, "trades", TRADE | {"n": n})
    # All 50 published while the first delivery is still waiting for its answer.
    assert receiver.requests.empty()
    assert first.json["data"]["n"] == 0
    receiver.release()
    await service.webhooks.idle()
    assert sorted(r.json["data"]["n"] for r in [first] + [await receiver.next() for _ in range(49)]) == list(range(50))
    assert service.webhooks.stats.delivered >= 50


async def test_a_full_queue_drops_the_event_and_counts_it(registry: ServiceRegistry, make_service: MakeService) -> None:
    service = await make_service(WebhookPolicy(queue_size=2), start=False)  # nothing drains the queue
    user = await new_principal(registry)
    for _ in range(3):
        await service.publish(user.user_id, "trades", TRADE)
    assert service.webhooks.stats.dropped == 1


async def test_history_keeps_the_newest_deliveries(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service(WebhookPolicy(history=3))
    user = await new_principal(registry)
    hook = await service.create_webhook(user, WebhookIn(url=receiver.url))
    sent = [await service.send_test(user, hook.id) for _ in range(5)]
    kept = await service.list_deliveries(user, hook.id, 100)
    assert [d.id for d in kept] == [d.id for d in reversed(sent[-3:])]


class DownCache(MemoryCache):
    """Every numbering step fails, as on an unreachable Redis."""

    async def publish_numbered(self, log: NumberedLog, messages: Sequence[Numbered]) -> list[int]:
        raise ServiceUnavailable("Cache 'redis' is unreachable: connection refused")


async def test_a_cache_outage_costs_the_live_update_not_the_webhook(
    registry: ServiceRegistry, make_service: MakeService, receiver: Receiver
) -> None:
    service = await make_service(cache=DownCache())
    user = await new_principal(registry)
    await service.create_webhook(user, WebhookIn(url=receiver.url))
    await service.publish(user.user_id, "trades", TRADE)  # does not raise
    request = await receiver.next()
    assert (request.json["data"], request.json["seq"]) == (TRADE, None)


# --- validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "ok"),
    [
        ("https://hooks.example.com/cival", "production", True),
        ("https://hooks.example.com:8443/a?b=c", "production", True),
        ("http://hooks.example.com/cival", "production", False),
        ("https://127.0.0.1/hook", "production", False),
        ("https://localhost/hook", "production", False),
        ("https://10.0.0.5/hook", "production", False),
        ("https://169.254.169.254/latest/meta-data", "production", False),
        ("https://[::1]/hook", "production", False),
        ("http://127.0.0.1:9000/hook", "test", True),
        ("http://localhost:9000/hook", "development", True),
        ("http://[::1]:9000/hook", "development", True),
        ("http://hooks.example.com/cival", "development", False),
        ("ftp://hooks.example.com/cival", "development", False),
        ("hooks.example.com/cival", "development", False),
        ("https://user:pw@hooks.example.com/", "development", False),
        ("https://hooks.example.com/#frag", "development", False),
        ("https://hooks.example.com/a b", "development", False),
        ("https://", "development", False),
        ("https://hooks.example.com/" + "a" * 2048, "development", False),
    ],
)
def test_webhook_urls(url: str, env: str, ok: bool) -> None:
    if ok:
        assert check_url(url, env) == url
    else:
        with pytest.raises(InvalidWebhookUrl):
            check_url(url, env)


def test_event_types() -> None:
    assert check_event_types(None) == ["trades", "alerts"]
    assert check_event_types(["alerts", "alerts"]) == ["alerts"]
    with pytest.raises(InvalidEventType, match="'orders'"):
        check_event_types(["trades", "orders"])
