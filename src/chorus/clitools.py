"""What every `chorus` command group shares (the main one in chorus.cli, and those packages bring: segments)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from chorus.config import Settings
from chorus.errors import ChorusError

err = Console(stderr=True, soft_wrap=True)

DbOpt = Annotated[
    str | None, typer.Option("--db", help="Database URL (default $CHORUS_DATABASE_URL or sqlite:///./chorus.db)")
]


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
