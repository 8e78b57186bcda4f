"""Bulk import of historical OHLCV candles from CSV or JSON files into `market_data_ohlcv`.

Files hold rows `ts_ms, open, high, low, close, volume` (CSV, with an optional header line) or a JSON array of such
rows. Every row is validated as a candle of the given series: its timestamp opens a bucket of the timeframe,
`low <= open, close <= high`, prices are positive, the volume is not negative, every value fits `DECIMAL(20,8)`
exactly (never rounded) and no timestamp appears twice. Rows are numbered as a reader finds them: the line number
in a CSV file (a header is line 1), the position in a JSON array.

The import is all-or-nothing: it runs in one transaction, and the first bad row aborts it with an
`ImportFormatError` naming the row and column. With `skip_bad_rows`, bad rows are reported instead and the others
imported. Rows are upserted on (symbol, exchange, timeframe, open_time): importing a file again updates the stored
candles, never duplicates them; `quote_volume` and `trades_count` become NULL, as the file has none.

Speed (see benchmarks/market_data_ingest.py): rows spelled plainly (`30000.5`) are matched by one regular
expression per block of the file and padded to the fixed-width text `ExactDecimal` stores on SQLite, which compares
like the numbers, so no `Decimal` is built for them; any other spelling (exponents, quotes, spaces, more than 8
zero decimals) and any row that fails a check goes through `Decimal`, which gives the precise diagnosis. Values
travel as that exact decimal text and are never floats, to `database/candle_writes.py`, which stores them in bulk
(`executemany` on SQLite, a text `COPY` and one upsert on PostgreSQL).

On SQLite the import holds the database's write lock until it commits, like any transaction there: other writers
wait, so import large files while the API is idle (or on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from cival.core.db import Database
from cival.core.exceptions import ValidationFailed
from cival.database.candle_writes import CandleRow, candle_writer
from cival.database.types import DecimalPrecisionError, ExactDecimal
from cival.domain.candles import EPOCH, UnknownTimeframe, parse_timeframe

COLUMNS = ("ts_ms", "open", "high", "low", "close", "volume")
"""The columns of a candle file, in order."""

MAX_REPORTED_ERRORS = 100
"""With `skip_bad_rows`, details of at most this many bad rows are kept; all are counted."""

Format = Literal["csv", "json"]
Progress = Callable[[int, int], None]

_MONEY = ExactDecimal(20, 8)
_ZERO = _MONEY.encode(Decimal(0))
_INTEGER_DIGITS = _MONEY.precision - _MONEY.scale
_EXCHANGE = re.compile(r"[a-z0-9_-]{1,50}")
_SYMBOL = re.compile(r"[A-Z0-9]+/[A-Z0-9]+")
_DIGITS = re.compile(r"[0-9]+")
_MAX_TS_MS = int((datetime(9999, 12, 31, 23, 59, tzinfo=UTC) - EPOCH).total_seconds()) * 1000
# A row in canonical form: digits, and at most 12 integer and 8 fractional digits per value. The integer and
# fractional parts are captured apart so the fixed-width text SQLite stores is two paddings away.
_NUM = r"([0-9]{1,12})(?:\.([0-9]{1,8}))?"
_CANONICAL_LINE = re.compile(rf"^([0-9]{{1,15}}),{_NUM},{_NUM},{_NUM},{_NUM},{_NUM}$", re.MULTILINE)
_BLANK_LINE = re.compile(r"^[ \t]*\n", re.MULTILINE)
_BLOCK_CHARS = 256 * 1024
_JSON_CHUNK = 5_000


class ImportFormatError(ValidationFailed):
    """A row of a candle file is malformed; `row` is 1-based, `column` names the field (None: the whole row)."""

    code = "invalid_candle_file"

    def __init__(self, row: int, column: str | None, problem: str) -> None:
        where = f"row {row}, column {column}" if column else f"row {row}"
        super().__init__(f"{where}: {problem}", row=row, column=column)
        self.row = row
        self.column = column
        self.problem = problem


class InvalidImportTarget(ValidationFailed):
    """The exchange, symbol, timeframe or format of an import is not valid; `field` names which."""

    code = "invalid_import_target"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.field = field


@dataclass(frozen=True)
class ImportResult:
    """What an import did; `errors` holds the first `MAX_REPORTED_ERRORS` bad rows, `rows_skipped` counts all."""

    rows_read: int
    rows_written: int
    rows_skipped: int
    errors: list[ImportFormatError] = field(default_factory=list)
    first_open_time: datetime | None = None
    last_open_time: datetime | None = None


async def import_candles(
    database: Database,
    source: Path | bytes | str,
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    fmt: Format | None = None,
    skip_bad_rows: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Validate and upsert the candles of `source` (a file, or its content as bytes or text) in one transaction."""
    step = _check_target(exchange, symbol, timeframe)
    kind = _format_of(source, fmt)
    content = _decode(await asyncio.to_thread(source.read_bytes) if isinstance(source, Path) else source)
    if kind is None:
        # Content without a name: JSON starts with '[' or '{', which no CSV row can.
        kind = "json" if content.lstrip()[:1] in ("[", "{") else "csv"
    checker = _RowChecker(timeframe, step, skip_bad_rows)
    chunks, total = _csv_chunks(content, checker) if kind == "csv" else _json_chunks(content, checker)
    async with database.system_session() as session:
        conn = await session.connection()
        writer = candle_writer(
            conn, sqlite=database.is_sqlite, exchange=exchange, symbol=symbol, timeframe=timeframe, step=step
        )
        await writer.start()
        for chunk in chunks:
            await writer.write(chunk)
            if progress is not None:
                progress(min(checker.rows_read, total), total)
        written = await writer.finish()
    if progress is not None:
        progress(checker.rows_read, checker.rows_read)
    first, last = checker.span()
    return ImportResult(
        rows_read=checker.rows_read,
        rows_written=written,
        rows_skipped=checker.bad_rows,
        errors=checker.errors,
        first_open_time=first,
        last_open_time=last,
    )


