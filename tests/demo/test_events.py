"""Every action of the model becomes what the real sources send, accepted by Chorus' own validation (the one door
of tracking, imports and webhooks: ``collect.messages.normalise``), on the channel the action happened on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.collect.importer import iter_import, load_mapping
from chorus.collect.messages import Event, normalise
from chorus.demo import events, model
from chorus.demo.brand import BRAND
from chorus.identity.identifiers import IdentityConfig, extract

START = datetime(2026, 3, 1, tzinfo=UTC)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=15))
def test_every_tracked_action_is_accepted_on_its_channel(seed, n):
    cfg = IdentityConfig.from_settings({"default_region": BRAND.region})
    for p in model.customers(seed, n, START, 30):
        for i, a in enumerate(p.actions):
            route = events.route(a)
            if route not in (events.CLIENT, events.SERVER):
                continue
            for msg in events.messages(p.customer, a, BRAND, f"m-{i}"):
                got = normalise(msg, received_at=a.at + timedelta(minutes=30), source_kind=route)
                assert isinstance(got, Event), (a, got)
                assert got.timestamp == a.at, "the action's own time, not the time it was received"
                if route == events.CLIENT:
                    assert got.channel == a.channel, (a.kind, got.channel)
                    assert (got.user_id is not None) == (a.signed_in or a.kind in ("signup", "login")), a
                found = extract(got.payload, cfg, trusted=route == events.SERVER)
                assert not found.warnings, (msg, found.warnings)  # every email and phone is valid


def test_import_rows_pass_the_importer_with_their_mappings(tmp_path):
    """Each file with the source and mapping the demo imports it with (the defaults; the till's returns file names
    its event)."""
    import orjson

    rows = {name: [] for name in events.IMPORT_FILES}
    for p in model.customers(4, 300, START, 30):
        for a in p.actions:
            route = events.route(a)
            if route in rows:
                rows[route].append(events.import_row(p.customer, a, BRAND))
    for name, items in rows.items():
        assert items, name
        source, mapping = events.IMPORT_FILES[name]
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in items))
        parsed = [msg for _line, msg in iter_import(str(path), source, load_mapping(mapping, source))]
        assert len(parsed) == len(items)
        assert [m for m in parsed if not isinstance(m, dict)] == []
        for msg in parsed:
            got = normalise(msg, received_at=START + timedelta(days=31), source_kind="import", source_channel=source,
                            require_ids=False)  # fmt: skip
            assert isinstance(got, Event) and got.channel == source, got
        if source == "store":
            want = "Order Refunded" if name == events.RETURNS_FILE else "Order Completed"
            assert {m["event"] for m in parsed} == {want}, name
        if source == "store":  # the till's revenue stays an exact decimal string, and the products a list
            props = parsed[0]["properties"]
            assert isinstance(props["revenue"], str) and isinstance(props["products"], list), props
