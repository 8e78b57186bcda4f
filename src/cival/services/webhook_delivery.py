"""Webhook delivery: a bounded queue and background tasks that POST signed events, retry, and record the outcome.

Nothing here runs on the order path: `enqueue` puts the event on a bounded queue without awaiting (a full queue
drops the event, logged and counted). One dispatcher task takes what is queued, looks up each user's active
endpoints once per batch and starts a delivery per endpoint and event; at most `max_in_flight` deliveries exist at
once, at most `concurrency` requests are open, and at most `per_endpoint` of them to one endpoint, so a slow
endpoint cannot starve the others. Outcomes are written by one recorder task, batched, one transaction per user.

A delivery is one event to one endpoint: an HTTP POST of the JSON event, signed (`X-Cival-Signature: sha256=<hex
HMAC-SHA256 of "<timestamp>.<body>">` with `X-Cival-Timestamp`), retried with exponential backoff on a timeout, a
connection error, a 5xx, 408 or 429; any other answer is final. After `failing_after` failed deliveries in a row the
endpoint is `failing` and gets one attempt per event until a delivery succeeds. Every delivery is a row in
`notification_deliveries` (the newest `history` per endpoint are kept); failures are logged without the secret or
the URL's path and query.

Delivery is at least once while the process runs; receivers deduplicate by the event id. Events still queued or
being retried when the process stops are lost (the database holds the truth: fills and alerts are readable over
REST); a delivery that was waiting for a retry keeps its `pending` row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import case, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cival import __version__
from cival.core.cache import Cache
from cival.core.db import Database
from cival.core.exceptions import ServiceUnavailable
from cival.core.logging import get_logger
from cival.core.security import CredentialCipher, CredentialDecryptError
from cival.database.models import NotificationDelivery, NotificationWebhook
from cival.services.channels import dumps, iso

__all__ = [
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WEBHOOK_EVENT_TYPES",
    "WebhookDispatcher",
    "WebhookEvent",
    "WebhookPolicy",
    "secret_aad",
    "sign",
]

log = get_logger(__name__)

WEBHOOK_EVENT_TYPES = ("trades", "alerts")
DIRECTORY_VERSION_KEY = "webhooks:directory"
"""Changes whenever any user's endpoints change: workers re-read who has an active endpoint when it does."""
"""User channels whose events can go to a webhook: fills and risk alerts."""
SIGNATURE_HEADER = "X-Cival-Signature"
TIMESTAMP_HEADER = "X-Cival-Timestamp"
EVENT_ID_HEADER = "X-Cival-Event-Id"
DELIVERY_ID_HEADER = "X-Cival-Delivery-Id"
MAX_ERROR_CHARS = 500
RETRYABLE_STATUSES = frozenset({408, 429})
DISPATCH_BATCH = 500
"""Events taken from the queue at once, with one endpoint look-up per user."""


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Timeouts, retries and bounds of webhook delivery (D33); tests use small delays."""

    timeout: float = 5.0  # seconds for one whole attempt
    max_attempts: int = 5
    backoff_base: float = 1.0  # seconds before the 2nd attempt; doubled before each next one
    backoff_max: float = 60.0
    failing_after: int = 3  # failed deliveries in a row that mark an endpoint failing
    queue_size: int = 10_000
    max_in_flight: int = 1_000
    concurrency: int = 16
    per_endpoint: int = 2
    history: int = 100  # deliveries kept per endpoint

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: uuid.UUID
    user_id: uuid.UUID
    type: str
    data: Mapping[str, Any]
    created_at: datetime
    seq: int | None = None

    def body(self) -> bytes:
        """The JSON body every endpoint receives for this event (the same bytes on every attempt)."""
        payload = {
            "id": self.id,
            "type": self.type,
            "created_at": iso(self.created_at),
            "user_id": self.user_id,
            "seq": self.seq,
            "data": self.data,
        }
        return dumps(payload).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 under the endpoint's secret of `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def secret_aad(user_id: uuid.UUID, webhook_id: uuid.UUID) -> str:
    """Associated data binding a webhook secret's ciphertext to its owner and row."""
    return f"notification_webhooks:{user_id}:{webhook_id}:secret"


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    retryable: bool
    status: int | None = None
    error: str | None = None


@dataclass
class _Endpoint:
    slots: asyncio.Semaphore
    users: int = 0


@dataclass
class _Counters:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


_GONE = object()
"""A record's result when its endpoint was deleted meanwhile."""