def _check_target(exchange: str, symbol: str, timeframe: str) -> timedelta:
    if not _EXCHANGE.fullmatch(exchange):
        raise InvalidImportTarget("exchange", f"{exchange!r} must be 1-50 characters of a-z, 0-9, '_' and '-'")
    if len(symbol) > 50 or not _SYMBOL.fullmatch(symbol):
        raise InvalidImportTarget("symbol", f"{symbol!r} must read BASE/QUOTE in upper-case letters and digits")
    try:
        return parse_timeframe(timeframe)
    except UnknownTimeframe as exc:
        raise InvalidImportTarget("timeframe", str(exc)) from None


def _format_of(source: Path | bytes | str, fmt: str | None) -> Format | None:
    if fmt is not None:
        if fmt not in ("csv", "json"):
            raise InvalidImportTarget("format", f"{fmt!r} is not one of csv, json")
        return "csv" if fmt == "csv" else "json"
    if isinstance(source, Path):
        suffix = source.suffix.lower()
        if suffix in (".csv", ".json"):
            return "csv" if suffix == ".csv" else "json"
        raise InvalidImportTarget(
            "format", f"cannot tell the format of {source.name} from its extension: give csv or json"
        )
    return None


def _decode(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            row = raw.count(b"\n", 0, exc.start) + 1
            raise ImportFormatError(row, None, f"not UTF-8 text (byte {raw[exc.start]:#04x})") from None
    else:
        content = raw.removeprefix("\ufeff")
    if "\r" in content:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    return content


class _RowChecker:
    """Validates the rows of one file into chunks, and tracks what the result reports: counts, errors, span."""

    def __init__(self, timeframe: str, step: timedelta, skip_bad_rows: bool) -> None:
        self.timeframe = timeframe
        self.step_ms = step // timedelta(milliseconds=1)
        self.skip_bad_rows = skip_bad_rows
        self.rows_read = 0
        self.bad_rows = 0
        self.errors: list[ImportFormatError] = []
        self.out: list[CandleRow] = []
        self.min_ts: int | None = None
        # Rows arriving in increasing time order cannot repeat a timestamp, so until one arrives out of order the
        # accepted timestamps are only appended to a compact array; the set is built on the first need.
        self.max_ts = -1
        self._accepted = array("q")
        self._seen: set[int] | None = None
        self._unseen_from = 0  # rows of `out` not yet in `_seen`

    def span(self) -> tuple[datetime | None, datetime | None]:
        if self.min_ts is None:
            return None, None
        return _utc(self.min_ts), _utc(self.max_ts)

    def take_chunk(self) -> list[CandleRow]:
        """The good rows checked since the last call."""
        chunk, self.out = self.out, []
        if chunk:
            timestamps = list(map(itemgetter(0), chunk))
            lowest = min(timestamps)
            self.min_ts = lowest if self.min_ts is None else min(self.min_ts, lowest)
            if self._seen is None:
                self._accepted.extend(timestamps)
            else:
                self._seen.update(timestamps[self._unseen_from :])
        self._unseen_from = 0
        return chunk

    def accept_canonical(self, matches: list[tuple[str, ...]], first_row: int) -> None:
        """Check rows matched by `_CANONICAL_LINE` (consecutive lines from `first_row`); keep the good ones."""
        step, max_ts, zero, append = self.step_ms, self.max_ts, _ZERO, self.out.append
        # Each value comes as its integer and fractional digits (the latter possibly empty).
        for i, (t, oi, of, hi, hf, li, lf, ci, cf, vi, vf) in enumerate(matches):
            ts = int(t)
            o = f"{oi:0>12}.{of:0<8}"
            h = f"{hi:0>12}.{hf:0<8}"
            lo = f"{li:0>12}.{lf:0<8}"
            c = f"{ci:0>12}.{cf:0<8}"
            # Fixed-width text of non-negative values compares like the numbers.
            if max_ts < ts <= _MAX_TS_MS and not ts % step and lo <= o <= h and lo <= c <= h and lo != zero:
                append((ts, o, h, lo, c, f"{vi:0>12}.{vf:0<8}"))
                max_ts = ts
            else:
                # Possibly a duplicate, or bad: the general path decides and says precisely what is wrong.
                self.max_ts = max_ts
                fields = [t, *(f"{n}.{f}" if f else n for n, f in ((oi, of), (hi, hf), (li, lf), (ci, cf), (vi, vf)))]
                self.accept_fields(fields, first_row + i)
                max_ts = self.max_ts
        self.max_ts = max_ts
        self.rows_read += len(matches)

    def accept_line(self, line: str, row: int) -> None:
        """Check one CSV line of any form (quoted, spaced, exponent notation ...)."""
        self.rows_read += 1
        self.accept_fields(next(csv.reader([line]), []), row)

    def accept_json(self, item: object, row: int) -> None:
        self.rows_read += 1
        if isinstance(item, list):
            self.accept_fields(item, row)
        else:
            self.reject(ImportFormatError(row, None, f"expected an array [{', '.join(COLUMNS)}], got {_show(item)}"))

    def accept_fields(self, fields: Sequence[object], row: int) -> None:
        """Validate one row of raw values (text, or JSON numbers); keep it if good, else reject it."""
        try:
            self.out.append(self._validate(fields, row))
        except ImportFormatError as exc:
            self.reject(exc)

    def reject(self, error: ImportFormatError) -> None:
        """Abort on `error`, or record it and carry on with `skip_bad_rows`."""
        if not self.skip_bad_rows:
            raise error
        self.bad_rows += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)

    def _validate(self, fields: Sequence[object], row: int) -> CandleRow:
        if len(fields) != len(COLUMNS):
            raise ImportFormatError(row, None, f"{len(fields)} columns, expected {len(COLUMNS)} ({', '.join(COLUMNS)})")
        ts = self._timestamp(fields[0], row)
        if ts <= self.max_ts and self._is_duplicate(ts):
            raise ImportFormatError(row, "ts_ms", f"{ts} ({_utc(ts).isoformat()}) repeats an earlier row")
        values = [_decimal(fields[k], row, COLUMNS[k]) for k in range(1, 6)]
        problem = _contradiction(values, [_show(f) for f in fields[1:]])
        if problem is not None:
            raise ImportFormatError(row, *problem)
        self.max_ts = max(self.max_ts, ts)
        o, h, lo, c, v = (_MONEY.encode(x) for x in values)
        return (ts, o, h, lo, c, v)

    def _timestamp(self, value: object, row: int) -> int:
        ts: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            ts = value
        elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
            ts = int(value.strip())
        elif isinstance(value, str | Decimal):
            try:
                dec = Decimal(value.strip()) if isinstance(value, str) else value
                ts = int(dec) if dec.is_finite() and dec == dec.to_integral_value() else None
            except InvalidOperation:
                ts = None
        if ts is None:
            raise ImportFormatError(row, "ts_ms", f"{_show(value)} is not a whole number of milliseconds")
        if not 0 <= ts <= _MAX_TS_MS:
            raise ImportFormatError(row, "ts_ms", f"{ts} is out of range (milliseconds since 1970-01-01 UTC)")
        if ts % self.step_ms:
            # A timestamp in seconds is the usual cause; before 1973 in milliseconds gives it away.
            hint = " (ts_ms counts milliseconds, not seconds)" if ts < 10**11 else ""
            raise ImportFormatError(
                row, "ts_ms", f"{ts} ({_utc(ts).isoformat()}) is not aligned to a {self.timeframe} bucket{hint}"
            )
        return ts

    def _is_duplicate(self, ts: int) -> bool:
        if self._seen is None:
            self._seen = set(self._accepted)
            self._accepted = array("q")
        self._seen.update(r[0] for r in self.out[self._unseen_from :])
        self._unseen_from = len(self.out)
        return ts in self._seen


