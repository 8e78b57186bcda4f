"""Hot-path statements run on the database driver's own connection (asyncpg, or sqlite3 through aiosqlite).

SQLAlchemy's execution layer costs about as much CPU per statement as everything else an order does (D38), so the
statements every order runs are sent straight to the driver: in a `DriverTx` that `Database.driver_transaction` opens
with no ORM session at all (the order path, D42), or on an `AsyncSession`'s connection inside its transaction. Values
are encoded and decoded with the columns' own SQLAlchemy types (their bind and result processors for the dialect), so
a row written here is byte for byte what the ORM writes, and a value that does not fit its column is refused the same
way (`DecimalPrecisionError`). Driver errors surface as the ORM would raise them: a constraint violation as
`IntegrityError`, a SQLite operational error as `OperationalError`.

Writes of whole batches of rows (`DriverInsert`, `DriverUpdate`) whose results nothing reads are deferred on
PostgreSQL, in a transaction `Database.driver_transaction` opened (D53): each becomes ONE statement that carries its
rows as one JSON document of arrays (`jsonb_array_elements`), and they go to the server together with the COMMIT,
in one round trip, or before the next statement of the transaction that reads or writes (`DriverTx.flush`), so
every statement sees the writes before it. The document is dollar-quoted with a tag it does not contain: nothing
in it is escaped or interpreted, whatever the values hold. Each such statement is prepared once per connection
(`EXECUTE` with the document, D58): the server does not parse and plan it for every batch.
"""

from __future__ import annotations

import asyncio
import json
import operator
import re
import sqlite3
import uuid
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import JSON, ColumnElement, FromClause, Integer, Numeric, literal_column
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from cival.database.rows import MODELS
from cival.database.types import ExactDecimal, UTCDateTime

_PLACEHOLDER = re.compile(r":(\w+(?:\[\d+\])?)")
_ANY = re.compile(r"= ANY\(:(\w+)\)")
_DRIVER_KEY = "cival.driver_connection"
"""`session.info` key of (SQLAlchemy transaction, `DriverTx`): the connection is the transaction's."""


class DriverTx:
    """Where driver statements run: a driver connection inside a transaction, and its dialect.

    `Database.driver_transaction` opens one with no SQLAlchemy session at all (the order path, D42), which may defer
    writes on PostgreSQL (`defers`, D53) and ends with `commit`; a statement given an `AsyncSession` instead runs on
    that session's connection, inside its transaction, and defers nothing (the session commits, not this).
    """

    __slots__ = ("driver", "dialect", "defers", "deferred", "meanwhile")

    def __init__(self, driver: Any, dialect: Dialect, *, defers: bool = False) -> None:
        self.driver = driver
        self.dialect = dialect
        self.defers = defers and dialect.driver == "asyncpg"
        self.deferred: list[str] = []  # statements to send before the next one, or with the COMMIT
        self.meanwhile: Callable[[], None] | None = None
        """Work that does not need the COMMIT's outcome, run while it is in flight (D55); it must not raise."""

    async def flush(self) -> None:
        """Send the deferred writes now: before a statement of the same transaction, which must see them."""
        if self.deferred:
            script, self.deferred = "; ".join(self.deferred), []
            await _run_script(self.driver, script)

    async def commit(self) -> None:
        """COMMIT, in the same round trip as the writes still deferred; `meanwhile` runs once it is sent."""
        script, self.deferred = "; ".join([*self.deferred, "COMMIT"]), []
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is None:
            await _run_script(self.driver, script)
            return
        committing = asyncio.ensure_future(_run_script(self.driver, script))
        await asyncio.sleep(0)  # the COMMIT's first step sends it: the database works while this process does
        meanwhile()
        await committing


async def _run_script(driver: Any, script: str) -> None:
    """Statements without parameters, in one round trip (the simple query protocol: asyncpg's `execute` with no
    arguments; SQLite only ever sends COMMIT this way); errors raised as SQLAlchemy's."""
    try:
        await driver.execute(script)
    except Exception as exc:
        _raise_as_sqlalchemy(exc, script, ())
        raise


