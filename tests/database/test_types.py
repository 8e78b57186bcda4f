"""The portable column types, through real inserts and selects on the run's migrated database.

`ExactDecimal` must store and return money exactly, sort and compare numerically (SQLite keeps it as sortable
text), and refuse values that do not fit instead of rounding them. `UTCDateTime` must refuse naive datetimes and
return aware UTC. Every database test runs on whichever database the run uses (SQLite or PostgreSQL).
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import Uuid, bindparam, func, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import StatementError

from cival.core.db import Database
from cival.database.models import Money, PriceTicker, Trade, TradingSignal, User
from cival.database.types import DecimalPrecisionError, ExactDecimal, UTCDateTime

MONEY_EDGES = [
    Decimal(0),
    Decimal("0.00000001"),
    Decimal("999999999999.99999999"),
    Decimal("-999999999999.99999999"),
    Decimal("-0.00000001"),
    Decimal("123.45"),
    Decimal("-123.45"),
    Decimal("1"),
    Decimal("100000000000"),
]

SORT_VALUES = [
    Decimal("9"),
    Decimal("10"),
    Decimal("100.5"),
    Decimal("-2"),
    Decimal("-10"),
    Decimal("0.00000001"),
    Decimal("0"),
    Decimal("-0.00000001"),
    Decimal("-100.5"),
    Decimal("0.1"),
    Decimal("0.09999999"),
    Decimal("1"),
    Decimal("-1.5"),
    Decimal("999999999999.99999999"),
    Decimal("-999999999999.99999999"),
    Decimal("123456.78901234"),
]


def _decimal_places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent


def _trade(user_id: uuid.UUID, price: Any, **kw: Any) -> Trade:
    values: dict[str, Any] = {
        "user_id": user_id,
        "symbol": "BTCUSDT",
        "side": "buy",
        "quantity": Decimal("1"),
        "price": price,
        "exchange": "binance",
        "executed_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    values.update(kw)
    return Trade(**values)


async def _count(db: Database, model: type[Any]) -> int:
    async with db.system_session() as session:
        return int((await session.scalar(select(func.count()).select_from(model))) or 0)


@pytest.fixture
async def user_id(clean_db: Database) -> uuid.UUID:
    """A user in an otherwise empty database."""
    uid = uuid.uuid4()
    async with clean_db.system_session() as session:
        session.add(User(id=uid, email=f"types-{uid.hex}@example.com"))
    return uid


async def _write(db: Database, *batches: list[Any]) -> None:
    """Add each batch of rows and flush it, all in one system transaction."""
    async with db.system_session() as session:
        for batch in batches:
            session.add_all(batch)
            await session.flush()


def _unwrap(exc: BaseException) -> BaseException:
    """The error a type decorator raised, whether or not SQLAlchemy wrapped it in a StatementError."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        return exc.orig
    return exc


# --- ExactDecimal: exact round trip ------------------------------------------------------------------------


async def test_money_round_trips_exactly_with_eight_places(clean_db: Database, user_id: uuid.UUID) -> None:
    ids: dict[uuid.UUID, Decimal] = {}
    async with clean_db.system_session() as session:
        for value in MONEY_EDGES:
            trade = _trade(user_id, value, quantity=value, id=uuid.uuid4())
            ids[trade.id] = value
            session.add(trade)

    async with clean_db.system_session() as session:
        rows = (await session.execute(select(Trade.id, Trade.price, Trade.quantity))).all()

    assert len(rows) == len(MONEY_EDGES)
    for row_id, price, quantity in rows:
        expected = ids[row_id]
        for got in (price, quantity):
            assert isinstance(got, Decimal)
            assert got == expected
            assert _decimal_places(got) == 8, f"{got!r} for {expected!r}"
            assert got.is_signed() == (expected < 0), f"{got!r} for {expected!r}"
    by_value = {ids[row_id]: price for row_id, price, _ in rows}
    assert str(by_value[Decimal("123.45")]) == "123.45000000"
    assert str(by_value[Decimal("-0.00000001")]) == "-1E-8"
    assert by_value[Decimal("-0.00000001")] == Decimal("-0.00000001")


