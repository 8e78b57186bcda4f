"""The demo trader `make run` creates once, so a newcomer can try the API at /docs straight away.

Its generated password is kept in `<data_dir>/demo-login.txt` (mode 0600) so later runs can print it again.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy import select

from cival.core.service_registry import ServiceRegistry
from cival.database.models import TradingAccount, User
from cival.models.trading_models import AccountIn
from cival.models.user_models import RegisterIn
from cival.services.auth_service import Principal

DEMO_EMAIL = "demo@cival.dev"


async def ensure_demo_user(registry: ServiceRegistry) -> tuple[str, str | None, bool]:
    """(email, password if known, whether it was created now)."""
    path = Path(registry.settings.data_dir) / "demo-login.txt"
    async with registry.database.system_session() as session:
        user = await session.scalar(select(User).where(User.email == DEMO_EMAIL))
    if user is not None:
        password = path.read_text().strip() if path.exists() else None
        return DEMO_EMAIL, password, False
    password = "demo-" + secrets.token_urlsafe(9)
    user = await registry.auth.register(RegisterIn(email=DEMO_EMAIL, password=password, full_name="Demo Trader"))
    principal = Principal(user_id=user.id, email=user.email, role=user.role, session_id=user.id)
    async with registry.database.session(user.id) as session:
        has_account = await session.scalar(select(TradingAccount.id).where(TradingAccount.user_id == user.id))
    if has_account is None:
        await registry.accounts.create(principal, AccountIn(exchange="paper", account_id="demo"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return DEMO_EMAIL, password, True
