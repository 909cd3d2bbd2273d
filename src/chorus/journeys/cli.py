"""`chorus journeys ...`: journeys from the command line. ``simulate`` runs a journey file on a virtual clock over
recorded or synthetic events (or, ``--backtest``, over the workspace's stored events), sending nothing and
writing nothing (``journeys.simulate``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer

from chorus.clitools import DbOpt, JsonOpt, _fail, _print_json
from chorus.errors import ChorusError

journeys_app = typer.Typer(help="Journeys: automations that react, wait, branch and speak (docs/journeys.md).",
                           no_args_is_help=True)  # fmt: skip


def read_definition_text(path: str, what: str) -> str:
    """A definition file's text (a journey, a broadcast, a segment's rule), read as far as the HTTP API reads such a
    body (10 MB, the admin API's limit) and no further: ``/dev/zero`` or a huge file is refused, not read whole.
    Errors name the file, in our words (``what`` is how the command calls it: the path, or ``--rule PATH``)."""
    from chorus.api.guard import MAX_JSON_BODY
    from chorus.errors import unreadable

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BODY + 1)
    except OSError as exc:  # never the exception's class or errno
        raise ChorusError(f"{what} {unreadable(exc)}") from None
    if len(data) > MAX_JSON_BODY:
        raise ChorusError(f"{what} is larger than {MAX_JSON_BODY // 2**20} MB (the API's limit for a definition)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # the words `chorus import` uses for a mapping file
        raise ChorusError(f"{what} is not UTF-8 text") from None


def _error(exc: Exception) -> None:
    """One line, exit code 2: the simulator's errors name their file, line and field in the message already."""
    _fail(exc)


def _instant(value: str | None, option: str) -> datetime | None:
    from chorus.timeutil import parse_ts

    if value is None:
        return None
    try:
        return parse_ts(value)
    except (ValueError, TypeError, OverflowError):
        raise ChorusError(f"{option}: not an ISO-8601 timestamp: '{value[:60]}'") from None


def backtest_subjects(conn, w, since: datetime, until: datetime, *, everybody: bool = False) -> list:
    """The people with events in [since, until] (``everybody``: every profile of the workspace) and what they were
    before ``since`` (state and history folded from their earlier events; addresses, computed traits and lists as
    the segment loader reads them now), each with her events of the window to replay. Reads only."""
    import sqlalchemy as sa

    from chorus.profiles import views
    from chorus.profiles.state import apply_event, empty
    from chorus.segments import load
    from chorus.segments.person import Event
    from chorus.store.tables import events, profiles
    from chorus.timeutil import parse_ts

    from .simulate import Subject, identifiers_in

    e = events.c
    if everybody:
        ids = list(conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == w.id)
                                .order_by(profiles.c.id)).scalars())  # fmt: skip
    else:
        ids = list(conn.execute(sa.select(e.profile_id).where(
            e.workspace_id == w.id, e.profile_id.is_not(None), e.timestamp >= since, e.timestamp <= until,
        ).group_by(e.profile_id).order_by(e.profile_id)).scalars())  # fmt: skip
    people = load.people(conn, w.id, ids, w.identity, parts=("computed", "addresses", "lists"),
                         zone_default=w.timezone)
    owned = views.idents_of(conn, w.id, ids)
    policies = w.settings.get("trait_policies") or {}
    out: list[Subject] = []
    for pid in ids:
        p = people.get(pid)
        if p is None:
            continue
        mine = frozenset(owned.get(pid, ()))
        s = Subject(pid, computed=p.computed, addresses=p.addresses, lists=p.lists, known=True, owned=mine)
        s.state = empty()
        rows = conn.execute(sa.select(e.payload, e.trusted).where(e.workspace_id == w.id, e.profile_id == pid,
                                                                  e.timestamp <= until).order_by(e.timestamp, e.seq))
        trusted = set()
        for payload, sent_trusted in rows:
            if parse_ts(payload["timestamp"]) < since:
                apply_event(s.state, payload, pid, policies)
                # hers as of then, as resolution read them (a trusted alias' previousId is a user id)
                s.identifiers.update(i for i in identifiers_in(payload, w.identity, bool(sent_trusted)) if i in mine)
                s.history.append(Event.from_payload(payload))
            else:
                if sent_trusted:
                    trusted.add(len(s.payloads))
                s.payloads.append(payload)
        s.trusted = frozenset(trusted)
        out.append(s)
    return out


