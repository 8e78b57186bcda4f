"""`Annotated` dependency aliases: each says in one type what an endpoint needs.

FastAPI runs plain `def` dependencies in a thread pool; every dependency here is `async def` to stay on the loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from cival.config import parse_rate_limit
from cival.core.exceptions import NotAuthenticated, PermissionDenied
from cival.core.service_registry import ServiceRegistry
from cival.services.account_service import AccountService
from cival.services.auth_service import AuthService, Principal
from cival.services.credential_service import CredentialService


async def get_registry(request: Request) -> ServiceRegistry:
    registry: ServiceRegistry = request.app.state.registry
    return registry


Registry = Annotated[ServiceRegistry, Depends(get_registry)]


class SessionBearer(SecurityBase):
    """The session behind `Authorization: Bearer <token>`, as ONE dependency that reads the header itself.

    Documented in OpenAPI as the HTTP bearer scheme (a `SecurityBase`, named as FastAPI's `HTTPBearer` names it).
    It is on every authenticated request, and FastAPI solves each dependency of the tree in its own step: one node
    instead of three (the bearer scheme, the registry, the principal) saves ~20 µs of CPU per request.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(description="A session token from POST /api/v1/auth/login.")
        self.scheme_name = "HTTPBearer"

    async def __call__(self, request: Request) -> Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated(
                "missing bearer token: send `Authorization: Bearer <token>` (get one from POST /api/v1/auth/login)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        registry: ServiceRegistry = request.app.state.registry
        return await registry.auth.authenticate(token)


get_principal = SessionBearer()


CurrentUser = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: CurrentUser) -> Principal:
    if not principal.is_admin:
        raise PermissionDenied("this action needs the admin role")
    return principal


AdminUser = Annotated[Principal, Depends(get_admin)]


async def client_address(request: Request) -> str:
    """The caller's address (behind a proxy, run uvicorn with --proxy-headers so this is the real client)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]


async def _auth(registry: Registry) -> AuthService:
    return registry.auth


async def _credentials(registry: Registry) -> CredentialService:
    return registry.credentials


async def _accounts(registry: Registry) -> AccountService:
    return registry.accounts


Auth = Annotated[AuthService, Depends(_auth)]
Credentials = Annotated[CredentialService, Depends(_credentials)]
Accounts = Annotated[AccountService, Depends(_accounts)]


async def limit_login(registry: Registry, client: ClientAddress) -> None:
    """Login attempts per client address (per-email limiting happens in the router, once the body is parsed)."""
    count, window = parse_rate_limit(registry.settings.rate_limit_login)
    await registry.rate_limiter.hit("auth.login", f"ip:{client}", count, window)


async def limit_register(registry: Registry, client: ClientAddress) -> None:
    count, window = parse_rate_limit(registry.settings.rate_limit_register)
    await registry.rate_limiter.hit("auth.register", f"ip:{client}", count, window)