Target = DriverTx | AsyncSession


def _decoded(values: Sequence[Any], processors: Sequence[Processor]) -> list[Any]:
    """`values` as Python values: each through its column's result processor (a NULL stays None)."""
    return [
        value if process is None or value is None else process(value)
        for value, process in zip(values, processors, strict=True)
    ]


Processor = Callable[[Any], Any] | None

_PG_NUMERIC = 1700
"""PostgreSQL's type OID of `numeric`: asyncpg's numeric result processor is chosen by the column's type OID."""


def _coltype(type_: Any, asyncpg: bool) -> int | None:
    """The driver's type code to choose a result processor by: only asyncpg's numeric needs one."""
    impl = getattr(type_, "impl_instance", type_)
    return _PG_NUMERIC if asyncpg and isinstance(impl, Numeric) else None


class _Compiled:
    """A statement ready for one dialect's driver: its text, its parameters' order and encoders, its columns'
    decoders; runs it on a driver connection (driver errors raised as SQLAlchemy's, `_raise_as_sqlalchemy`)."""

    __slots__ = ("sql", "names", "binds", "results", "asyncpg")

    def __init__(
        self, sql: str, names: list[str], binds: list[Processor], results: list[Processor], asyncpg: bool
    ) -> None:
        self.sql = sql
        self.names = names
        self.binds = binds
        self.results = results
        self.asyncpg = asyncpg

    def bind(self, values: dict[str, Any]) -> list[Any]:
        out = []
        for name, process in zip(self.names, self.binds, strict=True):
            value = values[name]
            out.append(value if process is None or value is None else process(value))
        return out

    def decode(self, row: Sequence[Any]) -> list[Any]:
        return _decoded(row, self.results)

    async def fetch(self, driver: Any, params: list[Any]) -> Sequence[Sequence[Any]]:
        try:
            if self.asyncpg:
                rows: Sequence[Sequence[Any]] = await driver.fetch(self.sql, *params)
                return rows
            async with driver.execute(self.sql, params) as cursor:
                return list(await cursor.fetchall())
        except Exception as exc:
            _raise_as_sqlalchemy(exc, self.sql, params)
            raise

    async def execute(self, driver: Any, params: list[Any]) -> None:
        try:
            if self.asyncpg:
                await driver.execute(self.sql, *params)
            else:
                await driver.execute(self.sql, params)
        except Exception as exc:
            _raise_as_sqlalchemy(exc, self.sql, params)
            raise

    async def execute_many(self, driver: Any, params: list[list[Any]]) -> None:
        try:
            await driver.executemany(self.sql, params)
        except Exception as exc:
            _raise_as_sqlalchemy(exc, self.sql, params)
            raise


