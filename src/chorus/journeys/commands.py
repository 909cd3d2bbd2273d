"""`chorus journeys publish|list|show|pause|resume|stop|archive|stats` and `chorus journeys broadcast FILE`:
managing journeys from the command line, on the same functions as the HTTP API (``journeys.manage``,
``journeys.stats``). Added to the ``journeys`` command group of ``journeys.cli``."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from chorus import safejson
from chorus.clitools import DbOpt, JsonOpt, WsOpt, _fail, _open, _out
from chorus.errors import ChorusError
from chorus.journeys.cli import journeys_app


def _error(exc: Exception) -> None:
    if isinstance(exc, ChorusError) and exc.field and not exc.message.startswith(exc.field):
        exc = ChorusError(f"{exc.field}: {exc.message}")
    _fail(exc)


def _document(path: str) -> object:
    """A journey or broadcast file: JSON, or YAML (.yaml, .yml) with the journeys' safe loader."""
    from chorus.journeys import definition as d
    from chorus.journeys.cli import read_definition_text

    text = read_definition_text(path, path)  # bounded (the API's 10 MB), errors in our words naming the file
    if path.endswith((".yaml", ".yml")):
        return d.load_yaml(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    # in the HTTP API's words (what is wrong, at which line and column), never orjson's text or a character offset
    safejson.parse(text, path)
    raise ChorusError(f"{path} is not valid JSON")


def _migrate(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for v in values:
        old, sep, new = v.partition("=")
        if not sep or not old or not new:
            raise ChorusError(f"--migrate takes OLD=NEW node ids, not '{v[:64]}'")
        if old in out and out[old] != new:
            raise ChorusError(f"--migrate: '{old[:64]}' is migrated twice; people at one node move to one node",
                              field=f"migrate.{old[:64]}")  # fmt: skip
        out[old] = new
    return out


FileArg = Annotated[str, typer.Argument(help="The definition: JSON, or YAML (.yaml)")]
IdArg = Annotated[str, typer.Argument(help="The journey's (or broadcast's) id")]


@journeys_app.command("publish")
def journeys_publish(
    file: FileArg, workspace: WsOpt, db: DbOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and say who is affected; write nothing")] = False,
    migrate: Annotated[list[str] | None, typer.Option("--migrate", help="OLD=NEW: move people waiting at OLD")] = None,
    json_out: JsonOpt = False,
):  # fmt: skip
    """Validate a journey and publish it as a new version (people inside keep theirs unless --migrate moves them)."""
    from chorus.journeys import manage
    from chorus.timeutil import utcnow

    try:
        doc = _document(file)
        engine, w = _open(db, workspace)
        with engine.begin() as conn:
            out = manage.publish(conn, w.id, doc, utcnow(), dry_run=dry_run, migrate=_migrate(migrate))
    except (ChorusError, ValueError) as exc:
        _error(exc)
    where = "\n".join(f"  v{p['version']} {p['node']} ({p['status']}): {p['people']}"
                      + (f" -> {p['moves_to']}" if "moves_to" in p else "") for p in out["where"])  # fmt: skip
    head = ("would publish" if dry_run else "published") + f" {out['id']} version {out['version']}"
    _out(out, json_out, f"{head}; {out['people_inside']} people inside, {out['moving']} moving" +
         (f"\n{where}" if where else ""))  # fmt: skip


@journeys_app.command("broadcast")
def journeys_broadcast(
    file: FileArg, workspace: WsOpt, db: DbOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate only; write nothing")] = False,
    json_out: JsonOpt = False,
):  # fmt: skip
    """Publish a broadcast: one message to a segment, now or on a schedule (docs/journeys.md#broadcasts)."""
    from chorus.journeys import manage
    from chorus.timeutil import utcnow

    try:
        doc = _document(file)
        engine, w = _open(db, workspace)
        with engine.begin() as conn:
            out = manage.publish_broadcast(conn, w.id, doc, utcnow(), dry_run=dry_run)
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out(out, json_out, ("would publish" if dry_run else "published") + f" broadcast {out['id']} "
         f"version {out['version']}")  # fmt: skip


@journeys_app.command("list")
def journeys_list(workspace: WsOpt, db: DbOpt = None, json_out: JsonOpt = False):
    """The workspace's journeys and broadcasts: kind, entry, status, current version."""
    from chorus.journeys import manage, store

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            views = [manage.view(conn, w.id, jid) for jid in store.all_journeys(conn, w.id)]
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out({"journeys": views}, json_out,
         "\n".join(f"{v['id']}\t{v['kind']}\t{v['entry']}\t{v['status']}\tv{v['version']}\t{v['name']}"
                   for v in views) or "no journeys")  # fmt: skip


@journeys_app.command("show")
def journeys_show(
    journey: IdArg, workspace: WsOpt, db: DbOpt = None,
    version: Annotated[int | None, typer.Option("--version", help="A version (default: the current one)")] = None,
    json_out: JsonOpt = False,
):  # fmt: skip
    """A journey's status, versions and definition."""
    from chorus.journeys import manage

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            v = manage.view(conn, w.id, journey)
            v["definition"] = manage.definition_json(conn, w.id, journey, version)
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out(v, json_out, f"{v['id']} ({v['name']}): {v['kind']}, {v['status']}, version {v['version']}\n"
         + orjson.dumps(v["definition"], option=orjson.OPT_INDENT_2).decode())  # fmt: skip


def _control(action: str, journey: str, workspace: str, db: str | None, json_out: bool) -> None:
    from chorus.journeys import manage
    from chorus.timeutil import utcnow

    try:
        engine, w = _open(db, workspace)
        with engine.begin() as conn:
            v = manage.control(conn, w.id, journey, action, utcnow())
    except (ChorusError, ValueError) as exc:
        _error(exc)
    _out(v, json_out, f"{v['id']}: {v['status']}")


@journeys_app.command("pause")
def journeys_pause(journey: IdArg, workspace: WsOpt, db: DbOpt = None, json_out: JsonOpt = False):
    """Pause: inputs and timers are held, nothing runs, nothing is lost."""
    _control("pause", journey, workspace, db, json_out)


@journeys_app.command("resume")
def journeys_resume(journey: IdArg, workspace: WsOpt, db: DbOpt = None, json_out: JsonOpt = False):
    """Resume: the held inputs are given again in their time order by the worker."""
    _control("resume", journey, workspace, db, json_out)


@journeys_app.command("stop")
def journeys_stop(journey: IdArg, workspace: WsOpt, db: DbOpt = None, json_out: JsonOpt = False):
    """Stop for good: everybody inside exits, nothing more is sent, nobody enters."""
    _control("stop", journey, workspace, db, json_out)


@journeys_app.command("archive")
def journeys_archive(journey: IdArg, workspace: WsOpt, db: DbOpt = None, json_out: JsonOpt = False):
    """Archive: stopped, and listed as archived."""
    _control("archive", journey, workspace, db, json_out)


@journeys_app.command("stats")
def journeys_stats(
    journey: IdArg, workspace: WsOpt, db: DbOpt = None,
    version: Annotated[int | None, typer.Option("--version", help="One version (default: all)")] = None,
    json_out: JsonOpt = False,
):  # fmt: skip
    """Per version and node: entered, waiting now, passed, exited, converted; per split arm, conversions."""
    from chorus.journeys import stats

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            out = stats.stats(conn, w.id, journey, version)
    except (ChorusError, ValueError) as exc:
        _error(exc)
    lines = []
    t = out["totals"]
    lines.append(f"{journey}: {t['entered']} entered, {t['converted']} converted, {t['exited']} exited, "
                 f"{t['inside']} inside now")  # fmt: skip
    for v in out["versions"]:
        lines.append(f"version {v['version']}")
        for n in v["nodes"]:
            lines.append(f"  {n['node']:<20} {n['type']:<10} entered {n['entered']:>7}  waiting {n['waiting_now']:>7}"
                         f"  passed {n['passed']:>7}  exited {n['exited']:>7}  converted {n['converted']:>7}")
        for a in v["arms"]:
            lines.append(f"  arm {a['split']}/{a['arm']}{' (holdout)' if a['holdout'] else ''}: {a['entered']} "
                         f"entered, {a['converted']} converted ({a['conversion_rate']})")  # fmt: skip
    _out(out, json_out, "\n".join(lines))
