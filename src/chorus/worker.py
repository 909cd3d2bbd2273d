"""The background worker: each pass runs every registered worker task once, in the order of the flow (resolution
first, delivery last; see chorus.registry). Packages add their tasks; this loop names none of them.

Any number may run against PostgreSQL (rows are claimed with ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from chorus import registry as reg
from chorus.registry import Registry, Task, TaskOptions

log = logging.getLogger("chorus.worker")


class Worker:
    # Inside `chorus serve` the worker shares the process (and, on SQLite, the single write lock) with the
    # tracking API. Accepting events comes first: while requests are being stored, the next pass waits, but never
    # longer than this, so profiles stay at most a few seconds behind under sustained load.
    MAX_DEFER = 0.5

    def __init__(
        self,
        engine: Engine,
        batch: int = 2000,
        poll: float = 0.2,
        wake: threading.Event | None = None,
        busy: Callable[[], bool] | None = None,
        registry: Registry | None = None,
        dev: bool = False,
    ):
        registry = registry or reg.installed()
        options = TaskOptions(batch=batch, registry=registry, dev=dev)
        # (name, log label, task), in flow order
        self.tasks: list[tuple[str, str, Task]] = [(t.name, t.label, t.make(engine, options)) for t in registry.tasks()]
        self.busy = busy
        self.poll = poll
        self.wake = wake or threading.Event()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def task(self, name: str) -> Task:
        for n, _label, t in self.tasks:
            if n == name:
                return t
        raise KeyError(f"no worker task {name!r}")

    def run_once(self) -> int:
        """One pass: every task once. One task's failure is logged and does not stop the others (delivery goes
        on while resolution fails, and the other way round); it is retried at the next pass."""
        done = 0
        for _name, label, task in self.tasks:
            if self.stopping.is_set():  # stop after the task in progress, not after the whole pass
                break
            try:
                done += task.run_once()
            except Exception:
                log.exception("%s failed", label)
        return done

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopping.is_set():
            if self.busy is not None and self.busy() and time.monotonic() - last < self.MAX_DEFER:
                time.sleep(0.01)
                continue
            last = time.monotonic()
            try:
                n = self.run_once()
            except Exception:  # nothing must kill the loop; the pass is retried after the poll interval
                log.exception("worker pass failed")
                n = 0
            if n == 0:
                self.wake.wait(self.poll)
                self.wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="chorus-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self.stopping.set()
        self.wake.set()
        if self._thread:
            self._thread.join(timeout)
        for name, _label, task in self.tasks:
            try:
                task.close()
            except Exception:  # one task that cannot close must not keep the others open
                log.exception("closing worker task %s failed", name)
