"""Registration, login, bearer tokens, sessions, password hashing, rate limits and the audit trail of auth."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from cival.core.security import Passwords
from cival.core.service_registry import ServiceRegistry
from cival.database.models import ApiRateLimit, SystemLog, User, UserSession
from cival.models.user_models import RegisterIn
from tests.api._identity import (
    DEFAULT_PASSWORD,
    LOGIN,
    LOGOUT,
    ME,
    REGISTER,
    SESSIONS,
    Identities,
    audit_rows,
    bearer,
    count_rows,
    error_fields,
    freeze_rate_limit_clock,
    get_user_row,
    random_address,
    sha256_hex,
    unique_email,
)


async def _deactivate(registry: ServiceRegistry, user_id: uuid.UUID) -> None:
    async with registry.database.system_session() as session:
        await session.execute(update(User).where(User.id == user_id).values(is_active=False))


async def _token_hashes(registry: ServiceRegistry) -> list[str]:
    async with registry.database.system_session() as session:
        return list((await session.scalars(select(UserSession.token_hash))).all())


# --- registration ----------------------------------------------------------------------------------------------


async def test_register_creates_a_trader_with_a_normalised_email(ids: Identities, registry: ServiceRegistry) -> None:
    tag = uuid.uuid4().hex[:12]
    response = await ids.client().post(
        REGISTER, json={"email": f" Alice.{tag.upper()}@Example.COM ", "password": DEFAULT_PASSWORD, "full_name": "Al"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == f"alice.{tag}@example.com"
    assert body["role"] == "trader"
    assert body["is_active"] is True
    assert body["full_name"] == "Al"
    assert "password" not in response.text
    assert DEFAULT_PASSWORD not in response.text
    row = await get_user_row(registry, uuid.UUID(body["id"]))
    assert row.email == f"alice.{tag}@example.com"
    assert row.password_hash is not None
    assert DEFAULT_PASSWORD not in row.password_hash


async def test_duplicate_email_after_normalisation_is_409(ids: Identities, registry: ServiceRegistry) -> None:
    tag = uuid.uuid4().hex[:12]
    first = await ids.client().post(REGISTER, json={"email": f"bob.{tag}@example.com", "password": DEFAULT_PASSWORD})
    assert first.status_code == 201, first.text
    before = await count_rows(registry, User)
    second = await ids.client().post(
        REGISTER, json={"email": f"  BOB.{tag}@EXAMPLE.com", "password": "another password"}
    )
    assert second.status_code == 409, second.text
    assert second.json()["error"] == "email_taken"
    assert await count_rows(registry, User) == before


@pytest.mark.parametrize(("length", "status"), [(7, 422), (8, 201), (128, 201), (129, 422)])
async def test_password_length_bounds(ids: Identities, registry: ServiceRegistry, length: int, status: int) -> None:
    email = unique_email()
    before = await count_rows(registry, User)
    response = await ids.client().post(REGISTER, json={"email": email, "password": "p" * length})
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["error"] == "validation_error"
        assert error_fields(response) == {"password"}
        assert await count_rows(registry, User) == before
        assert await count_rows(registry, User, User.email == email) == 0
    else:
        login = await ids.client().post(LOGIN, json={"email": email, "password": "p" * length})
        assert login.status_code == 200, login.text


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "two@@example.com"}, "email"),
        ({"email": 12345}, "email"),
        ({"password": 12345678}, "password"),
        ({"full_name": "x" * 256}, "full_name"),
        ({"full_name": ["Alice"]}, "full_name"),
        ({"role": "admin"}, "role"),
        ({"is_active": False}, "is_active"),
    ],
)
async def test_invalid_registration_is_422_naming_the_field_and_writes_nothing(
    ids: Identities, registry: ServiceRegistry, override: dict[str, Any], field: str
) -> None:
    email = unique_email()
    body = {"email": email, "password": DEFAULT_PASSWORD, **override}
    users_before = await count_rows(registry, User)
    audit_before = await count_rows(registry, SystemLog, SystemLog.message == "user.registered")
    response = await ids.client().post(REGISTER, json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"] == "validation_error"
    assert field in error_fields(response)
    assert field in payload["detail"]
    assert await count_rows(registry, User) == users_before
    assert await count_rows(registry, User, User.email == email) == 0
    assert await count_rows(registry, SystemLog, SystemLog.message == "user.registered") == audit_before


async def test_full_name_of_255_characters_is_accepted(ids: Identities) -> None:
    response = await ids.client().post(
        REGISTER, json={"email": unique_email(), "password": DEFAULT_PASSWORD, "full_name": "x" * 255}
    )
    assert response.status_code == 201, response.text
    assert response.json()["full_name"] == "x" * 255


async def test_concurrent_registrations_of_one_email_create_one_user(
    ids: Identities, registry: ServiceRegistry
) -> None:
    email = unique_email()
    responses = await asyncio.gather(
        *(ids.client().post(REGISTER, json={"email": email, "password": DEFAULT_PASSWORD}) for _ in range(4))
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    assert {r.json()["error"] for r in responses if r.status_code == 409} == {"email_taken"}
    assert await count_rows(registry, User, User.email == email) == 1


async def test_password_is_never_stripped(ids: Identities) -> None:
    email = unique_email()
    client = ids.client()
    password = "  spaced out  "
    assert (await client.post(REGISTER, json={"email": email, "password": password})).status_code == 201
    assert (await client.post(LOGIN, json={"email": email, "password": password.strip()})).status_code == 401
    assert (await client.post(LOGIN, json={"email": email, "password": password})).status_code == 200


async def test_nul_character_in_full_name_is_a_validation_error(ids: Identities, registry: ServiceRegistry) -> None:
    email = unique_email()
    response = await ids.client().post(
        REGISTER, json={"email": email, "password": DEFAULT_PASSWORD, "full_name": "Ali\u0000ce"}
    )
    assert response.status_code == 422, response.text
    assert error_fields(response) == {"full_name"}
    assert await count_rows(registry, User, User.email == email) == 0


async def test_registration_writes_an_audit_row(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    rows = await audit_rows(registry, "user.registered", SystemLog.user_id == user.id)
    assert len(rows) == 1
    assert rows[0].data == {"role": "trader"}


# --- login -----------------------------------------------------------------------------------------------------


async def test_login_returns_a_prefixed_token_expiring_after_the_session_ttl(
    ids: Identities, registry: ServiceRegistry
) -> None:
    user = await ids.new_user()
    started = datetime.now(UTC)
    response = await user.client.post(LOGIN, json={"email": f"  {user.email.upper()}", "password": user.password})
    finished = datetime.now(UTC)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["access_token"].startswith("cvl_")
    assert len(body["access_token"]) > 40
    assert body["token_type"] == "bearer"
    assert body["user"]["id"] == str(user.id)
    assert body["user"]["email"] == user.email
    ttl = timedelta(hours=registry.settings.session_ttl_hours)
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert expires_at.tzinfo is not None
    assert started + ttl - timedelta(seconds=1) <= expires_at <= finished + ttl + timedelta(seconds=1)
    me = await user.get(ME, token=body["access_token"])
    assert me.status_code == 200
    assert me.json()["id"] == str(user.id)


async def test_wrong_password_and_unknown_email_are_indistinguishable(ids: Identities) -> None:
    user = await ids.new_user()
    wrong_password = await ids.client().post(LOGIN, json={"email": user.email, "password": "not the password"})
    unknown_email = await ids.client().post(LOGIN, json={"email": unique_email(), "password": "not the password"})
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    assert wrong_password.json()["error"] == "invalid_credentials"
    assert user.email not in wrong_password.text


async def test_deactivated_user_cannot_log_in(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    await _deactivate(registry, user.id)
    response = await ids.client().post(LOGIN, json={"email": user.email, "password": user.password})
    assert response.status_code == 401
    assert response.json()["error"] == "account_disabled"
    # The right password is needed to learn that: a wrong one is just wrong.
    wrong = await ids.client().post(LOGIN, json={"email": user.email, "password": "not the password"})
    assert wrong.json()["error"] == "invalid_credentials"


async def test_token_is_stored_only_as_its_sha256(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    hashes = await _token_hashes(registry)
    assert user.token not in hashes
    assert sha256_hex(user.token) in hashes
    assert all(user.token not in h and user.token[4:] not in h for h in hashes)


@pytest.mark.parametrize("make_token", [lambda h: h, lambda h: "cvl_" + h])
async def test_a_copied_session_row_does_not_log_anyone_in(
    ids: Identities, registry: ServiceRegistry, make_token: Any
) -> None:
    user = await ids.new_user()
    async with registry.database.system_session() as session:
        stored = await session.scalar(
            select(UserSession.token_hash).where(UserSession.token_hash == sha256_hex(user.token))
        )
    assert stored is not None
    response = await user.get(ME, token=make_token(stored))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


async def test_expired_session_is_401_session_expired(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    async with registry.database.system_session() as session:
        result = await session.execute(
            update(UserSession)
            .where(UserSession.token_hash == sha256_hex(user.token))
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        assert result.rowcount == 1  # type: ignore[attr-defined]
    response = await user.get(ME)
    assert response.status_code == 401
    assert response.json()["error"] == "session_expired"
    # An expired session is not listed among one's sessions either.
    other = await user.login_again()
    listed = await user.get(SESSIONS, token=other.json()["access_token"])
    assert listed.status_code == 200
    assert len(listed.json()) == 1


async def test_a_changed_cached_session_is_read_anew(ids: Identities, registry: ServiceRegistry) -> None:
    # Cached session values are parsed once per process; a value changed in the cache is never answered from that.
    user = await ids.new_user()
    assert (await user.get(ME)).status_code == 200  # cached, and parsed
    key = registry.auth._cache_key(sha256_hex(user.token))
    cached = await registry.cache.get(key)
    assert cached is not None
    data = json.loads(cached)
    data["expires_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await registry.cache.set(key, json.dumps(data).encode(), 30)
    response = await user.get(ME)
    assert response.status_code == 401
    assert response.json()["error"] == "session_expired"


async def test_missing_bearer_is_401_not_authenticated_with_www_authenticate(ids: Identities) -> None:
    client = ids.client()
    for method, url in (("GET", ME), ("GET", SESSIONS), ("POST", LOGOUT)):
        response = await client.request(method, url)
        assert response.status_code == 401, (method, url)
        assert response.json()["error"] == "not_authenticated"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "token", ["garbage", "cvl_", "cvl_" + "A" * 43, "cvl_" + "x" * 200, "Bearer cvl_abc", "cvl_\u00e9\u00e9"]
)
async def test_garbage_token_is_401_invalid_token(ids: Identities, token: str) -> None:
    client = ids.client()
    response = await client.get(ME, headers={b"Authorization": f"Bearer {token}".encode()})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


async def test_every_401_for_a_bad_token_has_www_authenticate(ids: Identities) -> None:
    response = await ids.client().get(ME, headers=bearer("cvl_not-a-session"))
    assert response.status_code == 401
    assert "www-authenticate" in response.headers


async def test_other_authorization_schemes_are_not_accepted(ids: Identities) -> None:
    user = await ids.new_user()
    response = await user.client.get(ME, headers={"Authorization": f"Basic {user.token}"})
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"


# --- logout and sessions ---------------------------------------------------------------------------------------


async def test_logout_revokes_the_token(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    response = await user.post(LOGOUT)
    assert response.status_code == 204
    assert response.content == b""
    after = await user.get(ME)
    assert after.status_code == 401
    assert after.json()["error"] == "invalid_token"
    assert sha256_hex(user.token) not in await _token_hashes(registry)
    again = await user.post(LOGOUT)
    assert again.status_code == 401


async def test_sessions_list_flags_the_current_one(ids: Identities) -> None:
    user = await ids.new_user()
    second = (await user.login_again()).json()["access_token"]
    mine = await user.get(SESSIONS)
    theirs = await user.get(SESSIONS, token=second)
    assert mine.status_code == theirs.status_code == 200
    assert len(mine.json()) == len(theirs.json()) == 2
    assert {s["id"] for s in mine.json()} == {s["id"] for s in theirs.json()}
    current_mine = [s["id"] for s in mine.json() if s["current"]]
    current_theirs = [s["id"] for s in theirs.json() if s["current"]]
    assert len(current_mine) == len(current_theirs) == 1
    assert current_mine != current_theirs
    for session in mine.json():
        assert set(session) == {"id", "created_at", "expires_at", "current"}


async def test_revoking_another_of_my_sessions_ends_that_token(ids: Identities) -> None:
    user = await ids.new_user()
    second = (await user.login_again()).json()["access_token"]
    listed = (await user.get(SESSIONS, token=second)).json()
    second_id = next(s["id"] for s in listed if s["current"])
    response = await user.delete(f"{SESSIONS}/{second_id}")
    assert response.status_code == 204
    gone = await user.get(ME, token=second)
    assert gone.status_code == 401
    assert gone.json()["error"] == "invalid_token"
    assert (await user.get(ME)).status_code == 200
    remaining = (await user.get(SESSIONS)).json()
    assert [s["current"] for s in remaining] == [True]
    again = await user.delete(f"{SESSIONS}/{second_id}")
    assert again.status_code == 404


async def test_someone_elses_session_is_404_and_keeps_working(ids: Identities) -> None:
    alice = await ids.new_user()
    bob = await ids.new_user()
    bob_session = (await bob.get(SESSIONS)).json()[0]["id"]
    response = await alice.delete(f"{SESSIONS}/{bob_session}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert (await bob.get(ME)).status_code == 200
    assert bob_session not in {s["id"] for s in (await alice.get(SESSIONS)).json()}
    unknown = await alice.delete(f"{SESSIONS}/{uuid.uuid4()}")
    assert unknown.status_code == 404
    malformed = await alice.delete(f"{SESSIONS}/not-a-uuid")
    assert malformed.status_code == 422


# --- password hashing ------------------------------------------------------------------------------------------


async def test_passwords_are_argon2id_at_owasp_minimum(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    row = await get_user_row(registry, user.id)
    assert row.password_hash is not None
    assert row.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    other = await ids.new_user()  # same password, different salt
    other_row = await get_user_row(registry, other.id)
    assert other_row.password_hash != row.password_hash


async def test_login_rehashes_when_parameters_rise(
    ids: Identities, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await ids.new_user()
    old_hash = (await get_user_row(registry, user.id)).password_hash
    assert old_hash is not None
    assert ",t=2," in old_hash
    monkeypatch.setattr(registry.auth, "passwords", Passwords(time_cost=3))
    wrong = await user.login_again("not the password")
    assert wrong.status_code == 401
    assert (await get_user_row(registry, user.id)).password_hash == old_hash  # a failed login rehashes nothing
    response = await user.login_again()
    assert response.status_code == 200, response.text
    new_hash = (await get_user_row(registry, user.id)).password_hash
    assert new_hash is not None
    assert new_hash.startswith("$argon2id$v=19$m=19456,t=3,p=1$")
    monkeypatch.undo()
    # Back at the lower parameters: the stronger hash still verifies and is not downgraded.
    assert (await user.login_again()).status_code == 200
    assert (await get_user_row(registry, user.id)).password_hash == new_hash


# --- rate limits -----------------------------------------------------------------------------------------------


async def _new_rate_limit_rows(registry: ServiceRegistry, known: set[uuid.UUID], endpoint: str) -> list[ApiRateLimit]:
    async with registry.database.system_session() as session:
        rows = (await session.scalars(select(ApiRateLimit).where(ApiRateLimit.endpoint == endpoint))).all()
    return [row for row in rows if row.id not in known]


async def _rate_limit_ids(registry: ServiceRegistry) -> set[uuid.UUID]:
    async with registry.database.system_session() as session:
        return set((await session.scalars(select(ApiRateLimit.id))).all())


def _assert_retry_after(response: Any, window: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "rate_limited"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 0 < int(retry_after) <= window


async def test_login_rate_limit_per_email_and_address(
    ids: Identities, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze_rate_limit_clock(monkeypatch)
    email = unique_email()
    await registry.auth.register(RegisterIn(email=email, password=DEFAULT_PASSWORD))  # no login yet
    client = ids.client()
    known = await _rate_limit_ids(registry)
    for _ in range(10):
        response = await client.post(LOGIN, json={"email": email, "password": "not the password"})
        assert response.status_code == 401
    blocked = await client.post(LOGIN, json={"email": email, "password": DEFAULT_PASSWORD})
    _assert_retry_after(blocked, 60)
    rows = await _new_rate_limit_rows(registry, known, "auth.login")
    assert len(rows) == 1
    assert rows[0].limit_exceeded is True
    assert rows[0].window_duration_seconds == 60
    assert rows[0].requests_count == 11
    # Further attempts are refused too, but the exceeded window is recorded once.
    assert (await client.post(LOGIN, json={"email": email, "password": DEFAULT_PASSWORD})).status_code == 429
    assert len(await _new_rate_limit_rows(registry, known, "auth.login")) == 1


async def test_login_rate_limit_per_email_across_addresses(
    ids: Identities, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze_rate_limit_clock(monkeypatch)
    user = await ids.new_user()
    for _ in range(9):  # new_user already logged in once
        response = await ids.client().post(LOGIN, json={"email": user.email, "password": "not the password"})
        assert response.status_code == 401
    blocked = await ids.client().post(LOGIN, json={"email": f" {user.email.upper()}", "password": user.password})
    _assert_retry_after(blocked, 60)
    # Another user is not affected.
    other = await ids.new_user()
    assert (await other.login_again()).status_code == 200


async def test_login_rate_limit_per_address_across_emails(ids: Identities, monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_rate_limit_clock(monkeypatch)
    address = random_address()
    client = ids.client(address)
    for _ in range(10):
        response = await client.post(LOGIN, json={"email": unique_email(), "password": "not the password"})
        assert response.status_code == 401
    _assert_retry_after(await client.post(LOGIN, json={"email": unique_email(), "password": "x"}), 60)
    # Another address is not affected.
    assert (await ids.client().post(LOGIN, json={"email": unique_email(), "password": "x"})).status_code == 401


async def test_registration_rate_limit_per_address(
    ids: Identities, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze_rate_limit_clock(monkeypatch)
    client = ids.client()
    known = await _rate_limit_ids(registry)
    for _ in range(5):
        response = await client.post(REGISTER, json={"email": unique_email(), "password": DEFAULT_PASSWORD})
        assert response.status_code == 201, response.text
    users_before = await count_rows(registry, User)
    email = unique_email()
    blocked = await client.post(REGISTER, json={"email": email, "password": DEFAULT_PASSWORD})
    _assert_retry_after(blocked, 3600)
    assert await count_rows(registry, User) == users_before
    assert await count_rows(registry, User, User.email == email) == 0
    rows = await _new_rate_limit_rows(registry, known, "auth.register")
    assert len(rows) == 1
    assert rows[0].limit_exceeded is True
    assert rows[0].window_duration_seconds == 3600
    # Another address may still register.
    other = await ids.client().post(REGISTER, json={"email": email, "password": DEFAULT_PASSWORD})
    assert other.status_code == 201, other.text


# --- audit -----------------------------------------------------------------------------------------------------


async def test_failed_login_is_audited_without_the_password(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    attempt = "Wr0ng-But-Close-Password"
    client = ids.client()
    response = await client.post(LOGIN, json={"email": user.email, "password": attempt})
    assert response.status_code == 401
    rows = await audit_rows(registry, "login.failed", SystemLog.user_id == user.id)
    assert len(rows) == 1
    row = rows[0]
    assert row.level == "WARNING"
    assert row.data is not None
    assert row.data["reason"] == "wrong_password"
    dumped = json.dumps(row.data)
    assert attempt not in dumped
    assert user.password not in dumped
    assert "password" not in {k.lower() for k in row.data}


async def test_failed_login_for_unknown_email_is_audited_without_a_user(
    ids: Identities, registry: ServiceRegistry
) -> None:
    address = random_address()
    attempt = "S0me-Guessed-Password"
    response = await ids.client(address).post(LOGIN, json={"email": unique_email(), "password": attempt})
    assert response.status_code == 401
    rows = [r for r in await audit_rows(registry, "login.failed") if (r.data or {}).get("client") == address]
    assert len(rows) == 1
    assert rows[0].user_id is None
    assert rows[0].data is not None
    assert rows[0].data["reason"] == "unknown_email"
    assert attempt not in json.dumps(rows[0].data)


async def test_login_and_logout_are_audited(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    created = await audit_rows(registry, "session.created", SystemLog.user_id == user.id)
    assert len(created) == 1
    assert created[0].data == {"client": user.address}
    session_id = (await user.get(SESSIONS)).json()[0]["id"]
    assert (await user.post(LOGOUT)).status_code == 204
    revoked = await audit_rows(registry, "session.revoked", SystemLog.user_id == user.id)
    assert len(revoked) == 1
    assert revoked[0].data == {"session_id": session_id}
    assert user.token not in json.dumps(revoked[0].data)
