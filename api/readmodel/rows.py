"""A batch's changes to the read model, kept in memory by primary key and written at its end, a few statements per
table however many events changed it.

Why: a projection that runs its own statements costs one or two round trips through SQLAlchemy per event, which is
most of a replay's time. Here an event changes dicts; `flush()` writes the changed keys' new rows with one upsert
(`executemany`) and deletes the removed ones with one `DELETE`, and updates rows it never read with one `UPDATE` per
set of columns. Rows are read only when a projection asks for one (`get`, `prefetch`) or a multi-row delete needs to
know which rows it removes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Delete,
    Dialect,
    Insert,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.schema import ScalarElementColumnDefault

Key = tuple[Any, ...]
Row = dict[str, Any]


@dataclass
class _Statements:
    """Built once per table: building a statement costs more than running it."""

    table: Table
    columns: tuple[str, ...]
    key: tuple[str, ...]
    key_where: ColumnElement[bool]  # the row of the bound `k_{column}`s
    defaults: dict[str, Any]
    select: Select[Any]
    delete: Delete
    insert: Insert
    upserts: dict[str, Insert | None] = field(default_factory=dict)  # by dialect; None: delete, then insert
    updates: dict[tuple[str, ...], Update] = field(default_factory=dict)
    select_in: Select[Any] | None = None
    selects_where: dict[tuple[str, ...], Select[Any]] = field(default_factory=dict)

    def params(self, key: Key) -> dict[str, Any]:
        """The bound parameters of the statements' `WHERE` on `key`."""
        return {f"k_{name}": value for name, value in zip(self.key, key, strict=True)}

    def upsert(self, dialect: str) -> Insert | None:
        """An INSERT that replaces the row of its key, where the database has one."""
        if dialect not in self.upserts:
            others = [name for name in self.columns if name not in self.key]
            statement: Insert | None = None
            if dialect == "sqlite":
                statement = insert(self.table).prefix_with("OR REPLACE")
            elif dialect == "postgresql":
                upsert = postgresql_insert(self.table)
                statement = (
                    upsert.on_conflict_do_update(
                        index_elements=list(self.key), set_={name: upsert.excluded[name] for name in others}
                    )
                    if others
                    else upsert.on_conflict_do_nothing(index_elements=list(self.key))
                )
            self.upserts[dialect] = statement
        return self.upserts[dialect]

    def update(self, columns: tuple[str, ...]) -> Update:
        """An UPDATE of `columns` (bound by their names) on the row of the bound key."""
        if (found := self.updates.get(columns)) is None:
            found = self.updates[columns] = update(self.table).where(self.key_where)
        return found

    def select_keys(self) -> Select[Any]:
        """The rows whose key begins with the bound `p_{column}`s and ends in the bound list `keys`. Not a row-value
        `IN` over the whole key: SQLite scans the table for one, so each batch would cost as much as the table holds."""
        if self.select_in is None:
            *prefix, last = self.key
            self.select_in = select(self.table).where(
                *(self.table.c[name] == bindparam(f"p_{name}") for name in prefix),
                self.table.c[last].in_(bindparam("keys", expanding=True)),
            )
        return self.select_in

    def select_where(self, columns: tuple[str, ...]) -> Select[Any]:
        """The keys of the rows whose `columns` equal the bound `w_{column}`."""
        if (found := self.selects_where.get(columns)) is None:
            where = (self.table.c[name] == bindparam(f"w_{name}") for name in columns)
            found = self.selects_where[columns] = select(*(self.table.c[name] for name in self.key)).where(*where)
        return found

    @classmethod
    def of(cls, table: Table) -> _Statements:
        key = tuple(column.name for column in table.primary_key.columns)
        where = and_(*(table.c[name] == bindparam(f"k_{name}") for name in key))
        defaults = {column.name: _scalar_default(column) for column in table.columns}
        return cls(
            table=table,
            columns=tuple(column.name for column in table.columns),
            key=key,
            key_where=where,
            defaults=defaults,
            select=select(table).where(where),
            delete=delete(table).where(where),
            insert=insert(table),
        )