class DriverStatement:
    """One SQL statement with `:name` parameters typed by table columns, and result columns typed likewise.

    `params` maps each parameter name to the column whose type encodes it; `results` lists the columns the statement
    returns, in order. `sqlite_sql` replaces the text on SQLite where the two dialects differ (`FOR UPDATE`).
    A list is bound with PostgreSQL's `= ANY(:name)` (one array parameter, each element encoded by the column's
    type); on SQLite that becomes `IN (?, ?, ...)`, one placeholder per element. Parameters named in `arrays` are
    bound as arrays likewise, wherever they stand (PostgreSQL only: `unnest(CAST(:name AS uuid[]), ...)`).
    """

    def __init__(
        self,
        sql: str,
        params: dict[str, ColumnElement[Any]],
        results: Sequence[ColumnElement[Any]] = (),
        *,
        sqlite_sql: str | None = None,
        arrays: Sequence[str] = (),
    ) -> None:
        self._sql = {"postgresql": sql, "sqlite": sqlite_sql or sql}
        self._params = params
        self._results = list(results)
        self._lists = [*_ANY.findall(sql), *arrays]
        self._compiled: dict[Any, _Compiled] = {}

    def _compile(self, dialect: Dialect, values: dict[str, Any]) -> tuple[_Compiled, dict[str, Any]]:
        """The statement for `dialect` (and, on SQLite, for these lists' lengths), and `values` as it binds them."""
        lengths: tuple[int, ...] = ()
        if self._lists and dialect.name == "sqlite":
            lengths = tuple(len(values[name]) for name in self._lists)
            values = values | {f"{name}[{i}]": v for name in self._lists for i, v in enumerate(values[name])}
        key = (dialect.name, lengths) if lengths else dialect.name
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled, values
        names: list[str] = []
        asyncpg = dialect.driver == "asyncpg"

        def placeholder(match: re.Match[str]) -> str:
            names.append(match.group(1))
            return f"${len(names)}" if asyncpg else "?"

        def expand(match: re.Match[str]) -> str:
            name = match.group(1)
            return "IN (" + ", ".join(f":{name}[{i}]" for i in range(len(values[name]))) + ")"

        sql = self._sql[dialect.name]
        if lengths:
            sql = _ANY.sub(expand, sql)
        sql = _PLACEHOLDER.sub(placeholder, sql)
        binds = [self._bind(name, dialect) for name in names]
        results: list[Processor] = [
            column.type._cached_result_processor(dialect, _coltype(column.type, asyncpg)) for column in self._results
        ]
        compiled = self._compiled[key] = _Compiled(sql, names, binds, results, asyncpg)
        return compiled, values

    def _bind(self, name: str, dialect: Dialect) -> Processor:
        column, _, index = name.partition("[")
        process: Processor = self._params[column].type._cached_bind_processor(dialect)
        if index or column not in self._lists or process is None:
            return process
        element = process
        return lambda values: [element(v) for v in values]

    async def fetch(self, target: Target, **values: Any) -> list[tuple[Any, ...]]:
        """Run in `target`'s transaction; the rows, decoded."""
        compiled, rows = await self.records(target, **values)
        return [tuple(compiled.decode(row)) for row in rows]

    async def records(self, target: Target, **values: Any) -> tuple[_Compiled, Sequence[Sequence[Any]]]:
        """Run in `target`'s transaction; the rows as the driver returns them, with the statement that decodes them
        (`results`: one decoder per column), for a caller that decodes them its own way."""
        tx = await driver_tx(target)
        await tx.flush()
        compiled, values = self._compile(tx.dialect, values)
        return compiled, await compiled.fetch(tx.driver, compiled.bind(values))

    async def execute(self, target: Target, **values: Any) -> None:
        """Run in `target`'s transaction, for its effect."""
        tx = await driver_tx(target)
        await tx.flush()
        compiled, values = self._compile(tx.dialect, values)
        await compiled.execute(tx.driver, compiled.bind(values))

    async def execute_many(self, target: Target, rows: Sequence[dict[str, Any]]) -> None:
        """Run once per element of `rows` (one driver call), in `target`'s transaction."""
        if not rows:
            return
        if self._lists:
            raise ValueError("execute_many cannot bind lists")
        tx = await driver_tx(target)
        await tx.flush()
        compiled, _ = self._compile(tx.dialect, rows[0])
        await compiled.execute_many(tx.driver, [compiled.bind(values) for values in rows])


