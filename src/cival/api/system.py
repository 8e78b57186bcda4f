"""System endpoints: health and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cival.api.deps import Registry
from cival.api.routing import CivalRoute
from cival.core.metrics import CONTENT_TYPE_LATEST
from cival.models.system_models import HealthOut
from cival.services.system_service import check_health

router = APIRouter(tags=["system"], route_class=CivalRoute)


@router.get("/api/v1/system/health", responses={503: {"model": HealthOut}})
async def health(registry: Registry, response: Response) -> HealthOut:
    """Database, cache and version; 503 when a dependency is down (load balancers read the status)."""
    result = await check_health(registry)
    if result.status != "ok":
        response.status_code = 503
    return result


@router.get("/metrics", include_in_schema=False)
async def metrics(registry: Registry) -> Response:
    return Response(registry.metrics.render(), media_type=CONTENT_TYPE_LATEST)
