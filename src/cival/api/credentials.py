"""Exchange API credentials: stored encrypted, listed masked."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from cival.api.deps import Credentials, CurrentUser
from cival.api.routing import CivalRoute
from cival.models.user_models import ApiKeyIn, ApiKeyOut

router = APIRouter(prefix="/api/v1/credentials", tags=["credentials"], route_class=CivalRoute)


@router.post("", status_code=201)
async def create_credential(body: ApiKeyIn, principal: CurrentUser, credentials: Credentials) -> ApiKeyOut:
    """Store an exchange API key, secret and (for some venues) passphrase. Only a masked key is ever returned."""
    return await credentials.create(principal, body)


@router.get("")
async def list_credentials(principal: CurrentUser, credentials: Credentials) -> list[ApiKeyOut]:
    return await credentials.list_credentials(principal)


@router.get("/{credential_id}")
async def get_credential(credential_id: uuid.UUID, principal: CurrentUser, credentials: Credentials) -> ApiKeyOut:
    return await credentials.get(principal, credential_id)


@router.delete("/{credential_id}", status_code=204)
async def delete_credential(credential_id: uuid.UUID, principal: CurrentUser, credentials: Credentials) -> Response:
    await credentials.delete(principal, credential_id)
    return Response(status_code=204)
