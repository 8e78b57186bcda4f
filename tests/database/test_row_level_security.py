"""Row-level security on PostgreSQL: a user's transaction sees and changes only that user's rows.

Two users, A and B, each own rows in every user-owned table (created as the schema owner, which bypasses row-level
security). Then, in A's `Database.session`, unfiltered SQL must return only A's rows and must not touch B's; a
transaction that names no user sees nothing; the platform's `system_session` sees everything.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import CursorResult, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from cival.core.db import APP_ROLE, SYSTEM_ROLE, Database
from cival.database import rls
from cival.database.models import (
    ApiRateLimit,
    Balance,
    Base,
    NotificationDelivery,
    NotificationWebhook,
    Order,
    PortfolioSnapshot,
    Position,
    RiskAlert,
    RiskMetric,
    SystemLog,
    Trade,
    TradingAccount,
    TradingAgent,
    TradingLimit,
    TradingSignal,
    TradingStrategy,
    User,
    UserApiKey,
    UserSession,
)

pytestmark = pytest.mark.postgres

USER_OWNED_TABLES = (
    "users",
    "user_sessions",
    "user_api_keys",
    "trading_accounts",
    "orders",
    "trades",
    "positions",
    "balances",
    "portfolio_snapshots",
    "trading_strategies",
    "trading_agents",
    "trading_signals",
    "risk_metrics",
    "risk_alerts",
    "trading_limits",
    "system_logs",
    "api_rate_limits",
    "notification_webhooks",  # beyond the spec: migration 0005
    "notification_deliveries",
)
"""Written out by hand, so that a table added to the policy list (or dropped from it) is a visible change."""

TABLES = sorted(set(rls.RLS_TABLES) | set(USER_OWNED_TABLES))
"""Both lists, so that a table missing from either is still exercised (and fails) by name."""

_NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Owner:
    """One user and the ids of the rows they own, per table."""

    user_id: uuid.UUID
    account_id: uuid.UUID = field(default_factory=uuid.uuid4)
    strategy_id: uuid.UUID = field(default_factory=uuid.uuid4)
    agent_id: uuid.UUID = field(default_factory=uuid.uuid4)
    order_id: uuid.UUID = field(default_factory=uuid.uuid4)
    webhook_id: uuid.UUID = field(default_factory=uuid.uuid4)
    rows: dict[str, set[uuid.UUID]] = field(default_factory=dict)


@dataclass
class Dataset:
    a: Owner
    b: Owner
    ownerless: dict[str, set[uuid.UUID]]
    """Rows of nullable-owner tables that belong to nobody (user_id NULL): invisible to every user."""


def _row(table: str, owner: Owner, tag: str) -> Base:
    """A new row of `table` owned by `owner`; `tag` keeps unique columns distinct."""
    uid = owner.user_id
    match table:
        case "users":
            return User(id=uuid.uuid4(), email=f"extra-{tag}-{uuid.uuid4().hex}@example.com")
        case "user_sessions":
            return UserSession(
                user_id=uid, token_hash=f"hash-{tag}-{uuid.uuid4().hex}", expires_at=_NOW + timedelta(days=1)
            )
        case "user_api_keys":
            return UserApiKey(user_id=uid, exchange="binance", api_key_encrypted="k", api_secret_encrypted="s")
        case "trading_accounts":
            return TradingAccount(user_id=uid, exchange="binance", account_id=f"acct-{tag}")
        case "orders":
            return Order(
                user_id=uid,
                account_id=owner.account_id,
                symbol="BTCUSDT",
                side="buy",
                type="limit",
                quantity=Decimal("0.5"),
                price=Decimal("100"),
                exchange="binance",
            )
        case "trades":
            return Trade(
                user_id=uid,
                order_id=owner.order_id,
                symbol="BTCUSDT",
                side="buy",
                quantity=Decimal("0.5"),
                price=Decimal("100"),
                exchange="binance",
                executed_at=_NOW,
            )
        case "positions":
            return Position(
                user_id=uid,
                account_id=owner.account_id,
                symbol=f"SYM{tag}",
                size=Decimal("1"),
                average_price=Decimal("10"),
                exchange="binance",
            )
        case "balances":
            return Balance(user_id=uid, account_id=owner.account_id, asset=f"A{tag}", exchange="binance")
        case "portfolio_snapshots":
            return PortfolioSnapshot(
                user_id=uid,
                total_value=Decimal("1000"),
                snapshot_date=date(2000, 1, 1) + timedelta(days=zlib.crc32(tag.encode()) % 20000),
            )
        case "trading_strategies":
            return TradingStrategy(user_id=uid, name=f"s-{tag}", strategy_type="momentum", parameters={})
        case "trading_agents":
            return TradingAgent(user_id=uid, name=f"a-{tag}", agent_type="llm", configuration={})
        case "trading_signals":
            return TradingSignal(
                strategy_id=owner.strategy_id,
                symbol="BTCUSDT",
                action="buy",
                strength=Decimal("0.5"),
                price=Decimal("100"),
                confidence=Decimal("0.9"),
            )
        case "risk_metrics":
            return RiskMetric(user_id=uid, calculated_at=_NOW)
        case "risk_alerts":
            return RiskAlert(user_id=uid, alert_type="drawdown", severity="high", message=f"alert {tag}")
        case "trading_limits":
            return TradingLimit(user_id=uid, limit_type="max_position", limit_value=Decimal("10"))
        case "system_logs":
            return SystemLog(user_id=uid, level="INFO", module="tests.rls", message=f"log {tag}")
        case "api_rate_limits":
            return ApiRateLimit(user_id=uid, endpoint="/api/x", window_start=_NOW, window_duration_seconds=60)
        case "notification_webhooks":
            return NotificationWebhook(
                user_id=uid, url=f"https://{tag}.example.com/hook", secret_encrypted="s", event_types=["trades"]
            )
        case "notification_deliveries":
            return NotificationDelivery(
                user_id=uid, webhook_id=owner.webhook_id, event_id=uuid.uuid4(), event_type="trades"
            )
    raise AssertionError(f"no row factory for {table}")


async def _create_owner(session: AsyncSession, name: str) -> Owner:
    owner = Owner(user_id=uuid.uuid4())
    uid = owner.user_id
    # Flushed level by level: the models declare foreign keys but no relationships.
    session.add(User(id=uid, email=f"rls-{name}-{uid.hex}@example.com"))
    await session.flush()
    session.add_all(
        [
            TradingAccount(id=owner.account_id, user_id=uid, exchange="binance", account_id=f"main-{name}"),
            TradingStrategy(
                id=owner.strategy_id, user_id=uid, name=f"strategy {name}", strategy_type="grid", parameters={}
            ),
            TradingAgent(id=owner.agent_id, user_id=uid, name=f"agent {name}", agent_type="llm", configuration={}),
            NotificationWebhook(
                id=owner.webhook_id,
                user_id=uid,
                url=f"https://{name}.example.com/main",
                secret_encrypted="s",
                event_types=["alerts"],
            ),
        ]
    )
    await session.flush()
    session.add(
        Order(
            id=owner.order_id,
            user_id=uid,
            account_id=owner.account_id,
            symbol="ETHUSDT",
            side="sell",
            type="market",
            quantity=Decimal("2"),
            exchange="binance",
        )
    )
    await session.flush()
    rows: list[Base] = [_row(t, owner, f"{name}{i}") for t in TABLES if t != "users" for i in range(2)]
    # A signal owned through the agent rather than the strategy.
    rows.append(
        TradingSignal(
            agent_id=owner.agent_id,
            symbol="ETHUSDT",
            action="sell",
            strength=Decimal("-0.5"),
            price=Decimal("3000"),
            confidence=Decimal("0.1"),
        )
    )
    session.add_all(rows)
    await session.flush()

    owner.rows = {
        "users": {uid},
        "trading_accounts": {owner.account_id},
        "trading_strategies": {owner.strategy_id},
        "trading_agents": {owner.agent_id},
        "orders": {owner.order_id},
        "notification_webhooks": {owner.webhook_id},
    }
    for row in rows:
        owner.rows.setdefault(str(row.__tablename__), set()).add(row.id)  # type: ignore[attr-defined]
    return owner


@pytest.fixture
async def data(postgres_url: str, owner_engine: AsyncEngine) -> Dataset:
    """Fresh users A and B, each owning rows in every user-owned table, plus rows owned by nobody."""
    async with AsyncSession(owner_engine, expire_on_commit=False) as session, session.begin():
        a = await _create_owner(session, "a")
        b = await _create_owner(session, "b")
        ownerless = [
            SystemLog(user_id=None, level="INFO", module="tests.rls", message="platform"),
            ApiRateLimit(user_id=None, endpoint="/api/public", window_start=_NOW, window_duration_seconds=60),
        ]
        session.add_all(ownerless)
        await session.flush()
    return Dataset(a=a, b=b, ownerless={str(r.__tablename__): {r.id} for r in ownerless})  # type: ignore[attr-defined]


def _owns(owner: Owner, table: str, row: Any) -> bool:
    """Whether `row` (a mapping from `SELECT *`) belongs to `owner`, judged by its owning column(s)."""
    if table == "users":
        return bool(row["id"] == owner.user_id)
    if table == "trading_signals":
        return bool(row["strategy_id"] == owner.strategy_id or row["agent_id"] == owner.agent_id)
    return bool(row["user_id"] == owner.user_id)


async def _owner_ids(owner_engine: AsyncEngine, table: str, ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `ids` exist in `table`, as seen by the schema owner (no row-level security)."""
    stmt = text(f"SELECT id FROM {table} WHERE id IN :ids").bindparams(  # noqa: S608 - fixed table names
        bindparam("ids", expanding=True)
    )
    async with owner_engine.connect() as conn:
        return set((await conn.execute(stmt, {"ids": list(ids)})).scalars())


