"""`chorus segments ...`: define segments from files, recompute them, list their members, export them."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from chorus.clitools import DbOpt, JsonOpt, WsOpt, _fail, _open, _out
from chorus.errors import ChorusError

segments_app = typer.Typer(help="Segments: who is in a group right now (docs/segments.md).", no_args_is_help=True)


def _error(exc: Exception) -> None:
    if isinstance(exc, ChorusError) and exc.field and not exc.message.startswith(exc.field):
        exc = ChorusError(f"{exc.field}: {exc.message}")
    _fail(exc)


@segments_app.command("list")
def segments_list(workspace: WsOpt, db: DbOpt = None, json_out: JsonOpt = False):
    """The workspace's segments, their status and member counts."""
    from chorus.segments import store

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            views = [store.view(conn, w.id, d) for d in store.definitions(conn, w.id).values()]
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out({"segments": views}, json_out,
         "\n".join(f"{v['id']}\t{v['members']} members\t{v['status']}\t{v['name']}" for v in views)
         or "no segments")  # fmt: skip


@segments_app.command("show")
def segments_show(segment: Annotated[str, typer.Argument(help="The segment's id")], workspace: WsOpt,
                  db: DbOpt = None, json_out: JsonOpt = False):  # fmt: skip
    """A segment's rule, status and member count."""
    from chorus.segments import store

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            v = store.view(conn, w.id, store.get(conn, w.id, segment))
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out(v, json_out, f"{v['id']} ({v['name']}): {v['members']} members, {v['status']}, version {v['version']}\n"
         + orjson.dumps(v["rule"], option=orjson.OPT_INDENT_2).decode())  # fmt: skip


def _rule_file(path: str):
    from chorus.journeys.cli import read_definition_text
    from chorus.segments import rules

    # bounded (the API's 10 MB: --rule /dev/zero is refused, not read whole), errors in our words naming the file
    text = read_definition_text(path, f"--rule {path}")
    if path.lower().endswith((".yaml", ".yml")):
        return rules.parse_yaml(text, "rule")
    from chorus import safejson

    return rules.parse(safejson.loads(text.encode(), "rule"), "rule")


@segments_app.command("preview")
def segments_preview(
    rule_file: Annotated[str, typer.Option("--rule", help="The rule: a .json, .yaml or .yml file")],
    workspace: WsOpt,
    sample: Annotated[int, typer.Option(help="How many members to show (0 to 100)")] = 10,
    db: DbOpt = None,
    json_out: JsonOpt = False,
):  # fmt: skip
    """How many people a rule holds now, and a few of them, without saving it (the API's preview)."""
    from chorus.segments.preview import preview
    from chorus.timeutil import utcnow

    try:
        rule = _rule_file(rule_file)
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            doc = preview(conn, w, rule, utcnow(), sample=sample)
    except (ChorusError, ValueError) as exc:
        _error(exc)
    lines = [f"{doc['count']} people"]
    for m in doc["sample"]:
        ids = ", ".join(f"{k}={';'.join(v)}" for k, v in sorted(m["identifiers"].items()))
        lines.append(f"{m['profile_id']}\t{ids}")
    _out(doc, json_out, "\n".join(lines))


@segments_app.command("create")
def segments_create(
    segment: Annotated[str, typer.Argument(help="The segment's id (letters, digits, _ - .)")],
    rule_file: Annotated[str, typer.Option("--rule", help="The rule: a .json, .yaml or .yml file")],
    workspace: WsOpt,
    name: Annotated[str | None, typer.Option(help="A name for people (default: the id)")] = None,
    compute: Annotated[bool, typer.Option(help="Compute the members now (else the worker does)")] = True,
    db: DbOpt = None,
    json_out: JsonOpt = False,
):
    """Create or change a segment from a rule file; its members are computed now (or by the worker)."""
    from chorus.segments import engine as seg
    from chorus.segments import store
    from chorus.timeutil import utcnow

    try:
        store.check_id(segment, "segment")
        rule = _rule_file(rule_file)
        engine, w = _open(db, workspace)
        with engine.begin() as conn:
            d, _ = store.save(conn, w.id, segment, name or segment, rule, utcnow())
        if compute:
            seg.recompute(engine, w.id, segment)
        with engine.connect() as conn:
            v = store.view(conn, w.id, store.get(conn, w.id, segment))
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out(v, json_out, f"{v['id']}: version {v['version']}, {v['members']} members, {v['status']}")


@segments_app.command("recompute")
def segments_recompute(segment: Annotated[str, typer.Argument(help="The segment's id")], workspace: WsOpt,
                       db: DbOpt = None, json_out: JsonOpt = False):  # fmt: skip
    """Compute the segment for everybody now; entries and exits are recorded with the cause batch."""
    from chorus.segments import engine as seg
    from chorus.segments import store

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            store.get(conn, w.id, segment)
        out = seg.recompute(engine, w.id, segment)
    except (ChorusError, ValueError) as exc:
        _error(exc)
    doc = {"segment_id": segment, "entered": len(out.entered), "exited": len(out.exited)}
    _out(doc, json_out, f"{segment}: {doc['entered']} entered, {doc['exited']} exited")


@segments_app.command("members")
def segments_members(segment: Annotated[str, typer.Argument(help="The segment's id")], workspace: WsOpt,
                     limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100, db: DbOpt = None,
                     json_out: JsonOpt = False):  # fmt: skip
    """Who is in the segment now (profile id and since when), in profile id order."""
    from chorus.segments import store

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            store.get(conn, w.id, segment)
            page = store.members_page(conn, w.id, segment, limit, None)
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out({"members": page}, json_out, "\n".join(f"{m['profile_id']}\t{m['since'].isoformat()}" for m in page))


@segments_app.command("export")
def segments_export(
    segment: Annotated[str, typer.Argument(help="The segment's id")], workspace: WsOpt,
    out: Annotated[str, typer.Option("--out", help="The CSV file to write")], db: DbOpt = None,
):  # fmt: skip
    """Write the members as CSV: profile id, user id, email, phone, since (what the API's export gives)."""
    from chorus.segments import store

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            store.get(conn, w.id, segment)
            text = store.members_csv(conn, w, segment)
        with open(out, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except (ChorusError, ValueError, OSError) as exc:
        _error(exc)
    typer.echo(f"{max(0, text.count(chr(10)) - 1)} members written to {out}")
