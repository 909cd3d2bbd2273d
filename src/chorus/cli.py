"""The `chorus` command."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Annotated

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from chorus import gctune
from chorus.clitools import ChorusGroup
from chorus.errors import ChorusError

app = typer.Typer(help="Chorus: omnichannel customer engagement platform.", no_args_is_help=True, cls=ChorusGroup)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
ws_app = typer.Typer(help="Workspaces and their keys.", no_args_is_help=True)
import_app = typer.Typer(help="Bring offline channels in as events.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ws_app, name="workspace")
channels_app = typer.Typer(help="Message channels and their providers.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(channels_app, name="channels")
from chorus.clitools import (  # noqa: E402 - shared with packages' commands
    DbOpt,
    JsonOpt,
    WsOpt,
    _engine,
    _fail,
    _open,
    _out,
    _print_json,
    err,
)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None):
    """Apply migrations up to the latest schema."""
    _engine(db, create=True)  # makes the store (a SQLite file) if there is none
    err.print("database is up to date")


DevOpt = Annotated[
    bool,
    typer.Option(
        "--dev",
        help="Try channels without accounts: messages to a channel the workspace has no provider for are written to "
        "files in --outbox (email as .eml) instead of being skipped. Never for production.",
    ),
]
OutboxOpt = Annotated[
    str | None,
    typer.Option(help="Where file sinks write (default $CHORUS_OUTBOX_DIR or ./chorus-outbox)", show_default=False),
]


def _outbox(dev: bool, outbox: str | None) -> None:
    """Set the process's outbox directory (file sinks read it where they are built) and say where messages go."""
    from chorus.messaging.providers.sink import ROOT_ENV, outbox_root

    if outbox is not None:
        os.environ[ROOT_ENV] = os.path.abspath(outbox)
    if dev:
        err.print(f"[bold yellow]Dev mode:[/bold yellow] messages to a channel without a provider are written to "
                  f"{outbox_root()} (email as .eml files), [bold]not sent[/bold]")  # fmt: skip


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    db: DbOpt = None,
    workers: Annotated[bool, typer.Option("--worker/--no-worker", help="Run the background worker in-process")] = True,
    dev: DevOpt = False,
    outbox: OutboxOpt = None,
):
    """Run the HTTP API and the background worker in one process (migrations are applied first)."""
    import uvicorn

    from chorus import workspaces
    from chorus.app import create_app

    gctune.mode()  # a wrong CHORUS_GC stops the command before it creates anything
    settings, engine = _engine(db, create=True)
    settings = dataclasses.replace(settings, dev=dev)
    if "CHORUS_PUBLIC_URL" not in os.environ:  # links in messages point at this server unless told otherwise
        settings = dataclasses.replace(settings, public_url=f"http://{host}:{port}")
        # the in-process worker builds its links from the environment (messaging.links.for_store): the same URL
        os.environ["CHORUS_PUBLIC_URL"] = settings.public_url
    _setup_logging()
    with engine.connect() as conn:
        first_run = not workspaces.list_all(conn)
    if first_run:  # a fresh install should be usable at once; keys are shown this one time
        ws = workspaces.create(engine, "default")
        err.print("[bold]Created workspace 'default'[/bold] (keys are shown only now):")
        for k in ("write_key", "server_write_key", "api_key"):
            err.print(f"  {k}: {ws[k]}")
    err.print(f"Chorus on http://{host}:{port}  (store: {engine.url.render_as_string(hide_password=True)})")
    _outbox(dev and workers, outbox)
    api = create_app(settings, run_worker=workers, engine=engine)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # uvicorn waits for every open response, then shuts the app down: tell the app at the signal, so that an
            # inbox stream ends and the worker stops after its current transaction instead of its whole pass
            api.state.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(api, host=host, port=port, log_level="warning", access_log=False)
    gctune.tune()  # the startup heap (app, routes, metadata) built: frozen out of the collector's passes
    Server(config).run()


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # HTTP client libraries (of dependencies) log every request at INFO: a line per message sent is noise
    for name in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.command()
def worker(
    db: DbOpt = None,
    batch: Annotated[
        int | None, typer.Option(help="Events per transaction (default $CHORUS_WORKER_BATCH or 2000)")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port")] = None,
    dev: DevOpt = False,
    outbox: OutboxOpt = None,
):
    """Run the background worker alone. Run as many as you like against PostgreSQL."""
    from chorus.worker import Worker

    gctune.mode()
    settings, engine = _engine(db, create=True)
    _setup_logging()
    _outbox(dev, outbox)
    w = Worker(engine, batch or settings.worker_batch, settings.worker_poll_seconds, dev=dev)
    if metrics_port:
        from prometheus_client import start_http_server

        from chorus import metrics

        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.REGISTRY)
    stop = threading.Event()

    def _stop(*_):
        w.stopping.set()
        w.wake.set()
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    err.print(f"worker started (pid {os.getpid()})")
    gctune.tune()
    w.run()
    w.stop()  # the loop has ended: close every task (delivery's threads and provider connections)


