"""One's own profile, and the admin's view of all users."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from cival.api.deps import AdminUser, Auth, CurrentUser
from cival.api.routing import CivalRoute
from cival.models.system_models import ErrorOut
from cival.models.user_models import UserOut, UserPage, UserUpdateIn

router = APIRouter(tags=["users"], route_class=CivalRoute)


@router.get("/api/v1/users/me")
async def get_me(principal: CurrentUser, auth: Auth) -> UserOut:
    return UserOut.model_validate(await auth.get_user(principal))


@router.patch("/api/v1/users/me")
async def update_me(body: UserUpdateIn, principal: CurrentUser, auth: Auth) -> UserOut:
    """Change full name and/or password (with `current_password`); a new password ends your other sessions."""
    return UserOut.model_validate(await auth.update_user(principal, body))


@router.get("/api/v1/admin/users", tags=["admin"])
async def list_users(
    _admin: AdminUser,
    auth: Auth,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> UserPage:
    users, total = await auth.list_users(offset=offset, limit=limit)
    return UserPage(items=[UserOut.model_validate(u) for u in users], total=total)


@router.post(
    "/api/v1/admin/users/{user_id}/deactivate",
    tags=["admin"],
    responses={409: {"model": ErrorOut, "description": "Cannot deactivate oneself"}},
)
async def deactivate_user(user_id: uuid.UUID, admin: AdminUser, auth: Auth) -> UserOut:
    """Deactivate a user: their sessions stop working at once."""
    return UserOut.model_validate(await auth.set_active(admin, user_id, active=False))


@router.post("/api/v1/admin/users/{user_id}/activate", tags=["admin"])
async def activate_user(user_id: uuid.UUID, admin: AdminUser, auth: Auth) -> UserOut:
    return UserOut.model_validate(await auth.set_active(admin, user_id, active=True))
