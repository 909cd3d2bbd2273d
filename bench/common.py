"""Helpers shared by the benchmark scripts: fresh databases, read-only connections to them, bulk writes, the
usual command-line options, a `chorus serve` subprocess, /proc readings.

Nothing here is timed itself; the scripts decide what to time.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PG_ADMIN = os.environ.get("CHORUS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def chorus_cmd() -> list[str]:
    exe = shutil.which("chorus")
    return [exe] if exe else [sys.executable, "-m", "chorus.cli"]


# --- databases ------------------------------------------------------------------------------------------------
class FreshDB:
    """A brand-new database for one run: a file under a temp dir (SQLite) or a new database (PostgreSQL)."""

    def __init__(self, engine: str, tag: str, tmpdir: Path):
        self.engine = engine
        self.tag = tag
        if engine == "sqlite":
            self.path = tmpdir / f"{tag}-{uuid.uuid4().hex[:6]}.db"
            self.url = f"sqlite:///{self.path}"  # self.path is absolute, so this is sqlite:////abs/path
            self.dsn = None
        elif engine == "postgresql":
            import psycopg

            self.name = f"chorus_bench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}".replace("-", "_")
            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.name}"')
            base = PG_ADMIN.rsplit("/", 1)[0]
            self.dsn = f"{base}/{self.name}"
            self.url = "postgresql+psycopg://" + self.dsn.split("://", 1)[1]
            self.path = None
        else:
            raise ValueError(f"unknown engine {engine!r}")

    def drop(self) -> None:
        if self.engine == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(self.path) + suffix)
        else:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def size_mb(self) -> float | None:
        if self.engine == "sqlite":
            total = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(FileNotFoundError):
                    total += os.path.getsize(str(self.path) + suffix)
            return total / 2**20
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            return c.execute("SELECT pg_database_size(%s)", (self.name,)).fetchone()[0] / 2**20

    def wal_mb(self) -> float | None:
        if self.engine != "sqlite":
            return None
        try:
            return os.path.getsize(str(self.path) + "-wal") / 2**20
        except FileNotFoundError:
            return 0.0

    def __enter__(self) -> FreshDB:
        return self

    def __exit__(self, *exc) -> None:
        self.drop()


KEEP_TMP = "CHORUS_BENCH_KEEP_TMP"  # set (to anything but empty or 0) to keep every run's temp dir, to look into


def make_tmpdir(keep: bool = False) -> Path:
    """A fresh ``chorus-bench-*`` directory under the system temp dir, removed with all it holds when the script
    exits (normally, on an exception or on Ctrl+C; not on SIGKILL), unless ``keep`` or $CHORUS_BENCH_KEEP_TMP."""
    path = Path(tempfile.mkdtemp(prefix="chorus-bench-")).resolve()
    if not keep and os.environ.get(KEEP_TMP, "") in ("", "0"):
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class Poller:
    """A tiny read-only connection for `SELECT count(*) ...` polls (not through chorus)."""

    def __init__(self, db: FreshDB):
        self.db = db
        self.conn = ro_connect(db, threaded=True)

    def scalar(self, sql: str):
        return self.conn.execute(sql).fetchone()[0]

    def pending(self) -> int:
        if self.db.engine == "sqlite":
            # Left to itself SQLite counts by scanning the whole ix_events_profile_timeline index (O(all events));
            # the partial index makes the poll O(pending) so that polling does not load the server.
            return self.scalar("SELECT count(*) FROM events INDEXED BY ix_events_pending WHERE profile_id IS NULL")
        return self.scalar("SELECT count(*) FROM events WHERE profile_id IS NULL")

    def any_pending(self) -> bool:
        """Cheap completion check: stops at the first pending event (a count walks every pending row, which on
        PostgreSQL means heap visits for fresh rows and competes with the server for the disk and CPU)."""
        hint = " INDEXED BY ix_events_pending" if self.db.engine == "sqlite" else ""
        return bool(self.scalar(f"SELECT EXISTS (SELECT 1 FROM events{hint} WHERE profile_id IS NULL)"))

    def close(self) -> None:
        self.conn.close()


def ro_connect(db: FreshDB, *, threaded: bool = False):
    """A connection of its own to a bench database, outside chorus, for polls and reading back: read-only on
    SQLite (a reader never takes the write lock), autocommit on PostgreSQL (each statement its own snapshot).
    ``threaded``: usable from another thread than the one that opened it (SQLite checks otherwise)."""
    if db.engine == "sqlite":
        return sqlite3.connect(f"file:{db.path}?mode=ro", uri=True, timeout=30, check_same_thread=not threaded)
    import psycopg

    return psycopg.connect(db.dsn, autocommit=True)


def drained(conn, engine: str) -> bool:
    """Every event resolved and the change feed's pending work done (a connection from ``ro_connect``)."""
    hint = " INDEXED BY ix_events_pending" if engine == "sqlite" else ""
    pending = conn.execute(f"SELECT EXISTS (SELECT 1 FROM events{hint} WHERE profile_id IS NULL)").fetchone()[0]
    feed = conn.execute("SELECT EXISTS (SELECT 1 FROM feed_pending)").fetchone()[0]
    return not pending and not feed


