"""The person a rule is evaluated for: plain, immutable data gathered at the edge (by an engine or a test).

Nothing here reads the store. An engine builds a :class:`Person` from ``profiles.state``, the profile's
addresses (``views.get_profiles`` derives them from identifiers and the workspace's identity settings), computed
traits, the person's events (:meth:`Event.from_payload` takes a stored payload), the status history of their
messages, their memberships of other segments and their static lists, and the summary of her activity that
the state keeps (``segments.summary``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from chorus.profiles.state import empty, event_name, public_view
from chorus.segments.summary import Summary
from chorus.timeutil import parse_ts, zone


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the person. ``name`` is a track event's name or a page/screen's name."""

    name: str | None
    type: str
    at: datetime  # aware, UTC
    channel: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""  # the messageId: orders events stamped at the same instant
    outbound: bool = False  # Chorus' own record of a message it sent: on the timeline, not the person's activity
    # the identifier the event is anchored on (identifiers.event_anchor), where a journey needs it: the runtime and
    # the simulator set it on the events they give, a split by identifier draws by the entry event's
    anchor: str | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Event:
        """From a normalised, stored event payload (``events.payload``)."""
        etype = payload.get("type") or "track"
        ctx = payload.get("context") or {}
        props = payload.get("properties")
        # a page's name is stored as sent (the door checks only a track's): one that is not a text, or is empty,
        # is no name, as in the events.event column the store's queries compare (collect.messages)
        return cls(
            name=event_name(payload),
            type=etype,
            at=parse_ts(payload["timestamp"]),
            channel=payload.get("channel") or "unknown",
            properties=props if isinstance(props, dict) else {},
            id=str(payload.get("messageId") or ""),
            outbound=isinstance(ctx, dict) and ctx.get("direction") == "outbound",
        )


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One status change of one message Chorus sent the person (a ``message_status`` row with its message's
    fields); the same change is the ``Message <Status>`` event on the timeline."""

    message_id: str
    status: str  # queued, sent, delivered, opened, clicked, bounced, unsubscribed, ... (messaging.outbox)
    at: datetime
    channel: str | None = None
    template: str | None = None
    journey_id: str | None = None
    campaign_id: str | None = None
    topic: str | None = None


@dataclass(frozen=True)
class Person:
    id: str
    state: Mapping[str, Any] = field(default_factory=empty)  # profiles.state (profiles/state.py)
    computed: Mapping[str, Any] = field(default_factory=dict)  # computed trait name -> value
    addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # message channel -> addresses
    events: tuple[Event, ...] = ()
    messages: tuple[MessageRecord, ...] = ()
    segments: frozenset[str] = frozenset()  # ids of the segments the person is in now
    lists: frozenset[str] = frozenset()  # ids of the static lists the person is on
    zone_default: str | None = None  # the workspace's messaging.timezone: her zone when she has none of her own
    # her activity's counts and first/last times (segments.summary): unbounded conditions read it instead of the
    # events when it knows the answer. None: read the events (a person built for a test, or a state from before).
    summary: Summary | None = None
    # her anchor identifier (``identity.identifiers.anchor_of``), read with her addresses: what a journey split
    # ``by: identifier`` hashes. None: not read, or she has none.
    anchor: str | None = None

    @property
    def timezone(self) -> str | None:
        tz = (self.state.get("attrs") or {}).get("timezone")
        return tz[0] if isinstance(tz, list | tuple) and tz else None

    @property
    def zone(self) -> ZoneInfo:
        """Her local time's zone: her own (``timezone``) if it is a known IANA zone, else the workspace's, else
        UTC (``timeutil.zone``, the rule quiet hours follow too)."""
        return zone(self.timezone, self.zone_default)

    def policy_view(self) -> dict:
        """The profile as the messaging policy reads it (``consent_decision``, ``addresses_for``): the same view
        the API and delivery use, so reachability here is reachability there."""
        state = {**empty(), **self.state}
        view = public_view(state)
        return {"id": self.id, **view, "addresses": {ch: list(a) for ch, a in self.addresses.items()}}
