"""A usage error of `chorus` is exit 2 with a message naming the option, never a traceback nor a library's text
(pydantic's "Input should be a valid integer", orjson's "(char 5)", SQLAlchemy's SQL, DuckDB's "magic bytes").
Each case below was found by an outside probe of the CLI."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from chorus.cli import app
from tests.analytics.lakegen import LakeWriter
from tests.analytics.test_omnichannel import shop

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LIBRARY_TEXT = ("Traceback", "Input should be", "(char ", "[Errno", "SELECT", "sqlalchemy", "No magic bytes",
                "Error:", "OverflowError", "MemoryError")  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "CHORUS_DATABASE_URL": None})


def usage_error(r, *names: str, code: int = 2) -> str:
    text = r.output
    assert r.exit_code == code, (r.exit_code, text[-2000:], r.exception)
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), repr(r.exception)
    for word in LIBRARY_TEXT:
        assert word not in text, (word, text)
    for name in names:
        assert name in text, (name, text)
    return text


@pytest.fixture
def lake(tmp_path):
    return str(shop(LakeWriter(tmp_path / "lake")).write())


@pytest.fixture
def store(tmp_path):
    db = f"sqlite:///{tmp_path / 'chorus.db'}"
    r = run("workspace", "create", "W", "--db", db)
    assert r.exit_code == 0, r.output
    return db


# 1. `workspace settings --set`: the checks of PATCH /api/workspace/settings


def test_set_refuses_what_the_api_refuses(store):
    r = run("workspace", "settings", "W", "--db", store, "--set",
            '{"attribution":{"conversions":["Order\\u0000Completed"]}}')  # fmt: skip
    usage_error(r, "settings.attribution.conversions[0]", "NUL")
    shown = run("workspace", "settings", "W", "--db", store)
    assert shown.exit_code == 0 and "Order" not in shown.output


@pytest.mark.parametrize("value", ["1e308", "99999999999999999999999"])
def test_set_out_of_range_number_is_a_usage_error(store, value):
    r = run("workspace", "settings", "W", "--db", store, "--set", f'{{"attribution":{{"lookback_days":{value}}}}}')
    usage_error(r, "lookback_days")


@pytest.mark.parametrize(
    ("patch", "says"),
    [
        ('{"attribution": {"lookback_days": 5,}}', "--set is not valid JSON: a comma before a closing bracket"),
        ("[1]", "--set must be a JSON object"),
        ('{"attribution": {}, "attribution": {}}', "settings.attribution is given twice"),
    ],
)
def test_set_json_problems_in_our_words(store, patch, says):
    usage_error(run("workspace", "settings", "W", "--db", store, "--set", patch), says)


# 2. dates: the API's years (chorus.api.analytics._bounded)


@pytest.mark.parametrize(
    "args",
    [
        ["attribution", "--since", "0001-01-01"],
        ["attribution", "--until", "9999-12-31"],
        ["attribution", "--since", "0999-12-31"],
        ["attribution", "--until", "9001-01-01"],
        ["report", "paths", "--since", "0001-01-01"],
        ["report", "uplift", "--until", "9999-12-31"],
        ["report", "omnichannel", "--until", "9999-12-31"],
        ["report", "showrooming", "--since", "0001-01-01"],
        ["clv", "--end", "9999-12-31"],
    ],
)
def test_dates_outside_the_apis_years(lake, args):
    usage_error(run(*args, "--lake", lake), args[-2], "between 1000-01-01 and 9000-12-31")


# 3. the API's bounds (chorus.analytics.limits)


@pytest.mark.parametrize(
    "args",
    [
        ["clv", "--months", "99999999999999999999"],
        ["clv", "--months", "1000"],
        ["clv", "--penalizer", "-1"],
        ["report", "omnichannel", "--bootstrap", "99999999999"],
        ["attribution", "--order", "4"],
        ["attribution", "--half-life-days", "inf"],
        ["attribution", "--half-life-days", "1e-320"],  # no time at all: at least a second, as in the API
        ["report", "uplift", "--window-days", "1e-320"],
        ["report", "uplift", "--confidence", "1"],
        ["report", "paths", "--top", "0"],
    ],
)
def test_bounds_of_the_api(lake, args):
    usage_error(run(*args, "--lake", lake), args[-2])


@pytest.mark.parametrize("settle", ["inf", "1e308", "nan", "-1"])
def test_lake_export_settle_bounded(store, tmp_path, settle):
    usage_error(run("lake", "export", "--db", store, "--out", str(tmp_path / "lk"), "--settle", settle), "--settle")
    assert not (tmp_path / "lk").exists()


# 4. files


def test_config_directory(lake, tmp_path):
    usage_error(run("attribution", "--lake", lake, "--config", str(tmp_path)), "--config", "is a directory, not a file")


def test_import_a_directory(store, tmp_path):
    folder = tmp_path / "events.csv"
    folder.mkdir()
    usage_error(run("import", "events", str(folder), "--source", "store", "-w", "W", "--db", store),
                "is a directory, not a file")  # fmt: skip


def test_lake_export_out_is_a_file_or_empty(store, tmp_path):
    file = tmp_path / "passwd"
    file.write_text("x")
    usage_error(run("lake", "export", "--db", store, "--out", str(file)), "--out", "is a file, not a directory")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        usage_error(run("lake", "export", "--db", store, "--out", ""), "--out")
    finally:
        os.chdir(here)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("chorus.db")) == ["passwd"]


# 5. --db


def test_db_directory_missing(tmp_path):
    usage_error(run("workspace", "list", "--db", f"sqlite:///{tmp_path}/nx/x.db"), "cannot open the store",
                "does not exist")  # fmt: skip


def test_db_unknown_kind():
    usage_error(run("workspace", "list", "--db", "bogus://x"), "unknown database kind 'bogus' (sqlite or postgresql)")


def test_reading_command_does_not_create_a_store(tmp_path):
    path = tmp_path / "none.db"
    usage_error(run("workspace", "list", "--db", f"sqlite:///{path}"), "does not exist")
    usage_error(run("workspace", "settings", "W", "--db", f"sqlite:///{path}"), "does not exist")
    assert not path.exists()
    r = run("db", "upgrade", "--db", f"sqlite:///{path}")
    assert r.exit_code == 0 and path.exists(), r.output
    assert run("workspace", "list", "--db", f"sqlite:///{path}").exit_code == 0


@pytest.mark.parametrize("command", [("workspace", "list"), ("lake", "export", "--out", "LAKE"), ("keys", "list", "W"),
                                     ("segments", "list", "--workspace", "W")])  # fmt: skip
def test_a_command_that_makes_no_store_leaves_a_foreign_database_alone(tmp_path, command):
    """An outside probe: every command ran the migrations on its --db, so pointed at another application's SQLite
    file it added Chorus' 40 tables to it (and lake export exited 0). Only the commands that make a store may."""
    import sqlite3

    path = tmp_path / "other-app.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    args = [str(tmp_path / "lake") if a == "LAKE" else a for a in command]
    usage_error(run(*args, "--db", f"sqlite:///{path}"), "holds no Chorus store", "chorus db upgrade")
    with sqlite3.connect(path) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["invoices"]


