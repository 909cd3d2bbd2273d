"""The docs stay true: the README's command table names every `chorus` command."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from chorus.cli import app

ROOT = Path(__file__).resolve().parents[1]


def commands(group, prefix: tuple[str, ...] = ("chorus",)):
    if getattr(group, "commands", None):  # a group (typer ships its own click classes)
        for name, sub in group.commands.items():
            yield from commands(sub, (*prefix, name))
    else:
        yield " ".join(prefix)


def test_readme_command_table_lists_every_command():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The `chorus` command", 1)[1].split("\n## ", 1)[0]
    documented = {m.group(1).strip() for m in re.finditer(r"^\| `(chorus(?: [a-z][a-z-]*)+)", table, re.M)}
    existing = set(commands(typer.main.get_command(app)))
    assert existing - documented == set(), "commands missing from the README's table"
    assert documented - existing == set(), "the README's table names commands that do not exist"