class DriverQuery:
    """A SQLAlchemy Core `SELECT`, compiled once per dialect, run on the driver; rows are named tuples.

    For a statement built with SQLAlchemy because it is easier to read that way (the risk gate's one query). Its
    bound parameters are given by name; fixed values inside it (literals SQLAlchemy binds) come from the compiled
    statement. An expanding `IN` is not supported: write its constants as literal columns.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[_Compiled, dict[str, Any], Any]] = {}

    def _compile(self, dialect: Dialect) -> tuple[_Compiled, dict[str, Any], Any]:
        found = self._compiled.get(dialect.name)
        if found is not None:
            return found
        compiled = self.statement.compile(dialect=dialect)
        if "__[POSTCOMPILE" in compiled.string:
            raise ValueError("DriverQuery cannot run an expanding IN: write its constants as literal columns")
        names = list(compiled.positiontup or ())
        binds: list[Processor] = [compiled._bind_processors.get(name) for name in names]
        columns = compiled._result_columns
        asyncpg = dialect.driver == "asyncpg"
        results: list[Processor] = [
            type_._cached_result_processor(dialect, _coltype(type_, asyncpg))
            for _key, _name, _objects, type_ in columns
        ]
        row = namedtuple("Row", [key for key, _name, _objects, _type in columns])  # type: ignore[misc]  # noqa: PYI024
        fixed = {name: value for name, value in compiled.params.items() if value is not None}
        found = self._compiled[dialect.name] = (
            _Compiled(compiled.string, names, binds, results, asyncpg),
            fixed,
            row,
        )
        return found

    async def fetch(self, target: Target, **values: Any) -> list[Any]:
        tx = await driver_tx(target)
        await tx.flush()
        compiled, fixed, row = self._compile(tx.dialect)
        records = await compiled.fetch(tx.driver, compiled.bind(fixed | values))
        return [row(*compiled.decode(record)) for record in records]

    async def fetch_each(self, target: Target, values: Sequence[dict[str, Any]]) -> list[Any]:
        """The rows of the statement run once per element of `values`, in order, as one list: on PostgreSQL in ONE
        round trip (asyncpg pipelines the executions, each its own statement: each sees what committed before it
        ran), one after another on SQLite. A caller that needs to tell the runs' rows apart selects a parameter."""
        tx = await driver_tx(target)
        if not values:
            return []
        await tx.flush()
        compiled, fixed, row = self._compile(tx.dialect)
        if not compiled.asyncpg:
            return [found for v in values for found in await self.fetch(tx, **v)]
        params = [compiled.bind(fixed | v) for v in values]
        try:
            records = await tx.driver.fetchmany(compiled.sql, params)
        except Exception as exc:
            _raise_as_sqlalchemy(exc, compiled.sql, params)
            raise
        return [row(*compiled.decode(record)) for record in records]


@dataclass(frozen=True)
class RowSet:
    """One set of a `DriverRowSets` read: whole rows of `row`'s table `WHERE <where>` in id order, the `WITH` query
    `name`, locked `FOR UPDATE` on PostgreSQL when `for_update`.

    `where` may select by the rows of the sets before it, on PostgreSQL as `col = ANY(ARRAY(SELECT col FROM name))`
    (an array the index scan takes as it takes a bound one), on SQLite as `col IN (SELECT col FROM name)`
    (`sqlite_where`). A list is bound with `= ANY(:name)`, as in `DriverStatement`."""

    name: str
    row: type[Any]
    where: str
    sqlite_where: str | None = None
    for_update: bool = False