class _Undo(Exception):
    """Raised to roll a transaction back once it has been checked."""


async def _rowcount(session: AsyncSession, stmt: Any, params: dict[str, Any] | None = None) -> int:
    """How many rows an UPDATE or DELETE touched."""
    result = await session.execute(stmt, params)
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


async def _insert_as(db: Database, user_id: uuid.UUID, row: Base) -> None:
    """Insert `row` in a transaction on behalf of `user_id`."""
    async with db.session(user_id) as session:
        session.add(row)
        await session.flush()


# --- The list of protected tables --------------------------------------------------------------------------


def test_rls_tables_are_the_user_owned_tables(postgres_url: str) -> None:
    assert len(rls.RLS_TABLES) == len(set(rls.RLS_TABLES)), "duplicate table in RLS_TABLES"
    assert sorted(rls.RLS_TABLES) == sorted(USER_OWNED_TABLES)


def test_every_table_with_a_user_id_has_a_policy(postgres_url: str) -> None:
    with_user_id = {t.name for t in Base.metadata.tables.values() if "user_id" in t.c}
    assert with_user_id - set(rls.RLS_TABLES) == set()
    assert with_user_id == set(USER_OWNED_TABLES) - {"users", "trading_signals"}


async def test_policies_are_installed_and_forced(postgres_url: str, owner_engine: AsyncEngine) -> None:
    async with owner_engine.connect() as conn:
        flags = {
            name: (enabled, forced)
            for name, enabled, forced in await conn.execute(
                text(
                    "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                    "WHERE relkind = 'r' AND relnamespace = current_schema()::text::regnamespace"
                )
            )
        }
        policies = {
            (table, name, cmd)
            for table, name, cmd in await conn.execute(
                text("SELECT tablename, policyname, cmd FROM pg_policies WHERE schemaname = current_schema()")
            )
        }
        app_role = (
            await conn.execute(text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE})
        ).one()
    for table in USER_OWNED_TABLES:
        assert flags[table] == (True, True), f"{table}: row-level security enabled/forced = {flags[table]}"
        assert (table, rls.policy_name(table), "ALL") in policies, f"{table} has no owner policy"
    assert tuple(app_role) == (False, False), f"{APP_ROLE} must be bound by row-level security"


