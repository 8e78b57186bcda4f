"""Exchange credentials (`user_api_keys`): stored encrypted, shown masked, never returned or logged in clear.

Each field is encrypted with AES-GCM under the key ring's primary key, with the owner, the row and the field as
associated data: a ciphertext copied into another row or another user's row does not decrypt.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cival.core.db import Database
from cival.core.exceptions import NotFound
from cival.core.logging import get_logger
from cival.core.security import CredentialCipher, CredentialDecryptError, credential_aad, mask_secret
from cival.database.models import UserApiKey
from cival.models.user_models import ApiKeyIn, ApiKeyOut
from cival.services import audit
from cival.services.auth_service import Principal

log = get_logger(__name__)

FIELDS = ("api_key", "api_secret", "passphrase")
UNREADABLE = "(cannot decrypt)"


@dataclass(frozen=True, slots=True)
class ExchangeCredentials:
    """Decrypted credentials, for a connector only; never serialised."""

    exchange: str
    api_key: str
    api_secret: str
    passphrase: str | None

    def __repr__(self) -> str:
        return f"ExchangeCredentials(exchange={self.exchange!r}, api_key={mask_secret(self.api_key)!r})"


class CredentialService:
    def __init__(self, database: Database, cipher: CredentialCipher) -> None:
        self.database = database
        self.cipher = cipher

    def _encrypt(self, row: UserApiKey, field: str, value: str) -> str:
        return self.cipher.encrypt(value, aad=credential_aad(row.user_id, row.id, field))

    def _decrypt(self, row: UserApiKey, field: str, token: str) -> str:
        return self.cipher.decrypt(token, aad=credential_aad(row.user_id, row.id, field))

    def _out(self, row: UserApiKey) -> ApiKeyOut:
        try:
            masked = mask_secret(self._decrypt(row, "api_key", row.api_key_encrypted))
        except CredentialDecryptError:
            # A missing or retired key must not take the whole list down; the row is shown as unreadable.
            log.warning("credential cannot be decrypted", credential_id=str(row.id), user_id=str(row.user_id))
            masked = UNREADABLE
        return ApiKeyOut(
            id=row.id,
            exchange=row.exchange,
            api_key_masked=masked,
            has_passphrase=row.passphrase_encrypted is not None,
            is_active=row.is_active,
            created_at=row.created_at,
        )

    async def create(self, principal: Principal, body: ApiKeyIn) -> ApiKeyOut:
        row = UserApiKey(id=uuid.uuid4(), user_id=principal.user_id, exchange=body.exchange)
        row.api_key_encrypted = self._encrypt(row, "api_key", body.api_key)
        row.api_secret_encrypted = self._encrypt(row, "api_secret", body.api_secret)
        if body.passphrase is not None:
            row.passphrase_encrypted = self._encrypt(row, "passphrase", body.passphrase)
        async with self.database.session(principal.user_id) as session:
            session.add(row)
            await session.flush()
            audit.record(session, "credential.created", principal.user_id, credential_id=row.id, exchange=row.exchange)
        return self._out(row)

    async def list_credentials(self, principal: Principal) -> list[ApiKeyOut]:
        async with self.database.session(principal.user_id) as session:
            rows = (
                await session.scalars(
                    select(UserApiKey)
                    .where(UserApiKey.user_id == principal.user_id)
                    .order_by(UserApiKey.created_at, UserApiKey.id)
                )
            ).all()
        return [self._out(row) for row in rows]

    async def get(self, principal: Principal, credential_id: uuid.UUID) -> ApiKeyOut:
        async with self.database.session(principal.user_id) as session:
            row = await self._own(session, principal, credential_id)
        return self._out(row)

    async def delete(self, principal: Principal, credential_id: uuid.UUID) -> None:
        async with self.database.session(principal.user_id) as session:
            result = await session.execute(
                delete(UserApiKey).where(UserApiKey.id == credential_id, UserApiKey.user_id == principal.user_id)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(f"credential {credential_id} not found")
            audit.record(session, "credential.deleted", principal.user_id, credential_id=credential_id)

    async def has_active(self, user_id: uuid.UUID, exchange: str) -> bool:
        async with self.database.session(user_id) as session:
            found = await session.scalar(
                select(UserApiKey.id).where(
                    UserApiKey.user_id == user_id, UserApiKey.exchange == exchange, UserApiKey.is_active.is_(True)
                )
            )
        return found is not None

    async def credentials_for(self, user_id: uuid.UUID, exchange: str) -> ExchangeCredentials | None:
        """The newest active credentials of a user for an exchange, decrypted, for its connector."""
        async with self.database.session(user_id) as session:
            row = await session.scalar(
                select(UserApiKey)
                .where(UserApiKey.user_id == user_id, UserApiKey.exchange == exchange, UserApiKey.is_active.is_(True))
                .order_by(UserApiKey.created_at.desc())
                .limit(1)
            )
        if row is None:
            return None
        passphrase = row.passphrase_encrypted
        return ExchangeCredentials(
            exchange=row.exchange,
            api_key=self._decrypt(row, "api_key", row.api_key_encrypted),
            api_secret=self._decrypt(row, "api_secret", row.api_secret_encrypted),
            passphrase=self._decrypt(row, "passphrase", passphrase) if passphrase is not None else None,
        )

    async def _own(self, session: AsyncSession, principal: Principal, credential_id: uuid.UUID) -> UserApiKey:
        row = await session.scalar(
            select(UserApiKey).where(UserApiKey.id == credential_id, UserApiKey.user_id == principal.user_id)
        )
        if row is None:
            raise NotFound(f"credential {credential_id} not found")
        return row

    @staticmethod
    def _not_under(key_id: str) -> ColumnElement[bool]:
        prefix = f"v1.{key_id}."
        return or_(
            ~UserApiKey.api_key_encrypted.startswith(prefix),
            ~UserApiKey.api_secret_encrypted.startswith(prefix),
            UserApiKey.passphrase_encrypted.is_not(None) & ~UserApiKey.passphrase_encrypted.startswith(prefix),
        )

    async def pending_rotation(self) -> int:
        """How many credentials are not yet under the primary key (an unfinished rotation)."""
        async with self.database.system_session(read_only=True) as session:
            count = await session.scalar(
                select(func.count()).select_from(UserApiKey).where(self._not_under(self.cipher.keyring.primary_id))
            )
        return int(count or 0)

    async def reencrypt_all(self, *, batch_size: int = 100) -> tuple[int, list[uuid.UUID]]:
        """Re-encrypt every credential not under the primary key (see `reencrypt_rows`)."""
        primary = self.cipher.keyring.primary_id

        def reseal(row: UserApiKey) -> dict[str, str]:
            return {
                f"{field}_encrypted": self._encrypt(row, field, self._decrypt(row, field, token))
                for field in FIELDS
                if (token := getattr(row, f"{field}_encrypted")) is not None
            }

        return await reencrypt_rows(
            self.database, UserApiKey, self._not_under(primary), reseal, "credential.rotated", "credential_id",
            primary, batch_size=batch_size,
        )  # fmt: skip


Reseal = Callable[[Any], dict[str, str]]
"""A row's encrypted attributes, re-encrypted under the primary key (raises `CredentialDecryptError`)."""