class _Compiled:
    """A statement as SQLite's driver takes it: its SQL, and how a parameter set becomes its tuple of values."""

    def __init__(self, statement: UpdateBase, dialect: Dialect, keys: tuple[str, ...]) -> None:
        form = statement.compile(dialect=dialect, column_keys=list(keys))
        names = tuple(form.positiontup or ())
        processors = [form.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
        self.statement = statement  # kept alive: the cache is keyed by its id
        self.sql = form.string
        self._values = itemgetter(*names) if len(names) > 1 else lambda values: (values[names[0]],)
        self._processed = [(index, process) for index, process in enumerate(processors) if process is not None]

    def bind(self, values: dict[str, Any]) -> tuple[Any, ...]:
        bound = list(self._values(values))
        for index, process in self._processed:
            bound[index] = process(bound[index])
        return tuple(bound)


_COMPILED: dict[tuple[int, tuple[str, ...]], _Compiled] = {}


def execute_many(conn: Connection, statement: UpdateBase, params: list[dict[str, Any]]) -> None:
    """`conn.execute(statement, params)`: one statement, many parameter sets with the same keys. On SQLite the
    statement is compiled once and each set converted by the columns' own bind processors straight into the driver's
    `executemany`: SQLAlchemy's bookkeeping per set would cost more than SQLite's insert. Build statements once: the
    compiled form is kept by the statement's identity."""
    if conn.dialect.name != "sqlite":
        conn.execute(statement, params)
        return
    keys = tuple(params[0])
    if (compiled := _COMPILED.get((id(statement), keys))) is None:
        compiled = _COMPILED[(id(statement), keys)] = _Compiled(statement, conn.dialect, keys)
    conn.exec_driver_sql(compiled.sql, [compiled.bind(values) for values in params])


def _scalar_default(column: Column[Any]) -> Any:
    default = column.default
    return default.arg if isinstance(default, ScalarElementColumnDefault) else None


_STATEMENTS: dict[str, _Statements] = {}
# Keys per prefetch statement: well under SQLite's 32,766 bound parameters, whatever the key's width.
_PREFETCH_CHUNK = 500


def _statements(table: Table) -> _Statements:
    if (found := _STATEMENTS.get(table.name)) is None:
        found = _STATEMENTS[table.name] = _Statements.of(table)
    return found


@dataclass
class _Changes:
    statements: _Statements
    known: dict[Key, Row | None] = field(default_factory=dict)  # the row as it is now; None: there is none
    changed: set[Key] = field(default_factory=set)  # known keys whose row (or absence) must be written
    patches: dict[Key, Row] = field(default_factory=dict)  # values set on rows not read: written by UPDATE


class Rows:
    """One transaction's unit of work over the read-model tables. Every table must have a primary key; rows are
    plain dicts of column name to value, and `get` returns the row as the batch has made it so far."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._tables: dict[str, _Changes] = {}

    def _changes(self, table: Table) -> _Changes:
        if (found := self._tables.get(table.name)) is None:
            found = self._tables[table.name] = _Changes(_statements(table))
        return found

    def get(self, table: Table, key: Key) -> Mapping[str, Any] | None:
        changes = self._changes(table)
        if key in changes.known:
            return changes.known[key]
        return self._load(changes, key)

    def put(self, table: Table, row: Mapping[str, Any]) -> None:
        """Insert `row`, replacing the row of its key; columns it leaves out take their default (or NULL)."""
        changes = self._changes(table)
        unknown = row.keys() - changes.statements.defaults.keys()
        if unknown:
            raise KeyError(f"{table.name} has no column {sorted(unknown)}")
        full = {**changes.statements.defaults, **row}
        key = tuple(full[name] for name in changes.statements.key)
        changes.known[key] = full
        changes.patches.pop(key, None)
        changes.changed.add(key)

    def update(self, table: Table, key: Key, values: Mapping[str, Any]) -> None:
        """Set `values` on the row of `key`, if there is one."""
        changes = self._changes(table)
        if key in changes.known:
            row = changes.known[key]
            if row is not None:
                changes.known[key] = {**row, **values}
                changes.changed.add(key)
        else:
            changes.patches[key] = {**changes.patches.get(key, {}), **values}

    def delete(self, table: Table, key: Key) -> None:
        changes = self._changes(table)
        changes.known[key] = None
        changes.patches.pop(key, None)
        changes.changed.add(key)

    def delete_where(self, table: Table, **equal: Any) -> None:
        """Delete every row whose columns equal `equal`: those stored and those this batch has put."""
        changes = self._changes(table)
        stored = changes.statements.select_where(tuple(equal))
        for stored_key in self.conn.execute(stored, {f"w_{name}": value for name, value in equal.items()}):
            if tuple(stored_key) not in changes.known:
                self._load(changes, tuple(stored_key))
        for key, row in changes.known.items():
            if row is not None and all(row[name] == value for name, value in equal.items()):
                changes.known[key] = None
                changes.changed.add(key)

    def prefetch(self, table: Table, keys: Iterable[Key]) -> None:
        """Read the rows of `keys` with a few statements, for the `get`s to come."""
        changes = self._changes(table)
        statements = changes.statements
        by_prefix: dict[Key, list[Any]] = {}
        for key in dict.fromkeys(key for key in keys if key not in changes.known):
            by_prefix.setdefault(key[:-1], []).append(key[-1])
        for prefix, lasts in by_prefix.items():
            bound = {f"p_{name}": value for name, value in zip(statements.key[:-1], prefix, strict=True)}
            for start in range(0, len(lasts), _PREFETCH_CHUNK):
                chunk = lasts[start : start + _PREFETCH_CHUNK]
                found = {
                    tuple(row[name] for name in statements.key): dict(row)
                    for row in self.conn.execute(statements.select_keys(), {**bound, "keys": chunk}).mappings()
                }
                for last in chunk:
                    key = (*prefix, last)
                    self._known(changes, key, found.get(key))

    def _load(self, changes: _Changes, key: Key) -> Row | None:
        found = self.conn.execute(changes.statements.select, changes.statements.params(key)).mappings().first()
        return self._known(changes, key, dict(found) if found is not None else None)

    @staticmethod
    def _known(changes: _Changes, key: Key, row: Row | None) -> Row | None:
        """`row` as read from the database, with the values this batch has set on it since."""
        if (patch := changes.patches.pop(key, None)) is not None and row is not None:
            row.update(patch)
            changes.changed.add(key)
        changes.known[key] = row
        return row

    def flush(self) -> None:
        """Write every change: the rows kept upserted, the rows removed deleted, then the patches applied."""
        for changes in self._tables.values():
            statements = changes.statements
            if changes.changed:
                upsert = statements.upsert(self.conn.dialect.name)
                kept = [row for key in changes.changed if (row := changes.known[key]) is not None]
                removed = (
                    changes.changed if upsert is None else [k for k in changes.changed if changes.known[k] is None]
                )
                if removed:
                    execute_many(self.conn, statements.delete, [statements.params(key) for key in removed])
                if kept:
                    execute_many(self.conn, upsert if upsert is not None else statements.insert, kept)
            by_columns: dict[tuple[str, ...], list[Row]] = {}
            for key, patch in changes.patches.items():
                params = {**patch, **statements.params(key)}
                by_columns.setdefault(tuple(sorted(patch)), []).append(params)
            for columns, params_list in by_columns.items():
                execute_many(self.conn, statements.update(columns), params_list)
            changes.changed.clear()
            changes.patches.clear()