def bulk_write(engine, parts, attempts: int = 5) -> None:
    """Rows of several tables (``[(table, rows), ...]``) through ``store.bulk.insert_rows`` (COPY on PostgreSQL), in
    one transaction. On SQLite a worker being watched is a writer too: on a saturated machine one of its passes
    once held the lock longer than the 30 s busy timeout, so a transaction that finds the database locked is tried
    again (said on stderr) rather than ending the run."""
    import sqlalchemy as sa

    from chorus.store import bulk

    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                for table, rows in parts:
                    bulk.insert_rows(conn, table, rows)
            return
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts:
                raise
            log(f"database locked for the bench's writer (attempt {attempt}); trying again")


def add_run_args(ap: argparse.ArgumentParser, *, engines: bool = True, out_help: str | None = None) -> None:
    """The options every bench that starts chorus processes takes: which engines, the seed, which copy of the
    package (``snapshot_code``), where the JSON goes."""
    if engines:
        ap.add_argument("--engines", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--code", metavar="DIR",
                    help="benchmark this copy of the chorus package (a directory named chorus) instead of the "
                         "installed one, e.g. a patched copy")  # fmt: skip
    ap.add_argument("--out", default=str(RESULTS_DIR), help=out_help or "directory for the JSON results")


def engines_of(ap: argparse.ArgumentParser, value: str) -> list[str]:
    """``--engines`` as a list; an unknown name is a usage error."""
    engines = [e.strip() for e in value.split(",") if e.strip()]
    for e in engines:
        if e not in ("sqlite", "postgresql"):
            ap.error(f"unknown engine {e!r}")
    return engines


def db_upgrade(url: str) -> None:
    subprocess.run([*chorus_cmd(), "db", "upgrade", "--db", url], check=True, capture_output=True)


def create_workspace(url: str, name: str = "bench") -> dict:
    out = subprocess.run(
        [*chorus_cmd(), "workspace", "create", name, "--json", "--db", url], check=True, capture_output=True
    )
    return orjson.loads(out.stdout)


# --- /proc ---------------------------------------------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included; children that exited are counted by cutime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


