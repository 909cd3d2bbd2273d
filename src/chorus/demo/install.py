"""The standard segments, audience, templates, journeys and broadcast of the demo brand (JSON files under
``definitions/``), checked by Chorus' own validators and installed through the admin API as an operator would."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources

import orjson

from chorus.journeys import definition as jdef
from chorus.journeys import manage
from chorus.messaging import content
from chorus.segments import rules

PACKAGE = "chorus.demo.definitions"
JOURNEYS = ("welcome", "abandoned_cart", "browse_abandonment", "post_purchase", "winback", "pickup_cancelled")


def _load(name: str):
    return orjson.loads(resources.files(PACKAGE).joinpath(name).read_bytes())


@dataclass(frozen=True)
class Definitions:
    segments: dict  # id -> {"name", "rule"}
    audiences: list
    templates: dict  # name -> template document
    journeys: dict  # id -> journey document
    broadcast: dict | None


def load(start: datetime) -> Definitions:
    """Every definition, the broadcast's day placed a week after ``start``. Raises ChorusError/ValueError (naming
    the file and the field) when a file does not pass Chorus' validators."""
    broadcast = _load("broadcast.json")
    broadcast["schedule"] = {**broadcast["schedule"], "on": (start + timedelta(days=7)).date().isoformat()}
    defs = Definitions(
        segments=_load("segments.json"), audiences=_load("audiences.json"), templates=_load("templates.json"),
        journeys={j: _load(f"journeys/{j}.json") for j in JOURNEYS}, broadcast=broadcast,
    )  # fmt: skip
    check(defs, start)
    return defs


def check(defs: Definitions, now: datetime) -> None:
    for sid, seg in defs.segments.items():
        rules.parse(seg["rule"], f"segments.json:{sid}.rule")
    for name, doc in defs.templates.items():
        try:
            content.validate_definition({**doc, "name": name})  # the API names it from the URL
        except ValueError as exc:
            raise ValueError(f"templates.json:{name}: {exc}") from None
    for jid, doc in defs.journeys.items():
        parsed = jdef.parse(doc, f"journeys/{jid}.json")
        for where, kind, ref in jdef.references(parsed):
            known = defs.templates if kind == "template" else defs.segments if kind == "segment" else None
            if known is not None and ref not in known:
                raise ValueError(f"journeys/{jid}.json: {where} names the {kind} {ref!r}, which is not defined")
    if defs.broadcast:
        jdef.parse(manage.broadcast_definition(defs.broadcast, now), "broadcast.json")