async def test_money_server_default_zero_reads_back_as_zero(clean_db: Database, user_id: uuid.UUID) -> None:
    # Raw SQL leaves `fees` to the database's own DEFAULT (the ORM would send its Python default instead).
    insert = text(
        "INSERT INTO trades (user_id, symbol, side, quantity, price, exchange, executed_at) "
        "VALUES (:user_id, 'BTCUSDT', 'buy', :quantity, :price, 'binance', :at)"
    ).bindparams(
        bindparam("user_id", type_=Uuid()),
        bindparam("quantity", type_=Money),
        bindparam("price", type_=Money),
        bindparam("at", type_=UTCDateTime()),
    )
    async with clean_db.system_session() as session:
        await session.execute(
            insert,
            {"user_id": user_id, "quantity": Decimal("2"), "price": Decimal("-3"), "at": datetime.now(UTC)},
        )
    async with clean_db.system_session() as session:
        fees, price = (await session.execute(select(Trade.fees, Trade.price))).one()
        above = await session.scalar(select(func.count()).select_from(Trade).where(Trade.fees > Decimal("-1")))
    assert isinstance(fees, Decimal)
    assert fees == 0
    assert _decimal_places(fees) == 8
    assert price == Decimal("-3")
    # The stored default must sort like the encoded zero, not like some other spelling of 0.
    assert above == 1


@pytest.mark.parametrize(
    ("values", "places"),
    [
        (
            [
                Decimal(0),
                Decimal("0.01"),
                Decimal("999.99"),
                Decimal("-999.99"),
                Decimal("-0.01"),
                Decimal("1.5"),
            ],
            2,
        )
    ],
)
async def test_decimal_5_2_round_trips(
    clean_db: Database, user_id: uuid.UUID, values: list[Decimal], places: int
) -> None:
    async with clean_db.system_session() as session:
        for value in values:
            session.add(
                TradingSignal(
                    symbol=f"S{value}",
                    action="buy",
                    strength=value,
                    confidence=value,
                    price=Decimal("1"),
                )
            )
    async with clean_db.system_session() as session:
        rows = (
            await session.execute(select(TradingSignal.symbol, TradingSignal.strength, TradingSignal.confidence))
        ).all()
    assert len(rows) == len(values)
    got = {symbol: (strength, confidence) for symbol, strength, confidence in rows}
    for value in values:
        strength, confidence = got[f"S{value}"]
        assert strength == value
        assert confidence == value
        assert _decimal_places(strength) == places, repr(strength)
        assert _decimal_places(confidence) == places, repr(confidence)
    assert str(got["S1.5"][0]) == "1.50"


async def test_decimal_10_4_round_trips(clean_db: Database) -> None:
    values = [
        Decimal(0),
        Decimal("0.0001"),
        Decimal("999999.9999"),
        Decimal("-999999.9999"),
        Decimal("-0.0001"),
        Decimal("12.5"),
        None,
    ]
    async with clean_db.system_session() as session:
        for i, value in enumerate(values):
            session.add(
                PriceTicker(
                    symbol=f"T{i}",
                    exchange="binance",
                    price=Decimal("1"),
                    change_24h=value,
                    updated_at=datetime.now(UTC),
                )
            )
    async with clean_db.system_session() as session:
        got = dict((await session.execute(select(PriceTicker.symbol, PriceTicker.change_24h))).all())
    for i, value in enumerate(values):
        stored = got[f"T{i}"]
        if value is None:
            assert stored is None
            continue
        assert stored == value
        assert isinstance(stored, Decimal)
        assert _decimal_places(stored) == 4, repr(stored)
    assert str(got["T5"]) == "12.5000"


# --- ExactDecimal: ordering and comparisons in SQL ---------------------------------------------------------