@ws_app.command("create")
def ws_create(
    name: str, db: DbOpt = None, json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False
):
    """Create a workspace and print its keys (the api key is shown only now)."""
    from chorus import workspaces

    _, engine = _engine(db, create=True)
    try:
        out = workspaces.create(engine, name)
    except (ChorusError, ValueError) as exc:
        _fail(exc)
    if json_out:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        for k, v in out.items():
            typer.echo(f"{k}: {v}")
        err.print("[yellow]Keep the api_key and server_write_key secret; they are not shown again.[/yellow]")


@ws_app.command("list")
def ws_list(db: DbOpt = None):
    """List workspaces."""
    from chorus import workspaces

    _, engine = _engine(db)
    with engine.connect() as conn:
        for w in workspaces.list_all(conn):
            typer.echo(f"{w.id}\t{w.name}")


@ws_app.command("settings")
def ws_settings(
    workspace: str,
    set_json: Annotated[str | None, typer.Option("--set", help='JSON patch, e.g. \'{"default_region": "GB"}\'')] = None,
    db: DbOpt = None,
):
    """Show or change a workspace's settings (a change gets the checks of PATCH /api/workspace/settings)."""
    from chorus import safejson, workspaces

    _, engine = _engine(db)
    try:
        with engine.connect() as conn:
            w = workspaces.find(conn, workspace)
        settings = w.settings
        if set_json is not None:
            # what the API's gate does to a body (chorus.api.guard), then the registered settings validators
            patch = safejson.check(safejson.parse(set_json, "--set"), "settings")
            duplicated = safejson.duplicate_key(set_json, "settings")
            if duplicated:
                raise ChorusError(f"{duplicated} is given twice", field=duplicated)
            if not isinstance(patch, dict):
                raise ChorusError('--set must be a JSON object, e.g. \'{"default_region": "GB"}\'', field="--set")
            settings = workspaces.update_settings(engine, w.id, patch)
    except (ValueError, OverflowError) as exc:
        _fail(ChorusError(_value_words(exc)))
    except ChorusError as exc:
        _fail(exc)
    sys.stdout.write(orjson.dumps(settings, option=orjson.OPT_INDENT_2).decode() + "\n")


def _value_words(exc: Exception) -> str:
    """A validator's ValueError as it reads (it names the field); Python's own (an overflow) said generally."""
    text = str(exc)
    if isinstance(exc, OverflowError) or not text or "out of range" in text and "settings." not in text:
        return "settings: a number is out of range"
    return text


@ws_app.command("identity-secret")
def ws_identity_secret(
    workspace: str,
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it; old hashes stop working")] = False,
    db: DbOpt = None,
):
    """Show (or rotate) the secret your server uses to compute userHash = hex(HMAC-SHA256(secret, userId))."""
    from chorus import workspaces
    from chorus.workspaces import verification

    _, engine = _engine(db)
    try:
        with engine.connect() as conn:
            w = workspaces.find(conn, workspace)
        value = verification.rotate(engine, w.id) if rotate else verification.secret(engine, w.id)
    except (ChorusError, ValueError) as exc:
        _fail(exc)
    typer.echo(value)
    if not verification.required(w.settings):
        err.print("[yellow]Identity verification is off for this workspace (messaging.inbox_verification).[/yellow]")


