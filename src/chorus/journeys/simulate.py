"""Simulation and backtest: a journey run on a virtual clock over recorded or synthetic events, sending nothing.

The simulator is the runtime without the store. It decides nothing about the journey: each person's inputs (her
events in time order, the segment changes they cause, a start, the timers her instances set) are given, one at a
time, to :func:`chorus.journeys.dispatch.offer`, the same function the runtime calls, so the interpreter's answers
are the runtime's. What the simulator does itself is only what the runtime's surroundings do:

* **the person** (a :class:`~chorus.segments.person.Person`) as of each input: her events so far, her traits folded
  from them by ``profiles.state.apply_event`` (identify traits, consent, time zone), her addresses from the
  identifiers in them (``identity.identifiers.extract``), her segment memberships;
* **segments** (optional): after each event every segment's rule is evaluated for her with
  ``segments.evaluate``; an entry or exit is a :class:`SegmentChanged` at the event's time. Time alone changes a
  membership too ("no activity for 60 days"): evaluate's ``next_change`` instant is a timer of the simulation, and
  the rules are evaluated again there;
* **messages** are "sent" virtually: the channel is the one ``messaging.policy.choose_channel`` (the outbox's
  choice) picks from the template's variants (``templates``; all channels when the template is not given), the
  person's addresses, consent and recent activity. No status ever comes back (no delivery, open or click): a wait
  for one times out;
* **the clock**: a person's inputs in time order, interleaved with her timers in due order (a timer due at the
  instant of an event fires first, as it does when the runtime's timer task is on time); each transition's ``now``
  is its input's own time. The clock stops at ``until``: timers due later stay pending and their people are
  reported as waiting.

People are independent (an instance is one person's), so they are simulated one after the other. The
:class:`Report` counts entries, per node the arrivals and how each visit ended (passed on, waiting now, exited
there), conversions, branches, messages per channel, effects, and conversions per arm for splits and holdouts.

Reading events: :func:`read_events` takes Segment-spec JSON lines (track, identify, page, screen, group, alias) as
the collector does (``collect.messages.normalise``: the same validation, message ids and channel), grouped into
people by userId, else anonymousId. :func:`people_from_payloads` does the same for stored payloads (a backtest).
:func:`read_starts` takes API starts with their data (``POST /api/journeys/{id}/start``'s), one per line.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from chorus import safejson
from chorus.collect.messages import MAX_FUTURE, MAX_MESSAGE_BYTES, Rejection, event_time, normalise
from chorus.errors import ChorusError
from chorus.identity.identifiers import (
    IdentityConfig,
    NoIdentifier,
    anchor_of,
    extract,
    id_text,
    kind_of,
    value_of,
)
from chorus.journeys import definition as d
from chorus.journeys import dispatch
from chorus.journeys import interpreter as j
from chorus.messaging.policy import MESSAGE_CHANNELS, choose_channel
from chorus.profiles.state import apply_event, empty
from chorus.segments import rules as r
from chorus.segments.evaluate import evaluate, lookup
from chorus.segments.person import Event, Person
from chorus.segments.times import NEVER, plus
from chorus.timeutil import iso, parse_ts

DEFAULT_HORIZON = timedelta(days=366)  # without ``until``: how long after the last input the clock runs
_LAST_ARRIVAL = NEVER - MAX_FUTURE  # the latest arrival the collector can add its clock-skew margin to
UNREACHABLE = "none"  # the channel of a message no channel could take (no variant, address or consent)


# -- inputs ---------------------------------------------------------------------------------------------------------
@dataclass
class Subject:
    """One person to simulate: ``payloads`` are her normalised events (``payload`` of ``collect.messages.Event``)
    to replay, in time order; ``state``, ``history``, ``identifiers`` and ``segments`` are what she was before the
    first of them (a backtest's people existed before its window; a file's are new)."""

    id: str
    payloads: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=empty)
    history: list[Event] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)
    segments: set[str] = field(default_factory=set)
    computed: Mapping[str, Any] = field(default_factory=dict)
    addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # besides those of her identifiers
    lists: frozenset[str] = frozenset()
    known: bool = False  # she existed before the first payload: her memberships then are not entries
    trusted: frozenset[int] = frozenset()  # the payloads (their indexes) sent with a server key: a backtest's
    starts: list[j.Start] = field(default_factory=list)  # her API starts (``read_starts``), besides ``start``'s
    # a backtest's: the identifiers resolution gave her (as stored). An event may name one that resolution left on
    # another profile (a phone already someone else's): it never became hers, so it is no address of hers here
    # either. None: a file's people, who gain every identifier their events name.
    owned: frozenset[str] | None = None


MAX_FILE = 10 * 2**20  # a journey, segments or templates file: the admin API's limit for a definition
MAX_EVENTS_FILE = 1024 * 2**20  # an events or starts file, read whole into memory
BOM = "\ufeff"  # a UTF-8 byte-order mark: some editors (Notepad, Excel's "CSV UTF-8") start a file with one


def _read(path: str | Path, what: str, limit: int = MAX_FILE) -> str:
    """The text of a UTF-8 file (a byte-order mark at its start is skipped). A byte that is not UTF-8 is an error
    naming the line it is on, in words (not the codec's)."""
    try:
        with open(path, "rb") as fh:  # bounded, as a definition the API takes (review: /dev/zero was read whole)
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ChorusError(f"{what} {path}: {exc.strerror or 'cannot be read'}") from None
    if len(data) > limit:
        raise ChorusError(f"{what} {path} is larger than {limit // 2**20} MB")
    if data.startswith(BOM.encode()):
        data = data[len(BOM.encode()):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ChorusError(f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}): "
                          f"save the file as UTF-8", field=f"{path} line {line}") from None  # fmt: skip


