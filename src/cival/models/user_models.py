"""Users, sessions and exchange credentials (the spec's user_models.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, EmailStr, Field, StringConstraints

from cival.models.common import Output, StrictInput

PASSWORD_MIN, PASSWORD_MAX = 8, 128

Password = Annotated[str, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
"""8..128 characters, no composition rules (NIST SP 800-63B); never stripped."""


def _normalise_email(value: str) -> str:
    return value.strip().lower()


Email = Annotated[EmailStr, Field(max_length=255), AfterValidator(_normalise_email)]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Role = Literal["trader", "admin"]
Exchange = Literal["paper", "binance", "coinbase", "hyperliquid", "dex"]


class RegisterIn(StrictInput):
    email: Email
    password: Password
    full_name: FullName | None = None


class LoginIn(StrictInput):
    email: Email
    password: Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX)]


class UserOut(Output):
    id: uuid.UUID
    email: str
    full_name: str | None
    role: Role
    is_active: bool
    created_at: datetime
    updated_at: datetime


class TokenOut(Output):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_at: datetime
    user: UserOut


class UserUpdateIn(StrictInput):
    """Change one's own name and/or password; a new password needs the current one."""

    full_name: FullName | None = None
    current_password: Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX)] | None = None
    new_password: Password | None = None


class SessionOut(Output):
    id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    current: bool


class UserPage(Output):
    items: list[UserOut]
    total: int


class ApiKeyIn(StrictInput):
    exchange: Exchange
    api_key: Annotated[str, StringConstraints(strip_whitespace=True, min_length=4, max_length=512)]
    api_secret: Annotated[str, StringConstraints(strip_whitespace=True, min_length=4, max_length=1024)]
    passphrase: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None


class ApiKeyOut(Output):
    """A stored credential: only the masked key is ever shown, never the secret or passphrase."""

    id: uuid.UUID
    exchange: Exchange
    api_key_masked: str
    has_passphrase: bool
    is_active: bool
    created_at: datetime
