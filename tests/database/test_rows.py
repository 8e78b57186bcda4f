"""The order path's plain rows (database/rows.py, D52) are the tables' rows: one field per column, in the table's
column order, typed as the model types it."""

from __future__ import annotations

import typing
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy.orm import Mapped

from cival.database.models import Base, Order
from cival.database.rows import MODELS, OrderRow, row_of


@pytest.mark.parametrize("row", list(MODELS), ids=lambda r: r.__name__)
def test_a_row_has_the_columns_of_its_table_in_order(row: type) -> None:
    model: type[Base] = MODELS[row]
    assert [f.name for f in fields(row)] == [c.key for c in model.__table__.columns]


@pytest.mark.parametrize("row", list(MODELS), ids=lambda r: r.__name__)
def test_a_row_types_each_column_as_its_model_does(row: type) -> None:
    columns = {
        name: typing.get_args(hint)[0]  # Mapped[X] -> X
        for name, hint in typing.get_type_hints(MODELS[row]).items()
        if typing.get_origin(hint) is Mapped
    }
    assert typing.get_type_hints(row) == columns


def test_a_row_is_copied_from_an_orm_instance_and_holds_no_more() -> None:
    now = datetime.now(UTC)
    orm = Order(
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        symbol="BTC/USDT",
        side="buy",
        type="limit",
        quantity=Decimal("0.5"),
        price=Decimal("100.25"),
        time_in_force="GTC",
        status="pending",
        filled_quantity=Decimal(0),
        fees=Decimal(0),
        exchange="paper",
        created_at=now,
        updated_at=now,
        post_only=False,
        reserved=Decimal("50.125"),
    )
    plain = row_of(OrderRow, orm)
    assert {f.name: getattr(plain, f.name) for f in fields(OrderRow)} == {
        c.key: getattr(orm, c.key) for c in Order.__table__.columns
    }
    with pytest.raises(AttributeError):
        plain.not_a_column = 1  # type: ignore[attr-defined]  # slotted: a misspelt column is an error, not a field
