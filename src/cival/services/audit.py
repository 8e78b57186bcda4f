"""Audit records: security-relevant actions written to `system_logs` in the caller's transaction.

Written directly (not through the log sink) so that an action and its record commit or roll back together.
Never pass secrets in `data`.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from cival.database.models import SystemLog

MODULE = "audit"


def record(session: AsyncSession, action: str, user_id: uuid.UUID | None, *, level: str = "INFO", **data: Any) -> None:
    """Add an audit row for `action` (e.g. `credential.created`) to the session's transaction."""
    session.add(
        SystemLog(
            level=level,
            module=MODULE,
            message=action,
            data={k: str(v) if isinstance(v, uuid.UUID) else v for k, v in data.items()} or None,
            user_id=user_id,
        )
    )