def read_events(path: str | Path) -> list[dict]:
    """The events of a JSON-lines file, normalised as the collector does (empty lines are skipped). A line that is
    not a valid event is a :class:`ChorusError` naming the file, the line and the field. An event's time is its
    ``timestamp`` (required: a simulation has no arrival time to fall back on), trusted as sent."""
    out = []
    for n, line in enumerate(_read(path, "events", MAX_EVENTS_FILE).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        out.append(payload_of(_json_line(line, path, n), where))
    return out


def _json_line(line: str, path: str | Path, n: int) -> object:
    """One line of a JSON-lines file, parsed as the collector parses a body (errors name the file and the line)."""
    if line.startswith(BOM):  # only the file's first one is skipped: one here is two files run together
        raise ChorusError(f"{path} line {n}: starts with a byte-order mark (U+FEFF) in the middle of the file: "
                          "remove it", field=f"{path} line {n}")  # fmt: skip
    try:
        return safejson.loads(line, f"line {n}")
    except ChorusError as exc:  # "line N is not valid JSON (...)", or "line N.x: ..." for a value JSON lacks
        raise ChorusError(f"{path}: {exc.message}", field=f"{path} line {n}") from None


def payload_of(msg: object, where: str) -> dict:
    """One recorded or synthetic message, normalised (``where`` names it in errors)."""
    if not isinstance(msg, dict):
        raise ChorusError(f"{where}: an event is a JSON object", field=where)
    raw = msg.get("timestamp")
    if raw is None or raw == "":
        raise ChorusError(f"{where}: timestamp: a simulated event needs its timestamp", field=f"{where}.timestamp")
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ChorusError(f"{where}: timestamp: a timestamp is ISO-8601 text (2026-03-02T09:00:00Z) or epoch "
                          "seconds", field=f"{where}.timestamp")  # fmt: skip
    try:
        at = parse_ts(raw)
    except (ValueError, TypeError, OverflowError):
        raise ChorusError(f"{where}: timestamp: not an ISO-8601 timestamp: '{str(raw)[:60]}'",
                          field=f"{where}.timestamp") from None  # fmt: skip
    # The event happened at its timestamp: received then. The message passes the collector's door whole, as a
    # /v1/batch item does (its 32 KB, sentAt, originalTimestamp...): what the door rejects is rejected here, with the
    # door's reason. The arrival is put no later than the door can add its two days of clock skew to (a timestamp
    # late in year 9999); the time kept is the timestamp, as sent (no clock-skew correction: nothing was in transit).
    ev = normalise(msg, received_at=min(at, _LAST_ARRIVAL), source_kind="server", max_bytes=MAX_MESSAGE_BYTES)
    if isinstance(ev, Rejection):
        named = ev.field if ev.field and ev.field != "batch" else None  # "batch": the whole message (its size)
        field_ = f": {named}" if named and not ev.reason.startswith(named) else ""
        raise ChorusError(f"{where}{field_}: {ev.reason}", field=f"{where}.{named}" if named else where)
    _, how = event_time(at, None, min(at, _LAST_ARRIVAL))
    if how != "as sent":  # before 2000: the collector would file it at its arrival, a time the file does not say
        raise ChorusError(f"{where}: timestamp: outside the accepted range: {how}", field=f"{where}.timestamp")
    payload = ev.payload
    payload["timestamp"] = iso(at)
    return payload


START_PERSON = ("userId", "anonymousId", "profile_id")  # how a start line names its person
START_KEYS = (*START_PERSON, "data", "at", "id")


def read_starts(path: str | Path, defn: d.Definition, at: datetime | None = None) -> list[tuple[str, str, j.Start]]:
    """API starts from a JSON-lines file, as ``POST /api/journeys/{id}/start`` takes them: each line
    ``{"userId": "u1", "data": {"order_id": "1001"}, "at": "2026-03-02T09:00:00Z", "id": "r1"}``. The person is
    named as the events file names her (``userId``, else ``anonymousId``; a backtest's by ``profile_id``);
    ``data`` is the call's data (the entry key among it), checked as the API checks it; ``at`` defaults to ``at``
    (``--start``); ``id`` is the call's Idempotency-Key (default: the file and line), one start per id and person.
    Returns (the line, the person's id as :func:`people_from_payloads` makes it, the start), in file order."""
    from chorus.journeys.manage import MAX_START_KEY

    out: list[tuple[str, str, j.Start]] = []
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(_read(path, "starts", MAX_EVENTS_FILE).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        raw = _json_line(line, path, n)
        if not isinstance(raw, dict):
            raise ChorusError(f"{where}: a start is a JSON object (userId, data, at)", field=where)
        unknown = sorted(set(raw) - set(START_KEYS))
        if unknown:
            raise ChorusError(f"{where}: {unknown[0][:64]}: not a field of a start ({', '.join(START_KEYS)})",
                              field=f"{where}.{unknown[0][:64]}")  # fmt: skip
        named = [k for k in START_PERSON if raw.get(k) not in (None, "")]
        if len(named) != 1:
            raise ChorusError(f"{where}: a start names its person by one of {', '.join(START_PERSON)}", field=where)
        kind = {"userId": "user_id", "anonymousId": "anonymous_id", "profile_id": "user_id"}[named[0]]
        who = id_text(raw[named[0]], kind)
        if who is None:
            raise ChorusError(f"{where}: {named[0]}: a person's id is text or a whole number",
                              field=f"{where}.{named[0]}")  # fmt: skip
        data = raw.get("data")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ChorusError(f"{where}: data: data is an object", field=f"{where}.data")
        if len(orjson.dumps(data)) > d.MAX_VALUE:  # kept with her instance, as the API keeps it
            raise ChorusError(f"{where}: data: data is at most {d.MAX_VALUE // 1024} KB as JSON",
                              field=f"{where}.data")  # fmt: skip
        key = defn.entry_key
        value = lookup(data, key) if key is not None else None
        if isinstance(value, str) and len(value) > MAX_START_KEY:
            raise ChorusError(f"{where}: data.{key}: the entry key is at most {MAX_START_KEY} characters",
                              field=f"{where}.data.{key}")  # fmt: skip
        when = at
        if raw.get("at") not in (None, ""):
            try:
                when = parse_ts(raw["at"]) if isinstance(raw["at"], str | int | float) and not isinstance(
                    raw["at"], bool) else None  # fmt: skip
            except (ValueError, TypeError, OverflowError):
                when = None
            if when is None:
                raise ChorusError(f"{where}: at: not an ISO-8601 timestamp: '{str(raw['at'])[:60]}'",
                                  field=f"{where}.at")  # fmt: skip
        if when is None:
            raise ChorusError(f"{where}: at: a start needs its time (give at, or --start T for every line)",
                              field=f"{where}.at")  # fmt: skip
        rid = raw.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int) or rid == ""):
            raise ChorusError(f"{where}: id: the start's id (its Idempotency-Key) is text", field=f"{where}.id")
        rid = str(rid) if rid is not None else f"start:{Path(path).name}:{n}"
        if (who, rid) in seen:  # the same Idempotency-Key again is the same start: it enters nobody twice
            continue
        seen.add((who, rid))
        out.append((where, who, j.Start(rid, when, data)))
    return out


