"""Bulk statements for the write path, one per dialect: the hot loop's few statements per batch.

SQLAlchemy Core builds and checks each row's parameters (about 10 µs a row); at thousands of messages a
second that is the collector's largest cost. So the three bulk operations here go to the driver:

- PostgreSQL: one ``INSERT ... SELECT FROM unnest(%s::type[], ...)`` per table and batch (arrays as
  parameters: one statement, one round trip, whatever the row count), with ``ON CONFLICT`` and
  ``RETURNING`` where needed — safe with several collectors writing at once.
- SQLite: the ``sqlite3`` module's ``executemany`` (a C loop). The write lock is held for the whole
  transaction (``BEGIN IMMEDIATE``), so "which keys are new" is a read before the insert.

The SQL is generated from the table definitions in :mod:`backoffice.tables`, never by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, Integer, LargeBinary, Table
from sqlalchemy.engine import Connection

__all__ = ["add_counts", "delete_keys", "insert", "insert_new", "update"]

_CHUNK = 400  # SQLite: keys per row-value IN (...) (2 parameters each; the limit is 32766)


def _pg_type(col: Any) -> str:
    kind = col.type
    if isinstance(kind, BigInteger):
        return "int8"
    if isinstance(kind, Integer):
        return "int4"
    if isinstance(kind, Float):
        return "float8"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, LargeBinary):
        return "bytea"
    return "text"


@cache
def _sql(dialect: str, table: Table, columns: tuple[str, ...], tail: str) -> str:
    names = ", ".join(columns)
    if dialect == "postgresql":
        arrays = ", ".join(f"%b::{_pg_type(table.c[c])}[]" for c in columns)
        return f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays}) {tail}".rstrip()
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks}) {tail}".rstrip()


def insert(conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows (tuples in ``columns`` order) that are known to be new."""
    if not rows:
        return
    dialect = conn.dialect.name
    sql = _sql(dialect, table, columns, "")
    if dialect == "postgresql":
        _pg(conn, sql, rows)
    else:
        conn.exec_driver_sql(sql, list(rows))


def insert_new(
    conn: Connection,
    table: Table,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
) -> set[tuple[Any, ...]]:
    """Insert the rows whose ``key`` is not stored yet; return the keys inserted (others untouched)."""
    if not rows:
        return set()
    dialect = conn.dialect.name
    where = [columns.index(k) for k in key]
    if dialect == "postgresql":
        tail = f"ON CONFLICT ({', '.join(key)}) DO NOTHING RETURNING {', '.join(key)}"
        sql = _sql(dialect, table, columns, tail)
        return {tuple(r) for r in _pg(conn, sql, rows)}
    stored = existing(conn, table, key, [tuple(r[i] for i in where) for r in rows])
    fresh = [r for r in rows if tuple(r[i] for i in where) not in stored]
    insert(conn, table, columns, fresh)
    return {tuple(r[i] for i in where) for r in fresh}


def update(
    conn: Connection,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    newer: str | None = None,
) -> None:
    """``UPDATE table SET columns[1:] WHERE id = columns[0]`` for every row, in one statement on PostgreSQL.

    ``newer`` names a column that is only ever raised: a row updates only where it is NULL or lower.
    """
    if not rows:
        return
    key, rest = columns[0], columns[1:]
    if conn.dialect.name == "postgresql":
        arrays = ", ".join(f"%b::{_pg_type(table.c[c])}[]" for c in columns)
        sets = ", ".join(f"{c} = v.{c}" for c in rest)
        cond = f" AND ({table.name}.{newer} IS NULL OR {table.name}.{newer} < v.{newer})" if newer else ""
        sql = (
            f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS v({', '.join(columns)}) "
            f"WHERE {table.name}.{key} = v.{key}{cond}"
        )
        _pg(conn, sql, rows)
        return
    sets = ", ".join(f"{c} = ?" for c in rest)
    cond = f" AND ({newer} IS NULL OR {newer} < ?)" if newer else ""
    params = [(*r[1:], r[0], *([r[columns.index(newer)]] if newer else [])) for r in rows]
    conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {key} = ?{cond}", params)


def _pg(conn: Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One statement with one array per column, sent in binary (text arrays would be escaped per element)."""
    columns = [list(col) for col in zip(*rows, strict=True)]
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(sql, columns)
        return cur.fetchall() if cur.description else []
    finally:
        cur.close()


def delete_keys(
    conn: Connection, table: Table, columns: tuple[str, str], keys: Sequence[tuple[int, int]]
) -> None:
    """Delete the rows whose ``columns`` (two integers) are in ``keys``: one statement, any number.

    Not a row-value ``IN`` list: PostgreSQL turns thousands of them into an expression deeper than its stack.
    """
    if not keys:
        return
    a, b = columns
    if conn.dialect.name == "postgresql":
        sql = (
            f"DELETE FROM {table.name} USING unnest(%b::int4[], %b::int8[]) AS v(a, b) "
            f"WHERE {table.name}.{a} = v.a AND {table.name}.{b} = v.b"
        )
        _pg(conn, sql, keys)
        return
    conn.exec_driver_sql(f"DELETE FROM {table.name} WHERE {a} = ? AND {b} = ?", list(keys))


def existing(
    conn: Connection, table: Table, key: tuple[str, ...], keys: Sequence[tuple[Any, ...]]
) -> set[tuple[Any, ...]]:
    """Which of ``keys`` are stored (SQLite path)."""
    found: set[tuple[Any, ...]] = set()
    names = ", ".join(key)
    one = "(" + ", ".join("?" for _ in key) + ")"
    for i in range(0, len(keys), _CHUNK):
        part = keys[i : i + _CHUNK]
        sql = f"SELECT {names} FROM {table.name} WHERE ({names}) IN (VALUES {', '.join(one for _ in part)})"
        found |= {tuple(r) for r in conn.exec_driver_sql(sql, tuple(v for k in part for v in k))}
    return found


def add_counts(conn: Connection, table: Table, key: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """Upsert ``key + (n,)`` rows: add ``n`` to a stored row, or insert it. Rows must be sorted by key."""
    if not rows:
        return
    tail = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET n = {table.name}.n + excluded.n"
    columns = (*key, "n")
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.exec_driver_sql(
            _sql(dialect, table, columns, tail), tuple(list(col) for col in zip(*rows, strict=True))
        )
    else:
        conn.exec_driver_sql(_sql(dialect, table, columns, tail), list(rows))