def test_another_applications_alembic_database_is_no_store(tmp_path):
    """Review: most Python applications keep an alembic_version table too; its revision is none of Chorus'."""
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        con.execute("INSERT INTO alembic_version VALUES ('3f2a9c1b7d4e')")
    usage_error(run("workspace", "list", "--db", f"sqlite:///{path}"), "holds no Chorus store")
    with sqlite3.connect(path) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["alembic_version",
                                                                                 "sqlite_autoindex_alembic_version_1"]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_an_in_memory_database_is_no_store(url):
    """It printed SQLAlchemy's 'no such table: erasures' and exited 1 (outside probe)."""
    usage_error(run("workspace", "list", "--db", url), "holds no Chorus store")


def test_a_foreign_postgresql_database_gets_no_tables(pg_base_url):
    import uuid

    import sqlalchemy as sa

    from tests.conftest import PG_URL, _pg_admin_engine

    name = "cli_foreign_" + uuid.uuid4().hex[:8]
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        usage_error(run("workspace", "list", "--db", url), "holds no Chorus store")
        probe = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with probe.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
        probe.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_db_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("not sqlite")
    usage_error(run("workspace", "list", "--db", f"sqlite:///{path}"), "not a SQLite database")


def test_db_locked_is_said_so_not_unreachable(tmp_path):
    """Another process holding SQLite's write lock: the store is busy, not "is it running?" (review)."""
    import sqlite3

    path = tmp_path / "c.db"
    assert run("db", "upgrade", "--db", f"sqlite:///{path}").exit_code == 0
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        usage_error(run("workspace", "list", "--db", f"sqlite:///{path}"), "the database is busy")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# 6. --config JSON in safejson's words


