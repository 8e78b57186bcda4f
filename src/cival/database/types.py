"""Portable column types that behave identically on PostgreSQL and SQLite.

SQLite has no decimal or timezone-aware timestamp type, so these decorators store values in a form that
round-trips exactly and sorts correctly there, and use the native types on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import JSON, DateTime, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

_COMPLEMENT = str.maketrans("0123456789", "9876543210")


class DecimalPrecisionError(ValueError):
    """A Decimal does not fit the column: too many fractional digits, too large, or not finite."""


class ExactDecimal(TypeDecorator[Decimal]):
    """`DECIMAL(precision, scale)` that is exact on both databases and never rounds silently.

    On PostgreSQL it is `NUMERIC(p, s)`. On SQLite it is fixed-width text that sorts in numeric order:
    a non-negative value is zero-padded (`000000000123.45000000`), a negative one is `-` followed by the
    nines' complement of its magnitude, so byte order equals numeric order and indexes, `ORDER BY` and
    comparisons against bound parameters work. SQL arithmetic (`SUM`) on such a column is not meaningful on
    SQLite: aggregate in Python.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 20, scale: int = 8) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)
        self._limit = Decimal(10) ** (precision - scale)
        self._int_digits = precision - scale

    def __repr__(self) -> str:
        return f"ExactDecimal(precision={self.precision}, scale={self.scale})"

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(self.precision + 2))
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def check(self, value: Decimal | int | str) -> Decimal:
        """Return `value` at the column's scale, or raise `DecimalPrecisionError` if it does not fit."""
        if isinstance(value, float | bool):
            raise DecimalPrecisionError(f"{value!r} is a {type(value).__name__}; money must be a Decimal")
        try:
            dec = value if isinstance(value, Decimal) else Decimal(value)
            if not dec.is_finite():
                raise DecimalPrecisionError(f"{value} is not a finite number")
            quantized = dec.quantize(self._quantum)
        except InvalidOperation as exc:
            raise DecimalPrecisionError(f"{value!r} is not a valid decimal") from exc
        if quantized != dec:
            raise DecimalPrecisionError(f"{value} has more than {self.scale} decimal places")
        if abs(quantized) >= self._limit:
            raise DecimalPrecisionError(
                f"{value} is out of range: at most {self._int_digits} digits before the decimal point"
            )
        return quantized + 0  # turns -0 into 0

    def checked_text(self, value: Decimal | int | str) -> str:
        """The text of `value` checked as `check` checks it: a Decimal already within the column (what the order path
        writes) gives its own digits, which denote the value exactly, without being quantized; any other value
        the text of `check(value)`. Deferred batch writes (D53) write a great many of them."""
        if type(value) is Decimal and value.is_finite():
            text = str(value)  # its own digits, unless its exponent is positive or it is tiny: then with an "E"
            if "E" not in text:
                whole, _, fraction = text.partition(".")
                if len(fraction) <= self.scale and len(whole) - (text[0] == "-") <= self._int_digits:
                    return text
        return format(self.check(value), "f")

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        quantized = self.check(value)
        if dialect.name != "sqlite":
            return quantized
        return self.encode(quantized)

    def encode(self, value: Decimal) -> str:
        """The sortable SQLite text of an already checked value."""
        text = f"{abs(value):0{self.precision + 1}.{self.scale}f}"
        return "-" + text.translate(_COMPLEMENT) if value < 0 else text

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return value
        if isinstance(value, str):
            if value.startswith("-"):
                return -Decimal(value[1:].translate(_COMPLEMENT))
            return Decimal(value)
        raise DecimalPrecisionError(f"unexpected stored decimal {value!r}")

    def coerce_compared_value(self, op: Any, value: Any) -> TypeEngine[Any]:
        return self


class UTCDateTime(TypeDecorator[datetime]):
    """`TIMESTAMP WITH TIME ZONE`: accepts only aware datetimes, stores UTC, returns aware UTC on both databases."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must carry a timezone (use UTC)")
        utc: datetime = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"unexpected stored timestamp {value!r}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
"""JSONB on PostgreSQL, JSON (text) on SQLite."""


class gen_random_uuid(FunctionElement[Any]):  # noqa: N801 - mirrors the SQL function's name
    """Server-side UUID default: `gen_random_uuid()` on PostgreSQL, a random v4 UUID text on SQLite."""

    inherit_cache = True


@compiles(gen_random_uuid, "postgresql")
def _gen_random_uuid_pg(element: gen_random_uuid, compiler: Any, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(gen_random_uuid, "sqlite")
def _gen_random_uuid_sqlite(element: gen_random_uuid, compiler: Any, **kw: Any) -> str:
    # 32 hex digits, as SQLAlchemy's Uuid stores them on SQLite, with the version-4 and variant bits set.
    return (
        "(lower(hex(randomblob(6))) || '4' || substr(lower(hex(randomblob(2))), 2) || "
        "substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || "
        "lower(hex(randomblob(6))))"
    )


class utcnow(FunctionElement[Any]):  # noqa: N801 - mirrors the SQL function's name
    """Server-side timestamp default: `now()` on PostgreSQL, `CURRENT_TIMESTAMP` (UTC) on SQLite."""

    inherit_cache = True


@compiles(utcnow, "postgresql")
def _utcnow_pg(element: utcnow, compiler: Any, **kw: Any) -> str:
    return "now()"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


class money_zero(FunctionElement[Any]):  # noqa: N801 - reads as the SQL literal it renders
    """Server-side `DEFAULT 0` of a `DECIMAL(20,8)` column, in the stored form of each database."""

    inherit_cache = True


@compiles(money_zero, "postgresql")
def _money_zero_pg(element: money_zero, compiler: Any, **kw: Any) -> str:
    return "0"


@compiles(money_zero, "sqlite")
def _money_zero_sqlite(element: money_zero, compiler: Any, **kw: Any) -> str:
    return "'" + ExactDecimal(20, 8).encode(Decimal(0)) + "'"
