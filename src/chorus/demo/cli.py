"""`chorus demo`: the command. Checks its input (bad input: a message and exit code 2), prints the model's
parameters, runs the demo with Rich progress bars and prints the report (or writes it as JSON)."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from chorus.clitools import err

MAX_CUSTOMERS = 10_000_000
MAX_DAYS = 3650
DEFAULT_DB = "sqlite:///./chorus-demo.db"


def _start(value: str | None, days: int) -> datetime:
    if value is None:  # the period ends today: the data looks recent to `chorus serve` afterwards
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=days)
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint="--start") from None
    if day.year < 2001:
        raise typer.BadParameter("the period must start after 2000 (the tracking API's range)", param_hint="--start")
    return day.replace(tzinfo=UTC)


def _params(items: list[str]) -> dict[str, float]:
    from chorus.demo.params import with_overrides

    changes = {}
    for item in items:
        name, sep, raw = item.partition("=")
        try:
            if not sep:
                raise ValueError
            changes[name.strip()] = float(raw)
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not NAME=NUMBER", param_hint="--set") from None
    try:
        return with_overrides(changes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--set "), param_hint="--set") from None


def _check_db(url: str, replace: bool) -> None:
    """The demo makes a store of its own: an SQLite file that exists already is refused unless --replace (its data
    would be mixed with the demo's); any other URL must name an empty database."""
    if not url.startswith("sqlite:///") and not url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise typer.BadParameter("give an sqlite:///FILE or postgresql:// URL", param_hint="--db")
    if not url.startswith("sqlite:///"):
        _check_empty(url)
        return
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise typer.BadParameter("the demo needs a file: the HTTP server and the worker share it",
                                     param_hint="--db")
        if os.path.isdir(path):
            raise typer.BadParameter(f"{path} is a directory, not a database file", param_hint="--db")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise typer.BadParameter(f"{parent} is not a directory this user can write in", param_hint="--db")
        _hold(path + IN_USE, "--db")
        if os.path.exists(path) and not replace:
            raise typer.BadParameter(f"{path} exists; pass --replace to start it again", param_hint="--db")


def _absolute(url: str) -> str:
    """The store's URL as a command to paste anywhere needs it: an SQLite file by its absolute path (an outside probe:
    the printed ``sqlite:///./chorus-demo.db``, run from another directory, made a new empty store)."""
    if url.startswith("sqlite:///") and "?" not in url:
        return "sqlite:///" + os.path.abspath(url[len("sqlite:///"):])
    return url


def _remove_sqlite(url: str) -> None:
    """--replace: the old demo file and its companions, once every option has been checked."""
    path = url[len("sqlite:///"):]
    for suffix in ("", "-wal", "-shm", "-chorus-queue", "-chorus-writer"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


MARKER = ".chorus-demo"  # in every directory the demo made: --replace empties no other
IN_USE = "-chorus-demo"  # next to a demo's SQLite file: the lock of the demo using it (--replace keeps it)
_HELD: dict[str, int] = {}  # path -> open descriptor of each lock this process holds, until it exits


def _hold(path: str, option: str) -> None:
    """Take the lock of a demo's file or directory for the rest of the process, or refuse: another demo (still
    running, or serving with --serve) is using it, and --replace would delete its data under it. A flock(2) lock of
    a file nobody deletes (a directory's marker, the store's companion): it vanishes with the process, even killed,
    so a demo that crashed never blocks the next one."""
    import fcntl

    if path in _HELD:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        where = os.path.dirname(path) if os.path.basename(path) == MARKER else path.removesuffix(IN_USE)
        raise typer.BadParameter(f"{where} is in use by another chorus demo (running or serving): stop it first, "
                                 "or give this one other paths", param_hint=option) from None  # fmt: skip
    _HELD[path] = fd


def _empty_dir(value: str, option: str, replace: bool) -> tuple[str, bool]:
    """The absolute directory, which must not exist or be empty, and whether --replace is to empty it (later, once
    every option is checked): the demo's files must not mix with another run's. Only a directory a demo made (its
    marker file) is ever emptied, and never the working directory, one above it or the home directory."""
    path = os.path.abspath(value)
    if os.path.exists(path) and not os.path.isdir(path):
        raise typer.BadParameter(f"{path} is a file, not a directory", param_hint=option)
    if not (os.path.isdir(path) and os.listdir(path)):
        return path, False
    if not replace:
        raise typer.BadParameter(f"{path} is not empty; pass --replace to empty it", param_hint=option)
    cwd, home = os.path.abspath(os.getcwd()), os.path.abspath(os.path.expanduser("~"))
    if path in (home, os.path.dirname(path)) or cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
        raise typer.BadParameter(f"{path} is the working or home directory, or above it: never emptied",
                                 param_hint=option)  # fmt: skip
    if not os.path.exists(os.path.join(path, MARKER)):
        raise typer.BadParameter(f"{path} is not empty and was not made by chorus demo: choose another directory",
                                 param_hint=option)  # fmt: skip
    _hold(os.path.join(path, MARKER), option)
    return path, True


def _prepare_dir(path: str, empty: bool, option: str) -> None:
    """Empty (a demo's own directory, checked above, whose marker this process holds locked) and make the
    directory, with its marker, locked: everything in it goes but the marker, so the lock is never on a deleted
    file. Two demos making the same new directory at once: the second finds the marker locked before it writes."""
    import shutil

    if empty:
        for name in os.listdir(path):
            if name == MARKER:
                continue
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
    os.makedirs(path, exist_ok=True)
    marker = os.path.join(path, MARKER)
    _hold(marker, option)
    with open(marker, "w") as f:
        f.write("made by chorus demo: `chorus demo --replace` may empty this directory\n")


def _check_empty(url: str) -> None:
    """A PostgreSQL database must be reachable and hold no Chorus data: the demo's workspace and its made-up
    customers must never mix with a real installation's."""
    import sqlalchemy as sa

    from chorus.store.db import create_engine

    try:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                used = "workspaces" in tables and conn.execute(sa.text("SELECT 1 FROM workspaces LIMIT 1")).first()
        finally:
            engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        msg = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise typer.BadParameter(f"cannot use the database: {msg}", param_hint="--db") from None
    if used:
        raise typer.BadParameter("the database already holds Chorus workspaces; give an empty database",
                                 param_hint="--db")  # fmt: skip


def demo(
    customers: Annotated[int, typer.Option(help="Customers to simulate", min=1, max=MAX_CUSTOMERS)] = 10_000,
    days: Annotated[int, typer.Option(help="Days to simulate", min=1, max=MAX_DAYS)] = 90,
    seed: Annotated[int, typer.Option(help="Seed of the behaviour model (same seed, same customers)", min=0,
                                      max=2**63 - 1)] = 1,  # fmt: skip
    db: Annotated[str, typer.Option(help="Store URL (an SQLite file or an empty PostgreSQL database)")] = DEFAULT_DB,
    replace: Annotated[bool, typer.Option("--replace", help="Delete an existing demo SQLite file and empty the outbox "
                                          "first")] = False,  # fmt: skip
    outbox: Annotated[str, typer.Option(help="Where the push and Messenger file sinks write")] = "./chorus-demo-outbox",
    lake: Annotated[str, typer.Option(help="Where the event lake the analytics read goes")] = "./chorus-demo-lake",
    start: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD; default: DAYS before today)")] = None,
    step_minutes: Annotated[int, typer.Option("--step", help="Minutes of virtual time per step", min=1, max=1440)] = 60,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Change a model parameter: NAME=VALUE (repeatable)")
                    ] = None,  # fmt: skip
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Run the customers twice, as a multichannel brand (a "
                                          "workspace per team) and through one Chorus, and compare")] = False,
    charts: Annotated[str, typer.Option(help="Where the report's charts (PNG) are written")] = "./chorus-demo-charts",
    serve: Annotated[bool, typer.Option("--serve", help="After the run, serve the demo's store (chorus serve "
                                        "--no-worker) until Ctrl-C")] = False,  # fmt: skip
    port: Annotated[int, typer.Option(help="TCP port of --serve (on 127.0.0.1)", min=1, max=65535)] = 8000,
):
    """Run a retail brand through the real Chorus on a virtual clock and report what its journeys did."""
    from chorus import gctune
    from chorus.demo import report
    from chorus.demo.run import Options, run

    gctune.mode()  # a wrong CHORUS_GC stops the demo before it creates anything, as it stops `chorus serve`
    model_params = _params(set_ or [])
    first = _start(start, days)
    (outdir, empty_out), (lakedir, empty_lake) = _empty_dir(outbox, "--outbox", replace), _empty_dir(lake, "--lake",
                                                                                                     replace)
    if compare:
        from chorus.demo import compare as comparison

        if serve:  # two stores: which one would it serve? (refused before anything is made)
            raise typer.BadParameter("--serve does not go with --compare (two stores): serve one of them with "
                                     "`chorus serve` afterwards", param_hint="--serve")
        comparison.check(db, replace)
    # --compare prints its own comparison: no charts, so their directory is neither checked nor touched
    chartdir, empty_charts = (None, False) if compare else _empty_dir(charts, "--charts", replace)
    _check_db(db, replace)
    if serve:
        _check_port(port)
    # every option is good: only now is anything deleted or made
    if replace and db.startswith("sqlite:///"):
        _remove_sqlite(db)
    _prepare_dir(outdir, empty_out, "--outbox")
    _prepare_dir(lakedir, empty_lake, "--lake")
    if chartdir is not None:
        _prepare_dir(chartdir, empty_charts, "--charts")
    opts = Options(customers, days, seed, db, outdir, lakedir, first, timedelta(minutes=step_minutes), model_params)
    log_path = os.path.join(os.path.dirname(outdir), "chorus-demo.log")
    logged = _log_to(log_path)
    # the report (the model's parameters, then the tables) on stdout, where `chorus demo > report.txt` finds it
    # (an outside probe got an empty file); progress, keys and errors on stderr
    console = Console(soft_wrap=True)
    if compare:
        return comparison.command(opts, replace, json_out, console, log_path, logged)
    if not json_out:
        report.show_params(console, model_params)
    started, cpu = time.monotonic(), time.process_time()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=False, disable=json_out) as bar:  # fmt: skip
        task = bar.add_task(f"{customers:,} customers, {days} days", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"{phase} {customers:,} customers")

        try:
            out = run(opts, progress, report.collect)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the options were checked: whatever fails now is not bad input
            # (Chorus refused what the demo sent, a server could not start, the disk is full): a message and exit 1,
            # the details in the log
            logging.getLogger("chorus.demo").exception("the demo failed")
            err.print(f"[red]error:[/red] the demo failed: {exc} (details in {log_path})")
            raise typer.Exit(1) from None
    elapsed = time.monotonic() - started
    # CPU time of the whole process (every thread: the HTTP server, delivery, the SMTP server): on a shared machine
    # it is a steadier figure to compare runs by than the elapsed time
    cpu = time.process_time() - cpu
    rep = {**out.report, "elapsed_seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1), "database_url": db,
           "outbox": outdir,
           "customers": customers, "days": days, "seed": seed, "start": first.isoformat(),
           "errors_logged": logged.errors, "log": log_path, "lake_dir": lakedir}  # fmt: skip
    from chorus.demo import charts as chart_files

    rep["charts"] = chart_files.write(rep, chartdir)
    # as `chorus serve` does on a first run: the keys of the workspace it made, shown this once (on stderr, with
    # --json too: a script has no other way to them), to explore it; the outbox is named so that an erasure there
    # deletes the sink files of her messages (messaging.md)
    keys = (f"\nWorkspace 'demo' (keys are shown only now): api_key {out.keys['api_key']}, write_key "
            f"{out.keys['write_key']}, server_write_key {out.keys['server_write_key']}\n"
            f"Explore it: CHORUS_LAKE_DIR={shlex.quote(lakedir)} CHORUS_OUTBOX_DIR={shlex.quote(outdir)} chorus serve "
            f"--no-worker --db {shlex.quote(_absolute(db))} "
            "(or chorus demo --serve)\n(--no-worker: a worker would carry on the journeys on the real clock, with the "
            "demo's mail and SMS servers gone)")  # fmt: skip
    if json_out:
        sys.stdout.write(orjson.dumps(rep).decode() + "\n")
        sys.stdout.flush()
        err.print(keys)
        if serve:
            _serve(db, lakedir, outdir, port, out.keys, log_path)
        return
    report.show(console, rep)
    if logged.errors:
        err.print(f"[bold red]{logged.errors} errors were logged by Chorus during the run: see {log_path}[/]")
    err.print(keys)
    err.print(f"\n{customers:,} customers over {days} days in {elapsed:.0f} s ({cpu:.0f} s of CPU) "
              f"({out.events_sent:,} events sent; worker {out.worker_seconds:.0f} s). Store: {db}; "
              f"sink files: {outdir}; charts: {chartdir} ({len(rep['charts'])} PNG); log: {log_path}")  # fmt: skip
    if serve:
        _serve(db, lakedir, outdir, port, out.keys, log_path)


def _check_port(port: int) -> None:
    """--serve: the port must be free now, before an hour of simulation, not found taken at the end."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise typer.BadParameter(f"127.0.0.1:{port} cannot be used: {exc.strerror}", param_hint="--port") from None


def _serve(db: str, lakedir: str, outdir: str, port: int, keys: dict, log_path: str) -> None:
    from chorus.demo.serve import serve

    code = serve(db, lakedir, outdir, port, keys["api_key"], log_path)
    if code:
        raise typer.Exit(code)


class _Count(logging.Handler):
    """Counts the errors Chorus logged (a worker task that failed is logged and retried, not raised): the report
    says how many, so a run that went wrong inside cannot pass for a good one."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.errors += 1


def _log_to(path: str) -> _Count:
    """Chorus logs (sink warnings, a worker task that failed) go to a file: the terminal shows the progress."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    counter = _Count()
    root = logging.getLogger()
    root.handlers[:] = [handler, counter]
    root.setLevel(logging.INFO)
    for name in ("httpx", "httpcore", "urllib3", "mail.log"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return counter
