"""Domain errors that carry their HTTP meaning. Services raise these; one handler renders them.

Every error renders as `{"error": "<stable_code>", "detail": "<what to fix>"}`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CivalError(Exception):
    """Base of every expected error. `code` is stable and machine-readable; `detail` tells the caller what to fix."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class ValidationFailed(CivalError):
    status_code = 422
    code = "validation_error"


class NotAuthenticated(CivalError):
    status_code = 401
    code = "not_authenticated"


class PermissionDenied(CivalError):
    status_code = 403
    code = "forbidden"


class NotFound(CivalError):
    status_code = 404
    code = "not_found"


class Conflict(CivalError):
    status_code = 409
    code = "conflict"


class RateLimited(CivalError):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(CivalError):
    status_code = 503
    code = "service_unavailable"


class StartupError(Exception):
    """Start-up cannot continue (unreachable database, schema not migrated); the message says what to do."""
