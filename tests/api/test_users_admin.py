"""One's own profile (GET/PATCH /users/me) and the admin's user management."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from cival.core.service_registry import ServiceRegistry
from cival.database.models import SystemLog, User, UserSession
from tests.api._identity import (
    ADMIN_USERS,
    LOGIN,
    ME,
    Identities,
    audit_rows,
    count_rows,
    error_fields,
    get_user_row,
)

# --- /users/me -------------------------------------------------------------------------------------------------


async def test_get_me_returns_my_profile(ids: Identities) -> None:
    user = await ids.new_user(full_name="Grace Hopper")
    response = await user.get(ME)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(user.id)
    assert body["email"] == user.email
    assert body["full_name"] == "Grace Hopper"
    assert body["role"] == "trader"
    assert body["is_active"] is True
    assert set(body) == {"id", "email", "full_name", "role", "is_active", "created_at", "updated_at"}


async def test_patch_me_changes_full_name(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user(full_name="Old Name")
    before = (await user.get(ME)).json()
    response = await user.patch(ME, json={"full_name": "  New Name  "})
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "New Name"
    after = (await user.get(ME)).json()
    assert after["full_name"] == "New Name"
    assert datetime.fromisoformat(after["updated_at"]) >= datetime.fromisoformat(before["updated_at"])
    assert (await get_user_row(registry, user.id)).full_name == "New Name"
    empty = await user.patch(ME, json={"full_name": "   "})
    assert empty.status_code == 422
    assert error_fields(empty) == {"full_name"}
    assert (await get_user_row(registry, user.id)).full_name == "New Name"


@pytest.mark.parametrize(("field", "value"), [("role", "admin"), ("is_active", False), ("email", "x@example.com")])
async def test_patch_me_refuses_unknown_fields(
    ids: Identities, registry: ServiceRegistry, field: str, value: object
) -> None:
    user = await ids.new_user()
    response = await user.patch(ME, json={field: value, "full_name": "Sneaky"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert field in error_fields(response)
    row = await get_user_row(registry, user.id)
    assert row.role == "trader"
    assert row.is_active is True
    assert row.email == user.email
    assert row.full_name is None
    assert (await user.get(ME)).json()["role"] == "trader"


async def test_password_change_needs_the_current_password(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    other_token = (await user.login_again()).json()["access_token"]
    old_hash = (await get_user_row(registry, user.id)).password_hash

    missing = await user.patch(ME, json={"new_password": "a brand new password"})
    assert missing.status_code == 422
    assert missing.json()["error"] == "validation_error"
    assert "current_password" in missing.json()["detail"]

    wrong = await user.patch(ME, json={"current_password": "not my password", "new_password": "a brand new password"})
    assert wrong.status_code == 422
    assert wrong.json()["error"] == "wrong_password"

    too_short = await user.patch(ME, json={"current_password": user.password, "new_password": "short"})
    assert too_short.status_code == 422
    assert error_fields(too_short) == {"new_password"}

    assert (await get_user_row(registry, user.id)).password_hash == old_hash
    assert (await user.get(ME, token=other_token)).status_code == 200  # nothing was revoked
    assert (await user.login_again()).status_code == 200


async def test_password_change_ends_other_sessions_only(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    other_token = (await user.login_again()).json()["access_token"]
    new_password = "a brand new password"
    response = await user.patch(ME, json={"current_password": user.password, "new_password": new_password})
    assert response.status_code == 200, response.text
    assert (await user.get(ME)).status_code == 200
    gone = await user.get(ME, token=other_token)
    assert gone.status_code == 401
    assert gone.json()["error"] == "invalid_token"
    assert await count_rows(registry, UserSession, UserSession.user_id == user.id) == 1
    old = await user.login_again()
    assert old.status_code == 401
    assert old.json()["error"] == "invalid_credentials"
    assert (await user.login_again(new_password)).status_code == 200
    assert len(await audit_rows(registry, "password.changed", SystemLog.user_id == user.id)) == 1


async def test_nul_character_in_new_full_name_is_a_validation_error(ids: Identities) -> None:
    user = await ids.new_user(full_name="Plain")
    response = await user.patch(ME, json={"full_name": "Pl\u0000ain"})
    assert response.status_code == 422, response.text


# --- admin -----------------------------------------------------------------------------------------------------


async def test_trader_gets_403_on_admin_endpoints(ids: Identities, registry: ServiceRegistry) -> None:
    trader = await ids.new_user()
    victim = await ids.new_user()
    for method, url in (
        ("GET", ADMIN_USERS),
        ("POST", f"{ADMIN_USERS}/{victim.id}/deactivate"),
        ("POST", f"{ADMIN_USERS}/{victim.id}/activate"),
    ):
        response = await trader.request(method, url)
        assert response.status_code == 403, (method, url)
        assert response.json()["error"] == "forbidden"
    assert (await get_user_row(registry, victim.id)).is_active is True
    assert (await victim.get(ME)).status_code == 200
    anonymous = await ids.client().get(ADMIN_USERS)
    assert anonymous.status_code == 401


async def test_admin_lists_users_page_by_page(ids: Identities, registry: ServiceRegistry) -> None:
    admin = await ids.new_user(role="admin")
    assert (await admin.get(ME)).json()["role"] == "admin"
    created = {str((await ids.new_user()).id) for _ in range(3)}
    total = await count_rows(registry, User)

    first = await admin.get(ADMIN_USERS, params={"offset": 0, "limit": 2})
    second = await admin.get(ADMIN_USERS, params={"offset": 2, "limit": 2})
    assert first.status_code == second.status_code == 200
    assert first.json()["total"] == second.json()["total"] == total
    first_ids = [u["id"] for u in first.json()["items"]]
    second_ids = [u["id"] for u in second.json()["items"]]
    assert len(first_ids) == len(second_ids) == 2
    assert not set(first_ids) & set(second_ids)

    seen: list[str] = []
    offset = 0
    while offset < total:
        page = (await admin.get(ADMIN_USERS, params={"offset": offset, "limit": 500})).json()
        seen.extend(u["id"] for u in page["items"])
        offset += 500
    assert len(seen) == len(set(seen)) == total
    assert created <= set(seen)
    assert seen[:4] == first_ids + second_ids
    beyond = (await admin.get(ADMIN_USERS, params={"offset": total, "limit": 10})).json()
    assert beyond == {"items": [], "total": total}
    for item in first.json()["items"]:
        assert "password_hash" not in item


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "many"}])
async def test_admin_list_refuses_bad_paging(ids: Identities, params: dict[str, object]) -> None:
    admin = await ids.new_user(role="admin")
    response = await admin.get(ADMIN_USERS, params=params)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert set(params) <= {f.split(".")[-1] for f in error_fields(response)}


async def test_admin_deactivates_and_reactivates_a_user(ids: Identities, registry: ServiceRegistry) -> None:
    admin = await ids.new_user(role="admin")
    user = await ids.new_user()

    response = await admin.post(f"{ADMIN_USERS}/{user.id}/deactivate")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == str(user.id)
    assert response.json()["is_active"] is False
    assert (await get_user_row(registry, user.id)).is_active is False

    assert (await user.get(ME)).status_code == 401  # at once, with the token they already hold
    login = await user.login_again()
    assert login.status_code == 401
    assert login.json()["error"] == "account_disabled"

    deactivated = await audit_rows(registry, "admin.user_deactivated", SystemLog.user_id == admin.id)
    assert len(deactivated) == 1
    assert deactivated[0].data == {"target_user_id": str(user.id)}

    response = await admin.post(f"{ADMIN_USERS}/{user.id}/activate")
    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is True
    login = await user.login_again()
    assert login.status_code == 200, login.text
    assert (await user.get(ME, token=login.json()["access_token"])).status_code == 200
    activated = await audit_rows(registry, "admin.user_activated", SystemLog.user_id == admin.id)
    assert [row.data for row in activated] == [{"target_user_id": str(user.id)}]


async def test_deactivated_users_token_says_account_disabled(ids: Identities) -> None:
    admin = await ids.new_user(role="admin")
    user = await ids.new_user()
    assert (await admin.post(f"{ADMIN_USERS}/{user.id}/deactivate")).status_code == 200
    response = await user.get(ME)
    assert response.status_code == 401
    assert response.json()["error"] == "account_disabled"


async def test_deactivating_a_user_ends_all_their_sessions(ids: Identities, registry: ServiceRegistry) -> None:
    admin = await ids.new_user(role="admin")
    user = await ids.new_user()
    second = (await user.login_again()).json()["access_token"]
    assert (await admin.post(f"{ADMIN_USERS}/{user.id}/deactivate")).status_code == 200
    assert (await user.get(ME, token=second)).status_code == 401
    assert (await user.get(ME)).status_code == 401
    # Reactivation does not bring old sessions back: their rows are gone and the tokens stay refused.
    assert (await admin.post(f"{ADMIN_USERS}/{user.id}/activate")).status_code == 200
    assert await count_rows(registry, UserSession, UserSession.user_id == user.id) == 0
    assert (await user.get(ME)).status_code == 401
    assert (await user.get(ME, token=second)).status_code == 401


async def test_admin_cannot_deactivate_themselves(ids: Identities, registry: ServiceRegistry) -> None:
    admin = await ids.new_user(role="admin")
    response = await admin.post(f"{ADMIN_USERS}/{admin.id}/deactivate")
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert (await get_user_row(registry, admin.id)).is_active is True
    assert (await admin.get(ME)).status_code == 200
    assert await audit_rows(registry, "admin.user_deactivated", SystemLog.user_id == admin.id) == []


async def test_admin_actions_on_unknown_user_are_404(ids: Identities) -> None:
    admin = await ids.new_user(role="admin")
    for action in ("deactivate", "activate"):
        response = await admin.post(f"{ADMIN_USERS}/{uuid.uuid4()}/{action}")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    malformed = await admin.post(f"{ADMIN_USERS}/not-a-uuid/deactivate")
    assert malformed.status_code == 422


async def test_admin_login_works_through_the_api(ids: Identities) -> None:
    admin = await ids.new_user(role="admin", full_name="Root")
    response = await ids.client().post(LOGIN, json={"email": admin.email, "password": admin.password})
    assert response.status_code == 200
    assert response.json()["user"]["role"] == "admin"
