"""Candle file import: exact values on both databases, upsert on re-import, precise errors, all-or-nothing."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from cival.core.db import Database
from cival.database.models import MarketDataOHLCV
from cival.services.candle_importer import (
    MAX_REPORTED_ERRORS,
    ImportFormatError,
    InvalidImportTarget,
    import_candles,
)

T0 = 1515560100000  # 2018-01-10T04:55:00Z, the open of a 5m bucket
FIVE_MIN = 300_000
SERIES = {"exchange": "binance", "symbol": "ETH/BTC", "timeframe": "5m"}

BIG = "123456789012.12345678,123456789012.12345679,123456789012.12345677,123456789012.12345678,999999999999.99999999"
SAMPLE_CSV = f"""ts_ms,open,high,low,close,volume
{T0},0.0984,0.0994766,0.09828605,0.0994766,1820.54447418
{T0 + FIVE_MIN},0.00000001,0.00000003,0.00000001,0.00000002,0
{T0 + 2 * FIVE_MIN},{BIG}
{T0 + 3 * FIVE_MIN},"1e-8",2.5E-7, 0.00000001 ,0.000000100,12.000000000
"""
# The same candles as JSON numbers and strings: 123456789012.12345678 has more digits than a float holds.
SAMPLE_JSON = f"""[
  [{T0}, 0.0984, "0.0994766", 0.09828605, 0.0994766, 1820.54447418],
  [{T0 + FIVE_MIN}, 1E-8, "0.00000003", 0.00000001, "2e-8", 0],
  [{T0 + 2 * FIVE_MIN}, 123456789012.12345678, 123456789012.12345679, 123456789012.12345677,
   "123456789012.12345678", 999999999999.99999999],
  ["{T0 + 3 * FIVE_MIN}", 0.00000001, 0.00000025, 1e-8, 0.0000001, 12]
]"""
# The one truth both databases and both formats must produce: (exchange, symbol, timeframe, open, close, o, h, l, c,
# volume, quote_volume, trades_count).
EXPECTED = [
    (
        "binance", "ETH/BTC", "5m", "2018-01-10T04:55:00+00:00", "2018-01-10T04:59:59.999999+00:00",
        "0.09840000", "0.09947660", "0.09828605", "0.09947660", "1820.54447418", None, None,
    ),
    (
        "binance", "ETH/BTC", "5m", "2018-01-10T05:00:00+00:00", "2018-01-10T05:04:59.999999+00:00",
        "0.00000001", "0.00000003", "0.00000001", "0.00000002", "0.00000000", None, None,
    ),
    (
        "binance", "ETH/BTC", "5m", "2018-01-10T05:05:00+00:00", "2018-01-10T05:09:59.999999+00:00",
        "123456789012.12345678", "123456789012.12345679", "123456789012.12345677", "123456789012.12345678",
        "999999999999.99999999", None, None,
    ),
    (
        "binance", "ETH/BTC", "5m", "2018-01-10T05:10:00+00:00", "2018-01-10T05:14:59.999999+00:00",
        "0.00000001", "0.00000025", "0.00000001", "0.00000010", "12.00000000", None, None,
    ),
]  # fmt: skip


def csv_file(*rows: str, header: bool = True) -> str:
    return ("ts_ms,open,high,low,close,volume\n" if header else "") + "".join(row + "\n" for row in rows)


def candle(i: int, o: str = "10", h: str = "11", lo: str = "9", c: str = "10.5", v: str = "100") -> str:
    return f"{T0 + i * FIVE_MIN},{o},{h},{lo},{c},{v}"


async def dump(db: Database) -> list[tuple[object, ...]]:
    """Every stored candle in a backend-neutral form: decimals as fixed-point text, times as ISO 8601."""
    async with db.system_session(read_only=True) as session:
        rows = (
            await session.scalars(
                select(MarketDataOHLCV).order_by(
                    MarketDataOHLCV.exchange, MarketDataOHLCV.symbol, MarketDataOHLCV.open_time
                )
            )
        ).all()
    return [
        (
            r.exchange, r.symbol, r.timeframe, r.open_time.isoformat(), r.close_time.isoformat(),
            f"{r.open_price:f}", f"{r.high_price:f}", f"{r.low_price:f}", f"{r.close_price:f}", f"{r.volume:f}",
            r.quote_volume, r.trades_count,
        )
        for r in rows
    ]  # fmt: skip


async def count(db: Database) -> int:
    async with db.system_session(read_only=True) as session:
        return int(await session.scalar(select(func.count()).select_from(MarketDataOHLCV)) or 0)


async def test_csv_file_lands_exactly(clean_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "ETH_BTC-5m.csv"
    path.write_text(SAMPLE_CSV)

    result = await import_candles(clean_db, path, **SERIES)

    assert await dump(clean_db) == EXPECTED
    assert (result.rows_read, result.rows_written, result.rows_skipped, result.errors) == (4, 4, 0, [])
    assert result.first_open_time == datetime(2018, 1, 10, 4, 55, tzinfo=UTC)
    assert result.last_open_time == datetime(2018, 1, 10, 5, 10, tzinfo=UTC)


async def test_json_file_lands_exactly_without_passing_through_float(clean_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "candles.json"
    path.write_text(SAMPLE_JSON)

    result = await import_candles(clean_db, path, **SERIES)

    assert await dump(clean_db) == EXPECTED
    assert result.rows_written == 4


async def test_content_is_accepted_as_bytes_or_text(clean_db: Database) -> None:
    await import_candles(clean_db, SAMPLE_JSON, **SERIES)
    assert await dump(clean_db) == EXPECTED
    # Windows line endings and a byte-order mark, without a header.
    body = SAMPLE_CSV.split("\n", 1)[1].replace("\n", "\r\n")
    await import_candles(clean_db, b"\xef\xbb\xbf" + body.encode(), fmt="csv", **SERIES)
    assert await dump(clean_db) == EXPECTED


async def test_close_time_is_the_last_microsecond_of_the_bucket(clean_db: Database) -> None:
    for timeframe, step in (("1m", 60_000), ("1h", 3_600_000), ("1d", 86_400_000)):
        ts = 1_699_920_000_000  # 2023-11-14T00:00:00Z: aligned to every timeframe
        rows = csv_file(f"{ts},1,1,1,1,1", f"{ts + step},1,1,1,1,1")
        await import_candles(clean_db, rows, exchange="kraken", symbol="BTC/USD", timeframe=timeframe)
    async with clean_db.system_session(read_only=True) as session:
        columns = (MarketDataOHLCV.timeframe, MarketDataOHLCV.open_time, MarketDataOHLCV.close_time)
        stored = (await session.execute(select(*columns))).all()
    assert len(stored) == 6
    for timeframe, opened, closed in stored:
        duration = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}[timeframe]
        assert closed == opened + duration - timedelta(microseconds=1)


async def test_stored_form_equals_what_the_orm_writes(clean_db: Database) -> None:
    content = csv_file(candle(0, "0.0984", "123456789012.12345679", "0.00000001", "5", "0"))
    await import_candles(clean_db, content, **SERIES)
    imported = await _stored_values(clean_db, "ETH/BTC")
    async with clean_db.system_session() as session:
        session.add(
            MarketDataOHLCV(
                symbol="ORM/BTC",
                exchange="binance",
                timeframe="5m",
                open_time=datetime(2018, 1, 10, 4, 55, tzinfo=UTC),
                close_time=datetime(2018, 1, 10, 4, 59, 59, 999999, tzinfo=UTC),
                open_price=Decimal("0.0984"),
                high_price=Decimal("123456789012.12345679"),
                low_price=Decimal("0.00000001"),
                close_price=Decimal("5"),
                volume=Decimal("0"),
            )
        )
    assert await _stored_values(clean_db, "ORM/BTC") == imported
    # ... so ORM queries compare against imported rows correctly (on SQLite: as stored text).
    async with clean_db.system_session(read_only=True) as session:
        found = await session.scalar(
            select(func.count()).where(
                MarketDataOHLCV.open_time == datetime(2018, 1, 10, 4, 55, tzinfo=UTC),
                MarketDataOHLCV.high_price == Decimal("123456789012.12345679"),
                MarketDataOHLCV.low_price < Decimal("0.0000001"),
            )
        )
    assert found == 2


async def _stored_values(db: Database, symbol: str) -> tuple[object, ...]:
    """The raw column values as the database holds them (text on SQLite), bypassing the ORM's conversions."""
    async with db.system_session(read_only=True) as session:
        row = (
            await session.execute(
                text(
                    "SELECT open_time, close_time, open_price, high_price, low_price, close_price, volume, "
                    "length(CAST(id AS VARCHAR)) FROM market_data_ohlcv WHERE symbol = :symbol"
                ).bindparams(symbol=symbol)
            )
        ).one()
    return tuple(row)


