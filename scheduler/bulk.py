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
from collections.abc import Callable, Collection, Iterable, Sequence
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


def column_preps(
    fields: list[models.Field[Any, Any]] | tuple[models.Field[Any, Any], ...],
    connection: Any,
    raw: Collection[str] = (),
) -> list[Callable[[Any], Any] | None]:
    """Per column, what ``_prep`` does to its values, decided once for the column (None:
    the value as it is); for many rows at once (100,000 jobs at a first start). The
    columns of fields named in ``raw`` come as the database takes them already."""
    adapt = datetime_adapter(connection)
    preps: list[Callable[[Any], Any] | None] = []
    for field in fields:
        if isinstance(field, _PLAIN) or field.name in raw:
            preps.append(None)
        elif isinstance(field, models.DateTimeField):
            preps.append(_last_remembered(adapt))
        elif isinstance(field, models.BooleanField):
            preps.append(functools.partial(_prep_bool, field, connection))
        else:
            preps.append(functools.partial(_prep_save, field, connection))
    return preps


def _last_remembered(adapt: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``adapt`` that gives its last answer again for the same (immutable) value: rows
    written together often share one datetime (every catalog row's ``synced_at``, the
    next run time of jobs with one schedule), 1.5 µs each on SQLite."""
    last: list[Any] = [None, None]

    def prep(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, adapt(value)
        return last[1]

    return prep


def _prep_save(field: models.Field[Any, Any], connection: Any, value: Any) -> Any:
    return field.get_db_prep_save(value, connection)


def _prep_bool(field: models.Field[Any, Any], connection: Any, value: Any) -> Any:
    # A bool is what Django's layers make of a bool (a third of a microsecond, each).
    return value if type(value) is bool else field.get_db_prep_save(value, connection)


def prep_rows(
    preps: list[Callable[[Any], Any] | None], rows: Iterable[tuple[Any, ...] | list[Any]]
) -> list[list[Any]]:
    """Rows of model values (one per column of ``preps``) as the database takes them."""
    return [
        [
            value if prep is None or value is None else prep(value)
            for prep, value in zip(preps, row, strict=True)
        ]
        for row in rows
    ]


def upsert(model: type[Model], objs: list[Model], update_fields: list[str]) -> None:
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
    fields = meta.concrete_fields
    rows = [[getattr(obj, f.attname) for f in fields] for obj in objs]
    upsert_rows(model, rows, update_fields)


def upsert_rows(
    model: type[Model],
    rows: list[tuple[Any, ...]] | list[list[Any]],
    update_fields: list[str],
    fields: list[str] | None = None,
    raw: Collection[str] = (),
) -> None:
    """``upsert`` of rows given as values, one per concrete field of the model in order
    (or per field of ``fields``, the others left to their database defaults): no model
    instances (7 µs each; 100,000 of them, twice, at a first start). Values of the
    fields named in ``raw`` are as the database takes them (JSON text, say). SQLite and
    PostgreSQL only; call inside a transaction."""
    if not rows:
        return
    connection = connections[conf.database()]
    meta = model._meta
    qn = connection.ops.quote_name
    columns_of: list[models.Field[Any, Any]] = (
        list(meta.concrete_fields)
        if fields is None
        else [cast("models.Field[Any, Any]", meta.get_field(name)) for name in fields]
    )
    updates = ", ".join(
        f"{qn(column_of(f))} = EXCLUDED.{qn(column_of(f))}"
        for f in columns_of
        if f.name in update_fields
    )
    columns = ", ".join(qn(column_of(f)) for f in columns_of)
    conflict = f"ON CONFLICT ({qn(column_of(meta.pk))}) DO UPDATE SET {updates}"
    preps = column_preps(columns_of, connection, raw)
    if connection.vendor == "postgresql":
        batches = (prep_rows(preps, rows[i : i + 1000]) for i in range(0, len(rows), 1000))
        _copy_upsert(qn(meta.db_table), columns, conflict, (row for b in batches for row in b))
        return
    # Many rows per statement: SQLite runs each statement in a fraction of the time
    # Django's bulk_create spends compiling it. Rows are prepared a batch at a time, so
    # that a first start of 100,000 jobs does not hold all their values at once.
    row_marks = f"({', '.join(['%s'] * len(columns_of))})"
    batch = max(1, 4000 // len(columns_of))
    full_sql = None
    with cursor() as c:
        for start in range(0, len(rows), batch):
            chunk = prep_rows(preps, rows[start : start + batch])
            if len(chunk) == batch and full_sql is not None:
                sql = full_sql
            else:
                values = ", ".join([row_marks] * len(chunk))
                sql = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES {values} {conflict}"
                if len(chunk) == batch:
                    full_sql = sql
            c.execute(sql, [value for row in chunk for value in row])


def column_of(field: Any) -> str:
    """A concrete field's column name."""
    return str(field.column)


def _copy_upsert(table: str, columns: str, conflict: str, rows: Iterable[list[Any]]) -> None:
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