@dataclass(eq=False)
class _Record:
    """A delivery to write: with its outcome (and the endpoint's new health), or None to store it as pending."""

    hook: NotificationWebhook
    delivery: NotificationDelivery
    outcome: _Outcome | None
    is_stored: bool
    done: asyncio.Future[str | object] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WebhookDispatcher:
    """This process's webhook deliveries: the queue, the dispatcher, the HTTP client and the recorder."""

    def __init__(
        self,
        database: Database,
        cipher: CredentialCipher,
        policy: WebhookPolicy | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.database = database
        self.cipher = cipher
        self.cache = cache
        self._directory_version: bytes | None = None
        self._users_with_hooks: frozenset[uuid.UUID] = frozenset()
        self.policy = policy or WebhookPolicy()
        self._queue: asyncio.Queue[WebhookEvent] = asyncio.Queue(maxsize=self.policy.queue_size)
        self._in_flight = asyncio.Semaphore(self.policy.max_in_flight)
        self._requests = asyncio.Semaphore(self.policy.concurrency)
        self._endpoints: dict[uuid.UUID, _Endpoint] = {}
        self._client: httpx.AsyncClient | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._records: list[_Record] = []
        self._recorder: asyncio.Task[None] | None = None
        self.stats = _Counters()

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # a redirect is an answer, not a hop: endpoints are registered exactly
            trust_env=False,
            timeout=httpx.Timeout(self.policy.timeout),
            limits=httpx.Limits(max_connections=self.policy.concurrency),
            headers={"User-Agent": f"Cival-Webhooks/{__version__}"},
        )
        self._dispatcher = asyncio.create_task(self._dispatch(), name="webhook-dispatcher")

    async def close(self, grace: float = 2.0) -> None:
        """Stop taking events; give deliveries `grace` seconds, then cancel what is left."""
        tasks = {t for t in (self._dispatcher, *self.stats.tasks) if t is not None}
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._recorder is not None:  # what finished is written
            await asyncio.wait({self._recorder}, timeout=grace)
        if self._client is not None:
            await self._client.aclose()
        self._dispatcher = self._client = None

    # --- the queue -----------------------------------------------------------------------------------------------

    def enqueue(self, event: WebhookEvent) -> bool:
        """Queue `event` for the user's endpoints, without waiting; False (logged) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.warning(
                "webhook queue full; event not delivered",
                event_id=str(event.id),
                user_id=str(event.user_id),
                event_type=event.type,
            )
            return False
        return True

    async def idle(self) -> None:
        """Until every event queued so far has been delivered or given up on."""
        await self._queue.join()
        while self.stats.tasks:
            await asyncio.wait(set(self.stats.tasks))

    async def _dispatch(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < DISPATCH_BATCH:
                batch.append(self._queue.get_nowait())
            try:
                # One look-up per user per batch: a burst of fills costs one query, not one each.
                by_user: dict[uuid.UUID, list[WebhookEvent]] = {}
                for event in batch:
                    by_user.setdefault(event.user_id, []).append(event)
                users = await self._directory()
                for user_id, events in by_user.items():
                    if users is None or user_id in users:
                        await self._start_deliveries(user_id, events)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def endpoints_changed(self) -> None:
        """A user's endpoints were created, changed or deleted (and committed): every worker re-reads who has any."""
        self._directory_version = None
        if self.cache is not None:
            with contextlib.suppress(ServiceUnavailable):
                await self.cache.set(DIRECTORY_VERSION_KEY, uuid.uuid4().hex.encode())

    async def _directory(self) -> frozenset[uuid.UUID] | None:
        """The users with an active endpoint, re-read only when some endpoint changed on any worker (a version in the
        cache): most fills belong to users without webhooks, and cost no query. None (look every user up) when the
        cache cannot say."""
        if self.cache is None:
            return None
        try:
            version = await self.cache.get(DIRECTORY_VERSION_KEY)
            if version is None:  # first use (or the cache was emptied): start a version, then read
                version = uuid.uuid4().hex.encode()
                if not await self.cache.add(DIRECTORY_VERSION_KEY, version):
                    version = await self.cache.get(DIRECTORY_VERSION_KEY)
        except ServiceUnavailable:
            return None
        if version is None:
            return None
        if version != self._directory_version:
            try:
                async with self.database.system_session(read_only=True) as session:
                    rows = await session.scalars(
                        select(NotificationWebhook.user_id).where(NotificationWebhook.is_active).distinct()
                    )
                    self._users_with_hooks = frozenset(rows.all())
            except Exception:
                log.exception("reading who has webhooks failed; looking each user up")
                return None
            self._directory_version = version
        return self._users_with_hooks

    async def _start_deliveries(self, user_id: uuid.UUID, events: list[WebhookEvent]) -> None:
        try:
            async with self.database.session(user_id, read_only=True) as session:
                hooks = (
                    await session.scalars(
                        select(NotificationWebhook)
                        .where(NotificationWebhook.user_id == user_id, NotificationWebhook.is_active)
                        .order_by(NotificationWebhook.created_at)
                    )
                ).all()
        except Exception:
            log.exception("webhook look-up failed; events not delivered", user_id=str(user_id), events=len(events))
            return
        for event in events:
            for hook in hooks:
                if event.type in hook.event_types:
                    await self._in_flight.acquire()
                    self._spawn(self.deliver(hook, event))

    def _spawn(self, delivery: Awaitable[NotificationDelivery | None]) -> None:
        async def run() -> None:
            try:
                await delivery
            except Exception:
                log.exception("webhook delivery crashed")
            finally:
                self._in_flight.release()

        task = asyncio.create_task(run(), name="webhook-delivery")
        self.stats.tasks.add(task)
        task.add_done_callback(self.stats.tasks.discard)

    # --- one delivery --------------------------------------------------------------------------------------------

    async def deliver(
        self, hook: NotificationWebhook, event: WebhookEvent, *, max_attempts: int | None = None
    ) -> NotificationDelivery | None:
        """Send `event` to `hook` with retries and record how it went; None if the endpoint was deleted meanwhile.

        The row is written once, with the outcome, when the first attempt settles it (the common case: one
        transaction per delivery); a delivery that will be retried is stored `pending` first, and updated.
        """
        delivery = NotificationDelivery(
            id=uuid.uuid4(),
            webhook_id=hook.id,
            user_id=hook.user_id,
            event_id=event.id,
            event_type=event.type,
            status="pending",
            attempts=0,
        )
        is_stored = False
        attempts = max_attempts or (1 if hook.status == "failing" else self.policy.max_attempts)
        try:
            secret = self.cipher.decrypt(hook.secret_encrypted, aad=secret_aad(hook.user_id, hook.id))
        except CredentialDecryptError:
            outcome = _Outcome(False, False, error="the signing secret cannot be decrypted: rotate the secret")
            _settle(delivery, 0, outcome, is_final=True)
        else:
            body = event.body()
            for attempt in range(1, attempts + 1):
                outcome = await self._attempt(hook, secret, event, delivery.id, body)
                is_final = outcome.ok or not outcome.retryable or attempt == attempts
                _settle(delivery, attempt, outcome, is_final=is_final)
                if is_final:
                    break
                if not await self._store(delivery, hook, is_stored):
                    return None
                is_stored = True
                await asyncio.sleep(self.policy.backoff(attempt))
        if not await self._finish(hook, delivery, outcome, is_stored):
            return None
        return delivery

    async def _attempt(
        self, hook: NotificationWebhook, secret: str, event: WebhookEvent, delivery_id: uuid.UUID, body: bytes
    ) -> _Outcome:
        client = self._client
        if client is None:
            return _Outcome(False, False, error="webhook delivery is not running")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            TIMESTAMP_HEADER: str(timestamp),
            EVENT_ID_HEADER: str(event.id),
            DELIVERY_ID_HEADER: str(delivery_id),
        }
        endpoint = self._endpoints.get(hook.id)
        if endpoint is None:
            endpoint = self._endpoints[hook.id] = _Endpoint(asyncio.Semaphore(self.policy.per_endpoint))
        endpoint.users += 1
        try:
            async with endpoint.slots, self._requests:
                try:
                    async with asyncio.timeout(self.policy.timeout):
                        # Streamed and never read: an endpoint's answer is its status, whatever body it sends.
                        async with client.stream("POST", hook.url, content=body, headers=headers) as response:
                            status = response.status_code
                except (TimeoutError, httpx.TimeoutException):
                    return _Outcome(False, True, error=f"no answer within {self.policy.timeout:g} s")
                except httpx.HTTPError as exc:
                    detail = str(exc).replace(hook.url, "<url>")
                    return _Outcome(False, True, error=f"{type(exc).__name__}: {detail}"[:MAX_ERROR_CHARS])
        finally:
            endpoint.users -= 1
            if endpoint.users == 0:
                del self._endpoints[hook.id]
        if 200 <= status < 300:
            return _Outcome(True, False, status)
        return _Outcome(False, status >= 500 or status in RETRYABLE_STATUSES, status, f"HTTP {status}")

    # --- recording: one writer, one transaction per user per batch ------------------------------------------------

    async def _store(self, delivery: NotificationDelivery, hook: NotificationWebhook, is_stored: bool) -> bool:
        """Store a delivery about to be retried (`pending`); False when its endpoint no longer exists."""
        return await self._record(_Record(hook, delivery, None, is_stored)) is not _GONE

    async def _finish(
        self, hook: NotificationWebhook, delivery: NotificationDelivery, outcome: _Outcome, is_stored: bool
    ) -> bool:
        """Record the outcome and the endpoint's health, and log a failure; False when the endpoint is gone."""
        if outcome.ok:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
        status = await self._record(_Record(hook, delivery, outcome, is_stored))
        if status is _GONE:
            return False
        context = {
            "webhook_id": str(hook.id),
            "user_id": str(hook.user_id),
            "host": httpx.URL(hook.url).host,
            "event_id": str(delivery.event_id),
            "attempts": delivery.attempts,
        }
        if outcome.ok:
            if hook.status == "failing":
                log.info("webhook endpoint recovered", **context)
            return True
        log.warning("webhook delivery failed", error=outcome.error, **context)
        if status == "failing" and hook.status != "failing":
            log.warning("webhook endpoint marked failing", failing_after=self.policy.failing_after, **context)
        return True

    async def _record(self, record: _Record) -> str | object:
        """Hand `record` to the recorder and wait until it is written: the endpoint's status after it, or _GONE.

        Deliveries finish concurrently, but their rows are written by one task, in batches, one transaction per
        user: on SQLite (one writer) webhook bookkeeping never queues more than one transaction ahead of an order.
        """
        self._records.append(record)
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._write_records(), name="webhook-recorder")
        return await asyncio.shield(record.done)

    async def _write_records(self) -> None:
        while self._records:
            batch, self._records = self._records, []
            by_user: dict[uuid.UUID, list[_Record]] = {}
            for record in batch:
                by_user.setdefault(record.hook.user_id, []).append(record)
            for user_id, records in by_user.items():
                try:
                    results = await self._write(user_id, records)
                except IntegrityError:  # an endpoint was deleted meanwhile: one by one, so only its rows fail
                    results = []
                    for record in records:
                        try:
                            results += await self._write(user_id, [record])
                        except IntegrityError:
                            results.append(_GONE)
                except Exception as exc:
                    for record in records:
                        if not record.done.done():
                            record.done.set_exception(exc)
                    continue
                for record, result in zip(records, results, strict=True):
                    if not record.done.done():
                        record.done.set_result(result)

    async def _write(self, user_id: uuid.UUID, records: list[_Record]) -> list[str | object]:
        results: list[str | object] = []
        now = datetime.now(UTC)
        row = NotificationWebhook
        async with self.database.session(user_id) as session:
            for record in records:
                await _save(session, record.delivery, record.is_stored)
                outcome = record.outcome
                if outcome is None:
                    results.append(record.hook.status)
                    continue
                if outcome.ok:
                    change = update(row).values(consecutive_failures=0, status="active", last_success_at=now)
                else:
                    failures = row.consecutive_failures + 1
                    change = update(row).values(
                        consecutive_failures=failures,
                        status=case((failures >= self.policy.failing_after, "failing"), else_=row.status),
                        last_error=outcome.error,
                        last_failure_at=now,
                    )
                status = await session.scalar(change.where(row.id == record.hook.id).returning(row.status))
                results.append(_GONE if status is None else status)
            for webhook_id in {record.hook.id for record in records if record.outcome is not None}:
                older = (
                    select(NotificationDelivery.id)
                    .where(NotificationDelivery.webhook_id == webhook_id)
                    .order_by(NotificationDelivery.created_at.desc(), NotificationDelivery.id.desc())
                    .offset(self.policy.history)
                )
                await session.execute(
                    delete(NotificationDelivery).where(
                        NotificationDelivery.webhook_id == webhook_id,
                        NotificationDelivery.id.in_(older.scalar_subquery()),
                    )
                )
        return results


def _settle(delivery: NotificationDelivery, attempt: int, outcome: _Outcome, *, is_final: bool) -> None:
    """Attempt number `attempt` ended with `outcome`: the row's new values (not yet written)."""
    delivery.attempts = attempt
    delivery.response_status = outcome.status
    delivery.error = outcome.error
    if is_final:
        delivery.status = "delivered" if outcome.ok else "failed"
        delivery.completed_at = datetime.now(UTC)


async def _save(session: AsyncSession, delivery: NotificationDelivery, is_stored: bool) -> None:
    if not is_stored:
        session.add(delivery)
        await session.flush()
        return
    values = {
        "attempts": delivery.attempts,
        "response_status": delivery.response_status,
        "error": delivery.error,
        "status": delivery.status,
        "completed_at": delivery.completed_at,
    }
    await session.execute(update(NotificationDelivery).where(NotificationDelivery.id == delivery.id).values(**values))