async def test_reimport_updates_in_place_and_never_duplicates(clean_db: Database) -> None:
    await import_candles(clean_db, SAMPLE_CSV, **SERIES)
    ids_before = await _ids(clean_db)
    await import_candles(clean_db, SAMPLE_CSV, **SERIES)
    assert await dump(clean_db) == EXPECTED
    # A candle stored with figures the file lacks: the re-imported candle replaces it whole.
    async with clean_db.system_session() as session:
        await session.execute(update(MarketDataOHLCV).values(quote_volume=Decimal("5.5"), trades_count=3))

    changed = SAMPLE_CSV.replace("0.0994766,0.09828605,0.0994766,1820.54447418", "0.0999,0.09828605,0.0999,7")
    result = await import_candles(clean_db, changed, **SERIES)

    assert result.rows_written == 4
    assert await count(clean_db) == 4
    first = (await dump(clean_db))[0]
    assert first[5:10] == ("0.09840000", "0.09990000", "0.09828605", "0.09990000", "7.00000000")
    assert await dump(clean_db) == [first, *EXPECTED[1:]]
    assert await _ids(clean_db) == ids_before


async def _ids(db: Database) -> list[object]:
    async with db.system_session(read_only=True) as session:
        return list((await session.scalars(select(MarketDataOHLCV.id).order_by(MarketDataOHLCV.open_time))).all())


