"""Who is in an audience, and what to send to make the platform agree: plain functions.

The sync has two halves that meet here:

* a **membership source** says which profiles belong to the audience. Today that is the caller's list of
  profiles (:func:`parse_entry`, :func:`parse_lines`) combined with the last synced membership by the sync mode
  (:func:`members_after`). When the segment engine lands, a segment's current members are just another source
  of profile ids: nothing below this line changes.
* the **diff** (:func:`plan`) compares the rows last sent (kept in ``audience_members``) with the rows the
  members have now, so a sync sends only additions and removals, whichever source produced the membership.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chorus.identity.identifiers import BUILTIN_KINDS

MODES = ("replace", "add", "remove")
MAX_ENTRIES = 1_000_000


@dataclass(frozen=True)
class Entry:
    """One item of the caller's list: a profile id, or one identifier ``(kind, value)``."""

    where: str  # "profiles[3]" or "line 4": how errors name it
    profile_id: str | None = None
    kind: str | None = None
    value: str | None = None

    @property
    def shown(self) -> str:
        return self.profile_id if self.profile_id is not None else f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class Skip:
    where: str
    input: str
    reason: str  # one of REASONS
    detail: str

    def as_dict(self) -> dict:
        return {"at": self.where, "input": self.input, "reason": self.reason, "detail": self.detail}


REASONS = ("invalid_input", "unknown_profile", "consent_denied", "no_identifier")


def parse_entry(item: object, where: str, declared: tuple[str, ...] = ()) -> Entry | Skip:
    """A profile id (string) or an object with exactly one identifier, e.g. ``{"email": "ana@example.com"}``."""
    kinds = (*BUILTIN_KINDS, *declared)
    if isinstance(item, str):
        item = item.strip()
        if not item or len(item) > 200:
            return Skip(where, item[:200], "invalid_input", "a profile id is 1 to 200 characters")
        return Entry(where, profile_id=item)
    if isinstance(item, dict):
        if len(item) != 1:
            return Skip(where, str(item)[:200], "invalid_input", f"give exactly one identifier ({', '.join(kinds)})")
        ((kind, value),) = item.items()
        if kind not in kinds:
            return Skip(where, str(item)[:200], "invalid_input", f"{kind} is not an identifier ({', '.join(kinds)})")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            return Skip(where, str(item)[:200], "invalid_input", f"{kind} must be a non-empty text")
        return Entry(where, kind=kind, value=value.strip())
    return Skip(where, str(item)[:200], "invalid_input", 'expected a profile id or an object like {"email": ...}')


def parse_lines(text: str, declared: tuple[str, ...] = ()) -> list[Entry | Skip]:
    """One profile id or ``kind:value`` per line (``email:ana@example.com``); blank lines and ``#`` comments are
    ignored. A line whose prefix before ``:`` is not an identifier kind is taken as a profile id."""
    kinds = (*BUILTIN_KINDS, *declared)
    out: list[Entry | Skip] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, value = line.partition(":")
        if sep and kind.strip() in kinds:
            out.append(parse_entry({kind.strip(): value}, f"line {number}", declared))
        else:
            out.append(parse_entry(line, f"line {number}", declared))
    return out


def members_after(mode: str, previous: set[str], given: set[str]) -> set[str]:
    """The audience's profiles after a sync: ``replace`` makes it the given list, ``add`` adds to the last synced
    membership, ``remove`` takes the given profiles out of it."""
    if mode == "replace":
        return set(given)
    if mode == "add":
        return previous | given
    if mode == "remove":
        return previous - given
    raise ValueError(f"mode must be one of {', '.join(MODES)}")


@dataclass(frozen=True)
class Synced:
    """A row sent earlier: its ``audience_members`` id (None for a removal queued by an erasure), the profile it
    was sent for (after merges: the surviving id), and what was sent."""

    id: int | None
    profile_id: str | None
    row_hash: str
    keys: dict


@dataclass
class Plan:
    add: list[tuple[str, str, dict]] = field(default_factory=list)  # (profile id, row hash, row)
    remove: list[Synced] = field(default_factory=list)  # rows to take out at the platform
    keep: list[tuple[Synced, str]] = field(default_factory=list)  # (row, its profile now)
    drop: list[Synced] = field(default_factory=list)  # duplicate records of a row that stays: local only

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove)


def plan(previous: list[Synced], current: dict[str, tuple[str, dict]]) -> Plan:
    """What to send so that the platform holds exactly the rows of ``current`` (profile id -> (row hash, row)).

    A row already sent is not sent again; a row no current member has is removed; when two profiles produce the
    same row (a merge, or two records of one person) it is sent once and removed only when nobody has it.
    """
    out = Plan()
    wanted: dict[str, tuple[str, dict]] = {}
    for pid in sorted(current):
        h, row = current[pid]
        wanted.setdefault(h, (pid, row))
    seen: set[str] = set()
    for s in sorted(previous, key=lambda s: (s.id is None, s.id or 0)):
        if s.row_hash not in wanted:
            if s.row_hash in seen:
                out.drop.append(s)  # the same row is already being removed once
            else:
                out.remove.append(s)
                seen.add(s.row_hash)
        elif s.row_hash in seen or s.id is None:
            out.drop.append(s)  # a second record of a kept row, or a queued removal of a row someone still has
        else:
            out.keep.append((s, wanted[s.row_hash][0]))
            seen.add(s.row_hash)
    for h, (pid, row) in wanted.items():
        if h not in seen:
            out.add.append((pid, h, row))
    return out
