"""Exchange credentials: encrypted at rest, bound to their row, shown masked, never logged, rotatable."""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from cival.core.security import CredentialCipher, CredentialDecryptError, KeyRing
from cival.core.service_registry import ServiceRegistry
from cival.database.models import SystemLog, UserApiKey
from tests.api._identity import CREDENTIALS, Caller, Identities, audit_rows, count_rows


def _secrets() -> dict[str, str]:
    """A fresh api key (>= 12 characters, so it is masked as abcd…wxyz), secret and passphrase."""
    return {
        "api_key": "AK" + secrets.token_hex(12).upper(),
        "api_secret": "sk-" + secrets.token_urlsafe(30),
        "passphrase": "pp-" + secrets.token_urlsafe(12),
    }


def _masked(api_key: str) -> str:
    return f"{api_key[:4]}…{api_key[-4:]}"


async def _create(
    user: Caller, exchange: str = "binance", *, passphrase: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    plain = _secrets()
    body: dict[str, Any] = {"exchange": exchange, "api_key": plain["api_key"], "api_secret": plain["api_secret"]}
    if passphrase:
        body["passphrase"] = plain["passphrase"]
    response = await user.post(CREDENTIALS, json=body)
    assert response.status_code == 201, response.text
    return response.json(), plain


async def _row(registry: ServiceRegistry, credential_id: str | uuid.UUID) -> UserApiKey | None:
    async with registry.database.system_session() as session:
        return await session.get(UserApiKey, uuid.UUID(str(credential_id)))


def _assert_no_secret(text: str, plain: dict[str, str]) -> None:
    for value in plain.values():
        assert value not in text


async def test_create_returns_only_the_masked_key(ids: Identities) -> None:
    user = await ids.new_user()
    plain = _secrets()
    response = await user.post(
        CREDENTIALS,
        json={"exchange": "coinbase", **plain},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["api_key_masked"] == _masked(plain["api_key"])
    assert body["exchange"] == "coinbase"
    assert body["has_passphrase"] is True
    assert body["is_active"] is True
    assert set(body) == {"id", "exchange", "api_key_masked", "has_passphrase", "is_active", "created_at"}
    _assert_no_secret(response.text, plain)


async def test_list_and_get_show_only_masked_keys(ids: Identities) -> None:
    user = await ids.new_user()
    first, first_plain = await _create(user, "binance")
    second, second_plain = await _create(user, "coinbase", passphrase=True)
    listed = await user.get(CREDENTIALS)
    assert listed.status_code == 200
    assert [c["id"] for c in listed.json()] == [first["id"], second["id"]]
    assert [c["api_key_masked"] for c in listed.json()] == [
        _masked(first_plain["api_key"]),
        _masked(second_plain["api_key"]),
    ]
    assert [c["has_passphrase"] for c in listed.json()] == [False, True]
    _assert_no_secret(listed.text, first_plain)
    _assert_no_secret(listed.text, second_plain)
    got = await user.get(f"{CREDENTIALS}/{second['id']}")
    assert got.status_code == 200
    assert got.json() == second
    _assert_no_secret(got.text, second_plain)


async def test_stored_columns_are_ciphertext(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    created, plain = await _create(user, "coinbase", passphrase=True)
    row = await _row(registry, created["id"])
    assert row is not None
    assert row.user_id == user.id
    stored = {
        "api_key": row.api_key_encrypted,
        "api_secret": row.api_secret_encrypted,
        "passphrase": row.passphrase_encrypted,
    }
    primary = registry.credentials.cipher.keyring.primary_id
    for field, token in stored.items():
        assert token is not None
        assert token.startswith(f"v1.{primary}."), field
        for value in plain.values():
            assert value not in token
    assert len(set(stored.values())) == 3


async def test_credentials_for_decrypts_the_newest_active(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    assert await registry.credentials.credentials_for(user.id, "coinbase") is None
    await _create(user, "coinbase", passphrase=True)
    _, newest = await _create(user, "coinbase", passphrase=True)
    creds = await registry.credentials.credentials_for(user.id, "coinbase")
    assert creds is not None
    assert creds.exchange == "coinbase"
    assert creds.api_key == newest["api_key"]
    assert creds.api_secret == newest["api_secret"]
    assert creds.passphrase == newest["passphrase"]
    _assert_no_secret(repr(creds), {k: v for k, v in newest.items() if k != "api_key"})
    assert newest["api_key"] not in repr(creds)


async def test_whitespace_around_key_and_secret_is_stripped(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    plain = _secrets()
    response = await user.post(
        CREDENTIALS,
        json={"exchange": "binance", "api_key": f"  {plain['api_key']}\n", "api_secret": f"\t{plain['api_secret']} "},
    )
    assert response.status_code == 201, response.text
    creds = await registry.credentials.credentials_for(user.id, "binance")
    assert creds is not None
    assert (creds.api_key, creds.api_secret, creds.passphrase) == (plain["api_key"], plain["api_secret"], None)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"exchange": "kraken"}, "exchange"),
        ({"api_key": "abc"}, "api_key"),
        ({"api_secret": ""}, "api_secret"),
        ({"passphrase": ""}, "passphrase"),
        ({"user_id": "00000000-0000-0000-0000-000000000000"}, "user_id"),
        ({"is_active": False}, "is_active"),
    ],
)
async def test_invalid_credential_is_422_and_writes_nothing(
    ids: Identities, registry: ServiceRegistry, override: dict[str, Any], field: str
) -> None:
    user = await ids.new_user()
    plain = _secrets()
    body = {"exchange": "binance", "api_key": plain["api_key"], "api_secret": plain["api_secret"], **override}
    before = await count_rows(registry, UserApiKey)
    response = await user.post(CREDENTIALS, json=body)
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
    _assert_no_secret(response.text, plain)
    assert await count_rows(registry, UserApiKey) == before
    assert await audit_rows(registry, "credential.created", SystemLog.user_id == user.id) == []


async def test_ciphertext_copied_to_another_row_does_not_decrypt(ids: Identities, registry: ServiceRegistry) -> None:
    alice = await ids.new_user()
    bob = await ids.new_user()
    alice_cred, alice_plain = await _create(alice, "binance")
    bob_cred, _ = await _create(bob, "binance")
    alice_row = await _row(registry, alice_cred["id"])
    assert alice_row is not None
    try:
        async with registry.database.system_session() as session:
            await session.execute(
                update(UserApiKey)
                .where(UserApiKey.id == uuid.UUID(bob_cred["id"]))
                .values(
                    api_key_encrypted=alice_row.api_key_encrypted, api_secret_encrypted=alice_row.api_secret_encrypted
                )
            )
        with pytest.raises(CredentialDecryptError) as caught:
            await registry.credentials.credentials_for(bob.id, "binance")
        assert alice_plain["api_secret"] not in str(caught.value)
        # Bob's API view does not show Alice's key either.
        response = await bob.get(CREDENTIALS)
        _assert_no_secret(response.text, alice_plain)
        assert _masked(alice_plain["api_key"]) not in response.text
        # Alice's own row is untouched.
        creds = await registry.credentials.credentials_for(alice.id, "binance")
        assert creds is not None
        assert creds.api_secret == alice_plain["api_secret"]
    finally:
        # A row that cannot be decrypted would break key rotation for the rest of the run.
        async with registry.database.system_session() as session:
            await session.execute(delete(UserApiKey).where(UserApiKey.id == uuid.UUID(bob_cred["id"])))


async def test_ciphertext_swapped_between_fields_of_one_row_does_not_decrypt(
    ids: Identities, registry: ServiceRegistry
) -> None:
    user = await ids.new_user()
    created, _ = await _create(user, "binance")
    row = await _row(registry, created["id"])
    assert row is not None
    try:
        async with registry.database.system_session() as session:
            await session.execute(
                update(UserApiKey)
                .where(UserApiKey.id == row.id)
                .values(api_key_encrypted=row.api_secret_encrypted, api_secret_encrypted=row.api_key_encrypted)
            )
        with pytest.raises(CredentialDecryptError):
            await registry.credentials.credentials_for(user.id, "binance")
    finally:
        async with registry.database.system_session() as session:
            await session.execute(delete(UserApiKey).where(UserApiKey.id == row.id))


async def test_delete_then_get_is_404(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    created, _ = await _create(user)
    response = await user.delete(f"{CREDENTIALS}/{created['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert await _row(registry, created["id"]) is None
    got = await user.get(f"{CREDENTIALS}/{created['id']}")
    assert got.status_code == 404
    assert got.json()["error"] == "not_found"
    again = await user.delete(f"{CREDENTIALS}/{created['id']}")
    assert again.status_code == 404
    assert (await user.get(CREDENTIALS)).json() == []
    assert await registry.credentials.credentials_for(user.id, "binance") is None


async def test_someone_elses_credential_is_404(ids: Identities, registry: ServiceRegistry) -> None:
    alice = await ids.new_user()
    bob = await ids.new_user()
    created, plain = await _create(alice)
    got = await bob.get(f"{CREDENTIALS}/{created['id']}")
    assert got.status_code == 404
    _assert_no_secret(got.text, plain)
    deleted = await bob.delete(f"{CREDENTIALS}/{created['id']}")
    assert deleted.status_code == 404
    assert await _row(registry, created["id"]) is not None
    assert (await bob.get(CREDENTIALS)).json() == []
    assert (await alice.get(f"{CREDENTIALS}/{created['id']}")).status_code == 200
    assert await audit_rows(registry, "credential.deleted", SystemLog.user_id == bob.id) == []


async def test_credentials_need_authentication(ids: Identities) -> None:
    client = ids.client()
    assert (await client.get(CREDENTIALS)).status_code == 401
    plain = _secrets()
    response = await client.post(CREDENTIALS, json={"exchange": "binance", **plain})
    assert response.status_code == 401


async def test_create_and_delete_are_audited_without_secrets(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    created, plain = await _create(user, "coinbase", passphrase=True)
    assert (await user.delete(f"{CREDENTIALS}/{created['id']}")).status_code == 204
    rows = await audit_rows(registry, "credential.created", SystemLog.user_id == user.id)
    assert [r.data for r in rows] == [{"credential_id": created["id"], "exchange": "coinbase"}]
    rows = await audit_rows(registry, "credential.deleted", SystemLog.user_id == user.id)
    assert [r.data for r in rows] == [{"credential_id": created["id"]}]


async def test_secrets_never_reach_the_logs(
    ids: Identities, registry: ServiceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    user = await ids.new_user()
    plain = _secrets()
    caplog.set_level(logging.DEBUG)
    body = {"exchange": "coinbase", **plain}
    created = await user.post(CREDENTIALS, json=body)
    assert created.status_code == 201
    assert (await user.get(CREDENTIALS)).status_code == 200
    assert (await user.get(f"{CREDENTIALS}/{created.json()['id']}")).status_code == 200
    assert (await user.post(CREDENTIALS, json=body | {"exchange": "nowhere"})).status_code == 422
    assert (await registry.credentials.credentials_for(user.id, "coinbase")) is not None
    assert caplog.records  # DEBUG capture is live (request logs at the least)
    for record in caplog.records:
        text = f"{record.getMessage()} {record.msg!r} {record.args!r} {record.__dict__!r}"
        _assert_no_secret(text, plain)
    _assert_no_secret(caplog.text, plain)

    await registry.log_sink.flush_async()
    async with registry.database.system_session() as session:
        logged = (await session.execute(select(SystemLog.message, SystemLog.data))).all()
    for message, data in logged:
        _assert_no_secret(f"{message} {json.dumps(data)}", plain)


# --- key rotation ----------------------------------------------------------------------------------------------


async def _all_tokens(registry: ServiceRegistry) -> list[str]:
    async with registry.database.system_session() as session:
        rows = (await session.scalars(select(UserApiKey))).all()
    return [t for r in rows for t in (r.api_key_encrypted, r.api_secret_encrypted, r.passphrase_encrypted) if t]


async def test_key_rotation_reencrypts_every_credential(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    first, first_plain = await _create(user, "binance")
    second, second_plain = await _create(user, "coinbase", passphrase=True)
    service = registry.credentials
    original = service.cipher
    old_ring = original.keyring
    new_ring = old_ring.with_new_primary()
    assert new_ring.primary_id != old_ring.primary_id
    try:
        service.cipher = CredentialCipher(new_ring)
        # Before re-encryption: the old ciphertexts still decrypt, through the service and the API.
        creds = await service.credentials_for(user.id, "coinbase")
        assert creds is not None
        assert (creds.api_key, creds.api_secret, creds.passphrase) == (
            second_plain["api_key"],
            second_plain["api_secret"],
            second_plain["passphrase"],
        )
        assert (await user.get(f"{CREDENTIALS}/{first['id']}")).json()["api_key_masked"] == _masked(
            first_plain["api_key"]
        )
        total = await count_rows(registry, UserApiKey)
        rotated_before = len(await audit_rows(registry, "credential.rotated"))

        assert await service.reencrypt_all(batch_size=1) == (total, [])

        tokens = await _all_tokens(registry)
        assert tokens
        assert {service.cipher.key_id_of(t) for t in tokens} == {new_ring.primary_id}
        for cred, plain, exchange in ((first, first_plain, "binance"), (second, second_plain, "coinbase")):
            row = await _row(registry, cred["id"])
            assert row is not None
            for value in plain.values():
                assert value not in (
                    row.api_key_encrypted + row.api_secret_encrypted + (row.passphrase_encrypted or "")
                )
            creds = await service.credentials_for(user.id, exchange)
            assert creds is not None
            assert creds.api_key == plain["api_key"]
            assert creds.api_secret == plain["api_secret"]
        assert len(await audit_rows(registry, "credential.rotated")) == rotated_before + total
        # The old key is no longer needed for these rows: a ring without it still decrypts them.
        service.cipher = CredentialCipher(new_ring.without(old_ring.primary_id))
        creds = await service.credentials_for(user.id, "coinbase")
        assert creds is not None
        assert creds.passphrase == second_plain["passphrase"]
        service.cipher = CredentialCipher(new_ring)
        assert await service.reencrypt_all() == (0, [])  # nothing left to do
    finally:
        # Put every credential back under the original primary, so the rest of the run sees what it expects.
        both = KeyRing({kid: new_ring.key(kid) for kid in new_ring.key_ids}, old_ring.primary_id)
        service.cipher = CredentialCipher(both)
        await service.reencrypt_all()
        service.cipher = original
    assert {original.key_id_of(t) for t in await _all_tokens(registry)} == {old_ring.primary_id}
    creds = await service.credentials_for(user.id, "binance")
    assert creds is not None
    assert creds.api_secret == first_plain["api_secret"]