def _decimal(value: object, row: int, column: str) -> Decimal:
    try:
        if isinstance(value, str):
            dec = Decimal(value.strip())
        elif isinstance(value, int | Decimal) and not isinstance(value, bool):
            dec = Decimal(value)
        else:
            raise ImportFormatError(row, column, f"{_show(value)} is not a number")
        if dec.is_finite() and dec.adjusted() >= _INTEGER_DIGITS:
            # Checked here because quantizing a huge exponent fails with a less helpful message.
            raise ImportFormatError(row, column, f"{_show(value)} is out of range: at most 12 digits before the point")
        return _MONEY.check(dec)
    except InvalidOperation:
        raise ImportFormatError(row, column, f"{_show(value)} is not a number") from None
    except DecimalPrecisionError as exc:
        raise ImportFormatError(row, column, str(exc)) from None


def _contradiction(values: list[Decimal], shown: list[str]) -> tuple[str, str] | None:
    """(column, problem) for the first way the values contradict each other, or None."""
    o, h, lo, c, v = values
    so, sh, sl, sc, sv = shown
    if lo <= 0:
        return "low", f"{sl} must be positive"
    if h < lo:
        return "high", f"{sh} is below low {sl}"
    if h < o:
        return "high", f"{sh} is below open {so}"
    if h < c:
        return "high", f"{sh} is below close {sc}"
    if lo > o:
        return "low", f"{sl} is above open {so}"
    if lo > c:
        return "low", f"{sl} is above close {sc}"
    if v < 0:
        return "volume", f"{sv} is negative"
    return None


