"""The route class every Cival router uses, and a way to list the app's routes.

`CivalRoute` declares in OpenAPI the error responses a route can give, derived from the route itself, so a new
route is documented without anyone remembering to: 422 where it takes input, 400 where its body may not be JSON,
401 where it needs a session, 403 where it needs the admin role, 404 where it names an object, and 503 everywhere
(the database or the cache unreachable). All in the one error shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.utils import create_model_field

from cival.api.deps import get_admin, get_principal
from cival.models.system_models import ErrorOut, ValidationErrorOut


def _depends_on(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


class CivalRoute(APIRoute):
    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        declared: dict[int | str, dict[str, Any]] = {}
        if self.body_field is not None:
            declared[400] = {"model": ErrorOut, "description": "The body is not valid JSON"}
        if self.dependant.path_params or self.dependant.query_params or self.body_field is not None:
            declared[422] = {"model": ValidationErrorOut, "description": "Invalid input"}
        if _depends_on(self.dependant, get_principal):
            declared[401] = {"model": ErrorOut, "description": "Missing, invalid or expired session"}
        if _depends_on(self.dependant, get_admin):
            declared[403] = {"model": ErrorOut, "description": "Needs the admin role"}
        if self.dependant.path_params:
            declared[404] = {"model": ErrorOut, "description": "No such object (or not yours)"}
        declared[503] = {"model": ErrorOut, "description": "The database or the cache is unreachable: retry later"}
        for code, response in declared.items():
            if code in self.responses:
                continue
            self.responses[code] = response
            self.response_fields[code] = create_model_field(
                name=f"Response_{code}_{self.unique_id}", type_=response["model"], mode="serialization"
            )


@dataclass(frozen=True)
class RouteInfo:
    path: str
    methods: frozenset[str]
    route: APIRoute


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every API route of the app with its full path (routers are included lazily, so `app.routes` is not flat)."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and context.path is not None:
            found.append(RouteInfo(context.path, frozenset(context.methods or ()), route))
    return found