keys_app = typer.Typer(help="Rotate and revoke a workspace's api key and write keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
def keys_list(workspace: str, db: DbOpt = None):
    """A workspace's write keys by source (client keys are public and shown; server keys are secret)."""
    from chorus import workspaces

    _, engine = _engine(db)
    try:
        with engine.connect() as conn:
            rows = workspaces.list_keys(conn, workspaces.find(conn, workspace).id)
    except ChorusError as exc:
        _fail(exc)
    typer.echo("api_key\t(one per workspace; rotate to replace it)")
    for r in rows:
        state = "revoked" if r["revoked"] else (r["write_key"] or "(secret)")
        typer.echo(f"{r['source']}\t{r['kind']}\t{state}")


def _key_target(workspace: str, source: str | None, api: bool, db: str | None):
    """The engine and workspace id of a key command, which names exactly one of --api or --source."""
    from chorus import workspaces

    if api == bool(source):
        _fail(ChorusError("give exactly one of --api or --source NAME"))
    _, engine = _engine(db)
    try:
        with engine.connect() as conn:
            return engine, workspaces.find(conn, workspace).id
    except ChorusError as exc:
        _fail(exc)


@keys_app.command("rotate")
def keys_rotate(
    workspace: str,
    source: Annotated[str | None, typer.Option(help="rotate this source's write key (browser, server, ...)")] = None,
    api: Annotated[bool, typer.Option("--api", help="rotate the api key")] = False,
    db: DbOpt = None,
):
    """Make a new key (printed once); the old one stops working (running servers: within 30 s)."""
    from chorus import workspaces

    engine, ws_id = _key_target(workspace, source, api, db)
    try:
        out = workspaces.rotate_api_key(engine, ws_id) if api else workspaces.rotate_write_key(engine, ws_id, source)
    except ChorusError as exc:
        _fail(exc)
    typer.echo(out["api_key"] if api else out["write_key"])
    err.print("[yellow]The new key is shown only now; the old one stops working.[/yellow]")


@keys_app.command("revoke")
def keys_revoke(
    workspace: str,
    source: Annotated[str | None, typer.Option(help="revoke this source's write key")] = None,
    api: Annotated[bool, typer.Option("--api", help="revoke the api key (refused: rotate it instead)")] = False,
    db: DbOpt = None,
):
    """Revoke a source's write key (running servers refuse it within 30 s). The api key cannot be revoked."""
    from chorus import workspaces

    engine, ws_id = _key_target(workspace, source, api, db)
    try:
        if api:
            workspaces.revoke_api_key(engine, ws_id)  # always refused (409): say why
        else:
            workspaces.revoke_write_key(engine, ws_id, source)
    except ChorusError as exc:
        _fail(exc)
    typer.echo(f"revoked the write key of {source}")


@import_app.command("events")
def import_events(
    file: Annotated[str, typer.Argument(help=".csv, .jsonl or .parquet")],
    source: Annotated[str, typer.Option(help="The offline channel: store, call_center, catalog, ...")],
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace name or id")],
    mapping: Annotated[str | None, typer.Option(help="Mapping file (JSON); see docs/import.md")] = None,
    db: DbOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
):
    """Import offline events. Re-importing the same file is a no-op; bad rows are listed with their line."""
    from chorus import workspaces
    from chorus.collect import imports
    from chorus.errors import unreadable

    _, engine = _engine(db)
    try:
        with engine.connect() as conn:
            w = workspaces.find(conn, workspace)
        if not os.path.isfile(file):
            problem = IsADirectoryError() if os.path.isdir(file) else FileNotFoundError()
            raise ChorusError(f"file {file} {unreadable(problem)}", field="file")
        total = imports.count_rows(file)
        with Progress(
            TextColumn("[bold]importing[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=err, transient=json_out,
        ) as bar:  # fmt: skip
            task = bar.add_task(os.path.basename(file), total=total)
            result = imports.run_import(
                engine, w.id, file, source, mapping_path=mapping, progress=lambda n: bar.advance(task, n)
            )
    except (ChorusError, ValueError) as exc:
        _fail(exc)
    if json_out:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        typer.echo(
            f"{result['rows']} rows: {result['imported']} imported, {result['duplicates']} already there, "
            f"{result['failed']} failed (import {result['id']})"
        )
        for e in result["errors"][:50]:
            typer.echo(f"  line {e['line']}: {e['reason']}")
        if len(result["errors"]) > 50:
            typer.echo(f"  ... {len(result['errors']) - 50} more; see GET /api/imports/{result['id']}")
    if result["failed"]:
        raise typer.Exit(1)


@channels_app.command("test")
def channels_test(
    channel: Annotated[str, typer.Argument(help="email, sms, whatsapp, messenger, push or webhook")],
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace name or id")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="Address: email, phone, PSID, device token or web push subscription JSON"),
    ] = None,
    db: DbOpt = None,
):
    """Send a test message through each configured provider of a channel, and say what each answered."""
    import uuid

    from chorus import workspaces
    from chorus.messaging.delivery import ProviderSet
    from chorus.messaging.probe import ProbeError, probe_message
    from chorus.messaging.providers import ConfigError, Outgoing, ProviderError

    _, engine = _engine(db)
    try:
        with engine.connect() as conn:
            w = workspaces.find(conn, workspace)
        address, content = probe_message(channel, to, w.identity.default_region)
        provs = ProviderSet().get(w, channel)
    except (ChorusError, ProbeError, ConfigError, ValueError) as exc:
        _fail(exc)
    out = Outgoing(
        message_id="test_" + uuid.uuid4().hex[:16], workspace_id=w.id, channel=channel, address=address,
        kind="transactional", topic="transactional", content=content,
    )  # fmt: skip
    provs = [p for p in provs if getattr(p[0], "accepts", lambda _o: True)(out)]
    if not provs:
        _fail(ChorusError(f"no {channel} provider for this address (settings.messaging.providers.{channel})"))
    failed = 0
    for prov, *_ in provs:
        try:
            provider_id = prov.send(out)
            typer.echo(f"{prov.name}: sent ({provider_id})")
        except ProviderError as exc:
            failed += 1
            typer.echo(f"{prov.name}: FAILED ({type(exc).__name__}): {exc.reason}")
        finally:
            prov.close()
    if failed:
        raise typer.Exit(1)


audiences_app = typer.Typer(
    help="Social audiences: Meta Custom Audiences, Google Customer Match.", no_args_is_help=True
)
app.add_typer(audiences_app, name="audiences")


@audiences_app.command("sync")
def audiences_sync(
    name: Annotated[str, typer.Argument(help="The audience's name")],
    workspace: WsOpt,
    profiles: Annotated[
        str | None,
        typer.Option("--profiles", help="One profile id or kind:value per line (email:a@b.c); none for an audience "
                     "that follows a segment (its members are the segment's)"),
    ] = None,
    mode: Annotated[str, typer.Option(help="replace (the file is the audience), add or remove")] = "replace",
    db: DbOpt = None,
    json_out: JsonOpt = False,
):
    """Sync an audience to its ad platform: only additions and removals are sent; bad lines are listed."""
    from chorus.messaging.audiences import sync
    from chorus.messaging.audiences.membership import parse_lines

    try:
        engine, w = _open(db, workspace)
        if profiles is None:
            result = sync.sync_followed(engine, w, name)
        else:
            result = _sync_file(engine, w, name, profiles, mode, parse_lines)
    except (ChorusError, ValueError) as exc:
        _fail(exc)
    # a caller's bad lines fail the command; a segment's members without consent or an address are simply not
    # uploaded (listed, not an error: the next sync skips them again)
    _print_sync(name, result, json_out, fail_on_skips=profiles is not None)


def _sync_file(engine, w, name: str, profiles: str, mode: str, parse_lines) -> dict:
    from chorus.messaging.audiences import sync

    try:
        with open(profiles, encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChorusError(f"--profiles {profiles}: {exc}") from None
    return sync.sync(engine, w, name, parse_lines(text, tuple(w.identity.declared)), mode)


def _print_sync(name: str, result: dict, json_out: bool, fail_on_skips: bool = True) -> None:
    skipped = result["skipped"]
    lines = [f"{name}: {result['added']} added, {result['removed']} removed, {result['unchanged']} unchanged, "
             f"{skipped['total']} skipped; {result['members']} members"]  # fmt: skip
    lines += [f"  {item['at']}: {item['reason']}: {item['detail']} ({item['input']})" for item in skipped["items"]]
    if skipped["total"] > len(skipped["items"]):
        lines.append(f"  ... {skipped['total'] - len(skipped['items'])} more")
    _out(result, json_out, "\n".join(lines))
    if skipped["total"] and fail_on_skips:
        raise typer.Exit(1)


@audiences_app.command("create")
def audiences_create(
    name: Annotated[str, typer.Argument(help="The audience's name")],
    workspace: WsOpt,
    provider: Annotated[str, typer.Option(help="A provider of settings.audiences.providers, or file")],
    destination: Annotated[str | None, typer.Option(help="The platform's audience or user list id")] = None,
    identifiers: Annotated[str, typer.Option(help="Comma-separated identifiers to send")] = "email,phone",
    segment: Annotated[str | None, typer.Option(help="Follow this segment: its members are the audience's")] = None,
    interval: Annotated[int | None, typer.Option(help="Seconds between two syncs of a followed segment")] = None,
    consent_topic: Annotated[str, typer.Option(help="The consent topic (ads:<topic>)")] = "marketing",
    db: DbOpt = None,
):
    """Define an audience (the same checks as POST /api/audiences); with --segment it follows that segment."""
    from chorus.messaging.audiences import settings, store
    from chorus.timeutil import utcnow

    body: dict = {"name": name, "provider": provider, "identifiers": [k.strip() for k in identifiers.split(",")],
                  "consent": {"topic": consent_topic}}  # fmt: skip
    if destination is not None:
        body["destination"] = destination
    if segment is not None:
        body["source"] = {"segment": segment, **({"interval_seconds": interval} if interval is not None else {})}
    try:
        engine, w = _open(db, workspace)
        shown = store.create(engine, w.id, settings.validate_audience(body, w.settings), utcnow())
    except (ChorusError, ValueError) as exc:
        _fail(exc)
    _print_json(shown, indent=True)


@audiences_app.command("show")
def audiences_show(
    name: Annotated[str, typer.Argument(help="The audience's name")],
    workspace: WsOpt,
    db: DbOpt = None,
):
    """An audience: members, its source (a followed segment), pending removals and last sync, as JSON."""
    from chorus.messaging.audiences import store

    try:
        engine, w = _open(db, workspace)
        with engine.connect() as conn:
            shown = store.view(conn, store.get(conn, w.id, name))
    except (ChorusError, ValueError) as exc:
        _fail(exc)
    _print_json(shown, indent=True)


@audiences_app.command("export")
def audiences_export(
    name: Annotated[str, typer.Argument(help="The audience's name")],
    out: Annotated[str, typer.Option("--out", help="The CSV file to write")],
    workspace: WsOpt,
    fmt: Annotated[str | None, typer.Option("--format", help="meta or google (default: the audience's)")] = None,
    db: DbOpt = None,
):
    """Write the audience's members as the platform's customer-file CSV, hashed, for upload by hand."""
    from chorus.messaging.audiences import sync

    try:
        engine, w = _open(db, workspace)
        text, counts = sync.export(engine, w, name, fmt)
        with open(out, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except (ChorusError, ValueError, OSError) as exc:
        _fail(exc)
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(counts["skipped"].items()))
    typer.echo(
        f"{counts['rows']} rows written to {out} ({counts['format']})" + (f"; left out: {skipped}" if skipped else "")
    )


lake_app = typer.Typer(help="The event lake: Parquet files that analytics read.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")


@lake_app.command("export")
def lake_export(
    out: Annotated[str, typer.Option("--out", help="The lake's directory (created if missing)")] = "./lake",
    settle: Annotated[
        float, typer.Option(help="Seconds an event must have been stored before it is exported (see docs)")
    ] = 60.0,
    db: DbOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
):
    """Export new events, changed messages and all profiles to Parquet; re-running adds only what is new."""
    from datetime import timedelta

    from chorus.analytics import lake, limits

    try:
        limits.SETTLE_SECONDS.check(settle, "--settle")
        _check_lake_dir(out)
    except ChorusError as exc:
        _fail(exc)
    _, engine = _engine(db)
    try:
        result = lake.export(engine, out, settle=timedelta(seconds=settle))
    except OSError as exc:
        why = "permission denied" if isinstance(exc, PermissionError) else "the disk refused a write"
        _fail(ChorusError(f"cannot write the lake at {out}: {why}", field="--out"))
    except ValueError as exc:
        _fail(exc)
    if json_out:
        sys.stdout.write(orjson.dumps(result.as_dict()).decode() + "\n")
        return
    typer.echo(
        f"{out}: {result.events} events in {result.event_files} files, {result.messages} messages in "
        f"{result.message_days} days rewritten, {result.profiles} profiles"
        + (f"; {result.removed_orphans} files of an interrupted run replaced" if result.removed_orphans else "")
    )
    # a run that exports few events must say why, or an export right after an import looks like lost data
    held = result.held_back_text()
    if held:
        typer.echo(f"Not exported yet: {held}")


def _check_lake_dir(out: str) -> None:
    """``--out`` names a directory that is, or can be, the lake: not empty text (the current directory), not a
    file."""
    if not out.strip():
        raise ChorusError("--out needs the lake's directory, not empty text", field="--out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ChorusError(f"--out {out} is a file, not a directory", field="--out")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ChorusError(f"--out {out}: the directory {parent} does not exist", field="--out")


def _register_analytics() -> None:
    from chorus.analytics.commands import register

    register(app)


_register_analytics()


def main() -> None:
    app()


def _subcommands() -> None:
    """Packages that bring their own command groups (added last: they use this module's helpers)."""
    import chorus.journeys.commands  # noqa: F401 - adds publish, list, show, pause... to the journeys group
    from chorus.demo.cli import demo
    from chorus.journeys.cli import journeys_app
    from chorus.segments.cli import segments_app

    app.add_typer(segments_app, name="segments")
    app.add_typer(journeys_app, name="journeys")
    app.command("demo")(demo)


_subcommands()


if __name__ == "__main__":
    main()
