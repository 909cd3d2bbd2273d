"""What collect holds about a person, for export and erasure: their events, the rejected events that name them, and
the import reports that quote them."""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.identity.identifiers import kind_of, value_of
from chorus.registry import Person
from chorus.store.tables import events, imports, rejected_events

# count -> the table it was deleted from (see chorus.registry.Participant.tables)
TABLES = {"events": "events", "rejected_events": "rejected_events", "import_errors_redacted": "imports"}


def forget(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    pid = person.profile_id
    counts = {}
    counts["events"] = conn.execute(
        events.delete().where(events.c.workspace_id == ws, events.c.profile_id == pid)
    ).rowcount
    # Events of this person not yet resolved would otherwise bring the profile back.
    counts["events"] += conn.execute(
        events.delete().where(
            events.c.workspace_id == ws,
            events.c.profile_id.is_(None),
            sa.or_(
                events.c.user_id.in_(person.values("user_id")), events.c.anonymous_id.in_(person.values("anonymous_id"))
            ),
        )
    ).rowcount
    rej = [r.id for r in _rejected_of(conn, ws, list(person.identifiers))]
    counts["rejected_events"] = (
        conn.execute(rejected_events.delete().where(rejected_events.c.id.in_(rej))).rowcount if rej else 0
    )
    counts["import_errors_redacted"] = _redact_import_errors(conn, ws, list(person.identifiers))
    return counts


def export(conn: Connection, ws: str, person: Person) -> dict:
    evs = conn.execute(
        sa.select(events.c.payload)
        .where(events.c.workspace_id == ws, events.c.profile_id == person.profile_id)
        .order_by(events.c.timestamp)
    ).scalars()
    return {
        "events": list(evs),
        "rejected_events": [
            {
                "reason": r.reason,
                "field": r.field,
                "payload": rejected_payload_of(r.payload),
            }
            for r in _rejected_of(conn, ws, list(person.identifiers))
        ],
    }


def rejected_payload_of(text: str) -> object:
    """A stored rejected payload as a value: the JSON it holds, else the text as it was stored. Earlier versions
    kept some that do not read back (cut at 64 KB mid-document, lone surrogates written as ``\\ud800``, a line
    that was not JSON): the person's export shows those as text rather than failing."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def forget_pending_by_message_id(conn: Connection, ws: str, prefixes: list[str]) -> int:
    """Delete the unresolved events whose message id starts with one of ``prefixes``: records a package made of
    its own work (a message's status changes) that would otherwise bring an erased person back."""
    deleted = 0
    for i in range(0, len(prefixes), 200):
        deleted += conn.execute(
            events.delete().where(
                events.c.workspace_id == ws,
                events.c.profile_id.is_(None),
                sa.or_(*(sa.func.substr(events.c.message_id, 1, len(p)) == p for p in prefixes[i : i + 200])),
            )
        ).rowcount
    return deleted


def _matches(idents: list[str], found: dict) -> bool:
    mine: dict[str, set[str]] = {}
    for i in idents:
        mine.setdefault(kind_of(i), set()).add(value_of(i).lower())
    for kind, values in (found or {}).items():
        if not isinstance(values, list):  # rows written before identifiers were kept by kind
            values = [values]
        for v in values:
            v = str(v).lower()
            if kind == "phone":
                digits = v.lstrip("0")
                if len(digits) >= 6 and any(p.lstrip("+").endswith(digits) for p in mine.get("phone", ())):
                    return True
            elif v in mine.get(kind, ()):
                return True
    return False


def _rejected_of(conn: Connection, ws: str, idents: list[str]):
    for r in conn.execute(sa.select(rejected_events).where(rejected_events.c.workspace_id == ws)):
        if _matches(idents, r.identifiers):
            yield r


def _redact_import_errors(conn: Connection, ws: str, idents: list[str]) -> int:
    """Import reports quote bad cells; any that quote this person's identifiers lose the quote."""
    values = [value_of(i).lower() for i in idents if len(value_of(i)) >= 3]
    redacted = 0
    for row in conn.execute(sa.select(imports.c.id, imports.c.errors).where(imports.c.workspace_id == ws)):
        changed = False
        errors = []
        for e in row.errors or []:
            if any(v in str(e.get("reason", "")).lower() for v in values):
                e = {**e, "reason": "[erased]"}
                changed = True
                redacted += 1
            errors.append(e)
        if changed:
            conn.execute(imports.update().where(imports.c.id == row.id).values(errors=errors))
    return redacted
