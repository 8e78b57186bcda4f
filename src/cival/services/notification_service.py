"""Notifications: the one publisher of user events, and each user's webhook endpoints.

`publish(user_id, channel, data)` is what the order path (and the risk manager) call for every change: it numbers
the event and keeps it for resume (`UserStream`), sends it to the user's live channel on every worker, and for
fills (`trades`) and `alerts` queues a webhook delivery (`WebhookDispatcher`) without waiting for it. A cache
outage costs the live update (logged), never the webhook or the caller.

Endpoints: at most `MAX_WEBHOOKS` per user; https only, except loopback over http outside production; in
production loopback and private addresses are refused too (D33). The signing secret is made here, shown once, and
stored encrypted under the credential key ring, bound to its owner and row.
"""

from __future__ import annotations

import ipaddress
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cival.core.cache import Cache
from cival.core.db import Database
from cival.core.exceptions import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from cival.core.logging import get_logger
from cival.core.security import CredentialCipher
from cival.database.models import NotificationDelivery, NotificationWebhook
from cival.models.notification_models import (
    DeliveryOut,
    WebhookCreatedOut,
    WebhookIn,
    WebhookOut,
    WebhookSecretOut,
    WebhookUpdateIn,
)
from cival.services import audit
from cival.services.auth_service import Principal
from cival.services.credential_service import reencrypt_rows
from cival.services.user_stream import UserStream
from cival.services.webhook_delivery import (
    WEBHOOK_EVENT_TYPES,
    WebhookDispatcher,
    WebhookEvent,
    WebhookPolicy,
    secret_aad,
)

log = get_logger(__name__)

MAX_WEBHOOKS = 5
MAX_URL_CHARS = 2048
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TEST_EVENT = "test"


class InvalidWebhookUrl(ValidationFailed):
    code = "invalid_webhook_url"


class InvalidEventType(ValidationFailed):
    code = "invalid_event_type"


class TooManyWebhooks(Conflict):
    code = "too_many_webhooks"