class DbCpuSampler(threading.Thread):
    """CPU seconds of the PostgreSQL backends serving one database (from pg_stat_activity + /proc), so that the
    database's share can be told apart from other tenants' load. Backends that come and go are kept at their last
    reading."""

    def __init__(self, db: FreshDB, interval: float = 1.0):
        super().__init__(daemon=True)
        self.db, self.interval = db, interval
        self.cpu: dict[int, float] = {}
        self._halt = threading.Event()
        self._admin = None
        if db.engine == "postgresql":
            import psycopg

            self._admin = psycopg.connect(PG_ADMIN, autocommit=True)
            self._own = self._admin.execute("SELECT pg_backend_pid()").fetchone()[0]

    def sample(self) -> None:
        if self._admin is None:
            return
        rows = self._admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db.name,)).fetchall()
        for (pid,) in rows:
            c = cpu_seconds(pid)
            if c:
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), c)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> float:
        """Stop sampling; returns the CPU seconds counted."""
        self.sample()
        self._halt.set()
        self.join(5)
        if self._admin is not None:
            self._admin.close()
        return sum(self.cpu.values())


class MemSampler(threading.Thread):
    """Polls the RSS of a process tree; `peak_mb` is the larger of the sampled sum and the sum of VmHWM."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.hwm_kb: dict[int, int] = {}
        self.max_sum_kb = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        total = 0
        for p in proc_tree(self.pid):
            total += _status_kb(p, "VmRSS")
            hwm = _status_kb(p, "VmHWM")
            if hwm:
                self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), hwm)
        self.max_sum_kb = max(self.max_sum_kb, total)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self.sample()
        self._halt.set()
        self.join(5)

    @property
    def peak_mb(self) -> float:
        return max(self.max_sum_kb, sum(self.hwm_kb.values())) / 1024


# --- the server ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChorusServer:
    """`chorus serve` (or `chorus worker`) as a subprocess; its stderr goes to a log file."""

    def __init__(self, url: str, log_path: Path, *, worker: bool = True, env: dict | None = None, mode="serve"):
        self.url, self.log_path, self.mode = url, log_path, mode
        self.port = free_port() if mode == "serve" else None
        if mode == "serve":
            cmd = [*chorus_cmd(), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--db", url]
            if not worker:
                cmd.append("--no-worker")
        else:
            cmd = [*chorus_cmd(), "worker", "--db", url]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        self.pid = self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chorus {self.mode} exited with {self.proc.returncode}; see {self.log_path}")
            if self.mode != "serve":
                if "worker started" in self.log_path.read_text(errors="replace"):
                    return
            else:
                try:
                    if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"chorus {self.mode} did not become ready in {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log_count(self, needle: str) -> int:
        n = 0
        with open(self.log_path, "rb") as f:
            for line in f:
                if needle.encode() in line:
                    n += 1
        return n


class PySpy:
    """Optional sampling profile of a server process: `py-spy record --format raw` (collapsed stacks)."""

    def __init__(self, pid: int, out: Path, rate: int = 50):
        exe = shutil.which("py-spy")
        self.proc = None
        self.out = out
        if exe is None:
            log("py-spy not found (pip install py-spy); no profile recorded")
            return
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def snapshot_code(tmpdir: Path, source: str | None = None) -> dict:
    """Copy the installed `chorus` package into tmpdir and put the copy first on the import path of this process
    and of every subprocess (PYTHONPATH), so that all runs of one benchmark use the same code even if the working
    tree changes meanwhile. Returns where it came from, the git HEAD of that tree and a hash of the copied files."""
    import hashlib
    import importlib.util

    if source:  # another copy of the package, e.g. a patched one, to measure a change before making it
        pkg = Path(source).resolve()
        if not (pkg / "__init__.py").exists():
            raise SystemExit(f"--code {source}: not a package directory (expected .../chorus)")
    else:
        pkg = Path(importlib.util.find_spec("chorus").origin).resolve().parent
    dest = tmpdir / "code"
    shutil.copytree(pkg, dest / "chorus", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = hashlib.sha256()
    for f in sorted((dest / "chorus").rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(dest)).encode())
            h.update(f.read_bytes())
    head = None
    try:  # read-only: which commit the tree was at (the copy may also hold uncommitted changes)
        head = (
            subprocess.run(
                ["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        pass
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(dest), os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, str(dest))
    return {"source": str(pkg), "git_head": head, "sha256": h.hexdigest()[:16], "snapshot": str(dest)}


def write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
