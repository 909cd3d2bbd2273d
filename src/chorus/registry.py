"""Register, don't reach: what each package adds to the cross-cutting work of Chorus.

Three kinds of work span packages, and none of them may name every package's tables itself:

- **erasure** (and export) of a person: each package deletes or scrubs what *it* holds about the person, in the
  erasure's one transaction, and says which tables its counts came from (the scrub after the commit clears them);
- **workspace settings**: each top-level key of a workspace's settings is one package's *section*, checked by
  that package's validator; a package whose data answers with another package's section (segments read
  ``messaging.timezone`` and ``messaging.topics``) hears when that section changes, in the change's transaction;
- **worker tasks**: each pass of a worker runs every registered task once, in the order of the flow;
- **change-feed consumers** (chorus.profiles.feed): each receives every change to a profile, in a worker task;
- **segment users**: a package whose rows name a segment (a journey's entry, a broadcast's audience, an audience
  that follows it) says how, so that the segment's deletion is refused while they can still use it.

Each installed package has a ``register(registry)`` function that adds its parts. :data:`INSTALLED` is the one
place that names them all (as Django's ``INSTALLED_APPS``); :func:`installed` loads it once per process. Tests
build their own with :func:`load` and add to it, so the process-wide one is frozen.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine

# In flow order; within one erasure phase or one flow step, parts run in this order too.
INSTALLED: tuple[str, ...] = (
    "chorus.collect",
    "chorus.identity",
    "chorus.profiles",
    "chorus.segments",
    "chorus.journeys",
    "chorus.messaging",
    "chorus.messaging.audiences",
    "chorus.analytics",
)


# -- erasure ------------------------------------------------------------------------------------------------------
class Phase(IntEnum):
    """When an erasure participant runs. The person (:class:`Person`) is read before the first phase, so most
    participants find their rows from it and need no order; the phases are for those that read what another
    package deletes."""

    # Locks alone, before anything is deleted: a writer that commits rows of hers while holding a lock on other rows
    # of hers (delivery writes her message's `Message Sent` event holding the message row) finishes first, so the
    # deletes that follow see what it wrote; one that comes later waits, then finds her rows gone. Called once with
    # everyone the erasure takes (one Person naming all their ids), so that the locks are taken in one order.
    HOLD = 0
    DATA = 10  # rows found from the person's ids and identifiers; the identity graph and the profile are intact
    IDENTITY = 20  # the identity graph: links, identifiers, aliases, merges (and the claimants rebuilt without them)
    PROFILE = 30  # the profile row and the record of the erasure: last, so every earlier phase can still read it


@dataclass(frozen=True)
class Person:
    """The person being erased or exported, as found before anything is deleted."""

    profile_id: str
    aliases: tuple[str, ...]  # merged-away ids that resolve to the profile
    identifiers: tuple[str, ...]  # "kind:value", as the identity graph holds them
    now: datetime  # one instant for every row an erasure writes (queued removals, the erasure record)
    # events.seq of other people's events an erasure rewrote without this person (identity adds them, the erasure
    # record keeps them, so that copies outside the store, the event lake, rewrite theirs too)
    rewritten_events: list[int] = field(default_factory=list, compare=False)
    # other profiles that exist only through this person's identity links (identity.erasure.with_her: a push token
    # her app reported, kept apart by the identity graph, with no event of its own): erased with her, each as a
    # Person of its own after her; identity leaves them out of the claimants it rebuilds
    vanished: list[str] = field(default_factory=list, compare=False)

    @property
    def profile_ids(self) -> list[str]:
        """The profile id and its aliases: rows written before a merge still name the merged-away id."""
        return [self.profile_id, *self.aliases]

    def values(self, *kinds: str) -> list[str]:
        """The identifier values of these kinds (all kinds when none is given)."""
        out = []
        for ident in self.identifiers:
            kind, _, value = ident.partition(":")
            if not kinds or kind in kinds:
                out.append(value)
        return out


Forget = Callable[[Connection, str, Person], dict[str, int]]
Export = Callable[[Connection, str, Person], dict[str, Any]]


@dataclass(frozen=True)
class Participant:
    name: str
    forget: Forget  # (conn, workspace id, person) -> counts; runs in the caller's transaction
    # Each count forget() returns -> the table whose freed space the scrub must clear once the erasure commits;
    # None for a count of rows written rather than deleted (nothing to clear).
    tables: Mapping[str, str | None]
    phase: Phase
    export: Export | None  # (conn, workspace id, person) -> sections of the person's export document


# -- worker tasks ---------------------------------------------------------------------------------------------------
class Step(IntEnum):
    """Where a worker task sits in the flow. A pass runs the tasks in this order, so what one step produces (a
    resolved profile, a change) is seen by the next steps in the same pass."""

    UNIFY = 20  # identity resolution
    DECIDE = 30  # change-feed consumers: segments, journeys
    DELIVER = 40  # the outbox


class Task(Protocol):
    def run_once(self) -> int:
        """Do one batch of work; return how much was done (0 when idle)."""

    def close(self) -> None:
        """Release what the task holds (threads, connections to providers)."""


@dataclass(frozen=True)
class TaskOptions:
    """What a worker tells its tasks when it makes them."""

    batch: int = 2000  # events (or rows) per write transaction, for tasks that batch
    registry: Registry | None = None  # the registry the worker was made from (the feed task reads its consumers)
    dev: bool = False  # `--dev`: tasks may stand in for what is not configured (delivery: file sinks), loudly


class EachPass:
    """A worker task that is one function of the engine, called once a pass, holding nothing (see :func:`each_pass`)."""

    def __init__(self, engine: Engine, run: Callable[[Engine], int]):
        self.engine, self.run = engine, run

    def run_once(self) -> int:
        return self.run(self.engine)

    def close(self) -> None:
        pass


def each_pass(run: Callable[[Engine], int]) -> Callable[..., Task]:
    """What :meth:`Registry.task` takes for a task that is just ``run(engine) -> work done``, called each pass."""
    return lambda engine, options=None: EachPass(engine, run)


@dataclass(frozen=True)
class WorkerTask:
    name: str
    make: Callable[[Engine, TaskOptions], Task]
    step: Step
    label: str  # how the log names a failed pass of it ("identity resolution batch failed")


# -- the registry -------------------------------------------------------------------------------------------------
SettingValidator = Callable[[Any], Any]  # the value -> the value to store; ValueError naming settings.<key>...
# (conn, workspace id, the section before, after): the settings change's transaction, before it writes them
SettingHook = Callable[[Connection, str, Any, Any], None]
# (conn, workspace id, segment id) -> how the package's rows use the segment, one phrase each ("journey 'welcome'
# (entry)"); empty when nothing of the package uses it. Runs in the deletion's transaction, under its lock.
SegmentUsers = Callable[[Connection, str, str], list[str]]


class Registry:
    def __init__(self) -> None:
        self._participants: list[Participant] = []
        self._settings: dict[str, SettingValidator] = {}
        self._hooks: dict[str, list[tuple[str, SettingHook]]] = {}
        self._tasks: list[WorkerTask] = []
        self._consumers: dict[str, Callable] = {}
        self._segment_users: dict[str, SegmentUsers] = {}
        self._frozen = False

    def _open(self, what: str, name: str) -> None:
        if self._frozen:
            raise RuntimeError(f"cannot add {what} {name!r}: this registry is frozen (build one with load())")

    # -- adding -----------------------------------------------------------------------------------------------
    def erasure(
        self, name: str, forget: Forget, *, tables: Mapping[str, str | None], phase: Phase = Phase.DATA,
        export: Export | None = None,
    ) -> None:  # fmt: skip
        """Add an erasure participant. ``tables`` names every count ``forget`` may return (see Participant)."""
        self._open("erasure participant", name)
        if any(p.name == name for p in self._participants):
            raise ValueError(f"erasure participant {name!r} is registered twice")
        self._participants.append(Participant(name, forget, dict(tables), phase, export))

    def setting(self, key: str, validate: SettingValidator) -> None:
        """Add a section of the workspace settings: ``settings[key]`` is checked by ``validate``."""
        self._open("setting", key)
        if key in self._settings:
            raise ValueError(f"setting {key!r} is registered twice")
        self._settings[key] = validate

    def on_setting(self, key: str, name: str, hook: SettingHook) -> None:
        """Call ``hook`` when a workspace's ``settings[key]`` changes (its value differs after the change)."""
        self._open("setting hook", name)
        if any(n == name for n, _ in self._hooks.get(key, ())):
            raise ValueError(f"setting hook {name!r} is registered twice for {key!r}")
        self._hooks.setdefault(key, []).append((name, hook))

    def task(self, name: str, make: Callable[[Engine, TaskOptions], Task], *, step: Step, label: str = "") -> None:
        """Add a worker task: ``make(engine, options)`` builds it once per worker."""
        self._open("worker task", name)
        if any(t.name == name for t in self._tasks):
            raise ValueError(f"worker task {name!r} is registered twice")
        self._tasks.append(WorkerTask(name, make, step, label or f"worker task {name}"))

    def consumer(self, name: str, handle: Callable) -> None:
        """Add a change-feed consumer: ``handle(conn, workspace id, profile id, changes)`` (chorus.profiles.feed)."""
        self._open("change-feed consumer", name)
        if name in self._consumers:
            raise ValueError(f"change-feed consumer {name!r} is registered twice")
        self._consumers[name] = handle

    def segment_users(self, name: str, users: SegmentUsers) -> None:
        """Add a package's users of segments: a segment is not deleted while ``users`` names any (see
        :data:`SegmentUsers`)."""
        self._open("segment users", name)
        if name in self._segment_users:
            raise ValueError(f"segment users {name!r} is registered twice")
        self._segment_users[name] = users

    def freeze(self) -> Registry:
        self._frozen = True
        return self

    # -- reading ----------------------------------------------------------------------------------------------
    def participants(self) -> list[Participant]:
        """In phase order; within a phase, in the order they were added (the installed order)."""
        return sorted(self._participants, key=lambda p: p.phase)  # sorted() is stable

    def table_of_count(self) -> dict[str, str]:
        """Every count an erasure may report that deleted rows -> its table."""
        return {c: t for p in self._participants for c, t in p.tables.items() if t is not None}

    def counts_not_deleted(self) -> frozenset[str]:
        return frozenset(c for p in self._participants for c, t in p.tables.items() if t is None)

    def validator(self, key: str) -> SettingValidator | None:
        return self._settings.get(key)

    @property
    def setting_keys(self) -> list[str]:
        return list(self._settings)

    def setting_hooks(self, key: str) -> list[SettingHook]:
        return [hook for _, hook in self._hooks.get(key, ())]

    def consumers(self) -> list[tuple[str, Callable]]:
        return list(self._consumers.items())

    def uses_of_segment(self, conn: Connection, ws: str, segment_id: str) -> list[str]:
        """How every registered package uses the segment, in the installed order (empty: nothing does)."""
        return [use for users in self._segment_users.values() for use in users(conn, ws, segment_id)]

    def segment_user_names(self) -> list[str]:
        return list(self._segment_users)

    def tasks(self) -> list[WorkerTask]:
        """In flow order; within a step, in the order they were added."""
        return sorted(self._tasks, key=lambda t: t.step)


def load(packages: Iterable[str] = INSTALLED) -> Registry:
    """A new registry holding what each package adds (its ``register(registry)``)."""
    registry = Registry()
    for name in packages:
        importlib.import_module(name).register(registry)
    return registry


@functools.cache
def installed() -> Registry:
    """The registry of the installed packages, loaded on first use (not at import: packages import this module)."""
    return load().freeze()