async def test_ids_are_distinct_uuids(clean_db: Database) -> None:
    await import_candles(clean_db, SAMPLE_CSV, **SERIES)
    ids = await _ids(clean_db)
    assert len(set(ids)) == 4
    assert all(isinstance(i, uuid.UUID) for i in ids)
    if clean_db.is_sqlite:
        # Ascending in file order, so SQLite appends to its primary-key index instead of scattering inserts.
        assert [i.version for i in ids] == [7, 7, 7, 7]
        assert ids == sorted(ids)


async def test_every_spelling_of_a_value_is_judged_and_stored_alike(clean_db: Database) -> None:
    """Plain rows take the fast path (text comparison), others go through Decimal: the outcome must not differ."""
    rng = random.Random(20180110)

    def value() -> Decimal:
        return Decimal(rng.randint(0, 10 ** rng.randint(1, 20) - 1)).scaleb(-8)

    def plain(d: Decimal) -> str:
        text = f"{d:f}"
        return text.rstrip("0").rstrip(".") if "." in text else text

    def odd(d: Decimal) -> str:
        spelling = rng.choice([f"{d:e}", f'"{plain(d)}"', f" {plain(d)} ", f"{d:.8f}0", f"{d.scaleb(3):f}e-3"])
        return spelling.replace("+", "") if rng.random() < 0.5 else spelling

    rows = []
    for i in range(400):
        # Mostly consistent candles, some not: high and low are only sometimes the extremes.
        o, h, lo, c, v = (value() for _ in range(5))
        if rng.random() < 0.8:
            lo, h = min(o, h, lo, c), max(o, h, lo, c)
        rows.append((T0 + i * FIVE_MIN, o, h, lo, c, v))
    plain_file = csv_file(*(",".join([str(r[0]), *map(plain, r[1:])]) for r in rows))
    odd_file = csv_file(*(",".join([str(r[0]), *map(odd, r[1:])]) for r in rows))

    fast = await import_candles(clean_db, plain_file, skip_bad_rows=True, exchange="fast", symbol="X/Y", timeframe="5m")
    slow = await import_candles(clean_db, odd_file, skip_bad_rows=True, exchange="slow", symbol="X/Y", timeframe="5m")

    assert 250 < fast.rows_written < 400
    assert [(e.row, e.column) for e in fast.errors] == [(e.row, e.column) for e in slow.errors]
    stored = await dump(clean_db)
    assert [r[1:] for r in stored if r[0] == "fast"] == [r[1:] for r in stored if r[0] == "slow"]
    expected = {
        f"{_iso(r[0])}": tuple(f"{d:.8f}" for d in r[1:]) for r in rows if r[3] > 0 and r[3] <= min(r[1], r[4])
        and r[2] >= max(r[1], r[4])
    }  # fmt: skip
    assert {r[3]: r[5:10] for r in stored if r[0] == "fast"} == expected


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms // 1000, UTC).isoformat()


