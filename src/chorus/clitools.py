"""What every `chorus` command group shares (the main one in chorus.cli, and those packages bring: segments)."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console

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


def _engine(db: str | None, upgrade: bool = True):
    from chorus.store.db import create_engine
    from chorus.store.db import upgrade as do_upgrade

    settings = _settings(db)
    if upgrade:
        do_upgrade(settings.database_url)
    return settings, create_engine(settings.database_url)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc.message if isinstance(exc, ChorusError) else exc}")
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