async def test_user_session_runs_as_the_app_role_with_the_user_claim(
    postgres_url: str, db: Database, data: Dataset
) -> None:
    async with db.session(data.a.user_id) as session:
        user, uid = (await session.execute(text("SELECT current_user, auth.uid()"))).one()
    assert user == APP_ROLE
    assert uid == data.a.user_id
    async with db.system_session() as session:
        assert await session.scalar(text("SELECT current_user")) == SYSTEM_ROLE
    async with db.sessionmaker() as session, session.begin():
        user, uid = (await session.execute(text("SELECT current_user, auth.uid()"))).one()
    assert user == APP_ROLE
    assert uid is None


# --- Reading -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
async def test_user_sees_only_own_rows(postgres_url: str, db: Database, data: Dataset, table: str) -> None:
    async with db.session(data.a.user_id) as session:
        rows = (await session.execute(text(f"SELECT * FROM {table}"))).mappings().all()  # noqa: S608
    foreign = [dict(r) for r in rows if not _owns(data.a, table, r)]
    assert foreign == [], f"{table}: A sees rows that are not A's"
    assert {r["id"] for r in rows} == data.a.rows[table]
    assert len(rows) == len(data.a.rows[table])
    # The same holds for B, whose rows are the other half.
    async with db.session(data.b.user_id) as session:
        ids = set((await session.execute(text(f"SELECT id FROM {table}"))).scalars())  # noqa: S608
    assert ids == data.b.rows[table]


