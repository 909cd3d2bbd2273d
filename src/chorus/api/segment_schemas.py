"""What the segment and static list endpoints answer, as /openapi.json describes it.

The endpoints build their answers as plain dicts (``chorus.segments.store`` makes them for the CLI too) and send
them as they are; these models only document them. ``extra="forbid"`` makes each schema closed, so the test that
checks every answer against the document (tests/api/test_segments_openapi.py) fails on a field added to an answer
and not here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Estimate(_Closed):
    count: int = Field(description="how many people the rule holds now")
    computed_at: datetime


class Segment(_Closed):
    id: str
    name: str
    rule: dict[str, Any] = Field(description="the rule as JSON, in its canonical form (docs/segments.md)")
    version: int = Field(description="1, then one more each time the rule changes")
    status: Literal["computing", "ready"] = Field(
        description="ready once the batch computation of this version has run; until then members follow changes")
    members: int = Field(description="how many people are in it now")
    computed_at: datetime | None = Field(description="when the last batch computation ran")
    created_at: datetime
    updated_at: datetime


class SavedSegment(Segment):
    estimate: Estimate | None = Field(None, description=(
        "present unless ?estimate=false: how many people the rule holds now; null when it could not be computed "
        "within the time budget (the save stands)"))  # fmt: skip


class Segments(_Closed):
    segments: list[Segment]


class SampleMember(_Closed):
    profile_id: str
    identifiers: dict[str, list[str]] = Field(description="the person's identifiers by kind (email, phone, ...)")


class Preview(_Closed):
    count: int
    sample: list[SampleMember] = Field(description="the first members in profile id order")
    computed_at: datetime


class Member(_Closed):
    profile_id: str
    since: datetime


class MembersPage(_Closed):
    members: list[Member]
    next_cursor: str | None = Field(description="the cursor of the next page; null on the last one")


class Recomputed(_Closed):
    segment_id: str
    entered: int
    exited: int


class CurrentSegment(_Closed):
    id: str
    name: str
    since: datetime


class Change(_Closed):
    segment_id: str
    change: Literal["entered", "exited"]
    at: datetime
    cause: str = Field(description="what made the change: event, batch, timer, list, merge, ...")
    profile_id: str = Field(description="the profile it was recorded under: hers, or an id merged into her since")


class ProfileSegments(_Closed):
    profile_id: str = Field(description="the profile's current id (a merged id resolves to it)")
    segments: list[CurrentSegment]
    history: list[Change] = Field(description="her last 200 entries and exits, newest first, those recorded under "
                                              "the ids merged into her included")


class StaticList(_Closed):
    id: str
    name: str
    members: int
    created_at: datetime


class StaticLists(_Closed):
    lists: list[StaticList]


class ListChange(_Closed):
    added: int
    removed: int
    not_found: list[str | dict[str, str]] = Field(description="the first 100 entries that name nobody, as given")
    not_found_count: int
    invalid: list[dict[str, int | str]] = Field(default_factory=list, description=(
        "a CSV upload's rows that name no one because their value is not valid (the first 100, each with its "
        "`line` and `reason`); the other rows are applied all the same. A JSON body with an invalid entry is a "
        "400 instead"))  # fmt: skip
    invalid_count: int = 0


OVER_BUDGET = {503: {"description": "over_budget: a statement of the count ran past its time budget "
                     "(CHORUS_SEGMENT_PREVIEW_SECONDS) and was stopped"}}  # fmt: skip
CSV = {200: {"description": "The members as CSV (an attachment): profile_id, user_id, email, phone, since",
             "content": {"text/csv": {"schema": {"type": "string"}}}}}  # fmt: skip


def created(model: type[BaseModel]) -> dict:
    """The 201 of a create-or-change PUT (its 200, a change, is the route's response_model)."""
    return {201: {"model": model, "description": "Created"}}