async def test_series_are_kept_apart(clean_db: Database) -> None:
    await import_candles(clean_db, SAMPLE_CSV, **SERIES)
    await import_candles(clean_db, SAMPLE_CSV, exchange="kraken", symbol="ETH/BTC", timeframe="5m")
    await import_candles(clean_db, SAMPLE_CSV, exchange="binance", symbol="ETH/BTC", timeframe="1m")
    assert await count(clean_db) == 12


BAD_FILES = [
    pytest.param(csv_file(candle(0), "1515560400000,10,abc,9,10,1"), 3, "high", "abc is not a number", id="bad-number"),
    pytest.param(csv_file(candle(0), candle(1, h="9.5", lo="10", o="10", c="10")), 3, "high", "9.5 is below low 10",
                 id="high-below-low"),
    pytest.param(csv_file(candle(0), candle(1, h="10.4")), 3, "high", "10.4 is below close 10.5",
                 id="high-below-close"),
    pytest.param(csv_file(candle(0), candle(1, lo="10.2")), 3, "low", "10.2 is above open 10", id="low-above-open"),
    pytest.param(csv_file(candle(0), candle(1, lo="0", o="0", c="0")), 3, "low", "0 must be positive", id="zero-price"),
    pytest.param(csv_file(candle(0), candle(1, v="-1")), 3, "volume", "-1 is negative", id="negative-volume"),
    pytest.param(csv_file(candle(0), f"{T0 + 60_000},10,11,9,10.5,100"), 3, "ts_ms",
                 "1515560160000 (2018-01-10T04:56:00+00:00) is not aligned to a 5m bucket", id="misaligned"),
    pytest.param(csv_file("1515560100,1,1,1,1,1"), 2, "ts_ms", "(ts_ms counts milliseconds, not seconds)",
                 id="seconds"),
    pytest.param(csv_file(candle(0), "1515560400000,,11,9,10.5,100"), 3, "open", "an empty field is not a number",
                 id="empty-field"),
    pytest.param(csv_file(candle(0), candle(1, h="1e400")), 3, "high", "1e400 is out of range", id="huge-exponent"),
    pytest.param(csv_file(candle(0), "1515560400000.5,10,11,9,10.5,100"), 3, "ts_ms",
                 "not a whole number of milliseconds", id="fractional-ts"),
    pytest.param(csv_file(candle(0), candle(1, c="10.123456789")), 3, "close", "10.123456789 has more than 8 decimal",
                 id="too-many-decimals"),
    pytest.param(csv_file(candle(0), candle(1, v="1000000000000")), 3, "volume", "out of range", id="too-large"),
    pytest.param(csv_file(candle(0), candle(1), candle(0)), 4, "ts_ms", "repeats an earlier row", id="duplicate"),
    pytest.param(csv_file(candle(2), candle(0), candle(1), candle(0)), 5, "ts_ms", "repeats an earlier row",
                 id="duplicate-out-of-order"),
    pytest.param(csv_file(candle(0), "1515560400000,10,11,9,10"), 3, None, "5 columns, expected 6", id="too-few"),
    pytest.param(csv_file(candle(0), candle(1) + ",7"), 3, None, "7 columns, expected 6", id="too-many"),
    pytest.param(csv_file(candle(0), "", candle(1, o='"1e-9"')), 4, "open", "1E-9 has more than 8 decimal",
                 id="blank-line-counts-as-a-line"),
    pytest.param(csv_file(candle(0), candle(1, o="NaN")), 3, "open", "NaN is not a finite number", id="nan"),
    pytest.param(csv_file(candle(0), "\xff,1,1,1,1,1", header=False), 2, "ts_ms", "ÿ is not a whole number", id="junk"),
    pytest.param(f"[[{T0},10,11,9,10.5,100],\n [{T0 + FIVE_MIN},10,11,9,10.5 100]]", 2, None, "invalid JSON",
                 id="bad-json"),
    pytest.param(f'[[{T0},10,11,9,10.5,100], {{"ts": 1}}]', 2, None, "expected an array", id="json-object-row"),
    pytest.param(f"[[{T0},10,11,9,10.5,100],]", 2, None, "invalid JSON", id="json-trailing-comma"),
    pytest.param(f"[[{T0},10,11,9,10.5,100]] [", 0, None, "after the array", id="json-extra-data"),
    pytest.param(f"[[{T0},10,11,9,10.5,100] [{T0 + FIVE_MIN},10,11,9,10.5,100]]", 1, None, "after the row",
                 id="json-missing-comma"),
    pytest.param(f"[[{T0},10,11,9,10.5,100], [{T0 + FIVE_MIN},10,11,9,0.123456789,1]]", 2, "close",
                 "0.123456789 has more than 8 decimal", id="json-too-many-decimals"),
    pytest.param(f"[[{T0},10,11,9,10.5,100], [{T0 + FIVE_MIN},10,true,9,10,1]]", 2, "high", "true is not a number",
                 id="json-bool"),
    pytest.param(f'{{"rows": [[{T0},10,11,9,10.5,100]]}}', 0, None, "expected a JSON array", id="json-not-array"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "row", "column", "message"), BAD_FILES)