async def reencrypt_rows(
    database: Database,
    model: Any,
    pending: ColumnElement[bool],
    reseal: Reseal,
    action: str,
    id_field: str,
    primary: str,
    *,
    batch_size: int = 100,
) -> tuple[int, list[uuid.UUID]]:
    """Re-encrypt every `model` row `pending` selects (not yet under key `primary`), in small transactions (no
    downtime), each recorded in the audit log as `action`.

    Old ciphertexts keep decrypting throughout, as long as their key is still in the ring. Returns how many rows
    were re-encrypted and the ids of those that could not be decrypted (left as they are, reported).
    """
    done, unreadable = 0, list[uuid.UUID]()
    while True:
        async with database.system_session() as session:
            query = select(model).where(pending)
            if unreadable:
                query = query.where(model.id.not_in(unreadable))
            rows = (await session.scalars(query.order_by(model.id).limit(batch_size).with_for_update())).all()
            for row in rows:
                try:
                    fresh = reseal(row)
                except CredentialDecryptError:
                    log.warning("secret cannot be decrypted; left as it is", table=model.__tablename__, id=str(row.id))
                    unreadable.append(row.id)
                    continue
                for attribute, token in fresh.items():
                    setattr(row, attribute, token)
                audit.record(session, action, row.user_id, **{id_field: row.id}, key_id=primary)
                done += 1
        if len(rows) < batch_size:
            return done, unreadable
