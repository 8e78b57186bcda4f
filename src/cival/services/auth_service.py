"""Users and sessions: registration, login, logout, session management, profile and admin actions.

Tokens are opaque bearer tokens (256 random bits); only their SHA-256 is stored, so a copy of the database never
lets anyone log in. A deactivated user's sessions stop working at the next request.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from cival.core.cache import Cache
from cival.core.db import Database
from cival.core.exceptions import Conflict, NotAuthenticated, NotFound, ServiceUnavailable, ValidationFailed
from cival.core.logging import get_logger
from cival.core.security import Passwords, hash_token, new_token
from cival.database.models import User, UserSession
from cival.models.user_models import LoginIn, RegisterIn, UserUpdateIn
from cival.services import audit

log = get_logger(__name__)

TOKEN_PREFIX = "cvl_"  # noqa: S105 - a public prefix; makes leaked tokens easy for secret scanners to spot


class EmailTaken(Conflict):
    code = "email_taken"


class InvalidCredentials(NotAuthenticated):
    code = "invalid_credentials"


class InvalidToken(NotAuthenticated):
    code = "invalid_token"


class SessionExpired(NotAuthenticated):
    code = "session_expired"


class AccountDisabled(NotAuthenticated):
    code = "account_disabled"


class WrongPassword(ValidationFailed):
    code = "wrong_password"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the authenticated user and the session they used."""

    user_id: uuid.UUID
    email: str
    role: str
    session_id: uuid.UUID

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime
    user: User


AUTH_CACHE_SECONDS = 30.0
"""How long a verified session is remembered in the cache; revocation and deactivation evict it at once."""
PARSED_SESSIONS = 4096
"""Cached session values kept parsed per process (`AuthService._parsed`); past this many, they start over."""


