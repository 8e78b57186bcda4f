"""`cival_expect_rows`: fails a statement whose checked update found rows changed since they were read (D61).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # checked updates are deferred writes, which only PostgreSQL has (D53)
    op.execute(
        """
        CREATE FUNCTION cival_expect_rows(updated bigint, expected integer) RETURNS void
        LANGUAGE plpgsql AS $$
        BEGIN
            IF updated <> expected THEN
                RAISE EXCEPTION 'cival: % of % rows changed since they were read', expected - updated, expected
                    USING ERRCODE = 'serialization_failure';
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION cival_expect_rows(bigint, integer)")
