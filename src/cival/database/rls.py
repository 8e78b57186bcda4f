"""Row-level security for PostgreSQL, written so the same SQL runs on Supabase and on plain PostgreSQL.

- `auth.uid()` is created only where it does not exist (Supabase ships its own); both read the per-transaction
  setting `request.jwt.claim.sub`, which `Database.session(user_id)` sets.
- The application connects and then `SET ROLE cival_app`, a role that row-level security applies to;
  platform work runs as `cival_system`, which has BYPASSRLS.
- Every table that holds a user's rows gets ENABLE + FORCE ROW LEVEL SECURITY and an owner policy.
"""

from __future__ import annotations

from cival.core.db import APP_ROLE, SYSTEM_ROLE

OWNED_BY_USER_ID = (
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
    "risk_metrics",
    "risk_alerts",
    "trading_limits",
    "system_logs",
    "api_rate_limits",
)
"""Tables with a `user_id` column: a row is visible to the user it names."""

INITIAL_RLS_TABLES = ("users", *OWNED_BY_USER_ID, "trading_signals")
"""What migration 0002 protects (`enable_statements`)."""

NOTIFICATION_TABLES = ("notification_webhooks", "notification_deliveries")
"""Owned by `user_id` too; created and protected by migration 0005 (`owner_policy_statements`)."""

RLS_TABLES = (*INITIAL_RLS_TABLES, *NOTIFICATION_TABLES)

AUTH_UID = [
    "CREATE SCHEMA IF NOT EXISTS auth",
    """
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'auth' AND p.proname = 'uid'
    ) THEN
        CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $f$;
    END IF;
END
$$
""",
]

ROLES = [
    f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SYSTEM_ROLE}') THEN
        CREATE ROLE {SYSTEM_ROLE} NOLOGIN BYPASSRLS;
    END IF;
END
$$
""",  # noqa: S608 - role names are constants, not input
    f"GRANT {APP_ROLE}, {SYSTEM_ROLE} TO CURRENT_USER",
    f"GRANT USAGE ON SCHEMA auth TO {APP_ROLE}, {SYSTEM_ROLE}",
    f"GRANT EXECUTE ON FUNCTION auth.uid() TO {APP_ROLE}, {SYSTEM_ROLE}",
    f"""
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {APP_ROLE}, {SYSTEM_ROLE}', current_schema());
    EXECUTE format(
        'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO {APP_ROLE}, {SYSTEM_ROLE}',
        current_schema()
    );
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
        'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}, {SYSTEM_ROLE}',
        current_schema()
    );
END
$$
""",
]


def policy_name(table: str) -> str:
    return f"Users can only see their own {table.replace('_', ' ')}"


def enable_statements() -> list[str]:
    """The statements that turn row-level security on, in order."""
    stmts = [*AUTH_UID, *ROLES]
    predicates = {table: "user_id = auth.uid()" for table in OWNED_BY_USER_ID}
    predicates["users"] = "id = auth.uid()"
    # A signal belongs to the user who owns every strategy or agent it names (and it names at least one), so a
    # signal can be neither read through nor written into someone else's strategy by pairing it with one's own agent.
    predicates["trading_signals"] = (
        "(strategy_id IS NOT NULL OR agent_id IS NOT NULL) "
        "AND (strategy_id IS NULL OR EXISTS "
        "(SELECT 1 FROM trading_strategies s WHERE s.id = strategy_id AND s.user_id = auth.uid())) "
        "AND (agent_id IS NULL OR EXISTS "
        "(SELECT 1 FROM trading_agents a WHERE a.id = agent_id AND a.user_id = auth.uid()))"
    )
    for table in INITIAL_RLS_TABLES:
        stmts += owner_policy_statements(table, predicates[table])
    return stmts


def owner_policy_statements(table: str, predicate: str = "user_id = auth.uid()") -> list[str]:
    """Row-level security on `table`, enabled and forced, with one policy: rows matching `predicate`."""
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f'CREATE POLICY "{policy_name(table)}" ON {table} FOR ALL USING ({predicate}) WITH CHECK ({predicate})',
    ]


def disable_statements() -> list[str]:
    stmts: list[str] = []
    for table in INITIAL_RLS_TABLES:
        stmts += [
            f'DROP POLICY IF EXISTS "{policy_name(table)}" ON {table}',
            f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
            f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        ]
    return stmts
