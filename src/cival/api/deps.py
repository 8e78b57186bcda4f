"""`Annotated` dependency aliases: each says in one type what an endpoint needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from cival.core.service_registry import ServiceRegistry


def get_registry(request: Request) -> ServiceRegistry:
    registry: ServiceRegistry = request.app.state.registry
    return registry


Registry = Annotated[ServiceRegistry, Depends(get_registry)]