def check_url(url: str, env: str) -> str:
    """`url` if it may receive webhooks in `env`; InvalidWebhookUrl says why not."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidWebhookUrl(f"a webhook URL has at most {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise InvalidWebhookUrl("a webhook URL must not contain spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidWebhookUrl(f"not a valid URL: {exc}") from None
    host = parsed.host
    if parsed.scheme not in ("https", "http") or not host:
        raise InvalidWebhookUrl("a webhook URL is absolute: https://host/path")
    if parsed.userinfo:
        raise InvalidWebhookUrl("a webhook URL must not carry a user name or password")
    if parsed.fragment:
        raise InvalidWebhookUrl("a webhook URL must not have a #fragment (it is never sent)")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    is_loopback = host.lower() in LOOPBACK_NAMES or (address is not None and address.is_loopback)
    if env == "production":
        if is_loopback or (address is not None and not address.is_global):
            raise InvalidWebhookUrl("a webhook URL must name a public host, not a loopback or private address")
        if parsed.scheme != "https":
            raise InvalidWebhookUrl("a webhook URL must use https")
    elif parsed.scheme != "https" and not is_loopback:
        raise InvalidWebhookUrl("a webhook URL must use https (http only for localhost / 127.0.0.1 outside production)")
    return url


def check_event_types(event_types: list[str] | None) -> list[str]:
    """The event types without duplicates, all known; both when None."""
    if event_types is None:
        return list(WEBHOOK_EVENT_TYPES)
    unknown = [t for t in event_types if t not in WEBHOOK_EVENT_TYPES]
    if unknown:
        raise InvalidEventType(
            f"unknown event type(s) {', '.join(map(repr, unknown))}: expected {', '.join(WEBHOOK_EVENT_TYPES)}"
        )
    return list(dict.fromkeys(event_types))


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class NotificationService:
    def __init__(
        self,
        database: Database,
        cache: Cache,
        cipher: CredentialCipher,
        *,
        env: str,
        policy: WebhookPolicy | None = None,
        stream: UserStream | None = None,
    ) -> None:
        self.database = database
        self.cipher = cipher
        self.env = env
        self.stream = stream or UserStream(cache)
        self.webhooks = WebhookDispatcher(database, cipher, policy, cache)

    async def start(self) -> None:
        self.webhooks.start()

    async def close(self) -> None:
        await self.webhooks.close()

    # --- publishing ----------------------------------------------------------------------------------------------

    async def publish(self, user_id: uuid.UUID, channel: str, data: Mapping[str, Any]) -> None:
        """Number, keep and publish one user event (`publish_many`)."""
        await self.publish_many(user_id, [(channel, data)])

    async def publish_many(self, user_id: uuid.UUID, events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Number, keep and publish the user's `events` (channel, data) in order, in one cache step; queue each fill
        and alert for the user's webhooks."""
        seqs: list[int | None] = [None] * len(events)
        try:
            seqs = list(await self.stream.append_many(user_id, events))
        except ServiceUnavailable as exc:
            log.warning(
                "live updates not published: cache unavailable",
                user_id=str(user_id),
                channels=[channel for channel, _ in events],
                error=exc.detail,
            )
        for (channel, data), seq in zip(events, seqs, strict=True):
            if channel in WEBHOOK_EVENT_TYPES:
                self.webhooks.enqueue(WebhookEvent(uuid.uuid4(), user_id, channel, data, datetime.now(UTC), seq))

    # --- endpoints -----------------------------------------------------------------------------------------------

    def _seal(self, row: NotificationWebhook, secret: str) -> None:
        row.secret_encrypted = self.cipher.encrypt(secret, aad=secret_aad(row.user_id, row.id))

    async def _own(self, session: AsyncSession, principal: Principal, webhook_id: uuid.UUID) -> NotificationWebhook:
        row = await session.scalar(
            select(NotificationWebhook).where(
                NotificationWebhook.id == webhook_id, NotificationWebhook.user_id == principal.user_id
            )
        )
        if row is None:
            raise NotFound(f"webhook {webhook_id} not found")
        return row

    async def create_webhook(self, principal: Principal, body: WebhookIn) -> WebhookCreatedOut:
        url = check_url(body.url, self.env)
        event_types = check_event_types(body.event_types)
        secret = _new_secret()
        row = NotificationWebhook(id=uuid.uuid4(), user_id=principal.user_id, url=url, event_types=event_types)
        self._seal(row, secret)
        async with self.database.session(principal.user_id) as session:
            count = await session.scalar(
                select(func.count())
                .select_from(NotificationWebhook)
                .where(NotificationWebhook.user_id == principal.user_id)
            )
            if (count or 0) >= MAX_WEBHOOKS:
                raise TooManyWebhooks(f"at most {MAX_WEBHOOKS} webhooks per user: delete one first")
            session.add(row)
            await session.flush()
            await session.refresh(row)
            audit.record(session, "webhook.created", principal.user_id, webhook_id=row.id, host=httpx.URL(url).host)
        await self.webhooks.endpoints_changed()
        out = WebhookOut.model_validate(row)
        return WebhookCreatedOut(**out.model_dump(), secret=secret)

    async def list_webhooks(self, principal: Principal) -> list[WebhookOut]:
        async with self.database.session(principal.user_id, read_only=True) as session:
            rows = (
                await session.scalars(
                    select(NotificationWebhook)
                    .where(NotificationWebhook.user_id == principal.user_id)
                    .order_by(NotificationWebhook.created_at, NotificationWebhook.id)
                )
            ).all()
        return [WebhookOut.model_validate(row) for row in rows]

    async def get_webhook(self, principal: Principal, webhook_id: uuid.UUID) -> WebhookOut:
        async with self.database.session(principal.user_id, read_only=True) as session:
            return WebhookOut.model_validate(await self._own(session, principal, webhook_id))

    async def update_webhook(self, principal: Principal, webhook_id: uuid.UUID, body: WebhookUpdateIn) -> WebhookOut:
        url = check_url(body.url, self.env) if body.url is not None else None
        event_types = check_event_types(body.event_types) if body.event_types is not None else None
        async with self.database.session(principal.user_id) as session:
            row = await self._own(session, principal, webhook_id)
            if url is not None:
                row.url = url
            if event_types is not None:
                row.event_types = event_types
            if body.is_active is not None:
                if body.is_active and not row.is_active:
                    row.consecutive_failures, row.status = 0, "active"
                row.is_active = body.is_active
            row.updated_at = datetime.now(UTC)
            await session.flush()
            audit.record(session, "webhook.updated", principal.user_id, webhook_id=row.id)
        await self.webhooks.endpoints_changed()
        return WebhookOut.model_validate(row)

    async def delete_webhook(self, principal: Principal, webhook_id: uuid.UUID) -> None:
        async with self.database.session(principal.user_id) as session:
            row = await self._own(session, principal, webhook_id)
            await session.delete(row)
            audit.record(session, "webhook.deleted", principal.user_id, webhook_id=webhook_id)
        await self.webhooks.endpoints_changed()

    async def rotate_secret(self, principal: Principal, webhook_id: uuid.UUID) -> WebhookSecretOut:
        secret = _new_secret()
        async with self.database.session(principal.user_id) as session:
            row = await self._own(session, principal, webhook_id)
            self._seal(row, secret)
            row.updated_at = datetime.now(UTC)
            audit.record(session, "webhook.secret_rotated", principal.user_id, webhook_id=row.id)
        return WebhookSecretOut(id=webhook_id, secret=secret)

    @staticmethod
    def _not_under(key_id: str) -> ColumnElement[bool]:
        return ~NotificationWebhook.secret_encrypted.startswith(f"v1.{key_id}.")

    async def pending_rotation(self) -> int:
        """How many webhook secrets are not yet under the primary key (an unfinished rotation)."""
        async with self.database.system_session(read_only=True) as session:
            count = await session.scalar(
                select(func.count())
                .select_from(NotificationWebhook)
                .where(self._not_under(self.cipher.keyring.primary_id))
            )
        return int(count or 0)

    async def reencrypt_secrets(self, *, batch_size: int = 100) -> tuple[int, list[uuid.UUID]]:
        """Re-encrypt every webhook signing secret not under the primary key (`cival keys rotate`), like the
        exchange credentials: the secret itself does not change, so receivers notice nothing."""
        primary = self.cipher.keyring.primary_id

        def reseal(row: NotificationWebhook) -> dict[str, str]:
            return {
                "secret_encrypted": self.cipher.reencrypt(row.secret_encrypted, aad=secret_aad(row.user_id, row.id))
            }

        return await reencrypt_rows(
            self.database, NotificationWebhook, self._not_under(primary), reseal, "webhook.secret_reencrypted",
            "webhook_id", primary, batch_size=batch_size,
        )  # fmt: skip

    async def list_deliveries(self, principal: Principal, webhook_id: uuid.UUID, limit: int) -> list[DeliveryOut]:
        """The endpoint's newest deliveries first."""
        async with self.database.session(principal.user_id, read_only=True) as session:
            await self._own(session, principal, webhook_id)
            rows = (
                await session.scalars(
                    select(NotificationDelivery)
                    .where(NotificationDelivery.webhook_id == webhook_id)
                    .order_by(NotificationDelivery.created_at.desc(), NotificationDelivery.id.desc())
                    .limit(limit)
                )
            ).all()
        return [DeliveryOut.model_validate(row) for row in rows]

    async def send_test(self, principal: Principal, webhook_id: uuid.UUID) -> DeliveryOut:
        """Send a `test` event to the endpoint now, once, and answer with how it went."""
        async with self.database.session(principal.user_id, read_only=True) as session:
            row = await self._own(session, principal, webhook_id)
        data = {"message": "a test event from Cival", "webhook_id": str(webhook_id)}
        event = WebhookEvent(uuid.uuid4(), principal.user_id, TEST_EVENT, data, datetime.now(UTC))
        delivery = await self.webhooks.deliver(row, event, max_attempts=1)
        if delivery is None:
            raise NotFound(f"webhook {webhook_id} not found")
        return DeliveryOut.model_validate(delivery)