@pytest.fixture
async def priced_trades(clean_db: Database, user_id: uuid.UUID) -> list[Decimal]:
    """One trade per value of SORT_VALUES, inserted in a scrambled order."""
    async with clean_db.system_session() as session:
        for value in SORT_VALUES[::3] + SORT_VALUES[1::3] + SORT_VALUES[2::3]:
            session.add(_trade(user_id, value))
    return SORT_VALUES


async def test_order_by_decimal_is_numeric(clean_db: Database, priced_trades: list[Decimal]) -> None:
    async with clean_db.system_session() as session:
        ascending = list(await session.scalars(select(Trade.price).order_by(Trade.price)))
        descending = list(await session.scalars(select(Trade.price).order_by(Trade.price.desc())))
        lowest = await session.scalar(select(func.min(Trade.price)))
        highest = await session.scalar(select(func.max(Trade.price)))
    assert ascending == sorted(priced_trades)
    assert descending == sorted(priced_trades, reverse=True)
    assert lowest == min(priced_trades)
    assert highest == max(priced_trades)


COMPARISONS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    (">", operator.gt),
    ("<", operator.lt),
    (">=", operator.ge),
    ("<=", operator.le),
    ("==", operator.eq),
    ("!=", operator.ne),
]
THRESHOLDS = [
    Decimal("9"),
    Decimal("10.00"),
    Decimal("-2"),
    Decimal("-10"),
    Decimal("0"),
    Decimal("100.5"),
    Decimal("-0.00000001"),
    Decimal("0.00000001"),
    Decimal("0.09999999"),
    Decimal("-999999999999.99999999"),
    Decimal("5"),
]


@pytest.mark.parametrize(("symbol", "op"), COMPARISONS, ids=[name for name, _ in COMPARISONS])
async def test_where_comparisons_are_numeric(
    clean_db: Database, priced_trades: list[Decimal], symbol: str, op: Callable[[Any, Any], Any]
) -> None:
    async with clean_db.system_session() as session:
        for threshold in THRESHOLDS:
            got = sorted(await session.scalars(select(Trade.price).where(op(Trade.price, threshold))))
            expected = sorted(v for v in priced_trades if op(v, threshold))
            assert got == expected, f"price {symbol} {threshold}"


async def test_where_between_and_in_are_numeric(clean_db: Database, priced_trades: list[Decimal]) -> None:
    ranges = [
        (Decimal("-2"), Decimal("10")),
        (Decimal("-10"), Decimal("-0.00000001")),
        (Decimal("0"), Decimal("0.1")),
        (Decimal("9.5"), Decimal("100.5")),
        (Decimal("-999999999999.99999999"), Decimal("999999999999.99999999")),
    ]
    async with clean_db.system_session() as session:
        for low, high in ranges:
            got = sorted(await session.scalars(select(Trade.price).where(Trade.price.between(low, high))))
            assert got == sorted(v for v in priced_trades if low <= v <= high), f"between {low} and {high}"
        wanted = [Decimal("100.50"), Decimal("-2.0"), Decimal("0.00000001"), Decimal("7")]
        got = sorted(await session.scalars(select(Trade.price).where(Trade.price.in_(wanted))))
        assert got == sorted([Decimal("100.5"), Decimal("-2"), Decimal("0.00000001")])


# --- ExactDecimal: refusal, and nothing written ------------------------------------------------------------


def _bad_trade(uid: uuid.UUID, value: Any) -> Any:
    return _trade(uid, value)


def _bad_quantity(uid: uuid.UUID, value: Any) -> Any:
    return _trade(uid, Decimal("1"), quantity=value)


def _bad_strength(uid: uuid.UUID, value: Any) -> Any:
    return TradingSignal(symbol="X", action="buy", strength=value, confidence=Decimal("1"), price=Decimal("1"))


def _bad_change(uid: uuid.UUID, value: Any) -> Any:
    return PriceTicker(
        symbol="X", exchange="binance", price=Decimal("1"), change_24h=value, updated_at=datetime.now(UTC)
    )