def give_starts(subjects: Sequence[Subject], starts: Sequence[tuple[str, str, j.Start]]) -> None:
    """Each start (from :func:`read_starts`) to its person; one the simulated people lack is an error naming its
    line (live, a start names a profile that exists: a 404 otherwise)."""
    by = {s.id: s for s in subjects}
    for where, who, start in starts:
        if who not in by:
            raise ChorusError(f"{where}: no person '{who[:64]}' in the events (a start names one of their people)",
                              field=where)  # fmt: skip
        by[who].starts.append(start)


def people_from_payloads(payloads: Iterable[dict]) -> list[Subject]:
    """Normalised payloads grouped into people by userId, else anonymousId (no identity resolution between them),
    each person's in time order (file order between equal times); people in order of first appearance."""
    by: dict[str, list[tuple[datetime, int, dict]]] = {}
    for n, p in enumerate(payloads):
        # the id as identity resolution writes it (5.0 is "5"): the collector accepted it, so it has one
        who = id_text(p.get("userId")) or id_text(p.get("anonymousId"), "anonymous_id")
        if who is None:
            continue
        by.setdefault(who, []).append((parse_ts(p["timestamp"]), n, p))
    return [Subject(pid, [p for _, _, p in sorted(items, key=lambda x: (x[0], x[1]))]) for pid, items in by.items()]


