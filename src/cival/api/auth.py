"""Registration, login, logout and one's own sessions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response

from cival.api.deps import Auth, ClientAddress, CurrentUser, Registry, limit_login, limit_register
from cival.api.routing import CivalRoute
from cival.config import parse_rate_limit
from cival.models.system_models import ErrorOut
from cival.models.user_models import LoginIn, RegisterIn, SessionOut, TokenOut, UserOut

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], route_class=CivalRoute)

RATE_LIMITED = {"model": ErrorOut, "description": "Too many attempts; see Retry-After"}


@router.post(
    "/register",
    status_code=201,
    dependencies=[Depends(limit_register)],
    responses={409: {"model": ErrorOut, "description": "Email taken"}, 429: RATE_LIMITED},
)
async def register(body: RegisterIn, auth: Auth) -> UserOut:
    """Create a trader account. Passwords: 8 to 128 characters."""
    return UserOut.model_validate(await auth.register(body))


@router.post(
    "/login",
    dependencies=[Depends(limit_login)],
    responses={401: {"model": ErrorOut, "description": "Wrong email or password"}, 429: RATE_LIMITED},
)
async def login(body: LoginIn, auth: Auth, registry: Registry, client: ClientAddress) -> TokenOut:
    """Exchange email and password for a bearer token."""
    count, window = parse_rate_limit(registry.settings.rate_limit_login)
    await registry.rate_limiter.hit("auth.login", f"email:{body.email}", count, window)
    issued = await auth.login(body, client=client)
    return TokenOut(access_token=issued.token, expires_at=issued.expires_at, user=UserOut.model_validate(issued.user))


@router.post("/logout", status_code=204)
async def logout(principal: CurrentUser, auth: Auth) -> Response:
    """Revoke the session this request used."""
    await auth.logout(principal)
    return Response(status_code=204)


@router.get("/sessions")
async def list_sessions(principal: CurrentUser, auth: Auth) -> list[SessionOut]:
    return [
        SessionOut(id=s.id, created_at=s.created_at, expires_at=s.expires_at, current=current)
        for s, current in await auth.list_sessions(principal)
    ]


@router.delete("/sessions/{session_id}", status_code=204)
async def revoke_session(session_id: uuid.UUID, principal: CurrentUser, auth: Auth) -> Response:
    await auth.revoke_session(principal, session_id)
    return Response(status_code=204)