async def test_bad_row_aborts_the_import_and_writes_nothing(
    clean_db: Database, content: str, row: int, column: str | None, message: str
) -> None:
    with pytest.raises(ImportFormatError) as caught:
        await import_candles(clean_db, content, **SERIES)

    assert (caught.value.row, caught.value.column) == (row, column)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"row {row}, column {column}: " if column else f"row {row}: ")
    assert await count(clean_db) == 0


async def test_bad_row_after_many_good_ones_still_writes_nothing(clean_db: Database, tmp_path: Path) -> None:
    # Far more rows than one write chunk, so earlier chunks have reached the database before the bad row is read.
    rows = [f"{T0 + i * 60_000},1.5,2,1,1.75,{i}" for i in range(30_000)]
    path = tmp_path / "big.csv"
    path.write_text(csv_file(*rows, "1517360100000,1,1,1,1,-3"))

    with pytest.raises(ImportFormatError, match=r"^row 30002, column volume: -3 is negative$"):
        await import_candles(clean_db, path, exchange="binance", symbol="ETH/BTC", timeframe="1m")

    assert await count(clean_db) == 0


async def test_skip_bad_rows_imports_the_rest_and_reports_each(clean_db: Database) -> None:
    content = csv_file(candle(0), candle(1, h="1"), candle(2), "junk", candle(2), candle(3, v="-2"), candle(4))

    result = await import_candles(clean_db, content, skip_bad_rows=True, **SERIES)

    assert (result.rows_read, result.rows_written, result.rows_skipped) == (7, 3, 4)
    assert [(e.row, e.column) for e in result.errors] == [(3, "high"), (5, None), (6, "ts_ms"), (7, "volume")]
    assert [row[3] for row in await dump(clean_db)] == [
        "2018-01-10T04:55:00+00:00",
        "2018-01-10T05:05:00+00:00",
        "2018-01-10T05:15:00+00:00",
    ]
    assert result.last_open_time == datetime(2018, 1, 10, 5, 15, tzinfo=UTC)


async def test_skip_bad_rows_keeps_the_first_details_and_counts_all(clean_db: Database) -> None:
    bad = [candle(i, v="-1") for i in range(MAX_REPORTED_ERRORS + 50)]

    result = await import_candles(clean_db, csv_file(*bad, candle(500)), skip_bad_rows=True, **SERIES)

    assert (result.rows_read, result.rows_written, result.rows_skipped) == (151, 1, 150)
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert result.errors[-1].row == MAX_REPORTED_ERRORS + 1