def identifiers_in(payload: dict, cfg: IdentityConfig, trusted: bool = False) -> list[str]:
    """The identifiers an event gives its person, as identity resolution reads them (none: an event without), its
    anchor first."""
    try:
        found = extract(payload, cfg, trusted)
    except NoIdentifier:
        return []
    return [found.anchor, *found.others]


def read_definition(path: str | Path) -> d.Definition:
    """A journey from a .yaml/.yml or .json file; errors name the file and the field."""
    text = _read(path, "journey")
    try:
        if str(path).lower().endswith((".yaml", ".yml")):
            return d.parse_yaml(text)
        return d.parse(safejson.loads(text.encode(), "journey"))
    except ChorusError as exc:
        raise _named(exc, path) from None


def read_segments(path: str | Path) -> dict[str, r.Node]:
    """Segment definitions: a mapping of segment id to its rule (the rule language of ``chorus segments``), YAML
    or JSON. Rules are evaluated in the file's order (a ``segment`` condition reads memberships as they are)."""
    raw = _mapping(path, "segments")
    out = {}
    for sid, rule in raw.items():
        try:
            out[str(sid)] = r.parse(rule, f"{sid}")
        except ChorusError as exc:
            raise _named(exc, path) from None
    return out


def check_segments(defn: d.Definition, segments: Mapping[str, object] | None, source: str | None,
                   journey: str | Path | None = None) -> None:  # fmt: skip
    """Every segment the journey (from the file ``journey``) names is among ``segments`` (from ``source``: a file,
    a workspace; None: none given), as a publish checks it: a missing one would silently never be entered or
    matched (an outside probe: a journey entered by a segment missing from --segments predicted 0 entries)."""
    at = f"{journey}: " if journey is not None else ""
    for path, kind, name in d.references(defn):
        if kind != "segment" or (segments is not None and name in segments):
            continue
        if source is None:
            raise ChorusError(f"{at}{path}: segment '{name}' is not defined: give its rule with --segments FILE (or "
                              "read the workspace's with --workspace W)", field=path)  # fmt: skip
        raise ChorusError(f"{at}{path}: segment '{name}' does not exist in {source}", field=path)


def read_templates(path: str | Path) -> dict[str, frozenset[str]]:
    """Templates: a mapping of template name to the channels it has a variant for (a list), YAML or JSON."""
    out = {}
    for name, channels in _mapping(path, "templates").items():
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ChorusError(f"{path}: {name}: a template's channels are a list of channel names", field=str(name))
        unknown = [c for c in channels if c not in MESSAGE_CHANNELS]
        if unknown:
            raise ChorusError(f"{path}: {name}: '{unknown[0][:60]}' is not a message channel "
                              f"({', '.join(MESSAGE_CHANNELS)})", field=str(name))  # fmt: skip
        out[str(name)] = frozenset(channels)
    return out