def test_config_bad_json(lake, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"lookback_days": 5,\n "x" 1}')
    usage_error(run("attribution", "--lake", lake, "--config", str(bad)), "--config", "line 2, column 6")
    nul = tmp_path / "nul.json"
    nul.write_text(json.dumps({"conversions": ["a\x00b"]}))
    usage_error(run("attribution", "--lake", lake, "--config", str(nul)), "conversions[0]", "NUL")


# 7. typed options in our words


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["attribution", "--order", "abc"], "--order must be a whole number"),
        (["clv", "--months", "x"], "--months must be a whole number"),
        (["attribution", "--half-life-days", "abc"], "--half-life-days must be a number"),
        (["lake", "export", "--settle", "abc"], "--settle must be a number"),
    ],
)
def test_typed_options_in_our_words(args, says):
    usage_error(run(*args), says)


# 8. a damaged lake file


@pytest.mark.parametrize("command", [["attribution"], ["clv"], ["report", "paths"]])
def test_corrupt_lake_part(tmp_path, command):
    lake = shop(LakeWriter(tmp_path / "lake")).write()
    part = next(p for p in sorted((tmp_path / "lake").rglob("*.parquet")))
    part.write_bytes(b"garbage")
    usage_error(run(*command, "--lake", str(lake)), f"the lake file {part} is not readable Parquet", code=1)


@pytest.mark.parametrize("command", [["attribution"], ["report", "paths"]])
def test_a_reports_data_is_printed_as_text_never_as_markup(tmp_path, command):
    """Review: an oversized order's id (the sender's text) in a warning, and a channel's name in a table, were read
    by rich as markup: "[/x]" ended the command with a MarkupError after the tables."""
    lake = shop(LakeWriter(tmp_path)).touch("a", 40, "[/x]").order("a", 47, 1.7e308, order_id="[/x]").write()
    r = run(*command, "--lake", str(lake))
    assert r.exit_code == 0, (r.output[-800:], r.exception)
    assert "[/x]" in r.output


def test_an_error_holding_markup_is_printed_as_text(store):
    """A settings key "[/x]" (any value the user gave) in an error message ended `chorus` with rich's MarkupError
    and a traceback, exit 1."""
    usage_error(run("workspace", "settings", "W", "--db", store, "--set", '{"[/x]": 1}'), "[/x]")


def test_a_table_whose_column_or_title_holds_markup_prints(tmp_path):
    from rich.console import Console

    from chorus.analytics import output

    console = Console(file=__import__("io").StringIO(), width=200)
    output.print_table(console, "by [/x]", ["from", "[/x]", "[link=http://x]y[/link]"], [["a", 1, 2]], caption="[/y]")
    text = console.file.getvalue()
    assert "[/x]" in text and "[link=http://x]y[/link]" in text


def test_a_store_a_newer_chorus_made_is_said_to_be_so(tmp_path):
    """Review: a revision this Chorus does not know, numbered after its own, is a newer Chorus' store, not "no
    store" (whose advice, `chorus db upgrade`, would fail)."""
    import sqlite3

    path = tmp_path / "c.db"
    assert run("db", "upgrade", "--db", f"sqlite:///{path}").exit_code == 0
    with sqlite3.connect(path) as con:
        con.execute("UPDATE alembic_version SET version_num = '9999'")
    usage_error(run("workspace", "list", "--db", f"sqlite:///{path}"), "a newer version of Chorus made it")
    with sqlite3.connect(path) as con:  # another application's numbered revision (a date) is no Chorus store
        con.execute("UPDATE alembic_version SET version_num = '202405061230'")
    usage_error(run("workspace", "list", "--db", f"sqlite:///{path}"), "holds no Chorus store")