class AuthService:
    def __init__(self, database: Database, cache: Cache, passwords: Passwords, session_ttl: timedelta) -> None:
        self.database = database
        self.cache = cache
        self.passwords = passwords
        self.session_ttl = session_ttl
        # What each cached session's value says, parsed once per value (the key is the whole value, so a changed,
        # evicted or expired entry is never answered from here).
        self._parsed: dict[bytes, tuple[Principal, datetime]] = {}

    @staticmethod
    def _cache_key(token_hash: str) -> str:
        return f"auth:session:{token_hash}"

    async def _forget(self, token_hashes: Sequence[str]) -> None:
        """Evict revoked sessions from the cache (shared by all workers when it is Redis)."""
        for token_hash in token_hashes:
            try:
                await self.cache.delete(self._cache_key(token_hash))
            except ServiceUnavailable:
                log.warning("could not evict a revoked session from the cache; it expires within the cache TTL")

    async def register(self, body: RegisterIn, *, role: str = "trader") -> User:
        """Create a user; the email (already normalised) must be new."""
        password_hash = await self.passwords.ahash(body.password)
        try:
            async with self.database.system_session() as session:
                if await session.scalar(select(User.id).where(User.email == body.email)) is not None:
                    raise EmailTaken(f"an account with email {body.email} already exists; log in instead")
                user = User(email=body.email, password_hash=password_hash, full_name=body.full_name, role=role)
                session.add(user)
                await session.flush()
                audit.record(session, "user.registered", user.id, role=role)
        except IntegrityError as exc:  # a concurrent registration of the same email won the race
            raise EmailTaken(f"an account with email {body.email} already exists; log in instead") from exc
        return user

    async def login(self, body: LoginIn, *, client: str) -> IssuedToken:
        """Check the password and open a session. Failure says the same whether or not the email exists."""
        async with self.database.system_session() as session:
            user = await session.scalar(select(User).where(User.email == body.email))
        if user is None:
            await self.passwords.averify_dummy(body.password)
            await self._login_failed(None, client, "unknown_email")
        if not await self.passwords.averify(user.password_hash, body.password):
            await self._login_failed(user.id, client, "wrong_password")
        if not user.is_active:
            await self._login_failed(user.id, client, "account_disabled")
        token = TOKEN_PREFIX + new_token()
        expires_at = datetime.now(UTC) + self.session_ttl
        new_hash = (
            await self.passwords.ahash(body.password)
            if user.password_hash and self.passwords.needs_rehash(user.password_hash)
            else None
        )
        async with self.database.session(user.id) as session:
            session.add(UserSession(user_id=user.id, token_hash=hash_token(token), expires_at=expires_at))
            if new_hash is not None:
                await session.execute(update(User).where(User.id == user.id).values(password_hash=new_hash))
                user.password_hash = new_hash
            audit.record(session, "session.created", user.id, client=client)
        return IssuedToken(token=token, expires_at=expires_at, user=user)

    async def _login_failed(self, user_id: uuid.UUID | None, client: str, reason: str) -> NoReturn:
        async with self.database.system_session() as session:
            audit.record(session, "login.failed", user_id, level="WARNING", reason=reason, client=client)
        if reason == "account_disabled":
            raise AccountDisabled("this account has been deactivated; contact an administrator")
        raise InvalidCredentials("email or password is incorrect")

    async def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token, or 401 with why."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            raise InvalidToken("the bearer token is not a Cival session token; log in to get one")
        token_hash = hash_token(token)
        key = self._cache_key(token_hash)
        try:
            cached = await self.cache.get(key)
        except ServiceUnavailable:
            cached = None  # the database answers alone while the cache is down
        if cached is not None:
            parsed = self._parsed.get(cached)
            if parsed is None:
                parsed = _parsed_session(cached)
                if len(self._parsed) >= PARSED_SESSIONS:
                    self._parsed.clear()
                self._parsed[cached] = parsed
            principal, expires_at = parsed
        else:
            async with self.database.system_session(read_only=True) as session:
                row = (
                    await session.execute(
                        select(UserSession.id, UserSession.expires_at, User.id, User.email, User.role, User.is_active)
                        .join(User, User.id == UserSession.user_id)
                        .where(UserSession.token_hash == token_hash)
                    )
                ).first()
            if row is None:
                raise InvalidToken("the session does not exist or was revoked; log in again")
            session_id, expires_at, user_id, email, role, is_active = row
            if not is_active:
                raise AccountDisabled("this account has been deactivated; contact an administrator")
            principal = Principal(user_id=user_id, email=email, role=role, session_id=session_id)
            await self._remember(key, principal, expires_at)
        if expires_at <= datetime.now(UTC):
            raise SessionExpired("the session has expired; log in again")
        return principal

    async def _remember(self, key: str, principal: Principal, expires_at: datetime) -> None:
        ttl = min(AUTH_CACHE_SECONDS, (expires_at - datetime.now(UTC)).total_seconds())
        if ttl <= 0:
            return
        data = {
            "user_id": str(principal.user_id),
            "email": principal.email,
            "role": principal.role,
            "session_id": str(principal.session_id),
            "expires_at": expires_at.isoformat(),
        }
        with contextlib.suppress(ServiceUnavailable):  # a cold cache only costs a database look-up
            await self.cache.set(key, json.dumps(data).encode(), ttl=ttl)

    async def logout(self, principal: Principal) -> None:
        await self.revoke_session(principal, principal.session_id)

    async def list_sessions(self, principal: Principal) -> list[tuple[UserSession, bool]]:
        """The caller's live sessions, newest first, each flagged if it is the one in use."""
        async with self.database.session(principal.user_id) as session:
            rows = (
                await session.scalars(
                    select(UserSession)
                    .where(UserSession.user_id == principal.user_id, UserSession.expires_at > datetime.now(UTC))
                    .order_by(UserSession.created_at.desc())
                )
            ).all()
        return [(row, row.id == principal.session_id) for row in rows]

    async def revoke_session(self, principal: Principal, session_id: uuid.UUID) -> None:
        async with self.database.session(principal.user_id) as session:
            revoked = (
                await session.scalars(
                    delete(UserSession)
                    .where(UserSession.id == session_id, UserSession.user_id == principal.user_id)
                    .returning(UserSession.token_hash)
                )
            ).all()
            if not revoked:
                raise NotFound(f"session {session_id} not found")
            audit.record(session, "session.revoked", principal.user_id, session_id=session_id)
        await self._forget(revoked)

    async def get_user(self, principal: Principal) -> User:
        async with self.database.session(principal.user_id) as session:
            user = await session.get(User, principal.user_id)
        if user is None:
            raise InvalidToken("the user no longer exists; log in again")
        return user

    async def update_user(self, principal: Principal, body: UserUpdateIn) -> User:
        """Change name and/or password. A password change needs the current one and ends the other sessions."""
        if body.new_password is not None and body.current_password is None:
            raise ValidationFailed("current_password is required to set new_password")
        new_hash = None
        if body.new_password is not None:
            current = await self.get_user(principal)
            if not await self.passwords.averify(current.password_hash, body.current_password or ""):
                raise WrongPassword("current_password is incorrect")
            new_hash = await self.passwords.ahash(body.new_password)
        async with self.database.session(principal.user_id) as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise InvalidToken("the user no longer exists; log in again")
            if body.full_name is not None:
                user.full_name = body.full_name
            if new_hash is not None:
                user.password_hash = new_hash
                ended = (
                    await session.scalars(
                        delete(UserSession)
                        .where(UserSession.user_id == principal.user_id, UserSession.id != principal.session_id)
                        .returning(UserSession.token_hash)
                    )
                ).all()
                audit.record(session, "password.changed", principal.user_id)
            user.updated_at = datetime.now(UTC)
        if new_hash is not None:
            await self._forget(ended)
        return user

    # --- admin ---------------------------------------------------------------------------------------------

    async def list_users(self, *, offset: int, limit: int) -> tuple[list[User], int]:
        async with self.database.system_session() as session:
            total = await session.scalar(select(func.count()).select_from(User)) or 0
            users = (
                await session.scalars(select(User).order_by(User.created_at, User.id).offset(offset).limit(limit))
            ).all()
        return list(users), total

    async def set_active(self, admin: Principal, user_id: uuid.UUID, *, active: bool) -> User:
        """Activate or deactivate a user: deactivation stops every session of theirs at once; none survive it."""
        if user_id == admin.user_id and not active:
            raise Conflict("administrators cannot deactivate themselves")
        async with self.database.system_session() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            user.is_active = active
            user.updated_at = datetime.now(UTC)
            ended: Sequence[str] = []
            if active:
                # Sessions that predate a deactivation do not come back with the account: log in again.
                await session.execute(delete(UserSession).where(UserSession.user_id == user_id))
            else:
                # Kept until reactivation, so a caller still holding one is told `account_disabled` (evicted from
                # the cache below, so the next request reads `is_active` from the database).
                ended = (
                    await session.scalars(select(UserSession.token_hash).where(UserSession.user_id == user_id))
                ).all()
            audit.record(
                session,
                "admin.user_activated" if active else "admin.user_deactivated",
                admin.user_id,
                target_user_id=user_id,
            )
        await self._forget(ended)
        return user

    async def purge_expired_sessions(self) -> int:
        async with self.database.system_session() as session:
            result = await session.execute(delete(UserSession).where(UserSession.expires_at <= datetime.now(UTC)))
        return int(result.rowcount)  # type: ignore[attr-defined]


def _parsed_session(cached: bytes) -> tuple[Principal, datetime]:
    """The principal and expiry a cached session value holds (`AuthService._remember` wrote it)."""
    data = json.loads(cached)
    principal = Principal(
        user_id=uuid.UUID(data["user_id"]),
        email=data["email"],
        role=data["role"],
        session_id=uuid.UUID(data["session_id"]),
    )
    return principal, datetime.fromisoformat(data["expires_at"])
