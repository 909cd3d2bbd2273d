"""The analytics engines: one Ibis connection over the event lake, on DuckDB (embedded, the default) or Apache Spark.

Every analytic is an Ibis expression built from the tables returned here, so the same code runs on both; only
opening the lake differs (DuckDB reads a glob with Hive partitioning, Spark discovers ``key=value`` directories
itself) and the partition columns are cast here, because the two engines infer different types for them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ibis
import ibis.expr.types as ir

from chorus.errors import ChorusError

ENGINES = ("duckdb", "spark")
TABLES = ("events", "messages", "message_statuses", "profiles", "profile_aliases")
_PARTITIONED = {"events", "messages", "message_statuses"}  # by workspace_id and date; the others by workspace_id
_JAVA_CANDIDATES = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-21-openjdk-amd64")

log = logging.getLogger(__name__)


class LakeUnreadable(ChorusError):
    """A file of the lake the engine cannot read (damaged, truncated, not Parquet): a 503, the operator's to fix
    (export again, or remove the file); the engine's own words go to the log."""

    status = 503
    code = "lake_unreadable"


# DuckDB names the file it failed on in quotes: "No magic bytes found at end of file '/lake/events/.../x.parquet'"
_QUOTED_FILE = re.compile(r"""['"]([^'"\n]+?\.parquet)['"]""")


class LakeChanging(ChorusError):
    """An export replaced or removed lake files while a read kept meeting them (retried already): a 503 to retry,
    not damage."""

    status = 503
    code = "lake_changing"


# A file replaced or removed under a read: DuckDB opened it by name again after listing it (the export's rename or
# delete came in between), read a footer of one file and pages of another, or found it gone. Retried, bounded.
RETRIES = 4
_RACE = re.compile(r"No such file or directory|TProtocolException|Invalid data|No magic bytes|cannot open file",
                   re.IGNORECASE)  # fmt: skip


def _lake_file(text: str, root: Path) -> str | None:
    """The lake file an engine message names, relative to the lake, or None when it names none of the lake's."""
    found = _QUOTED_FILE.search(text)
    if not found:
        return None
    try:
        return Path(found.group(1)).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def _export_running(root: Path) -> bool:
    """Whether a `chorus lake export` holds the lake's lock now (a shared probe of its lock file)."""
    import fcntl
    import os

    from chorus.analytics.lake import LOCK_FILE

    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False  # no export ever ran here with a lock, or the lake is gone
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got it
    return False


def _is_race(exc: Exception, root: Path, first: bool = False) -> bool:
    """Whether ``exc`` may come from a file the export replaced or removed during the read (worth a retry)."""
    import duckdb

    if not isinstance(exc, duckdb.Error) or not _RACE.search(str(exc)):
        return False
    if _lake_file(str(exc), root) is not None:
        return True
    # DuckDB's Thrift error names no file: a page of a file replaced under the read, or a damaged page, which fails
    # the same way on every read (review: a damaged file was "changing, try again" for good). Retried once, then
    # only while an export holds the lake.
    return "TProtocolException" in str(exc) and (first or _export_running(root))