@pytest.mark.parametrize("table", TABLES)
async def test_transaction_without_a_user_sees_nothing(
    postgres_url: str, db: Database, data: Dataset, table: str
) -> None:
    # Use a pooled connection that just carried a user's claim first: the claim must not leak past its transaction.
    async with db.session(data.a.user_id) as session:
        assert await session.scalar(text(f"SELECT count(*) FROM {table}")) > 0  # noqa: S608
    async with db.sessionmaker() as session, session.begin():
        assert await session.scalar(text("SELECT current_user")) == APP_ROLE
        count = await session.scalar(text(f"SELECT count(*) FROM {table}"))  # noqa: S608
    assert count == 0, f"{table}: a transaction with no user sees {count} rows"


@pytest.mark.parametrize("table", TABLES)
async def test_system_session_sees_every_users_rows(postgres_url: str, db: Database, data: Dataset, table: str) -> None:
    expected = data.a.rows[table] | data.b.rows[table] | data.ownerless.get(table, set())
    stmt = text(f"SELECT id FROM {table} WHERE id IN :ids").bindparams(  # noqa: S608
        bindparam("ids", expanding=True)
    )
    async with db.system_session() as session:
        ids = set((await session.execute(stmt, {"ids": list(expected)})).scalars())
    assert ids == expected


# --- Writing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
async def test_update_reaches_only_own_rows(
    postgres_url: str, db: Database, owner_engine: AsyncEngine, data: Dataset, table: str
) -> None:
    b_ids = list(data.b.rows[table])
    targeted = text(f"UPDATE {table} SET id = id WHERE id IN :ids").bindparams(  # noqa: S608
        bindparam("ids", expanding=True)
    )
    async with db.session(data.a.user_id) as session:
        on_b = await _rowcount(session, targeted, {"ids": b_ids})
        unfiltered = await _rowcount(session, text(f"UPDATE {table} SET id = id"))  # noqa: S608
    assert on_b == 0, f"{table}: A updated {on_b} of B's rows"
    # Positive control: the statement does work, on exactly A's rows.
    assert unfiltered == len(data.a.rows[table])
    assert await _owner_ids(owner_engine, table, data.b.rows[table]) == data.b.rows[table]


@pytest.mark.parametrize("table", TABLES)
async def test_delete_reaches_none_of_another_users_rows(
    postgres_url: str, db: Database, owner_engine: AsyncEngine, data: Dataset, table: str
) -> None:
    stmt = text(f"DELETE FROM {table} WHERE id IN :ids").bindparams(  # noqa: S608
        bindparam("ids", expanding=True)
    )
    async with db.session(data.a.user_id) as session:
        deleted = await _rowcount(session, stmt, {"ids": list(data.b.rows[table])})
    assert deleted == 0, f"{table}: A deleted {deleted} of B's rows"
    assert await _owner_ids(owner_engine, table, data.b.rows[table]) == data.b.rows[table]