def _mapping(path: str | Path, what: str) -> dict:
    text = _read(path, what)
    try:
        if str(path).lower().endswith((".yaml", ".yml")):
            from chorus.segments.rules import load_yaml

            raw = load_yaml(text)
        else:
            raw = safejson.loads(text.encode(), what)
    except ChorusError as exc:
        raise _named(exc, path) from None
    if not isinstance(raw, dict):
        raise ChorusError(f"{path}: {what} are a mapping of name to definition", field=what)
    return raw


def _named(exc: ChorusError, path: str | Path) -> ChorusError:
    text = exc.message if not exc.field or exc.message.startswith(exc.field) else f"{exc.field}: {exc.message}"
    return ChorusError(f"{path}: {text}", field=exc.field)


# -- the report -----------------------------------------------------------------------------------------------------
@dataclass
class NodeStats:
    """Per node: ``entered`` counts arrivals (a node visited twice by one person counts twice); each visit ends
    ``passed`` (went on), ``waiting`` (still there when the clock stopped) or ``exited`` (the person left the
    journey there), so ``entered == passed + waiting + exited``."""

    entered: int = 0
    passed: int = 0
    waiting: int = 0
    exited: int = 0
    converted: int = 0
    branches: Counter = field(default_factory=Counter)


@dataclass
class ArmStats:
    entered: int = 0
    converted: int = 0
    messages: int = 0


@dataclass
class Report:
    journey: str
    since: datetime | None = None  # the first input's time
    until: datetime | None = None  # where the clock stopped
    people: int = 0  # people with at least one input
    entries: int = 0
    people_entered: int = 0
    waiting: int = 0  # instances still in the journey at ``until``
    converted: int = 0
    converted_at_entry: int = 0
    exited_at_entry: int = 0
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    messages: Counter = field(default_factory=Counter)  # channel -> messages ("none": no channel could take it)
    messages_by_node: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    effects: Counter = field(default_factory=Counter)  # "update_trait welcome_code_sent", "audience add x", ...
    exits: Counter = field(default_factory=Counter)  # reason -> instances
    arms: dict[str, dict[str, ArmStats]] = field(default_factory=lambda: defaultdict(dict))  # split -> arm -> stats
    # with ``simulate(trace=True)``: every record as (person, instance id, Record), and every message as (person,
    # instance id, node, channel), in the order they happened for each person
    trace: list[tuple[str, str, j.Record]] | None = None
    sent: list[tuple[str, str, str, str]] | None = None

    def to_json(self) -> dict:
        return {
            "journey": self.journey,
            "since": iso(self.since) if self.since else None,
            "until": iso(self.until) if self.until else None,
            "people": self.people,
            "entries": self.entries,
            "people_entered": self.people_entered,
            "waiting": self.waiting,
            "conversions": {
                "total": self.converted,
                "at_entry": self.converted_at_entry,
                "by_arm": {split: {arm: vars(a) for arm, a in sorted(arms.items())}
                           for split, arms in sorted(self.arms.items())},  # fmt: skip
            },
            "exits": dict(sorted(self.exits.items())),
            "exited_at_entry": self.exited_at_entry,
            "nodes": {nid: {"entered": s.entered, "passed": s.passed, "waiting": s.waiting, "exited": s.exited,
                            "converted": s.converted, "branches": dict(sorted(s.branches.items()))}
                      for nid, s in sorted(self.nodes.items())},  # fmt: skip
            "messages": {"by_channel": dict(sorted(self.messages.items())),
                         "by_node": {n: dict(sorted(c.items())) for n, c in sorted(self.messages_by_node.items())}},
            "effects": dict(sorted(self.effects.items())),
        }  # fmt: skip


