"""Many rows in one statement: the scheduler's own SQL for its hot writes.

Django's ``bulk_create(update_conflicts=True)`` and ``bulk_update`` compile SQL
for every batch and row (a CASE WHEN per row and field); on the scheduler's
main loop that cost more than the statements. Here each shape of statement is
built once; SQLite gets multi-row statements, PostgreSQL arrays (``unnest``)
or a COPY. Statements go through ``db.cursor``, so query logging and execute
wrappers see them and errors are Django's, which the retries know.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast

from django.conf import settings
from django.db import connections, models
from django.db.models import Model

from scheduler import conf
from scheduler.db import cursor

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.options import Options

_PLAIN = (models.CharField, models.TextField, models.FloatField, models.IntegerField)

_M = TypeVar("_M", bound=Model)
_Field: TypeAlias = "models.Field[Any, Any]"


class Row(Protocol):
    """What ``update_many`` writes from: a model instance, or any object with the
    primary key as ``pk`` and an attribute per field written."""

    @property
    def pk(self) -> Any: ...


def _column(field: _Field) -> str:
    # A concrete field's; django-stubs says str | None (a field may have no column).
    return cast(str, field.column)


def _field(meta: Options[Any], name: str) -> _Field:
    # The scheduler names concrete fields only; get_field also finds reverse relations.
    return cast(_Field, meta.get_field(name))


def datetime_adapter(connection: BaseDatabaseWrapper) -> Callable[[Any], Any]:
    """``connection.ops.adapt_datetimefield_value``, for many values.

    On SQLite, Django's looks up ``USE_TZ`` and the connection's zone for every
    value; the claims and results of a run write five datetimes, and that
    was a tenth of their cost. The same text, with the lookups done once.
    """
    adapt = connection.ops.adapt_datetimefield_value
    if connection.vendor != "sqlite" or not settings.USE_TZ:
        return adapt
    zone = connection.timezone

    def to_text(value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return str(value.astimezone(zone).replace(tzinfo=None))
        return adapt(value)

    return to_text


def _prep(
    field: _Field,
    value: Any,
    connection: BaseDatabaseWrapper,
    adapt: Callable[[Any], Any] | None = None,
) -> Any:
    """``field.get_db_prep_save``, without its layers for the plain types the scheduler writes."""
    if value is None or isinstance(field, _PLAIN):
        return value
    if isinstance(field, models.DateTimeField):
        return (adapt or connection.ops.adapt_datetimefield_value)(value)
    return field.get_db_prep_save(value, connection)


def upsert(model: type[_M], objs: Sequence[_M], update_fields: list[str]) -> None:
    """Insert or update many rows by primary key; call inside a transaction.

    Django's ``bulk_create(update_conflicts=True)`` compiles SQL for every
    batch and row; at start-up with thousands of jobs that was most of the
    time. SQLite gets multi-row statements, PostgreSQL a COPY; other
    databases go through ``bulk_create``.
    """
    if not objs:
        return
    using = conf.database()
    connection = connections[using]
    meta = model._meta
    if connection.vendor not in ("sqlite", "postgresql"):
        model._default_manager.using(using).bulk_create(
            objs,
            batch_size=500,
            update_conflicts=True,
            unique_fields=[meta.pk.name],
            update_fields=update_fields,
        )
        return
    qn = connection.ops.quote_name
    fields = meta.concrete_fields
    updates = ", ".join(
        f"{qn(_column(f))} = EXCLUDED.{qn(_column(f))}" for f in fields if f.name in update_fields
    )
    columns = ", ".join(qn(_column(f)) for f in fields)
    rows = [[_prep(f, getattr(obj, f.attname), connection) for f in fields] for obj in objs]
    conflict = f"ON CONFLICT ({qn(_column(meta.pk))}) DO UPDATE SET {updates}"
    if connection.vendor == "postgresql":
        _copy_upsert(qn(meta.db_table), columns, conflict, rows)
        return
    # Many rows per statement: SQLite runs each statement in a fraction of the time
    # Django's bulk_create spends compiling it.
    row_marks = f"({', '.join(['%s'] * len(fields))})"
    batch = max(1, 4000 // len(fields))
    statements = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        values = ", ".join([row_marks] * len(chunk))
        sql = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES {values} {conflict}"
        statements.append((sql, [value for row in chunk for value in row]))
    execute_all(statements)


def _copy_upsert(table: str, columns: str, conflict: str, rows: list[list[Any]]) -> None:
    """PostgreSQL: COPY the rows into a temporary table, then one INSERT ... SELECT."""
    with cursor() as c:
        c.execute(f"CREATE TEMP TABLE scheduler_upsert (LIKE {table}) ON COMMIT DROP")
        with c.copy(f"COPY scheduler_upsert ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        c.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM scheduler_upsert {conflict}"
        )
        c.execute("DROP TABLE scheduler_upsert")


def unnest(fields: list[_Field], connection: BaseDatabaseWrapper) -> str:
    """PostgreSQL: ``unnest(%s::type[], ...) AS u(c0, c1, ...)``, one array per field.

    Many rows then travel as a few arrays in one statement whose text does not
    depend on how many rows there are: psycopg parses it once (it re-parsed
    statements of more than 50 parameters at every call) and handles one result
    instead of one per row.
    """
    arrays = ", ".join(f"%s::{field.db_type(connection)}[]" for field in fields)
    return f"unnest({arrays}) AS u({', '.join(f'c{i}' for i in range(len(fields)))})"


@functools.lru_cache(maxsize=32)
def _update_sql(
    model: type[Model], fields: tuple[str, ...], where_in: tuple[tuple[str, int], ...], arrays: bool
) -> str:
    # Built once per shape: the ORM's per-call query compilation cost more than
    # the statement itself (the same for claims: scheduler/claims.py). With
    # ``arrays``, the rows come as one array per column (see ``unnest``).
    connection = connections[conf.database()]
    qn = connection.ops.quote_name
    meta = model._meta
    table = qn(meta.db_table)
    columns = [_field(meta, name) for name in fields]
    values, source = ["%s"] * (len(columns) + 1), ""
    if arrays:
        values = [f"u.c{i}" for i in range(len(columns) + 1)]
        source = f" FROM {unnest([*columns, meta.pk], connection)}"
    assignments = ", ".join(
        f"{qn(_column(f))} = {v}" for f, v in zip(columns, values, strict=False)
    )
    conditions = [f"{table}.{qn(_column(meta.pk))} = {values[-1]}"]
    for name, count in where_in:
        column = qn(_column(_field(meta, name)))
        conditions.append(f"{table}.{column} IN ({', '.join(['%s'] * count)})")
    return f"UPDATE {table} SET {assignments}{source} WHERE {' AND '.join(conditions)}"


def update_many(
    model: type[Model],
    objs: Sequence[Row],
    fields: list[str] | tuple[str, ...],
    where_in: dict[str, tuple[Any, ...] | list[Any]] | None = None,
) -> None:
    """``UPDATE ... WHERE pk = %s`` for many rows: one ``executemany``, or on
    PostgreSQL one statement over arrays (see ``unnest``).

    ``bulk_update`` builds a CASE WHEN per row and field; on the scheduler's
    main loop that cost more than the statement. With ``where_in`` ({field:
    values}), a row is updated only if its field holds one of the values.
    """
    if not objs:
        return
    connection = connections[conf.database()]
    meta = model._meta
    where_in = where_in or {}
    columns = [_field(meta, name) for name in fields]
    extra = [value for allowed in where_in.values() for value in allowed]
    shape = tuple((k, len(v)) for k, v in where_in.items())
    if connection.vendor == "postgresql":
        # One row per key, the last one given: what one UPDATE per row would leave.
        objs = list({obj.pk: obj for obj in objs}.values())
        arrays = [[_prep(f, getattr(obj, f.attname), connection) for obj in objs] for f in columns]
        arrays.append([_prep(meta.pk, obj.pk, connection) for obj in objs])
        with cursor() as c:
            c.execute(_update_sql(model, tuple(fields), shape, True), [*arrays, *extra])
        return
    sql = _update_sql(model, tuple(fields), shape, False)
    adapt = datetime_adapter(connection)
    rows = [
        [_prep(f, getattr(obj, f.attname), connection, adapt) for f in columns]
        + [_prep(meta.pk, obj.pk, connection), *extra]
        for obj in objs
    ]
    executemany(sql, rows)


def executemany(sql: str, rows: list[list[Any]]) -> None:
    with cursor() as c:
        c.executemany(sql, rows)


def execute_all(statements: list[tuple[str, list[Any]]]) -> None:
    with cursor() as c:
        for sql, params in statements:
            c.execute(sql, params)
