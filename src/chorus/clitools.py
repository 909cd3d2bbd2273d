"""What every `chorus` command group shares (the main one in chorus.cli, and those packages bring: segments)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console
from typer.core import TyperGroup

from chorus.config import Settings
from chorus.errors import ChorusError

err = Console(stderr=True, soft_wrap=True)

DbOpt = Annotated[
    str | None, typer.Option("--db", help="Database URL (default $CHORUS_DATABASE_URL or sqlite:///./chorus.db)")
]
WsOpt = Annotated[str, typer.Option("--workspace", "-w", help="Workspace name or id")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON")]


def _settings(db: str | None) -> Settings:
    return Settings.from_env(database_url=db)


def _engine(db: str | None, upgrade: bool = True, create: bool = False):
    """The settings and an engine on the store named by ``--db`` (else $CHORUS_DATABASE_URL, else ./chorus.db), its
    schema upgraded first unless ``upgrade`` is False. Only a command that makes a store (``create``: ``db upgrade``,
    ``workspace create``, ``serve``, ``worker``) may name a SQLite file that does not exist yet; the others would
    create an empty one. A store that cannot be opened is a usage error (exit 2) saying why, never the driver's
    text or SQL."""
    import sqlalchemy as sa

    from chorus.store.db import create_engine
    from chorus.store.db import upgrade as do_upgrade

    settings = _settings(db)
    url = settings.database_url
    shown = _check_store(url, create)
    try:
        if not create:
            _holds_a_store(url, shown)
        if upgrade:
            do_upgrade(url)
        engine = create_engine(url)
        if not upgrade:
            with engine.connect():
                pass
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        low = reason.lower()
        if "not a database" in low:
            why = "the file is not a SQLite database"
        elif "readonly" in low or "read-only" in low:
            why = "the database is read-only"
        elif "locked" in low or "busy" in low:
            why = "the database is busy: another process holds a lock on it; try again"
        elif any(w in low for w in ("connect", "connection", "timeout", "host", "authentication", "does not exist")):
            why = "the database could not be reached (is it running, and is the URL right?)"
        else:  # not a question of reaching it: a migration or the schema failed (a bug to report, with the log)
            why = "its schema could not be opened or migrated (the reason is logged)"
            logging.getLogger("chorus.cli").error("cannot open the store at %s: %s", shown, reason)
        _fail(ChorusError(f"cannot open the store at {shown}: {why}", field="db"))
    except sa.exc.NoSuchModuleError:
        _fail(ChorusError(f"cannot open the store at {shown}: its driver is not installed", field="db"))
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _DRIVERS:  # an import inside Chorus or a migration: a bug, shown
            raise
        _fail(ChorusError(f"cannot open the store at {shown}: its driver ({exc.name}) is not installed", field="db"))
    return settings, engine


_DRIVERS = ("psycopg", "psycopg2", "psycopg_binary", "sqlite3", "_sqlite3")


def _holds_a_store(url: str, shown: str) -> None:
    """Exit 2 unless the database at ``url`` holds a Chorus store (its migrations' table; an older schema is then
    upgraded as usual). A command that does not make a store never makes one: pointed at another application's
    database, or an in-memory one, it added Chorus' tables to it (an outside probe: a foreign PostgreSQL database
    got 43 tables, and ``lake export`` exited 0)."""
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from chorus.store.db import alembic_config, normalise_url

    ours = {s.revision for s in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
    probe = sa.create_engine(normalise_url(url), poolclass=sa.pool.NullPool)
    try:
        with probe.begin() as conn:
            if conn.dialect.name == "postgresql":
                # a `chorus db upgrade` (or a first `serve`) making the store right now holds this until it commits
                # (migrations/env.py): wait for it, as the migrations themselves would, rather than say "no store"
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242042)")
            row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first() if sa.inspect(
                conn).has_table("alembic_version") else None  # fmt: skip
    finally:
        probe.dispose()
    # another application's Alembic table holds a revision of its own (review: its migrations' traceback); Chorus'
    # revisions are numbered, so a later number is a store a newer Chorus made (review: "no store" misled)
    found = row is not None and row[0] in ours
    if row is not None and not found and len(str(row[0])) == 4 and str(row[0]).isdigit() and row[0] > max(ours):
        _fail(ChorusError(f"cannot open the store at {shown}: a newer version of Chorus made it (migration {row[0]}; "
                          f"this one knows up to {max(ours)}): upgrade Chorus", field="db"))  # fmt: skip
    if not found:
        _fail(ChorusError(f"cannot open the store at {shown}: the database holds no Chorus store (`chorus db "
                          "upgrade` or `chorus workspace create` makes one)", field="db"))  # fmt: skip


def _check_store(url: str, create: bool) -> str:
    """``url`` as shown to a person (password hidden), once it names a store that can be opened; else exit 2."""
    import os

    import sqlalchemy as sa

    from chorus.errors import unreadable
    from chorus.store.db import normalise_url

    try:
        parsed = sa.engine.make_url(normalise_url(url))
    except (sa.exc.ArgumentError, ValueError):
        _fail(ChorusError(f"cannot open the store at {url!r}: not a database URL (sqlite:///PATH or "
                          "postgresql://USER@HOST/NAME)", field="db"))  # fmt: skip
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)  # as the user wrote it
    kind = parsed.get_backend_name()
    if kind not in ("sqlite", "postgresql"):
        _fail(ChorusError(f"cannot open the store at {shown}: unknown database kind {kind!r} (sqlite or postgresql)",
                          field="db"))  # fmt: skip
    path = parsed.database if kind == "sqlite" else None
    if path and path != ":memory:" and not path.startswith("file:"):
        where = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(where):
            _fail(ChorusError(f"cannot open the store at {shown}: the directory {where} does not exist", field="db"))
        if os.path.isdir(path):
            _fail(ChorusError(f"cannot open the store at {shown}: {path} {unreadable(IsADirectoryError())}",
                              field="db"))  # fmt: skip
        if not create and not os.path.exists(path):
            _fail(ChorusError(f"cannot open the store at {shown}: the file {path} does not exist (`chorus db upgrade` "
                              "or `chorus workspace create` makes a store)", field="db"))  # fmt: skip
    return shown


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    # as text: a message can hold what the user gave (a settings key "[/x]" ended `chorus` with a MarkupError)
    err.print(f"[red]error:[/red] {escape(str(exc.message if isinstance(exc, ChorusError) else exc))}")
    raise typer.Exit(2)


def _open(db: str | None, workspace: str):
    """The engine (the schema upgraded first) and the workspace named by ``workspace`` (its name or id); raises
    ChorusError when there is none."""
    from chorus import workspaces

    _, engine = _engine(db)
    with engine.connect() as conn:
        return engine, workspaces.find(conn, workspace)


def _print_json(doc, indent: bool = False) -> None:
    """``doc`` as one JSON document on stdout (times in ISO 8601; anything else JSON lacks as its text)."""
    sys.stdout.write(orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2 if indent else 0).decode() + "\n")


def _out(doc, json_out: bool, text: str) -> None:
    """A command's result: ``doc`` as JSON with --json, else ``text`` for a person."""
    if json_out:
        _print_json(doc)
    else:
        typer.echo(text)


