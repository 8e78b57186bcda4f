"""Webhook endpoints and their deliveries (notifications).

URLs and event types are checked by the notification service, so that a bad one gets its own stable error code
(`invalid_webhook_url`, `invalid_event_type`) rather than the generic `validation_error`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from cival.models.common import Output, StrictInput

EventTypes = Annotated[list[str], Field(min_length=1, max_length=10)]


class WebhookIn(StrictInput):
    url: Annotated[str, Field(max_length=4096)]
    event_types: EventTypes | None = None
    """What to deliver: `trades` (fills) and/or `alerts`; both when omitted."""


class WebhookUpdateIn(StrictInput):
    url: Annotated[str, Field(max_length=4096)] | None = None
    event_types: EventTypes | None = None
    is_active: bool | None = None
    """Turning an endpoint back on clears its failure count and its `failing` status."""


class WebhookOut(Output):
    id: uuid.UUID
    url: str
    event_types: list[str]
    is_active: bool
    status: Literal["active", "failing"]
    """`failing` after consecutive failed deliveries; the next successful delivery (or a test) makes it active."""
    consecutive_failures: int
    """Deliveries failed in a row (after their retries); 0 after any success."""
    last_error: str | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str
    """The signing secret, shown this once: store it now (it can be rotated, never read back)."""


class WebhookSecretOut(Output):
    id: uuid.UUID
    secret: str
    """The new signing secret, shown this once; the old one stops signing at once."""


class DeliveryOut(Output):
    id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    response_status: int | None
    """The HTTP status of the last attempt; None when it got no response (timeout, connection error)."""
    error: str | None
    created_at: datetime
    completed_at: datetime | None