# -- the simulation -------------------------------------------------------------------------------------------------
@dataclass
class _Sim:
    """One person's run: her instances and timers, and the person as of the clock."""

    defn: d.Definition
    subject: Subject
    report: Report
    templates: Mapping[str, frozenset[str]] | None
    segments: Mapping[str, r.Node]
    topics: Mapping | None
    cfg: IdentityConfig
    policies: Mapping[str, str] | None
    zone_default: str | None = None  # the workspace's messaging.timezone
    instances: list[j.State] = field(default_factory=list)
    timers: dict[str, tuple[datetime, str]] = field(default_factory=dict)  # key -> (due, instance id)
    records: dict[str, list[j.Record]] = field(default_factory=lambda: defaultdict(list))  # instance id -> records
    sends: Counter = field(default_factory=Counter)  # instance id -> messages sent

    def __post_init__(self) -> None:
        s = self.subject
        self.state = copy.deepcopy(s.state)
        self.events = list(s.history)
        self.idents = set(s.identifiers)
        self.members = set(s.segments)
        self.next_change: dict[str, datetime] = {}
        self.changes = 0  # trait changes by update_trait steps (the person is built again after one)
        self._person: Person | None = None
        self._key: tuple = ()

    def person(self) -> Person:
        """The person as of the clock. Built again only after a change (an event, a membership, a trait): a
        backtest's person may have a long history, and every segment evaluation and offer reads her."""
        key = (len(self.events), len(self.idents), frozenset(self.members), self.changes)
        if self._person is None or self._key != key:
            addresses: dict[str, list[str]] = {ch: list(a) for ch, a in self.subject.addresses.items()}
            for i in sorted(self.idents):
                for ch in self.cfg.address_channels(kind_of(i)):
                    if value_of(i) not in addresses.get(ch, ()):
                        addresses.setdefault(ch, []).append(value_of(i))
            self._person = Person(self.subject.id, state=self.state, computed=self.subject.computed,
                                  addresses={ch: tuple(a) for ch, a in addresses.items()}, events=tuple(self.events),
                                  segments=frozenset(self.members), lists=self.subject.lists,
                                  zone_default=self.zone_default, anchor=anchor_of(self.idents, self.cfg))  # fmt: skip
            self._key = key
        return self._person

    # -- what the runtime's surroundings do
    def fold(self, payload: dict, trusted: bool = False) -> Event:
        """The event folded into the person, as resolution and the profile do before the journeys consumer, with
        its anchor (a split by identifier draws by the entry event's, as the runtime does)."""
        found = identifiers_in(payload, self.cfg, trusted)
        owned = self.subject.owned
        self.idents.update(found if owned is None else (i for i in found if i in owned))
        apply_event(self.state, payload, self.subject.id, dict(self.policies or {}))
        ev = replace(Event.from_payload(payload), anchor=found[0] if found else None)
        self.events.append(ev)
        return ev

    def evaluate(self, at: datetime) -> list[j.SegmentChanged]:
        """Every segment evaluated for her at ``at``: the entries and exits, and when time alone changes each."""
        out = []
        for sid, rule in self.segments.items():
            res = evaluate(rule, self.person(), at, topics=self.topics)
            if res.next_change is not None:
                self.next_change[sid] = res.next_change
            else:
                self.next_change.pop(sid, None)
            if res.value != (sid in self.members):
                change = "entered" if res.value else "exited"
                (self.members.add if res.value else self.members.discard)(sid)
                out.append(j.SegmentChanged(sid, change, at, f"{sid}:{change}:{iso(at)}"))
        return out

    # -- the interpreter, through dispatch.offer
    def give(self, inp: j.Input, now: datetime) -> None:
        # the events given so far (folded just before being given): an entry checks its goal and exit criteria
        # against those stamped from its time on, as the runtime's entry sees the events it handled before
        outcomes = dispatch.offer({1: self.defn}, 1, self.person(), self.instances, inp, now, status="active",
                                  topics=self.topics, before_entry=tuple(self.events))  # fmt: skip
        for o in outcomes:
            self.keep(o, now)

    def keep(self, o: dispatch.Outcome, now: datetime) -> None:
        s = o.state
        if o.new:
            self.instances.append(s)
        else:
            i = next(n for n, x in enumerate(self.instances) if x.instance_id == s.instance_id)
            self.instances[i] = s
        for c in o.commands:
            if isinstance(c, j.SetTimer):
                self.timers[c.key] = (c.at, s.instance_id)
            elif isinstance(c, j.CancelTimer):
                self.timers.pop(c.key, None)
            elif isinstance(c, j.Record):
                self.records[s.instance_id].append(c)
                if self.report.trace is not None:
                    self.report.trace.append((self.subject.id, s.instance_id, c))
            elif isinstance(c, j.Exit):
                self.report.exits[c.reason] += 1
            elif isinstance(c, j.Send):
                ch = self.send(c, now)
                if self.report.sent is not None:
                    self.report.sent.append((self.subject.id, s.instance_id, c.node, ch))
                self.sends[s.instance_id] += 1
            elif isinstance(c, j.UpdateTrait):
                self.report.effects[f"update_trait {c.trait}"] += 1
                # the runtime stores an identify with the step's key: the trait is the person's from now on
                apply_event(self.state, {"type": "identify", "messageId": c.key, "timestamp": iso(now),
                                         "channel": "internal", "context": {"direction": "outbound"},
                                         "traits": {c.trait: c.value}}, self.subject.id)  # fmt: skip
                self.changes += 1
            elif isinstance(c, j.ListChange):
                self.report.effects[f"list {c.action} {c.list}"] += 1
            elif isinstance(c, j.AudienceChange):
                self.report.effects[f"audience {c.action} {c.audience}"] += 1
            elif isinstance(c, j.Webhook):
                self.report.effects[f"webhook {c.method} {c.url}"] += 1

    def send(self, c: j.Send, now: datetime) -> str:
        """The channel the outbox would choose (``messaging.policy.choose_channel``); nothing is sent."""
        # without templates every channel is assumed; with them, a template they lack has no variant (live, the
        # outbox refuses it: a backtest's workspace without the template)
        variants = list(MESSAGE_CHANNELS) if self.templates is None else sorted(self.templates.get(c.template, ()))
        requested = c.request()["channel"]  # what the outbox is asked: "auto" or a list
        topic = c.topic or ("transactional" if c.kind == "transactional" else "marketing")
        choice = choose_channel(self.person().policy_view(), variants, requested, topic=topic, kind=c.kind,
                                topics=dict(self.topics) if self.topics else None, now=now)  # fmt: skip
        ch = choice.channel or UNREACHABLE
        self.report.messages[ch] += 1
        self.report.messages_by_node[c.node][ch] += 1
        return ch

    # -- the clock
    def run(self, start: datetime | None, until: datetime) -> None:
        payloads = self.subject.payloads
        times = [parse_ts(p["timestamp"]) for p in payloads]
        # the starts in time order (the one of ``start`` first at the same instant), each given once
        starts = sorted(([j.scheduled_start(f"start:{iso(start)}", start)] if start is not None else [])
                        + list(self.subject.starts), key=lambda x: x.at)  # fmt: skip
        i, k = 0, 0
        while True:
            # candidates at their instant, in the order they go at the same instant: timers, time's segment
            # changes, the start, the next event
            options = []
            if self.timers:
                key = min(self.timers, key=lambda k: (self.timers[k][0], k))
                options.append((self.timers[key][0], 0, key))
            if self.next_change:
                options.append((min(self.next_change.values()), 1, None))
            if k < len(starts):
                options.append((starts[k].at, 2, None))
            if i < len(payloads):
                options.append((times[i], 3, None))
            if not options:
                return
            at, kind, key = min(options, key=lambda o: (o[0], o[1]))
            if at > until:
                return
            if kind == 0:
                due, iid = self.timers.pop(key)
                self.give(j.TimerFired(iid, key, due), due)
            elif kind == 1:
                for change in self.evaluate(at):
                    self.give(change, at)
            elif kind == 2:
                k += 1
                self.give(starts[k - 1], at)
            else:
                ev = self.fold(payloads[i], i in self.subject.trusted)
                i += 1
                changes = self.evaluate(at) if self.segments else []
                self.give(ev, at)
                for change in changes:
                    self.give(change, at)