@journeys_app.command("simulate")
def journeys_simulate(
    file: Annotated[str, typer.Argument(help="The journey: a .yaml, .yml or .json file")],
    events_file: Annotated[str | None, typer.Option("--events", help="Events as JSON lines (Segment spec)")] = None,
    segments_file: Annotated[str | None, typer.Option("--segments", help="Segments: id -> rule (YAML or JSON)")] = None,
    templates_file: Annotated[
        str | None, typer.Option("--templates", help="Templates: name -> channels (default: every channel)")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Where the virtual clock stops (ISO 8601)")] = None,
    start: Annotated[str | None, typer.Option(help="Start every person at this instant (API/scheduled entry)")] = None,
    start_data: Annotated[str | None, typer.Option("--start-data", help=(
        "API starts with their data, JSON lines: {\"userId\": ..., \"data\": {...}, \"at\": ...}"))] = None,
    backtest: Annotated[
        int | None, typer.Option("--backtest", min=1, max=3650, help="Replay the stored events of the last DAYS")
    ] = None,
    workspace: Annotated[str | None, typer.Option("--workspace", "-w", help=(
        "Workspace name or id: its settings, segments and templates (needed by --backtest)"))] = None,
    db: DbOpt = None,
    json_out: JsonOpt = False,
):
    """Run a journey on a virtual clock and report entries, nodes, branches, messages per channel, conversions and
    exits. Nothing is sent and nothing is written."""
    from chorus.journeys import simulate as sm
    from chorus.timeutil import utcnow

    try:
        defn = sm.read_definition(file)
        segments = sm.read_segments(segments_file) if segments_file else None
        templates = sm.read_templates(templates_file) if templates_file else None
        stop, begin = _instant(until, "--until"), _instant(start, "--start")
        starts = _starts(defn, start_data, begin)
        if starts is not None:
            begin = None  # --start is the time of the lines without theirs: nobody else is started
        # where the journey's segments come from, for the check that each is there (a publish's check)
        source = segments_file if segments_file else f"the workspace '{workspace}'" if workspace else None
        if backtest is None:
            if events_file is None:
                raise ChorusError("give --events FILE, or --backtest DAYS with --workspace")
            subjects = sm.people_from_payloads(sm.read_events(events_file))
            if starts is not None:
                sm.give_starts(subjects, starts)
            # with --workspace, its settings (time zone, topics, identity, trait policies) and, unless given, its
            # segments and templates, as a backtest reads them (an outside probe: local delays ran in UTC here
            # while the live runtime used the workspace's zone)
            context = _workspace_context(db, workspace, segments, templates, defn) if workspace else {
                "segments": segments, "templates": templates}
            sm.check_segments(defn, context["segments"], source, file)
            report = sm.simulate(defn, subjects, start=begin, until=stop, **context)
        else:
            if events_file is not None:
                raise ChorusError("--events and --backtest are exclusive: a backtest replays the stored events")
            if workspace is None:
                raise ChorusError("--backtest needs --workspace")
            report = _backtest(defn, backtest, db, workspace, segments, templates, begin, stop or utcnow(), starts,
                               source, file)  # fmt: skip
    except OverflowError:  # a time past the end of the calendar that no check above caught: said, not a traceback
        _error(ChorusError("a time went past the end of the calendar (year 9999): give earlier times"))
    except (ChorusError, ValueError) as exc:
        _error(exc)
    if json_out:
        _print_json(report.to_json())
    else:
        _table(report)


def _starts(defn, path: str | None, begin: datetime | None) -> list | None:
    """``--start-data``'s starts (None without it). An API entry with a key takes the key from each start's data,
    as ``POST /api/journeys/{id}/start`` does: ``--start`` alone, without data, would enter nobody (an outside
    probe: a receipt journey keyed by order_id predicted 0 entries without a word)."""
    from chorus.journeys import definition as d
    from chorus.journeys import simulate as sm

    api = isinstance(defn.entry, d.ApiEntry)
    if path is None:
        if api and begin is not None and defn.entry_key is not None:
            key = defn.entry_key
            raise ChorusError(f"--start: {defn.id} is entered by an API call with the key {key}, which each start "
                              "takes from its data: give the starts with --start-data FILE (JSON lines: "
                              f'{{"userId": "u1", "data": {{"{key}": "..."}}}})', field="--start")  # fmt: skip
        return None
    if not api:
        kind = "a segment" if isinstance(defn.entry, d.SegmentEntry) else (
            "a schedule" if isinstance(defn.entry, d.Schedule) else "an event")  # fmt: skip
        raise ChorusError(f"--start-data: {defn.id} is not entered by an API call (it is entered by {kind})",
                          field="--start-data")  # fmt: skip
    return sm.read_starts(path, defn, begin)


def _backtest(defn, days: int, db, workspace: str, segments, templates, start, until, starts=None, source=None,
              file=None):  # fmt: skip
    from chorus.clitools import _open
    from chorus.journeys import definition as d
    from chorus.journeys import simulate as sm
    from chorus.segments.times import plus

    since = plus(until, -timedelta(days=days))
    engine, w = _open(db, workspace)
    with engine.connect() as conn:  # read only: nothing is committed
        # a journey entered by a segment (or a start) concerns people without a recent event too: somebody who
        # did nothing for 60 days enters "lapsed" by time alone
        everybody = not isinstance(defn.entry, d.EventEntry)
        subjects = backtest_subjects(conn, w, since, until, everybody=everybody)
    if starts is not None:
        sm.give_starts(subjects, starts)
    context = _workspace_context(db, workspace, segments, templates, defn)
    sm.check_segments(defn, context["segments"], source, file)
    return sm.simulate(defn, subjects, start=start, until=until, since=since, **context)


def _workspace_context(db, workspace: str, segments, templates, defn) -> dict:
    """What a simulation reads from the workspace: its segments and templates (unless given), its topics,
    identity, trait policies and time zone. With neither file given, the journey is checked against the workspace
    as a publish checks it (an outside probe: a misspelt template was a 400 on publish, and a backtest reported
    messages on channel "none" as if all were well); give ``--templates``/``--segments`` to try others."""
    from chorus.clitools import _open
    from chorus.journeys import manage
    from chorus.messaging import outbox
    from chorus.segments import store as segments_store

    engine, w = _open(db, workspace)
    with engine.connect() as conn:
        if segments is None and templates is None:
            manage.check(conn, w.id, defn)
        if segments is None:
            segments = {sid: s.rule for sid, s in segments_store.definitions(conn, w.id).items()}
        if templates is None:
            templates = {name: frozenset(chs) for name, chs in outbox.template_channels(conn, w.id).items()}
    return {"segments": segments, "templates": templates, "topics": (w.settings.get("messaging") or {}).get("topics"),
            "identity": w.identity, "policies": w.settings.get("trait_policies"), "timezone": w.timezone}


def _table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    doc = report.to_json()
    console = Console(soft_wrap=True)
    console.print(f"[bold]{doc['journey']}[/bold]: {doc['since']} to {doc['until']} (virtual clock; nothing sent)")
    console.print(f"{doc['people']} people, {doc['entries']} entries ({doc['people_entered']} people), "
                  f"{doc['waiting']} waiting now, {doc['conversions']['total']} conversions")  # fmt: skip
    nodes = Table("node", "entered", "passed", "waiting", "exited", "converted", "branches", title="Nodes")
    for nid, n in doc["nodes"].items():
        branches = ", ".join(f"{b} {c}" for b, c in n["branches"].items())
        nodes.add_row(nid, *(str(n[k]) for k in ("entered", "passed", "waiting", "exited", "converted")), branches)
    console.print(nodes)
    msgs = Table("node", *(doc["messages"]["by_channel"] or ["-"]), title="Messages per channel")
    for nid, by in doc["messages"]["by_node"].items():
        msgs.add_row(nid, *(str(by.get(ch, 0)) for ch in doc["messages"]["by_channel"]))
    msgs.add_row("[bold]all[/bold]", *(str(c) for c in doc["messages"]["by_channel"].values()))
    console.print(msgs)
    if doc["conversions"]["by_arm"]:
        arms = Table("split", "arm", "entered", "converted", "rate", "messages", title="Conversions per arm")
        for split, by in doc["conversions"]["by_arm"].items():
            for arm, a in by.items():
                rate = f"{100 * a['converted'] / a['entered']:.1f}%" if a["entered"] else "-"
                arms.add_row(split, arm, str(a["entered"]), str(a["converted"]), rate, str(a["messages"]))
        console.print(arms)
    exits = Table("reason", "exits", title="Exits")
    for reason, n in doc["exits"].items():
        exits.add_row(reason, str(n))
    if doc["exited_at_entry"]:
        exits.add_row("(of which at entry)", str(doc["exited_at_entry"]))
    console.print(exits)
    if doc["effects"]:
        effects = Table("effect", "count", title="Other steps (not carried out)")
        for what, n in doc["effects"].items():
            effects.add_row(what, str(n))
        console.print(effects)
