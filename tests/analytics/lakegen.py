"""Lakes written directly in the layout `chorus lake export` produces, for analytics tests that need exact data.

The lake's layout is a public interface (brands write and read it with other tools), so writing it directly is
how a test states "given these events"; tests of the export itself live in test_lake.py.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from chorus.analytics import lake

WS = "ws_test"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class LakeWriter:
    def __init__(self, root: Path, workspace: str = WS):
        self.root = Path(root)
        self.ws = workspace
        self.rows: list[dict] = []
        self.aliases: list[tuple[str, str]] = []

    def event(self, profile: str, at: datetime | float, event: str | None = None, *, type: str = "track", **cols):
        """``at``: a datetime, or hours after T0."""
        ts = at if isinstance(at, datetime) else T0 + timedelta(hours=at)
        seq = len(self.rows) + 1
        row = {name: None for name in lake.EVENT_SCHEMA.names}
        row.update(
            seq=seq, message_id=f"m{seq}", type=type, event=event, channel=cols.pop("channel", "web"),
            profile_id=profile, user_id=profile, timestamp=ts, received_at=ts, trusted=True, payload="{}",
        )  # fmt: skip
        row.update(cols)
        self.rows.append(row)
        return self

    def touch(self, profile: str, at, channel: str, **cols):
        if channel in ("web", "app"):
            return self.event(profile, at, None, type="page", channel=channel, **cols)
        return self.event(profile, at, "Interaction", channel=channel, **cols)

    def order(self, profile: str, at, revenue: float, *, channel: str = "web", **cols):
        cols.setdefault("currency", "EUR")
        return self.event(profile, at, "Order Completed", channel=channel, revenue=revenue, **cols)

    def alias(self, merged_away: str, into: str):
        self.aliases.append((merged_away, into))
        return self

    def write(self) -> Path:
        by_day: dict[str, list[dict]] = defaultdict(list)
        for r in self.rows:
            by_day[r["timestamp"].date().isoformat()].append(r)
        for day, rows in by_day.items():
            table = pa.Table.from_pylist(rows, schema=lake.EVENT_SCHEMA)
            first, last = rows[0]["seq"], rows[-1]["seq"]
            lake._write(
                self.root / "events" / f"workspace_id={self.ws}" / f"date={day}" / f"part-{first}-{last}.parquet",
                table,
            )
        if self.aliases:
            table = pa.table(
                {"alias_id": [a for a, _ in self.aliases], "profile_id": [b for _, b in self.aliases]},
                schema=lake.ALIAS_SCHEMA,
            )
            lake._write(self.root / "profile_aliases" / f"workspace_id={self.ws}" / "aliases.parquet", table)
        return self.root