REFUSED = [
    pytest.param(_bad_trade, Decimal("0.000000001"), id="money-nine-places"),
    pytest.param(_bad_trade, Decimal("1.123456789"), id="money-nine-places-nonzero-int"),
    pytest.param(_bad_trade, Decimal("1000000000000"), id="money-too-large"),
    pytest.param(_bad_trade, Decimal("-1000000000000"), id="money-too-small"),
    pytest.param(_bad_trade, Decimal("999999999999.999999999"), id="money-rounds-out-of-range"),
    pytest.param(_bad_trade, 1.5, id="money-float"),
    pytest.param(_bad_trade, 0.1, id="money-float-inexact"),
    pytest.param(_bad_trade, Decimal("NaN"), id="money-nan"),
    pytest.param(_bad_trade, Decimal("Infinity"), id="money-infinity"),
    pytest.param(_bad_quantity, Decimal("0.000000001"), id="quantity-nine-places"),
    pytest.param(_bad_strength, Decimal("0.001"), id="dec52-three-places"),
    pytest.param(_bad_strength, Decimal("1000"), id="dec52-too-large"),
    pytest.param(_bad_strength, 50.0, id="dec52-float"),
    pytest.param(_bad_change, Decimal("0.00001"), id="dec104-five-places"),
    pytest.param(_bad_change, Decimal("-1000000"), id="dec104-too-small"),
]


@pytest.mark.parametrize(("make", "value"), REFUSED)
async def test_values_that_do_not_fit_are_refused_and_nothing_is_written(
    clean_db: Database, user_id: uuid.UUID, make: Callable[[uuid.UUID, Any], Any], value: Any
) -> None:
    # A valid row first: the failed statement must take the whole transaction with it.
    with pytest.raises((DecimalPrecisionError, StatementError)) as info:
        await _write(clean_db, [_trade(user_id, Decimal("42"))], [make(user_id, value)])
    assert isinstance(_unwrap(info.value), DecimalPrecisionError), repr(info.value)
    assert await _count(clean_db, Trade) == 0
    assert await _count(clean_db, TradingSignal) == 0
    assert await _count(clean_db, PriceTicker) == 0


@pytest.mark.parametrize("value", [Decimal("0.000000001"), Decimal("1000000000000"), 9.0])
async def test_comparison_with_unfit_value_is_refused(
    clean_db: Database, priced_trades: list[Decimal], value: Any
) -> None:
    with pytest.raises((DecimalPrecisionError, StatementError)) as info:
        async with clean_db.system_session() as session:
            await session.scalars(select(Trade.price).where(Trade.price > value))
    assert isinstance(_unwrap(info.value), DecimalPrecisionError), repr(info.value)


async def _update_in_steps(db: Database, trade_id: uuid.UUID, *steps: dict[str, Any]) -> None:
    """Apply each step's changes to one trade and flush it, all in one system transaction."""
    async with db.system_session() as session:
        row = await session.get_one(Trade, trade_id)
        for changes in steps:
            for name, value in changes.items():
                setattr(row, name, value)
            await session.flush()


async def test_update_to_unfit_value_is_refused_and_row_unchanged(clean_db: Database, user_id: uuid.UUID) -> None:
    async with clean_db.system_session() as session:
        trade = _trade(user_id, Decimal("42.5"))
        session.add(trade)
    with pytest.raises((DecimalPrecisionError, StatementError)) as info:
        await _update_in_steps(clean_db, trade.id, {"fees": Decimal("0.1")}, {"price": Decimal("42.500000001")})
    assert isinstance(_unwrap(info.value), DecimalPrecisionError)
    async with clean_db.system_session() as session:
        price, fees = (await session.execute(select(Trade.price, Trade.fees))).one()
    assert (price, fees) == (Decimal("42.5"), Decimal(0))


# --- ExactDecimal: the SQLite encoding, as a property ------------------------------------------------------

MONEY = ExactDecimal(20, 8)
SQLITE = sqlite.dialect()
MAX_MONEY = Decimal("999999999999.99999999")