class DriverRowSets:
    """Whole rows of one or several tables in ONE statement: one round trip where a read per table made one each
    (D56), returned as plain rows (`rows.OrderRow`, ...: one field per column, in the table's order, D52).

    Each set is a `WITH` query (materialized on PostgreSQL) that may select by the rows of the sets before it; the
    sets that lock are locked in id order, set after set in the order given (every writer that locks these tables
    takes them in that order: two never deadlock). The rows come back as one `UNION ALL`, each row its set's number,
    then one slot per column of every set (its own filled, the others' NULL), and are decoded slice by slice.
    Returns one list of rows per set.
    """

    def __init__(self, sets: Sequence[RowSet], params: dict[str, ColumnElement[Any]]) -> None:
        self.sets = list(sets)
        self.params = params
        self.tables = [MODELS[s.row].__table__ for s in sets]
        self.columns = [list(table.columns) for table in self.tables]
        self.slices: list[tuple[int, int]] = []
        start = 1
        for own in self.columns:
            self.slices.append((start, start + len(own)))
            start += len(own)
        self._statements: dict[str, DriverStatement] = {}  # per dialect, built on first use

    def _statement(self, dialect: Dialect) -> DriverStatement:
        found = self._statements.get(dialect.name)
        if found is not None:
            return found
        postgresql = dialect.name == "postgresql"
        queries, arms = [], []
        for i, (s, table, own) in enumerate(zip(self.sets, self.tables, self.columns, strict=True)):
            names = ", ".join(c.name for c in own)
            where = s.where if postgresql else s.sqlite_where or s.where
            lock = " FOR UPDATE" if s.for_update and postgresql else ""
            materialized = "MATERIALIZED " if postgresql else ""
            # Names from the tables' definitions and the caller's constant text; values bound.
            queries.append(
                f"{s.name} AS {materialized}(SELECT {names} FROM {table.description} "  # noqa: S608
                f"WHERE {where} ORDER BY id{lock})"
            )
            # PostgreSQL types a UNION's columns arm by arm: another set's slot is a NULL of that column's type.
            slots = [
                f"{s.name}.{c.name}" if j == i else f"CAST(NULL AS {c.type.compile(dialect=dialect)})"
                for j, other in enumerate(self.columns)
                for c in other
            ]
            arms.append(f"SELECT {i}, {', '.join(slots)} FROM {s.name}")  # noqa: S608
        sql = f"WITH {', '.join(queries)} {' UNION ALL '.join(arms)}"
        results = [literal_column("0", Integer()), *(c for own in self.columns for c in own)]
        found = self._statements[dialect.name] = DriverStatement(sql, self.params, results, sqlite_sql=sql)
        return found

    async def all(self, target: Target, **values: Any) -> list[list[Any]]:
        tx = await driver_tx(target)
        compiled, records = await self._statement(tx.dialect).records(tx, **values)
        found: list[list[Any]] = [[] for _ in self.sets]
        decoders = [
            (s.row, start, end, compiled.results[start:end])
            for s, (start, end) in zip(self.sets, self.slices, strict=True)
        ]
        for record in records:
            row, start, end, processors = decoders[record[0]]
            found[record[0]].append(row(*_decoded(record[start:end], processors)))
        return found