def _retrying(fn, root: Path):
    """``fn`` (a DuckDB backend's execute, to_pyarrow, read_parquet...) run again, a few times with a short pause,
    when it failed on a lake file an export replaced or removed meanwhile: each run lists the files afresh."""
    import time

    def run(*args, **kwargs):
        for attempt in range(RETRIES + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == RETRIES or not _is_race(exc, root, first=attempt == 0):
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    return run


@contextmanager
def readable(root: str | Path) -> Iterator[None]:
    """Run a computation on the lake at ``root``: DuckDB's failure to read one of its files (an I/O error, or input
    that is not valid Parquet) becomes :class:`LakeUnreadable`, naming the file relative to the lake; a file that
    an export removed or replaced under the read (still so after the retries of :func:`open_lake`'s connection)
    becomes :class:`LakeChanging`. The engine's message is logged. Any other engine error (a bug) passes through."""
    import duckdb

    try:
        yield
    except duckdb.Error as exc:
        text = str(exc)
        root = Path(root)
        thrift = "TProtocolException" in text  # a Parquet page of another file than its footer: names no file
        if not isinstance(exc, duckdb.IOException | duckdb.InvalidInputException) and not thrift:
            raise
        name = _lake_file(text, root)
        if name is None and not thrift:
            # not a file of the lake: invalid input elsewhere, or an I/O failure of the engine's own (a spill or a
            # temporary file on a full disk): not the lake's fault, and re-exporting it would not help (review)
            raise
        if thrift and not _export_running(root):
            # no export is changing the lake: a page of one of its files is damaged (DuckDB names none)
            log.error("the lake at %s cannot be read, and no export is writing it: %s", root, text)
            raise LakeUnreadable(
                "a file of the lake cannot be read (a damaged Parquet page; the engine names none): export the lake "
                "again into a new directory (`chorus lake export --out`); the server's log has the detail",
                field="lake",
            ) from None
        if thrift or not (root / name).is_file() or "No such file" in text:
            # removed on purpose (an erasure's rewrite deletes the files it empties) or replaced under the read:
            # the lake is sound, the read met an export; the file is not damaged
            log.warning("a read of the lake at %s met an export changing it: %s", root, text)
            raise LakeChanging(
                "the lake changed while it was read (a `chorus lake export` was rewriting it): try again",
                field="lake",
            ) from None
        log.error("the lake at %s cannot be read: %s", root, text)
        raise LakeUnreadable(
            f"the lake's file {name} cannot be read (damaged, truncated or not Parquet): export the lake again "
            "(`chorus lake export`) or remove the file; the server's log has the detail",
            field="lake",
        ) from None


@dataclass
class Lake:
    """An open lake: ``lake.table("events")`` is an Ibis table, filtered to one workspace when one is given."""

    root: Path
    engine: str
    con: ibis.BaseBackend
    workspace_id: str | None = None
    _tables: dict[str, ir.Table] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        ws = "*" if self.workspace_id is None else self.workspace_id
        return any((self.root / name).glob(f"workspace_id={ws}/**/*.parquet"))

    def table(self, name: str) -> ir.Table:
        if name not in TABLES:
            raise ValueError(f"unknown lake table {name!r}")
        if name not in self._tables:
            if not self.has(name):
                raise ChorusError(
                    f"the lake at {self.root} has no {name} yet: run `chorus lake export --out {self.root}` first",
                    field="lake",
                )
            t = _read(self.con, self.engine, self.root / name, name in _PARTITIONED, f"chorus_{name}",
                      self.workspace_id)  # fmt: skip
            t = t.mutate(workspace_id=t.workspace_id.cast("string"))
            if name in _PARTITIONED:
                t = t.mutate(date=t.date.cast("date"))
            if self.workspace_id is not None:
                t = t.filter(t.workspace_id == self.workspace_id)
            self._tables[name] = t
        return self._tables[name]


def workspace_ids(root: str | Path) -> list[str]:
    """The workspaces the lake has events of (from its directory names: no query)."""
    return sorted(p.name.split("=", 1)[1] for p in Path(root, "events").glob("workspace_id=*") if p.is_dir())


def open_lake(root: str | Path, *, engine: str = "duckdb", workspace_id: str | None = None, spark=None) -> Lake:
    """Open the lake at ``root`` on ``engine``. ``spark`` may be an existing SparkSession (a cluster's); without
    one, a local session is started."""
    if engine not in ENGINES:
        raise ChorusError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}", field="engine")
    root = Path(root)
    if not root.is_dir():
        raise ChorusError(f"no lake at {root}: run `chorus lake export --out {root}` first", field="lake")
    if workspace_id is None:
        found = workspace_ids(root)
        if len(found) > 1:
            raise ChorusError(
                f"the lake holds {len(found)} workspaces ({', '.join(found)}): name one", field="workspace"
            )
        workspace_id = found[0] if found else None
    elif workspace_id not in workspace_ids(root):
        raise ChorusError(f"the lake at {root} has no events of workspace {workspace_id!r}", field="workspace")
    if engine == "duckdb":
        con = ibis.duckdb.connect()
        for method in ("execute", "to_pyarrow", "to_pandas", "read_parquet"):
            setattr(con, method, _retrying(getattr(con, method), root))
    else:
        con = ibis.pyspark.connect(spark or local_spark_session())
    return Lake(root=root, engine=engine, con=con, workspace_id=workspace_id)


def local_spark_session(master: str | None = None):
    """A Spark session in local mode, tuned for one machine (a cluster passes its own session to open_lake)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ChorusError(
            "the Spark engine needs PySpark: pip install 'chorus[spark]' (and Java 17 or 21)", field="engine"
        ) from exc
    if not os.environ.get("JAVA_HOME"):
        # Spark 4.0 supports Java 17 and 21 only; a newer default java (25) must not be picked up
        for candidate in _JAVA_CANDIDATES:
            if Path(candidate, "bin", "java").exists():
                os.environ["JAVA_HOME"] = candidate
                break
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master or os.environ.get("CHORUS_SPARK_MASTER", f"local[{os.cpu_count() or 2}]"))
        .appName("chorus-analytics")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", str(max(2, (os.cpu_count() or 2) * 2)))
        .config("spark.sql.session.timeZone", "UTC")
        # Spark 4 turns ANSI mode on: a division by zero or a bad cast raises instead of giving NULL, unlike DuckDB
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.driver.memory", os.environ.get("CHORUS_SPARK_DRIVER_MEMORY", "4g"))
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get("CHORUS_SPARK_LOG_LEVEL", "ERROR"))
    return session


def _read(con, engine: str, path: Path, partitioned: bool, name: str, workspace_id: str | None) -> ir.Table:
    # DuckDB: one workspace's directory only, when it is known: the others' files are not even opened
    ws = "*" if workspace_id is None else workspace_id
    if engine == "duckdb":
        glob = str(path / f"workspace_id={ws}" / ("*/*.parquet" if partitioned else "*.parquet"))
        # union_by_name: files written by an older Chorus may lack a column added since
        return con.read_parquet(glob, table_name=name, hive_partitioning=True, union_by_name=True)
    # Spark reads the root: the workspace filter prunes the other workspaces' directories when it plans the scan
    return con.read_parquet(str(path), table_name=name, mergeSchema="true")
