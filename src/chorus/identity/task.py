"""Resolution as a worker task: pending events become profiles, in batches sized for SQLite's one write lock."""

from __future__ import annotations

import time

from sqlalchemy.engine import Engine

from chorus.identity.resolver import Resolver
from chorus.registry import TaskOptions
from chorus.store.db import writers_waited


class Resolution:
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

    def __init__(self, engine: Engine, options: TaskOptions = TaskOptions()):
        self.resolver = Resolver(engine)
        self.batch = options.batch
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
        return n

    def close(self) -> None:
        pass  # the resolver holds nothing between batches