class _RowsWrite:
    """A write of whole batches of rows read from objects (attributes named as the columns' keys): one statement per
    row (`execute_many`) on SQLite or on a session's connection; deferred as ONE statement for all of them on
    PostgreSQL in a transaction that defers (D53), its rows in one JSON document of arrays: `template` with `{rows}`
    where the rows go, read from the document as `x`, one column per value, typed as the table types it.

    The deferred statement is a prepared statement of each connection (`name`, D58), prepared before the connection's
    first transaction that may defer (`unprepared_writes`): the COMMIT's script executes it with the batch's document,
    and PostgreSQL neither parses nor plans it again."""

    def __init__(
        self,
        columns: Sequence[Any],
        statement: DriverStatement | None,
        template: str,
        aliases: Sequence[str] | None = None,
    ) -> None:
        self.columns = list(columns)
        self.keys = [c.key for c in self.columns]
        self._get = _getter(self.keys)
        self.statement = statement  # None: deferred only
        self._template = template
        self._aliases = list(aliases) if aliases is not None else [c.name for c in self.columns]
        # PREPARE statement, and the encoder of each value that needs one (by position), on first use.
        self._deferring: _Deferring | None = None
        self.name = f"cival_write_{len(_WRITES)}"
        _WRITES.append(self)

    async def rows(self, target: Target, objs: Sequence[Any]) -> None:
        if not objs:
            return
        rows = [self._values(obj) for obj in objs]
        tx = await driver_tx(target)
        if tx.defers:
            tx.deferred.append(self._deferred(rows, tx.dialect))
        elif self.statement is None:
            raise TypeError(f"{type(self).__name__} is a deferred write: it needs a transaction that defers (D53)")
        else:
            keys = self.keys
            await self.statement.execute_many(tx, [dict(zip(keys, row, strict=True)) for row in rows])

    def _values(self, obj: Any) -> list[Any]:
        return list(self._get(obj))

    def _deferred(self, rows: list[list[Any]], dialect: Dialect) -> str:
        """The deferred statement for `rows` (each row's values encoded in place: the rows are spent)."""
        _, encoders, document = self._compiled(dialect)
        for row in rows:
            for i, encode in encoders:  # only the values whose text differs from what the JSON encoder writes
                value = row[i]
                if value is not None:
                    row[i] = encode(value)
        return f"EXECUTE {self.name}({_dollar_quoted(document(rows))})"

    def prepare(self, dialect: Dialect) -> str:
        """The `PREPARE` of the deferred statement, its rows' document the parameter."""
        return self._compiled(dialect)[0]

    def _compiled(self, dialect: Dialect) -> _Deferring:
        if self._deferring is None:
            self._deferring = self._compile_deferred(dialect)
        return self._deferring

    def _compile_deferred(self, dialect: Dialect) -> _Deferring:
        """The deferred statement's `PREPARE`, each column's encoder into its document, and the document's JSON
        encoder."""
        values = ", ".join(
            f"r -> {i} AS {alias}"
            if isinstance(c.type, JSON)
            else f"CAST(r ->> {i} AS {c.type.compile(dialect=dialect)}) AS {alias}"
            for i, (c, alias) in enumerate(zip(self.columns, self._aliases, strict=True))
        )
        # Names and types from the table's definition; the rows come as the parameter (a `_dollar_quoted` literal).
        rows = f"(SELECT {values} FROM jsonb_array_elements(CAST($1 AS jsonb)) AS r) AS x"  # noqa: S608
        prepare = f"PREPARE {self.name}(text) AS {self._template.replace('{rows}', rows)}"
        encoders = [(i, encode) for i, c in enumerate(self.columns) if (encode := _json_encoder(c.type, dialect))]
        plain = not any(isinstance(c.type, JSON) for c in self.columns)
        return prepare, encoders, _plain_document if plain else _DOCUMENT.encode


_Deferring = tuple[str, list[tuple[int, Callable[[Any], Any]]], Callable[[list[list[Any]]], str]]
"""A deferred write's `PREPARE`, its columns' encoders, its document's encoder."""


_WRITES: list[_RowsWrite] = []
"""Every batch write made in this process, in the order made: each is prepared on each connection that defers."""


def unprepared_writes(prepared: set[str], dialect: Dialect) -> tuple[str, list[str]]:
    """The `PREPARE` statements of the batch writes not in `prepared` (names of those prepared on a connection), as
    one script ending in `; ` (empty when there are none), and their names (D58)."""
    missing = [write for write in _WRITES if write.name not in prepared]
    return "".join(f"{write.prepare(dialect)}; " for write in missing), [write.name for write in missing]


class DriverInsert(_RowsWrite):
    """`INSERT` of whole rows of `table`, from objects (plain rows, or mapped objects): what the ORM would insert."""

    def __init__(self, table: FromClause) -> None:
        columns = list(table.columns)
        names = ", ".join(c.name for c in columns)
        values = ", ".join(f":{c.key}" for c in columns)
        # Names from the table's definition, values bound: nothing from input reaches the text.
        sql = f"INSERT INTO {table.description} ({names}) VALUES ({values})"  # noqa: S608
        template = f"INSERT INTO {table.description} ({names}) SELECT {names} FROM {{rows}}"  # noqa: S608
        super().__init__(columns, DriverStatement(sql, {c.key: c for c in columns}), template)
        self._defaulted = [(i, c) for i, c in enumerate(columns) if c.default is not None]

    async def row(self, target: Target, obj: Any) -> None:
        await self.rows(target, [obj])

    def _values(self, obj: Any) -> list[Any]:
        """The row's values in column order (an unset column takes its Python default, set on `obj` too)."""
        values = list(self._get(obj))
        for i, column in self._defaulted:
            if values[i] is None:
                # An unset attribute takes the column's Python default, as in an ORM flush.
                default = column.default
                values[i] = default.arg(None) if default.is_callable else default.arg
                setattr(obj, column.key, values[i])
        return values