@st.composite
def money(draw: st.DrawFn) -> Decimal:
    """Any DECIMAL(20,8) value, written with 0 to 8 decimal places."""
    places = draw(st.integers(0, 8))
    bound = 10 ** (12 + places) - 1
    return Decimal(draw(st.integers(-bound, bound))).scaleb(-places)


def _encode(value: Decimal) -> str:
    encoded = MONEY.process_bind_param(value, SQLITE)
    assert isinstance(encoded, str)
    return encoded


@given(money(), money())
@example(Decimal(0), Decimal("-0.00000001"))
@example(Decimal("-0.00000001"), Decimal("0.00000001"))
@example(MAX_MONEY, -MAX_MONEY)
@example(Decimal("-10"), Decimal("-9"))
@example(Decimal("9"), Decimal("10"))
@example(Decimal("-1"), Decimal("-0.99999999"))
@example(Decimal("1.5"), Decimal("1.50000000"))
@example(Decimal("-0"), Decimal("0"))
def test_sqlite_encoding_sorts_like_the_numbers(a: Decimal, b: Decimal) -> None:
    ea, eb = _encode(a), _encode(b)
    assert (ea < eb) == (a < b)
    assert (ea == eb) == (a == b)
    assert (ea > eb) == (a > b)


@given(money())
@example(Decimal(0))
@example(Decimal("-0"))
@example(MAX_MONEY)
@example(-MAX_MONEY)
@example(Decimal("-0.00000001"))
def test_sqlite_encoding_round_trips(value: Decimal) -> None:
    decoded = MONEY.process_result_value(_encode(value), SQLITE)
    assert decoded == value
    assert decoded is not None
    assert _decimal_places(decoded) == 8
    assert decoded.is_signed() == (value < 0)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_encoding_refuses_exactly_what_does_not_fit(value: Decimal) -> None:
    scaled = value.scaleb(8)
    fits = abs(value) <= MAX_MONEY and scaled == scaled.to_integral_value()
    if fits:
        assert MONEY.process_result_value(_encode(value), SQLITE) == value
    else:
        with pytest.raises(DecimalPrecisionError):
            MONEY.process_bind_param(value, SQLITE)


@given(st.one_of(st.decimals(), money(), st.integers(-(10**13), 10**13)), st.sampled_from([(20, 8), (10, 4), (5, 2)]))
@example(Decimal("-0"), (20, 8))
@example(Decimal("1.500000000"), (20, 8))
@example(Decimal("1E+3"), (20, 8))
@example(Decimal("1E+12"), (20, 8))
@example(Decimal("-1E+12"), (20, 8))
@example(Decimal("0.000000001"), (20, 8))
@example(Decimal("Infinity"), (20, 8))
@example(Decimal("NaN"), (20, 8))
def test_checked_text_is_the_checked_value(value: Decimal | int, scale: tuple[int, int]) -> None:
    # The deferred writes' fast text (D53) denotes exactly what `check` returns, and refuses exactly what it refuses.
    column = ExactDecimal(*scale)
    try:
        checked = column.check(value)
    except DecimalPrecisionError:
        with pytest.raises(DecimalPrecisionError):
            column.checked_text(value)
        return
    text = column.checked_text(value)
    assert Decimal(text) == checked
    assert "E" not in text.upper()  # plain digits, as NUMERIC reads them


# --- UTCDateTime -------------------------------------------------------------------------------------------

ZONES = [timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), timezone(timedelta(hours=14))]


@pytest.mark.parametrize("zone", ZONES, ids=["+05:30", "-08:00", "+14:00"])
async def test_aware_datetime_comes_back_as_the_same_instant_in_utc(
    clean_db: Database, user_id: uuid.UUID, zone: timezone
) -> None:
    local = datetime(2024, 3, 1, 1, 15, 30, 123456, tzinfo=zone)
    async with clean_db.system_session() as session:
        session.add(_trade(user_id, Decimal("1"), executed_at=local))
    async with clean_db.system_session() as session:
        got = await session.scalar(select(Trade.executed_at))
        # A bound aware value in yet another zone finds the row: comparisons are by instant.
        found = await session.scalar(
            select(func.count()).select_from(Trade).where(Trade.executed_at == local.astimezone(ZONES[2]))
        )
    assert got == local
    assert got is not None
    assert got.tzinfo is UTC
    assert got.utcoffset() == timedelta(0)
    assert got.replace(tzinfo=None) == local.astimezone(UTC).replace(tzinfo=None)
    assert found == 1


