"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB


class UTCDateTime(sa.TypeDecorator):
    """Stores naive UTC, always hands back aware UTC datetimes (SQLite drops tzinfo otherwise)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL paths on SQLite
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _dumps(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class JSONDoc(sa.TypeDecorator):
    """JSON document: JSONB on PostgreSQL, text on SQLite; serialised with orjson either way."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(sa.Text())

    def bind_processor(self, dialect):
        if dialect.name == "postgresql":
            # psycopg adapts JSONB from a str via the Jsonb wrapper; pass pre-serialised text cast by the column type.
            from psycopg.types.json import Jsonb

            def process(value):
                return None if value is None else Jsonb(value, dumps=_dumps)

            return process

        def process(value):
            return None if value is None else _dumps(value)

        return process

    def result_processor(self, dialect, coltype):
        if dialect.name == "postgresql":
            return None  # psycopg already decodes jsonb

        def process(value):
            return None if value is None else orjson.loads(value)

        return process
