"""Exchange credentials (`user_api_keys`): stored encrypted, shown masked, never returned or logged in clear.

Each field is encrypted with AES-GCM under the key ring's primary key, with the owner, the row and the field as
associated data: a ciphertext copied into another row or another user's row does not decrypt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cival.core.db import Database
from cival.core.exceptions import NotFound
from cival.core.security import CredentialCipher, credential_aad, mask_secret
from cival.database.models import UserApiKey
from cival.models.user_models import ApiKeyIn, ApiKeyOut
from cival.services import audit
from cival.services.auth_service import Principal

FIELDS = ("api_key", "api_secret", "passphrase")


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
        return ApiKeyOut(
            id=row.id,
            exchange=row.exchange,
            api_key_masked=mask_secret(self._decrypt(row, "api_key", row.api_key_encrypted)),
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

    async def reencrypt_all(self, *, batch_size: int = 100) -> int:
        """Re-encrypt every credential not under the primary key, in small transactions (no downtime).

        Old ciphertexts keep decrypting throughout, as long as their key is still in the ring.
        """
        primary = self.cipher.keyring.primary_id
        prefix = f"v1.{primary}."
        done = 0
        while True:
            async with self.database.system_session() as session:
                rows = (
                    await session.scalars(
                        select(UserApiKey)
                        .where(
                            or_(
                                ~UserApiKey.api_key_encrypted.startswith(prefix),
                                ~UserApiKey.api_secret_encrypted.startswith(prefix),
                                UserApiKey.passphrase_encrypted.is_not(None)
                                & ~UserApiKey.passphrase_encrypted.startswith(prefix),
                            )
                        )
                        .limit(batch_size)
                        .with_for_update()
                    )
                ).all()
                for row in rows:
                    for field in FIELDS:
                        token = getattr(row, f"{field}_encrypted")
                        if token is not None and self.cipher.needs_reencrypt(token):
                            plain = self._decrypt(row, field, token)
                            setattr(row, f"{field}_encrypted", self._encrypt(row, field, plain))
                    audit.record(session, "credential.rotated", row.user_id, credential_id=row.id, key_id=primary)
            done += len(rows)
            if len(rows) < batch_size:
                return done