def _show(value: object) -> str:
    """A field as the file spells it (JSON values as JSON), shortened if long."""
    if isinstance(value, str):
        text = value.strip()
        return "an empty field" if not text else text if len(text) <= 40 else text[:37] + "..."
    return str(value) if isinstance(value, Decimal) else json.dumps(value, default=str)


def _utc(ts_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ts_ms)


# --- reading ---------------------------------------------------------------------------------------------------


def _csv_chunks(content: str, checker: _RowChecker) -> tuple[Iterator[list[CandleRow]], int]:
    """Chunks of good rows of a CSV file, and the number of rows in it."""
    if content and not content.endswith("\n"):
        content += "\n"
    first_line = content[: content.find("\n")]
    first_field = next(csv.reader([first_line]), [""])[0].strip() if first_line.strip() else ""
    has_header = bool(first_field) and not _is_number(first_field)
    start = len(first_line) + 1 if has_header else 0
    total = content.count("\n", start) - len(_BLANK_LINE.findall(content, start))
    return _csv_blocks(content, start, 2 if has_header else 1, checker), total


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


def _csv_blocks(content: str, pos: int, row: int, checker: _RowChecker) -> Iterator[list[CandleRow]]:
    while pos < len(content):
        end = content.find("\n", pos + _BLOCK_CHARS)
        end = len(content) if end < 0 else end + 1
        block = content[pos:end]
        lines = block.count("\n")
        matches = _CANONICAL_LINE.findall(block)
        if len(matches) == lines:
            checker.accept_canonical(matches, row)
        else:
            # Some line is not canonical (blank, quoted, exponent notation, or bad): look at each line on its own.
            for offset, line in enumerate(block.split("\n")[:-1]):
                if not line.strip():
                    continue
                match = _CANONICAL_LINE.fullmatch(line)
                if match is not None:
                    checker.accept_canonical([match.groups("")], row + offset)
                else:
                    checker.accept_line(line, row + offset)
        yield checker.take_chunk()
        pos, row = end, row + lines