def simulate(
    defn: d.Definition,
    subjects: Sequence[Subject],
    *,
    segments: Mapping[str, r.Node] | None = None,
    templates: Mapping[str, frozenset[str]] | None = None,
    start: datetime | None = None,
    until: datetime | None = None,
    since: datetime | None = None,
    topics: Mapping | None = None,
    identity: IdentityConfig | None = None,
    policies: Mapping[str, str] | None = None,
    timezone: str | None = None,
    trace: bool = False,
) -> Report:
    """Run ``defn`` for ``subjects`` on a virtual clock and count what happened; nothing is sent or written.

    ``start``: every person gets a :class:`Start` at that instant (API and scheduled entries), besides her own
    ``Subject.starts`` (API starts with their data, :func:`read_starts`). ``until``: where
    the clock stops (default: a year and a day after the last input, when every journey has long run out).
    ``since``: where it starts (default: the first input); a known person's memberships are taken there.
    ``topics``, ``identity`` and ``policies`` are the workspace's consent topics, identity settings and trait
    policies (defaults otherwise), ``timezone`` its ``messaging.timezone`` (the local time of a person without a
    zone of her own). ``trace`` keeps every record and message in the report (tests compare them)."""
    if any(t is not None and t.tzinfo is None for t in (start, until, since)):
        raise ValueError("start, until and since are aware datetimes")
    firsts = [parse_ts(s.payloads[0]["timestamp"]) for s in subjects if s.payloads]
    lasts = [parse_ts(s.payloads[-1]["timestamp"]) for s in subjects if s.payloads]
    firsts += [min(x.at for x in s.starts) for s in subjects if s.starts]
    lasts += [max(x.at for x in s.starts) for s in subjects if s.starts]
    if start is not None:
        firsts.append(start)
        lasts.append(start)
    report = Report(defn.id, since=since or (min(firsts) if firsts else None))
    if trace:
        report.trace, report.sent = [], []
    if until is None:
        # saturated at the end of the calendar (an input late in year 9999 runs to its last instant)
        until = plus(max(lasts), DEFAULT_HORIZON) if lasts else None
    report.until = until
    if until is None:
        return report
    for subject in subjects:
        if not subject.payloads and start is None and not subject.starts and not (segments and subject.known):
            continue  # nothing can happen to her: no event, no start, no membership that time alone can change
        report.people += 1
        sim = _Sim(defn, subject, report, templates, dict(segments or {}), topics, identity or IdentityConfig(),
                   policies, timezone)  # fmt: skip
        if sim.segments and subject.known:
            # where a known person stood when the clock starts, taken as is: only what is replayed causes entries.
            # A new person (a file's) has no memberships before her first event, which then may enter her.
            sim.evaluate(report.since or until)
        sim.run(start, until)
        _count(defn, sim, report)
    return report