async def test_timestamps_from_different_zones_sort_by_instant(clean_db: Database, user_id: uuid.UUID) -> None:
    base = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    # Wall-clock order is the reverse of instant order.
    instants = [
        (base + timedelta(hours=0)).astimezone(timezone(timedelta(hours=10))),  # 22:00 local
        (base + timedelta(hours=1)).astimezone(timezone(timedelta(hours=5))),  # 18:00 local
        (base + timedelta(hours=2)).astimezone(timezone(timedelta(hours=-3))),  # 11:00 local
    ]
    async with clean_db.system_session() as session:
        for at in reversed(instants):
            session.add(_trade(user_id, Decimal("1"), executed_at=at))
    async with clean_db.system_session() as session:
        got = list(await session.scalars(select(Trade.executed_at).order_by(Trade.executed_at)))
        later = list(await session.scalars(select(Trade.executed_at).where(Trade.executed_at > instants[0])))
    assert got == instants
    assert all(at.tzinfo is UTC for at in got)
    assert sorted(later) == instants[1:]


async def test_server_default_created_at_is_aware_utc(clean_db: Database) -> None:
    email = f"server-default-{uuid.uuid4().hex}@example.com"
    before = datetime.now(UTC)
    async with clean_db.system_session() as session:
        await session.execute(text("INSERT INTO users (email) VALUES (:email)"), {"email": email})
    after = datetime.now(UTC)
    async with clean_db.system_session() as session:
        user = (await session.scalars(select(User).where(User.email == email))).one()
    for stamp in (user.created_at, user.updated_at):
        assert stamp.tzinfo is UTC
        # CURRENT_TIMESTAMP on SQLite has whole seconds; it must be read as UTC, not local time.
        assert before - timedelta(seconds=1) <= stamp <= after + timedelta(seconds=1), (before, stamp, after)
    assert isinstance(user.id, uuid.UUID)


async def test_orm_default_created_at_is_aware_utc(clean_db: Database) -> None:
    before = datetime.now(UTC)
    async with clean_db.system_session() as session:
        user = User(email=f"orm-default-{uuid.uuid4().hex}@example.com")
        session.add(user)
    async with clean_db.system_session() as session:
        stored = await session.get_one(User, user.id)
    assert stored.created_at.tzinfo is UTC
    assert before <= stored.created_at <= datetime.now(UTC)


@pytest.mark.parametrize(
    "stamp",
    [datetime(2024, 1, 1, 12, 0), datetime.now(UTC).replace(tzinfo=None)],  # noqa: DTZ001 - naive on purpose
    ids=["naive", "naive-utc-wall-clock"],
)
async def test_naive_datetime_is_refused_and_nothing_written(
    clean_db: Database, user_id: uuid.UUID, stamp: datetime
) -> None:
    with pytest.raises((ValueError, StatementError)) as info:
        await _write(clean_db, [_trade(user_id, Decimal("1"))], [_trade(user_id, Decimal("2"), executed_at=stamp)])
    assert isinstance(_unwrap(info.value), ValueError)
    assert "naive" in str(_unwrap(info.value))
    assert await _count(clean_db, Trade) == 0


async def test_naive_datetime_in_where_clause_is_refused(clean_db: Database, user_id: uuid.UUID) -> None:
    with pytest.raises((ValueError, StatementError)) as info:
        async with clean_db.system_session() as session:
            await session.scalars(select(Trade).where(Trade.executed_at < datetime(2024, 1, 1)))  # noqa: DTZ001
    assert isinstance(_unwrap(info.value), ValueError)
