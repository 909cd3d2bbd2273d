"""The background worker: resolves pending events into profiles and delivers due messages.

Any number may run against PostgreSQL (rows are claimed with ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from chorus.identity.resolver import Resolver
from chorus.messaging.delivery import Deliverer
from chorus.store.db import writers_waited

log = logging.getLogger("chorus.worker")


class Worker:
    # Inside `chorus serve` the worker shares the process (and, on SQLite, the single write lock) with the
    # tracking API. Accepting events comes first: while requests are being stored, resolution waits, but never
    # longer than this, so profiles stay at most a few seconds behind under sustained load.
    MAX_DEFER = 0.5
    # On SQLite a resolving transaction holds the one write lock of the whole store, and every other writer (an
    # import, the tracking API, another worker) waits for it to end. While others wait for it (store.db tells),
    # the batch is sized from the measured rate so that one holds the lock about MAX_HOLD, instead of a fixed
    # number of events (2,000 took 2-5 s on a busy 2-core machine, and an import next to a worker waited that long
    # for each of its transactions). Alone, it takes full batches: smaller ones cost more replays of identity
    # components when events arrive out of order. A trade-off (docs/benchmarks.md): with 1 s batches the import
    # waited up to 1 s at each of its transactions (2.8x slower on a quiet machine); with 0.25 s everything was
    # resolved up to 40 % later while the import ran, but the import was nearly as fast as alone.
    MAX_HOLD = 0.25
    MIN_BATCH = 50
    CONTENDED_FOR = 5.0  # seconds after another writer last waited during which batches stay short

    def __init__(
        self,
        engine: Engine,
        batch: int = 2000,
        poll: float = 0.2,
        wake: threading.Event | None = None,
        busy: Callable[[], bool] | None = None,
    ):
        self.resolver = Resolver(engine)
        self.deliverer = Deliverer(engine)
        self.busy = busy
        self.batch = batch
        self.poll = poll
        self.wake = wake or threading.Event()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._bounded = engine.dialect.name == "sqlite"
        self._rate: float | None = None  # events resolved per second of transaction, recent batches

    def next_batch(self) -> int:
        if not self._bounded or self._rate is None or not writers_waited(self.resolver.engine, self.CONTENDED_FOR):
            return self.batch
        return max(self.MIN_BATCH, min(self.batch, int(self._rate * self.MAX_HOLD)))

    def run_once(self) -> int:
        started = time.perf_counter()
        n = self.resolver.process_pending(self.next_batch())
        took = time.perf_counter() - started
        if n >= self.MIN_BATCH and took > 0:
            rate = n / took
            self._rate = rate if self._rate is None else 0.5 * (self._rate + rate)
        try:
            n += self.deliverer.run_once()
        except Exception:  # delivery problems must not stop identity resolution
            log.exception("message delivery failed")
        return n

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopping.is_set():
            if self.busy is not None and self.busy() and time.monotonic() - last < self.MAX_DEFER:
                time.sleep(0.01)
                continue
            last = time.monotonic()
            try:
                n = self.run_once()
            except Exception:  # a bad batch must not kill the loop; it is retried after the poll interval
                log.exception("identity resolution batch failed")
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
        self.deliverer.close()