class DriverUpdate(_RowsWrite):
    """`UPDATE table SET <columns> WHERE <key> = ...` for each of a batch of objects, from their attributes."""

    def __init__(self, table: FromClause, columns: Sequence[str], key: str = "id") -> None:
        c = table.columns
        assigned = ", ".join(f"{c[name].name} = :{name}" for name in columns)
        # Names from the table's definition and the caller's constants, values bound.
        sql = f"UPDATE {table.description} SET {assigned} WHERE {c[key].name} = :{key}"  # noqa: S608
        from_rows = ", ".join(f"{c[name].name} = x.{c[name].name}" for name in columns)
        template = (
            f"UPDATE {table.description} SET {from_rows} FROM {{rows}} "  # noqa: S608
            f"WHERE {table.description}.{c[key].name} = x.{c[key].name}"
        )
        names = [*columns, key]
        super().__init__([c[name] for name in names], DriverStatement(sql, {name: c[name] for name in names}), template)


class DriverCheckedUpdate(_RowsWrite):
    """`DriverUpdate` for rows not read in the transaction (D61): each row is written only where the columns it
    writes still hold the values they had when it was read, and if any row does not, the statement fails the
    transaction (SQLSTATE 40001, `cival_expect_rows`, migration 0008): nothing is written over a change this
    transaction has not seen. Rows are given as `(row, as_read)` pairs. A deferred write only (PostgreSQL): its check
    runs with the COMMIT, or before the transaction's next statement. `also`: a further condition (SQL, the caller's
    constant, on the table's own columns) each row must meet, or the transaction fails the same way."""

    def __init__(self, table: FromClause, columns: Sequence[str], key: str = "id", *, also: str = "") -> None:
        c, name = table.columns, table.description
        from_rows = ", ".join(f"{c[n].name} = x.{c[n].name}" for n in columns)
        checks = [f"{name}.{c[n].name} IS NOT DISTINCT FROM x.was_{c[n].name}" for n in columns]
        unchanged = " AND ".join([*checks, also] if also else checks)
        # Names from the table's definition and the caller's constants; the rows come as the document. The rows'
        # keys again as an array: the table is read by its index, whatever its size and statistics.
        template = (
            f"WITH changed AS (UPDATE {name} SET {from_rows} FROM {{rows}} "  # noqa: S608
            f"WHERE {name}.{c[key].name} = x.{c[key].name} "
            f"AND {name}.{c[key].name} = ANY(ARRAY(SELECT x.{c[key].name} FROM {{rows}})) "
            f"AND {unchanged} RETURNING 1) "
            "SELECT cival_expect_rows((SELECT count(*) FROM changed), jsonb_array_length(CAST($1 AS jsonb)))"
        )
        written = [c[n] for n in (*columns, key)]
        aliases = [col.name for col in written] + [f"was_{c[n].name}" for n in columns]
        super().__init__([*written, *(c[n] for n in columns)], None, template, aliases)
        self._written = _getter([col.key for col in written])
        self._read = _getter([c[n].key for n in columns])

    def _values(self, obj: Any) -> list[Any]:
        row, as_read = obj
        return [*self._written(row), *self._read(as_read)]