@pytest.mark.parametrize("table", TABLES)
async def test_delete_reaches_own_rows(postgres_url: str, db: Database, data: Dataset, table: str) -> None:
    """Positive control for the test above: the same DELETE on A's own rows does delete them (then rolls back)."""
    stmt = text(f"DELETE FROM {table} WHERE id IN :ids").bindparams(  # noqa: S608
        bindparam("ids", expanding=True)
    )
    if table in ("trading_accounts", "orders"):
        # Rows in other tables reference these without ON DELETE CASCADE; delete the dependents first.
        dependents = {"trading_accounts": ("trades", "orders", "positions", "balances"), "orders": ("trades",)}
        before = dependents[table]
    else:
        before = ()
    deleted: list[int] = []

    async def delete_then_undo() -> None:
        async with db.session(data.a.user_id) as session:
            for dependent in before:
                await session.execute(text(f"DELETE FROM {dependent}"))  # noqa: S608
            deleted.append(await _rowcount(session, stmt, {"ids": list(data.a.rows[table])}))
            raise _Undo

    with pytest.raises(_Undo):
        await delete_then_undo()
    assert deleted == [len(data.a.rows[table])]


@pytest.mark.parametrize("table", TABLES)
async def test_insert_for_another_user_is_refused(
    postgres_url: str, db: Database, owner_engine: AsyncEngine, data: Dataset, table: str
) -> None:
    row = _row(table, data.b, "intruder")
    with pytest.raises(DBAPIError, match="row-level security"):
        await _insert_as(db, data.a.user_id, row)
    assert await _owner_ids(owner_engine, table, {row.id}) == set()  # type: ignore[attr-defined]


@pytest.mark.parametrize("table", sorted(set(TABLES) - {"users"}))
async def test_insert_for_oneself_is_allowed(
    postgres_url: str, db: Database, owner_engine: AsyncEngine, data: Dataset, table: str
) -> None:
    """Positive control for the test above: the same row owned by A is accepted from A's session."""
    row = _row(table, data.a, "own")
    await _insert_as(db, data.a.user_id, row)
    assert await _owner_ids(owner_engine, table, {row.id}) == {row.id}  # type: ignore[attr-defined]


@pytest.mark.parametrize("table", TABLES)
async def test_update_cannot_hand_a_row_to_another_user(
    postgres_url: str, db: Database, owner_engine: AsyncEngine, data: Dataset, table: str
) -> None:
    if table == "users":
        column, value = "id", data.b.user_id
    elif table == "trading_signals":
        column, value = "strategy_id", data.b.strategy_id
    else:
        column, value = "user_id", data.b.user_id
    stmt = text(f"UPDATE {table} SET {column} = :value WHERE id IN :ids").bindparams(  # noqa: S608
        bindparam("ids", expanding=True)
    )
    if table == "users":
        # Changing the primary key would collide with B; a fresh id is just as much "not A".
        value = uuid.uuid4()
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(data.a.user_id) as session:
            await session.execute(stmt, {"value": value, "ids": list(data.a.rows[table])})
    assert await _owner_ids(owner_engine, table, data.a.rows[table]) == data.a.rows[table]


async def test_signal_cannot_be_attached_to_another_users_strategy(
    postgres_url: str, db: Database, owner_engine: AsyncEngine, data: Dataset
) -> None:
    signal = TradingSignal(
        strategy_id=data.b.strategy_id,
        agent_id=data.a.agent_id,
        symbol="BTCUSDT",
        action="sell",
        strength=Decimal("1"),
        price=Decimal("1"),
        confidence=Decimal("1"),
    )
    with pytest.raises(DBAPIError, match="row-level security"):
        await _insert_as(db, data.a.user_id, signal)
    async with db.session(data.b.user_id) as session:
        visible_to_b = set((await session.execute(text("SELECT id FROM trading_signals"))).scalars())
    assert signal.id not in visible_to_b, "A wrote a signal into B's strategy"
    assert await _owner_ids(owner_engine, "trading_signals", {signal.id}) == set()