# What typer says of a value its type refused is pydantic's sentence ("Input should be a valid integer, unable to
# parse string as an integer"; click's "'abc' is not a valid integer." before typer 0.22): said in our words
# instead, naming the option.
_TYPE_WORDS = {
    "int": "must be a whole number",
    "float": "must be a number",
    "finite": "must be a finite number",
    "bool": "must be true or false",
}
# typer's BadParameter is click's (or, in recent typer, its vendored click's): its UsageError is the same one's
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage_words(exc: typer.BadParameter):
    """A usage error in our words for a value the option's type refused, or None to keep ``exc`` as it is."""
    param = exc.param
    if param is None:
        return None
    cause = exc.__cause__
    errors = cause.errors(include_url=False) if hasattr(cause, "errors") else []
    kind = errors[0]["type"] if errors else getattr(getattr(param, "type", None), "name", "")
    words = next((w for prefix, w in _TYPE_WORDS.items() if kind.startswith(prefix)), None)
    if words is None:
        return None
    longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    name = longs[0] if longs else param.human_readable_name
    value = errors[0].get("input") if errors else None
    shown = f", not {value!r}" if isinstance(value, str) and len(value) <= 40 else ""
    return _UsageError(f"{name} {words}{shown}", ctx=exc.ctx)


class ChorusGroup(TyperGroup):
    """The root command group: a subcommand's option refused by its type is worded by :func:`_usage_words`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            better = _usage_words(exc)
            if better is None:
                raise
            raise better from None