def _getter(keys: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The attributes `keys` of an object, as a tuple, in one call."""
    if len(keys) == 1:
        (key,) = keys
        return lambda obj: (getattr(obj, key),)
    return operator.attrgetter(*keys)


def _json_text(value: Any) -> Any:
    """A value as the JSON document carries it: what the JSON encoder knows as it is, the rest as the text its
    column's type reads back exactly."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is None or isinstance(value, str | bool | int):
        return value
    raise TypeError(f"cannot write a {type(value).__name__} in a deferred row")


def _json_encoder(type_: Any, dialect: Dialect) -> Processor:
    """How a column's value goes into the document: through the column's bind processor (which checks it: an
    inexact decimal is refused as on every other path), then as `_json_text`. A JSON column's value goes as it is
    (its processor would make it a JSON string); text, booleans and integers need nothing. The order path's own
    types take the shortest way to the same text (a deferred batch encodes every value of every row)."""
    if isinstance(type_, JSON):
        return None
    if isinstance(type_, ExactDecimal) and dialect.name == "postgresql":
        return type_.checked_text  # what its bind processor checks on PostgreSQL
    process = type_._cached_bind_processor(dialect)
    if isinstance(type_, UTCDateTime):
        # Already in UTC (what the platform makes), the value's own text; otherwise made UTC, or refused, first.
        return lambda value: (
            value.isoformat() if type(value) is datetime and value.tzinfo is UTC else process(value).isoformat()
        )
    if process is None:
        if type_.python_type is uuid.UUID:
            return _UUID_HEX  # its 32 hex digits: PostgreSQL reads a uuid so too
        return None if type_.python_type in (str, bool, int) else _json_text
    return lambda value: _json_text(process(value))


_UUID_HEX: Callable[[uuid.UUID], str] = operator.attrgetter("hex")
_DOCUMENT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""The document of a write with a JSON column, whose values go as they are (a float NaN in one is refused), and of
any other whose rows orjson refuses (`_plain_document`)."""


def _plain_document(rows: list[list[Any]]) -> str:
    """The document of a write with no JSON column: its rows hold only text, booleans, integers and nulls once
    encoded, which orjson writes as the standard library would (the same JSON values), ~10x faster (a batch of six
    order rows: 19 -> 2 µs). The standard library's encoder takes what orjson refuses (integers past 64 bits) and
    refuses what both do."""
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError:
        return _DOCUMENT.encode(rows)


def _dollar_quoted(text: str) -> str:
    """`text` as a dollar-quoted literal whose tag it does not contain: taken exactly as it is, nothing escaped."""
    tag, n = "$cival$", 0
    while (text + tag).find(tag) != len(text):  # the first tag after the opening one must be the closing one
        n += 1
        tag = f"$cival{n}$"
    return f"{tag}{text}{tag}"


async def driver_tx(target: Target) -> DriverTx:
    """`target` itself, or the driver's connection under a session's transaction (begun if it was not yet), looked
    up once per transaction: the look-up crosses into SQLAlchemy's greenlet twice."""
    if isinstance(target, DriverTx):
        return target
    transaction = target.sync_session.get_transaction()
    known = target.info.get(_DRIVER_KEY)
    if known is not None and transaction is not None and known[0] is transaction:
        return known[1]  # type: ignore[no-any-return]
    connection = await target.connection()
    raw = await connection.get_raw_connection()
    tx = DriverTx(raw.driver_connection, connection.dialect)  # the session commits: nothing is deferred
    target.info[_DRIVER_KEY] = (target.sync_session.get_transaction(), tx)
    return tx


def _raise_as_sqlalchemy(exc: Exception, sql: str, params: Sequence[Any]) -> None:
    """Raise `exc` as SQLAlchemy would have: a constraint violation as `IntegrityError`, SQLite's operational errors
    (a database locked past the busy timeout, ...) as `OperationalError` (the API's 503)."""
    if isinstance(exc, sqlite3.IntegrityError) or type(exc).__module__.startswith("asyncpg") and _is_pg_integrity(exc):
        raise IntegrityError(sql, params, exc) from exc
    if isinstance(exc, sqlite3.OperationalError):
        raise OperationalError(sql, params, exc) from exc


def _is_pg_integrity(exc: Exception) -> bool:
    from asyncpg.exceptions import IntegrityConstraintViolationError

    return isinstance(exc, IntegrityConstraintViolationError)