def _json_chunks(content: str, checker: _RowChecker) -> tuple[Iterator[list[CandleRow]], int]:
    """Chunks of good rows of a JSON array of rows, and the number of rows in it."""
    try:
        items = json.loads(content, parse_float=Decimal, parse_constant=Decimal)
    except json.JSONDecodeError as exc:
        raise _locate_json_error(content, exc) from None
    if not isinstance(items, list):
        raise ImportFormatError(0, None, f"expected a JSON array of [{', '.join(COLUMNS)}] rows")
    return _json_blocks(items, checker), len(items)


def _json_blocks(items: list[Any], checker: _RowChecker) -> Iterator[list[CandleRow]]:
    for first in range(0, len(items), _JSON_CHUNK):
        for offset, item in enumerate(items[first : first + _JSON_CHUNK]):
            checker.accept_json(item, first + offset + 1)
        yield checker.take_chunk()


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _locate_json_error(content: str, error: json.JSONDecodeError) -> ImportFormatError:
    """`error` with the row of the JSON array it occurred in (0 when outside the rows)."""
    where = f"line {error.lineno}, character {error.colno}"
    decoder = json.JSONDecoder(parse_float=Decimal, parse_constant=Decimal)
    pos = _skip_space(content, 0)
    if content[pos : pos + 1] != "[":
        return ImportFormatError(0, None, f"not a JSON array of rows ({error.msg} at {where})")
    pos, row = pos + 1, 0
    while True:
        pos = _skip_space(content, pos)
        if row == 0 and content[pos : pos + 1] == "]":
            break
        row += 1
        try:
            _, pos = decoder.raw_decode(content, pos)
        except json.JSONDecodeError:
            return ImportFormatError(row, None, f"invalid JSON: {error.msg} at {where}")
        pos = _skip_space(content, pos)
        if content[pos : pos + 1] == "]":
            break
        if content[pos : pos + 1] != ",":
            return ImportFormatError(row, None, f"invalid JSON after the row: {error.msg} at {where}")
        pos += 1
    return ImportFormatError(0, None, f"invalid JSON after the array of rows: {error.msg} at {where}")


def _skip_space(content: str, pos: int) -> int:
    match = _JSON_SPACE.match(content, pos)
    return match.end() if match else pos