def _count(defn: d.Definition, sim: _Sim, report: Report) -> None:
    """Add one person's instances to the report, from the interpreter's records (their meaning: ``j.Record``)."""
    if sim.instances:
        report.people_entered += 1
    for s in sim.instances:
        report.entries += 1
        pos: str | None = None  # the node the instance is at, in the order of its records
        for rec in sim.records[s.instance_id]:
            if rec.kind == "entered":
                continue
            if rec.kind == "converted":
                report.converted += 1
                if rec.node is None:
                    report.converted_at_entry += 1
                else:
                    _node(report, rec.node).converted += 1
                continue
            if rec.node is None:  # an exit before the first node (a criterion met at entry)
                report.exited_at_entry += 1
                continue
            n = _node(report, rec.node)
            if pos != rec.node:
                n.entered += 1
                pos = rec.node
            if rec.kind == "exited":
                n.exited += 1
                pos = None
            elif rec.kind == "step" and _goes_on(defn.node(rec.node).body, defn.node(rec.node), rec.branch):
                # ``branches`` are those of the visits that went on, as the live stats' ``passed_by_branch``: a
                # holdout arm is not one (its people wait out the goal window and exit at the split; they are
                # counted per arm in ``arms``), so a split's branches add up to its ``passed``
                n.passed += 1
                if rec.branch is not None:
                    n.branches[rec.branch] += 1
                pos = None
        if pos is not None:
            _node(report, pos).waiting += 1
        if s.status != "exited":
            report.waiting += 1
        for split, arm in s.arms.items():
            a = report.arms[split].setdefault(arm, ArmStats())
            a.entered += 1
            a.converted += s.converted_at is not None
            a.messages += sim.sends[s.instance_id]


def _goes_on(body: object, node: d.Node, branch: str | None) -> bool:
    """Whether a ``step`` record at ``node`` means the person left it: not at an exit node (the end of her path:
    she exits there, or stays tracked there while the goal window is open), not a holdout arm and not a
    ``max_visits`` overflow with nowhere to go (both end there the same way)."""
    if isinstance(body, d.ExitStep):
        return False
    if branch == "overflow":
        return node.overflow is not None
    if isinstance(body, d.Split):
        return not any(a.holdout and a.name == branch for a in body.arms)
    return True


def _node(report: Report, nid: str) -> NodeStats:
    if nid not in report.nodes:
        report.nodes[nid] = NodeStats()
    return report.nodes[nid]
