"""Webhook endpoints for one's fills and alerts: register, list, change, delete, rotate the secret, test, history."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from cival.api.deps import CurrentUser, Registry
from cival.api.routing import CivalRoute
from cival.models.notification_models import (
    DeliveryOut,
    WebhookCreatedOut,
    WebhookIn,
    WebhookOut,
    WebhookSecretOut,
    WebhookUpdateIn,
)
from cival.models.system_models import ErrorOut
from cival.services.notification_service import NotificationService

router = APIRouter(prefix="/api/v1/notifications/webhooks", tags=["notifications"], route_class=CivalRoute)


async def _notifications(registry: Registry) -> NotificationService:
    return registry.notifications


Notifications = Annotated[NotificationService, Depends(_notifications)]


@router.post(
    "", status_code=201, responses={409: {"model": ErrorOut, "description": "Already at the maximum of webhooks"}}
)
async def create_webhook(body: WebhookIn, principal: CurrentUser, notifications: Notifications) -> WebhookCreatedOut:
    """Register an endpoint for `trades` (fills) and/or `alerts`. The answer holds the signing `secret`, once."""
    return await notifications.create_webhook(principal, body)


@router.get("")
async def list_webhooks(principal: CurrentUser, notifications: Notifications) -> list[WebhookOut]:
    return await notifications.list_webhooks(principal)


@router.get("/{webhook_id}")
async def get_webhook(webhook_id: uuid.UUID, principal: CurrentUser, notifications: Notifications) -> WebhookOut:
    """The endpoint and its health: `status` (`active`/`failing`), `consecutive_failures`, `last_error`."""
    return await notifications.get_webhook(principal, webhook_id)


@router.patch("/{webhook_id}")
async def update_webhook(
    webhook_id: uuid.UUID, body: WebhookUpdateIn, principal: CurrentUser, notifications: Notifications
) -> WebhookOut:
    return await notifications.update_webhook(principal, webhook_id, body)


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: uuid.UUID, principal: CurrentUser, notifications: Notifications) -> Response:
    await notifications.delete_webhook(principal, webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/secret")
async def rotate_secret(
    webhook_id: uuid.UUID, principal: CurrentUser, notifications: Notifications
) -> WebhookSecretOut:
    """Replace the signing secret; the new one is in the answer, once."""
    return await notifications.rotate_secret(principal, webhook_id)


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: uuid.UUID,
    principal: CurrentUser,
    notifications: Notifications,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[DeliveryOut]:
    """The endpoint's most recent deliveries, newest first: status, attempts, last HTTP status or error."""
    return await notifications.list_deliveries(principal, webhook_id, limit)


@router.post("/{webhook_id}/test")
async def send_test(webhook_id: uuid.UUID, principal: CurrentUser, notifications: Notifications) -> DeliveryOut:
    """Send a signed `test` event now (one attempt) and answer with the delivery; a success clears `failing`."""
    return await notifications.send_test(principal, webhook_id)
