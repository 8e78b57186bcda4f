"""Trading accounts: paper accounts funded on creation, exchange accounts gated on credentials, owner-only access."""

from __future__ import annotations

import secrets
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from cival.core.service_registry import ServiceRegistry
from cival.database.models import Balance, SystemLog, TradingAccount
from tests.api._identity import ACCOUNTS, CREDENTIALS, Caller, Identities, audit_rows, count_rows


def _amount(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.00000001")), "f")


async def _counts(registry: ServiceRegistry) -> tuple[int, int]:
    return await count_rows(registry, TradingAccount), await count_rows(registry, Balance)


async def _add_credentials(user: Caller, exchange: str) -> None:
    response = await user.post(
        CREDENTIALS,
        json={"exchange": exchange, "api_key": "AK" + secrets.token_hex(8), "api_secret": secrets.token_hex(16)},
    )
    assert response.status_code == 201, response.text


async def _balances(registry: ServiceRegistry, account_id: str) -> list[Balance]:
    async with registry.database.system_session() as session:
        rows = await session.scalars(select(Balance).where(Balance.account_id == uuid.UUID(account_id)))
        return list(rows.all())


async def test_paper_account_is_funded_with_the_starting_balances(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    starting = registry.settings.paper_starting_balances
    assert starting == {"USDT": Decimal("10000")}  # the default this test run uses
    response = await user.post(ACCOUNTS, json={"exchange": "paper", "account_id": "main"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["exchange"] == "paper"
    assert body["account_id"] == "main"
    assert body["account_type"] == "spot"
    assert body["is_active"] is True
    assert body["balances"] == [
        {"asset": "USDT", "free": "10000.00000000", "locked": "0.00000000", "total": "10000.00000000"}
    ]
    rows = await _balances(registry, body["id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row.asset, row.free, row.locked, row.total) == ("USDT", Decimal(10000), Decimal(0), Decimal(10000))
    assert row.user_id == user.id
    assert row.exchange == "paper"
    got = await user.get(f"{ACCOUNTS}/{body['id']}")
    assert got.status_code == 200
    assert got.json() == body
    created = await audit_rows(registry, "account.created", SystemLog.user_id == user.id)
    assert [r.data for r in created] == [{"account_id": body["id"]}]


async def test_paper_account_funding_follows_the_settings(
    ids: Identities, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    balances = {"BTC": Decimal("0.5"), "USDT": Decimal("2500.25")}
    monkeypatch.setattr(registry.accounts, "paper_balances", balances)
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["account_id"].startswith("paper-")
    assert body["balances"] == [
        {"asset": asset, "free": _amount(amount), "locked": _amount(Decimal(0)), "total": _amount(amount)}
        for asset, amount in sorted(balances.items())
    ]
    assert {r.asset: r.total for r in await _balances(registry, body["id"])} == balances


async def test_account_ids_are_unique_per_user_and_exchange(ids: Identities, registry: ServiceRegistry) -> None:
    alice = await ids.new_user()
    bob = await ids.new_user()
    first = await alice.post(ACCOUNTS, json={"exchange": "paper", "account_id": "shared"})
    assert first.status_code == 201, first.text
    counts = await _counts(registry)
    duplicate = await alice.post(
        ACCOUNTS, json={"exchange": "paper", "account_id": "  shared ", "account_type": "margin"}
    )
    assert duplicate.status_code == 409, duplicate.text
    assert duplicate.json()["error"] == "account_exists"
    assert await _counts(registry) == counts
    assert len(await audit_rows(registry, "account.created", SystemLog.user_id == alice.id)) == 1
    # Another user may use the same account id, and so may another exchange of the same user.
    other_user = await bob.post(ACCOUNTS, json={"exchange": "paper", "account_id": "shared"})
    assert other_user.status_code == 201, other_user.text
    await _add_credentials(alice, "binance")
    other_exchange = await alice.post(ACCOUNTS, json={"exchange": "binance", "account_id": "shared"})
    assert other_exchange.status_code == 201, other_exchange.text


async def test_exchange_account_needs_credentials_for_that_exchange(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    counts = await _counts(registry)
    response = await user.post(ACCOUNTS, json={"exchange": "binance", "account_id": "live"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "credentials_required"
    assert "binance" in response.json()["detail"]
    assert await _counts(registry) == counts
    # Credentials for another exchange do not count.
    await _add_credentials(user, "coinbase")
    assert (await user.post(ACCOUNTS, json={"exchange": "binance"})).json()["error"] == "credentials_required"
    assert await _counts(registry) == counts
    assert await audit_rows(registry, "account.created", SystemLog.user_id == user.id) == []

    await _add_credentials(user, "binance")
    created = await user.post(ACCOUNTS, json={"exchange": "binance", "account_id": "live", "account_type": "futures"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["exchange"], body["account_id"], body["account_type"]) == ("binance", "live", "futures")
    assert body["balances"] == []
    assert await _balances(registry, body["id"]) == []
    assert await count_rows(registry, TradingAccount) == counts[0] + 1


async def test_another_users_credentials_do_not_count(ids: Identities) -> None:
    alice = await ids.new_user()
    bob = await ids.new_user()
    await _add_credentials(alice, "hyperliquid")
    response = await bob.post(ACCOUNTS, json={"exchange": "hyperliquid"})
    assert response.status_code == 422
    assert response.json()["error"] == "credentials_required"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"exchange": "paper", "account_type": "options"}, "account_type"),
        ({"exchange": "kraken"}, "exchange"),
        ({}, "exchange"),
        ({"exchange": "paper", "account_id": ""}, "account_id"),
        ({"exchange": "paper", "account_id": "x" * 256}, "account_id"),
        ({"exchange": "paper", "user_id": "00000000-0000-0000-0000-000000000001"}, "user_id"),
        ({"exchange": "paper", "balances": [{"asset": "USDT", "free": "1000000"}]}, "balances"),
        ({"exchange": "paper", "is_active": False}, "is_active"),
    ],
)
async def test_invalid_account_is_422_and_writes_nothing(
    ids: Identities, registry: ServiceRegistry, body: dict[str, Any], field: str
) -> None:
    user = await ids.new_user()
    counts = await _counts(registry)
    response = await user.post(ACCOUNTS, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert field in {e["field"] for e in response.json()["errors"]}
    assert await _counts(registry) == counts
    assert (await user.get(ACCOUNTS)).json() == []


async def test_list_shows_only_my_accounts(ids: Identities) -> None:
    alice = await ids.new_user()
    bob = await ids.new_user()
    a1 = (await alice.post(ACCOUNTS, json={"exchange": "paper", "account_id": "a1"})).json()
    a2 = (await alice.post(ACCOUNTS, json={"exchange": "paper", "account_id": "a2"})).json()
    b1 = (await bob.post(ACCOUNTS, json={"exchange": "paper", "account_id": "b1"})).json()
    mine = await alice.get(ACCOUNTS)
    assert mine.status_code == 200
    assert [a["id"] for a in mine.json()] == [a1["id"], a2["id"]]
    assert all(a["balances"] == a1["balances"] for a in mine.json())
    assert [a["id"] for a in (await bob.get(ACCOUNTS)).json()] == [b1["id"]]
    assert (await ids.client().get(ACCOUNTS)).status_code == 401


async def test_patch_deactivates_reactivates_and_changes_type(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    account = (await user.post(ACCOUNTS, json={"exchange": "paper"})).json()
    url = f"{ACCOUNTS}/{account['id']}"

    off = await user.patch(url, json={"is_active": False})
    assert off.status_code == 200, off.text
    assert off.json()["is_active"] is False
    assert off.json()["balances"] == account["balances"]
    assert (await user.get(url)).json()["is_active"] is False
    assert [a["is_active"] for a in (await user.get(ACCOUNTS)).json()] == [False]

    on = await user.patch(url, json={"is_active": True})
    assert on.status_code == 200
    assert on.json()["is_active"] is True

    margin = await user.patch(url, json={"account_type": "margin"})
    assert margin.status_code == 200
    assert margin.json()["account_type"] == "margin"
    assert margin.json()["is_active"] is True
    async with registry.database.system_session() as session:
        row = await session.get(TradingAccount, uuid.UUID(account["id"]))
    assert row is not None
    assert (row.account_type, row.is_active) == ("margin", True)

    assert [r.data for r in await audit_rows(registry, "account.deactivated", SystemLog.user_id == user.id)] == [
        {"account_id": account["id"]}
    ]
    assert len(await audit_rows(registry, "account.activated", SystemLog.user_id == user.id)) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"account_type": "options"}, "account_type"),
        ({"is_active": "perhaps"}, "is_active"),
        ({"exchange": "binance"}, "exchange"),
        ({"account_id": "renamed"}, "account_id"),
        ({"user_id": "00000000-0000-0000-0000-000000000001"}, "user_id"),
    ],
)
async def test_patch_refuses_invalid_and_unknown_fields(
    ids: Identities, registry: ServiceRegistry, body: dict[str, Any], field: str
) -> None:
    user = await ids.new_user()
    account = (await user.post(ACCOUNTS, json={"exchange": "paper", "account_id": "keep"})).json()
    response = await user.patch(f"{ACCOUNTS}/{account['id']}", json=body)
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
    after = (await user.get(f"{ACCOUNTS}/{account['id']}")).json()
    assert after == account


async def test_someone_elses_account_is_404(ids: Identities, registry: ServiceRegistry) -> None:
    alice = await ids.new_user()
    bob = await ids.new_user()
    account = (await alice.post(ACCOUNTS, json={"exchange": "paper"})).json()
    url = f"{ACCOUNTS}/{account['id']}"
    got = await bob.get(url)
    assert got.status_code == 404
    assert got.json()["error"] == "not_found"
    patched = await bob.patch(url, json={"is_active": False})
    assert patched.status_code == 404
    assert (await alice.get(url)).json()["is_active"] is True
    unknown = await alice.get(f"{ACCOUNTS}/{uuid.uuid4()}")
    assert unknown.status_code == 404
    assert (await alice.get(f"{ACCOUNTS}/not-a-uuid")).status_code == 422


async def test_nul_character_in_account_id_is_a_validation_error(ids: Identities, registry: ServiceRegistry) -> None:
    user = await ids.new_user()
    counts = await _counts(registry)
    response = await user.post(ACCOUNTS, json={"exchange": "paper", "account_id": "ma\u0000in"})
    assert response.status_code == 422, response.text
    assert await _counts(registry) == counts