async def test_rows_in_any_order_are_accepted(clean_db: Database) -> None:
    content = csv_file(candle(3), candle(1), candle(2), candle(0))

    result = await import_candles(clean_db, content, **SERIES)

    assert result.rows_written == 4
    assert result.first_open_time == datetime(2018, 1, 10, 4, 55, tzinfo=UTC)
    assert result.last_open_time == datetime(2018, 1, 10, 5, 10, tzinfo=UTC)
    assert len(await dump(clean_db)) == 4


async def test_empty_file_imports_nothing(clean_db: Database) -> None:
    for content in ("", "ts_ms,open,high,low,close,volume\n", "[]"):
        result = await import_candles(clean_db, content, **SERIES)
        assert (result.rows_read, result.rows_written, result.first_open_time) == (0, 0, None)


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ({"timeframe": "7m"}, "timeframe"),
        ({"symbol": "ethbtc"}, "symbol"),
        ({"symbol": "ETH-BTC"}, "symbol"),
        ({"exchange": "Binance"}, "exchange"),
        ({"exchange": ""}, "exchange"),
        ({"exchange": "b" * 51}, "exchange"),
        ({"fmt": "xml"}, "format"),
    ],
)
async def test_bad_target_is_refused_before_reading(clean_db: Database, target: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidImportTarget) as caught:
        await import_candles(clean_db, SAMPLE_CSV, **(SERIES | target))  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert await count(clean_db) == 0


async def test_unknown_extension_needs_an_explicit_format(clean_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "candles.txt"
    path.write_text(SAMPLE_CSV)
    with pytest.raises(InvalidImportTarget, match="candles.txt"):
        await import_candles(clean_db, path, **SERIES)
    assert (await import_candles(clean_db, path, fmt="csv", **SERIES)).rows_written == 4


async def test_progress_reaches_the_total(clean_db: Database) -> None:
    calls: list[tuple[int, int]] = []
    rows = [f"{T0 + i * 60_000},1,1,1,1,1" for i in range(30_000)]

    await import_candles(clean_db, csv_file(*rows), exchange="binance", symbol="ETH/BTC", timeframe="1m",
                         progress=lambda done, total: calls.append((done, total)))  # fmt: skip

    assert calls[0][0] < 30_000
    assert calls[-1] == (30_000, 30_000)
    assert all(total == 30_000 for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# --- the command line --------------------------------------------------------------------------------------------


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")}
    env["CIVAL_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "cival", "data", "import", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_imports_a_file_and_reports_it(tmp_path: Path) -> None:
    (tmp_path / "eth.csv").write_text(SAMPLE_CSV)

    result = run_cli(["eth.csv", "--exchange", "binance", "--symbol", "ETH/BTC", "--timeframe", "5m"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert "read 4 rows, wrote 4, skipped 0" in result.stdout
    assert "2018-01-10T04:55:00+00:00 to 2018-01-10T05:10:00+00:00" in result.stdout


def test_cli_bad_file_fails_with_one_line_naming_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(f"[[{T0},10,11,9,10.5,100], [{T0 + FIVE_MIN},10,9.5,10,10,1]]")
    args = ["bad.json", "--exchange", "binance", "--symbol", "ETH/BTC", "--timeframe", "5m"]

    result = run_cli(args, tmp_path)

    assert result.returncode == 1
    assert "row 2, column high: 9.5 is below low 10" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    skipped = run_cli([*args, "--skip-bad-rows"], tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert "read 2 rows, wrote 1, skipped 1" in skipped.stdout
    assert "row 2, column high" in skipped.stderr


def test_cli_bad_option_names_it(tmp_path: Path) -> None:
    (tmp_path / "eth.csv").write_text(SAMPLE_CSV)

    result = run_cli(["eth.csv", "--exchange", "binance", "--symbol", "ETH/BTC", "--timeframe", "2m"], tmp_path)

    assert result.returncode == 2
    assert "timeframe: unknown timeframe '2m'" in result.stderr
    assert "Traceback" not in result.stderr
