"""All tables of the operational store. Each package owns its tables and reaches them through its own API."""

from __future__ import annotations

import sqlalchemy as sa

from chorus.store.types import JSONDoc, UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# --- workspaces and their keys -------------------------------------------------------------------------------
workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("api_key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("settings", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# A source is one way events arrive: a browser/app write key (public, untrusted), a server write key (secret,
# trusted), an import, a verified webhook. Keys are looked up by their SHA-256.
sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("public_key", sa.String(100)),  # only client write keys, which are public by design
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("workspace_id", "name"),
)

# --- collected events -----------------------------------------------------------------------------------------
events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("event", sa.String(200)),
    sa.Column("channel", sa.String(40), nullable=False),
    sa.Column("user_id", sa.String(200)),
    sa.Column("anonymous_id", sa.String(200)),
    sa.Column("timestamp", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("source_id", sa.String(40)),
    sa.Column("trusted", sa.Boolean, nullable=False),
    sa.Column("payload", JSONDoc, nullable=False),
    # NULL until identity resolution has run for the event.
    sa.Column("profile_id", sa.String(40)),
    sa.UniqueConstraint("workspace_id", "message_id"),
    sa.Index("ix_events_profile_timeline", "workspace_id", "profile_id", "timestamp", "seq"),
    # a segment evaluation reads a person's events of a few names since a horizon (segments.needs, decision 0028)
    sa.Index("ix_events_profile_event", "workspace_id", "profile_id", "event", "timestamp"),
    sa.Index(
        "ix_events_pending",
        "seq",
        sqlite_where=sa.text("profile_id IS NULL"),
        postgresql_where=sa.text("profile_id IS NULL"),
    ),
)

rejected_events = sa.Table(
    "rejected_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("source_id", sa.String(40)),
    sa.Column("message_id", sa.String(200)),
    sa.Column("field", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # Identifiers found in the payload, so that erasure can find rejected events of a person.
    sa.Column("identifiers", JSONDoc, nullable=False),
    sa.Index("ix_rejected_events_ws", "workspace_id", "id"),
)

# --- identity graph ------------------------------------------------------------------------------------------
profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    # (timestamp, message id) of the link that created the profile: decides merge survivors deterministically.
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_msg", sa.String(200), nullable=False),
    # Latest link touching any identifier of the profile; a link older than this is replayed, not applied.
    sa.Column("links_max_at", UTCDateTime, nullable=False),
    sa.Column("links_max_msg", sa.String(200), nullable=False),
    sa.Column("known", sa.Boolean, nullable=False),
    sa.Column("first_seen", UTCDateTime),
    sa.Column("last_seen", UTCDateTime),
    sa.Column("last_channel", sa.String(40)),
    sa.Column("state", JSONDoc, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_profiles_ws", "workspace_id", "id"),
)

# "kind:value" -> profile. The primary key is what keeps two writers from creating two profiles for one identifier.
identifiers = sa.Table(
    "identifiers",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("ident", sa.String(400), primary_key=True),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Index("ix_identifiers_profile", "workspace_id", "profile_id"),
)

# Distinct identifier pairs seen together, with their earliest sighting per trust level (0 untrusted, 1 vouched,
# 2 trusted: chorus.identity.graph); profiles are a function of these.
identity_links = sa.Table(
    "identity_links",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("a", sa.String(400), primary_key=True),
    sa.Column("b", sa.String(400), primary_key=True),
    sa.Column("trust", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("msg", sa.String(200), nullable=False),
    sa.Index("ix_identity_links_b", "workspace_id", "b"),
)

# --- the change feed (chorus.profiles.feed) --------------------------------------------------------------------
# Every change to a profile, written in the transaction that makes it.
profile_changes = sa.Table(
    "profile_changes",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("cause", sa.String(16), nullable=False),
    sa.Column("event_seq", sa.BigInteger),  # events.seq of the event it came from
    sa.Column("target_id", sa.String(40)),  # a merge: the survivor
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("detail", JSONDoc, nullable=False),
    # the only secondary index on every change (each costs every change): erasure and a person's history find her
    # changes by it
    sa.Index("ix_profile_changes_profile", "workspace_id", "profile_id", "seq"),
    # merges only (a few in a thousand changes): an erasure finds those naming her as the survivor without reading
    # every change the workspace kept
    sa.Index("ix_profile_changes_target", "workspace_id", "target_id", sqlite_where=sa.text("target_id IS NOT NULL"),
             postgresql_where=sa.text("target_id IS NOT NULL")),
    sqlite_autoincrement=True,  # never reuse a deleted change's number (a consumer may have seen it)
)

# The consumers of the feed; each change is copied to feed_pending for every one of them.
feed_consumers = sa.Table(
    "feed_consumers",
    metadata,
    sa.Column("name", sa.String(60), primary_key=True),
    sa.Column("since", UTCDateTime, nullable=False),
)

# A consumer's changes not handled yet: deleted in the transaction that handles them.
feed_pending = sa.Table(
    "feed_pending",
    metadata,
    # the key in this order: prune probes it by seq; a claim scans it in seq order for one of a few consumers
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("consumer", sa.String(60), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Index("ix_feed_pending_profile", "consumer", "profile_id", "seq"),
)

profile_aliases = sa.Table(
    "profile_aliases",
    metadata,
    sa.Column("alias_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Index("ix_profile_aliases_profile", "profile_id"),
)

merges = sa.Table(
    "merges",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("survivor_id", sa.String(40), nullable=False),
    sa.Column("merged_id", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("message_id", sa.String(200)),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_merges_survivor", "workspace_id", "survivor_id"),
    sa.Index("ix_merges_merged", "workspace_id", "merged_id"),  # an erasure finds those of her merged-away ids
)

# --- imports --------------------------------------------------------------------------------------------------
imports = sa.Table(
    "imports",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("source", sa.String(40), nullable=False),
    sa.Column("filename", sa.String(400), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("imported", sa.Integer, nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False),
    sa.Column("errors", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # the workspace's imports newest first (GET /api/imports): a page in index order, not a sort of every import
    sa.Index("ix_imports_created", "workspace_id", "created_at", "id"),
)

# --- messaging ------------------------------------------------------------------------------------------------
# Message definitions (one variant per channel, Liquid templates) and the partials/layouts they include.
templates = sa.Table(
    "templates",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

partials = sa.Table(
    "partials",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# The outbox: one row per send. The unique idempotency key is what makes a retried request, a replayed journey
# step or a crashed worker never produce a second message.
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("template", sa.String(64)),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("topic", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(20)),
    sa.Column("address", sa.String(400)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("choice", JSONDoc, nullable=False),
    sa.Column("content", JSONDoc),
    sa.Column("journey_id", sa.String(64)),
    sa.Column("campaign_id", sa.String(64)),
    sa.Column("provider", sa.String(64)),
    sa.Column("provider_message_id", sa.String(400)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime),
    sa.Column("sent_at", UTCDateTime),
    # when the send-time check of caps let it through: counts against caps while it is in flight, so that two
    # workers sending to one person at the same moment see each other (cleared if the attempt is retried)
    sa.Column("approved_at", UTCDateTime),
    # why the message was withdrawn while a worker was sending it (decision 0045): if the worker puts it back in the
    # queue (deferred, a retry) it is skipped instead
    sa.Column("withdraw_reason", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("workspace_id", "idempotency_key"),
    sa.Index("ix_messages_profile", "workspace_id", "profile_id", "created_at"),
    # the workspace's messages newest first, and since an instant (GET /api/messages): a page reads its rows in
    # index order instead of sorting every message of the workspace
    sa.Index("ix_messages_created", "workspace_id", "created_at", "id"),
    sa.Index(
        "ix_messages_due",
        "next_attempt_at",
        sqlite_where=sa.text("status IN ('queued', 'retrying', 'sending')"),
        postgresql_where=sa.text("status IN ('queued', 'retrying', 'sending')"),
    ),
    # leases to expire: the due index above would walk every queued message to find the few being sent
    sa.Index(
        "ix_messages_sending",
        "next_attempt_at",
        sqlite_where=sa.text("status = 'sending'"),
        postgresql_where=sa.text("status = 'sending'"),
    ),
    sa.Index("ix_messages_provider_id", "workspace_id", "provider_message_id"),  # provider callbacks look up by it
    # a journey's or broadcast's messages by status (its statistics), without a scan of the workspace's messages
    sa.Index("ix_messages_journey", "workspace_id", "journey_id", "status"),
)

# Profiles erased (with their aliases), for copies outside the store: the event lake removes their rows. Only
# SHA-256 hashes of the profile ids are kept: they match the rows of a copy, and lead to nothing in the store.
erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("profile_hashes", JSONDoc, nullable=False),
    sa.Column("erased_at", UTCDateTime, nullable=False),
    # events.seq of other people's events rewritten without the person (claims of her email...), or NULL
    sa.Column("rewritten_seqs", JSONDoc),
)

# The store's identity: one row, made once (migration 0022), kept by its backups and copies. Copies of the store
# outside it (the event lake) record it, so that one store's export into another store's copy is refused.
store_identity = sa.Table(
    "store_identity",
    metadata,
    sa.Column("key", sa.String(16), primary_key=True),  # always "store": the key keeps it to one row
    sa.Column("id", sa.String(40), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Traits computed by analytics (lifetime value, probability alive, RFM): one row per profile and trait, replaced by
# each run; shown on the profile next to the traits its events set, never mixed into them.
computed_traits = sa.Table(
    "computed_traits",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("value", JSONDoc, nullable=True),
    sa.Column("model", sa.String(80), nullable=False),  # what computed it, e.g. "clv:bgnbd+gamma_gamma"
    sa.Column("computed_at", UTCDateTime, nullable=False),
    sa.Index("ix_computed_traits_model", "workspace_id", "model", "computed_at"),
)

# Provider reports (Meta's statuses) on a message whose send is not recorded yet: applied when it is (reports.py).
early_reports = sa.Table(
    "early_reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("provider_message_id", sa.String(400), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("provider_status", sa.String(40), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("error", JSONDoc),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Index("ix_early_reports_message", "workspace_id", "provider_message_id"),
    sa.Index("ix_early_reports_received", "received_at"),
)

# Every state change of a message, in order: the status history the API shows.
message_status = sa.Table(
    "message_status",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(40), nullable=False),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("detail", JSONDoc, nullable=False),
    sa.Index("ix_message_status_message", "message_id", "id"),
)

# Instance-wide values Chorus generates for itself (e.g. the key that signs unsubscribe and tracking links when
# CHORUS_SECRET_KEY is not set). Never exposed through the API.
instance_secrets = sa.Table(
    "instance_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

# Browser push subscriptions (the PushSubscription a site's service worker got), by the person's id at the time.
push_subscriptions = sa.Table(
    "push_subscriptions",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("endpoint", sa.String(1000), primary_key=True),
    sa.Column("p256dh", sa.String(200), nullable=False),
    sa.Column("auth", sa.String(100), nullable=False),
    sa.Column("ident", sa.String(400), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_push_subscriptions_ident", "workspace_id", "ident"),
)


# Addresses a provider said are gone for good (an uninstalled app's push token). They stay identifiers of the
# person, but no message is addressed to them again.
dead_addresses = sa.Table(
    "dead_addresses",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("channel", sa.String(20), primary_key=True),
    sa.Column("address", sa.String(1000), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

# --- social audiences -----------------------------------------------------------------------------------------
# An audience: which ad platform account (a provider named in settings.audiences, or "file"), which list there
# (a Meta custom audience id, a Google Customer Match user list), which identifiers to send and under which consent.
audiences = sa.Table(
    "audiences",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("format", sa.String(16), nullable=False),  # meta | google: how rows are normalised and hashed
    sa.Column("destination", sa.String(200)),
    sa.Column("identifiers", JSONDoc, nullable=False),
    sa.Column("consent_topic", sa.String(64), nullable=False),
    sa.Column("consent_mode", sa.String(16), nullable=False),
    sa.Column("options", JSONDoc, nullable=False),
    sa.Column("sync_started_at", UTCDateTime),  # set while a sync runs: one sync of an audience at a time
    sa.Column("last_sync", JSONDoc),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("workspace_id", "name"),
)

# The rows the platform holds: what was sent for whom and when. The next sync sends only the difference, and a
# person who opted out (or whose identifiers changed) is removed under exactly the row that was sent.
audience_members = sa.Table(
    "audience_members",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("audience_id", sa.String(40), nullable=False),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("hashed_keys", JSONDoc, nullable=False),
    sa.Column("synced_at", UTCDateTime, nullable=False),
    sa.Index("ix_audience_members_audience", "audience_id", "row_hash"),
    sa.Index("ix_audience_members_profile", "workspace_id", "profile_id"),
)

# Rows of erased people still held by a platform: no profile any more, only the hashed keys, kept until the next
# sync of the audience has removed them there.
audience_removals = sa.Table(
    "audience_removals",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("audience_id", sa.String(40), nullable=False),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("hashed_keys", JSONDoc, nullable=False),
    sa.Column("queued_at", UTCDateTime, nullable=False),
    sa.Index("ix_audience_removals_audience", "audience_id"),
)


# --- segments (chorus.segments) --------------------------------------------------------------------------------
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("rule", JSONDoc, nullable=False),  # canonical JSON (segments.rules.to_json)
    sa.Column("version", sa.Integer, nullable=False),  # +1 at each change of the rule
    sa.Column("computed_version", sa.Integer),  # the version the members were last computed in batch for
    sa.Column("computed_at", UTCDateTime),
    # the batch computation in progress: the last profile id done (it runs a chunk per worker pass) and its instant
    sa.Column("batch_after", sa.String(40)),
    sa.Column("batch_version", sa.Integer),  # the version that cursor belongs to
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Who is in a segment now.
segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("segment_id", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("since", UTCDateTime, nullable=False),
    # covering (segment_id included): SQLite otherwise prefers the primary key's covering index, by workspace only
    sa.Index("ix_segment_members_profile", "workspace_id", "profile_id", "segment_id"),
)

# Every entry and exit, with what caused it.
segment_history = sa.Table(
    "segment_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("segment_id", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("change", sa.String(8), nullable=False),  # entered | exited
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("cause", sa.String(40), nullable=False),  # the feed change's cause, timer, batch, rule, deleted
    sa.Index("ix_segment_history_profile", "workspace_id", "profile_id", "id"),
    sa.Index("ix_segment_history_segment", "workspace_id", "segment_id", "id"),
)

# The next instant time alone changes a person's answer for a segment (segments.evaluate next_change).
segment_timers = sa.Table(
    "segment_timers",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("segment_id", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("due_at", UTCDateTime, nullable=False),
    # the instant it was first due, kept when a failed evaluation postpones due_at: the person is decided then
    sa.Column("first_due", UTCDateTime, nullable=True),
    # failed evaluations since it was set: the next try waits a minute, doubled each time, a day at most
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_segment_timers_due", "due_at"),
    # a person's timers (the engine reads them once per evaluation; a merge or an erasure deletes them)
    sa.Index("ix_segment_timers_profile", "workspace_id", "profile_id", "segment_id", "due_at"),
)

# Static lists (a CSV upload, the API), which rules read with {"list": id}.
static_lists = sa.Table(
    "static_lists",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

list_members = sa.Table(
    "list_members",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("list_id", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("added_at", UTCDateTime, nullable=False),
    sa.Index("ix_list_members_profile", "workspace_id", "profile_id", "list_id"),  # covering, as segment_members
)

# -- journeys (chorus.journeys.store) ------------------------------------------------------------------------------
# A journey: its status (active, paused, stopped, archived) and the version new people enter.
journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # journey | broadcast
    sa.Column("entry", sa.String(16), nullable=False),  # the current version's: event | segment | schedule | api
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),  # the current (latest published) version
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),  # first published: a schedule runs from here on
    sa.Column("sweep", sa.Boolean, nullable=False, server_default=sa.false()),  # resume or stop left to do
)

# Immutable published versions: people inside keep theirs.
journey_versions = sa.Table(
    "journey_versions",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("journey_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("definition", JSONDoc, nullable=False),  # definition.to_json
    sa.Column("published_at", UTCDateTime, nullable=False),
)

# One person's pass through one journey: the interpreter's state (interpreter.state_to_json) and what the stats
# and "who is at a node" read without parsing it.
journey_instances = sa.Table(
    "journey_instances",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | tracking | exited
    sa.Column("node", sa.String(64), nullable=True),
    sa.Column("entered_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("state", JSONDoc, nullable=False),
    sa.Index("ix_journey_instances_profile", "workspace_id", "profile_id", "journey_id"),
    sa.Index("ix_journey_instances_node", "workspace_id", "journey_id", "version", "node", "status"),
)

# A timer an instance set (interpreter SetTimer); key is the interpreter's, unique per instance and step.
journey_timers = sa.Table(
    "journey_timers",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(120), primary_key=True),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("instance_id", sa.String(40), nullable=False),  # "" for a scheduled start (no instance yet)
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    # failed transitions of this timer so far: each postpones it twice as long (a minute, then 2, 4... a day at most)
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.String(300), nullable=True),  # why the last attempt failed
    # the instant it was first due, kept when a failure postpones due_at: the time of the input it fires
    sa.Column("first_due", UTCDateTime, nullable=True),
    sa.Index("ix_journey_timers_due", "due_at"),
    sa.Index("ix_journey_timers_profile", "workspace_id", "profile_id"),
)

# Inputs a paused journey held (interpreter Hold): given again, in their own time order, on resume.
journey_held = sa.Table(
    "journey_held",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),  # the input's own time
    sa.Column("input", JSONDoc, nullable=False),
    sa.Index("ix_journey_held_journey", "workspace_id", "journey_id", "profile_id", "at"),
)

# What happened, for node statistics and the timeline (interpreter Record): entered, waiting, step, converted,
# exited, at a node, by a branch.
journey_records = sa.Table(
    "journey_records",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("instance_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("node", sa.String(64), nullable=True),
    sa.Column("branch", sa.String(64), nullable=True),
    sa.Column("arm", sa.String(64), nullable=True),  # the holdout/split arm the person is in, for uplift
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("detail", sa.String(200), nullable=True),
    sa.Index("ix_journey_records_journey", "workspace_id", "journey_id", "version", "kind", "node"),
    sa.Index("ix_journey_records_profile", "workspace_id", "profile_id", "id"),
    sa.Index("ix_journey_records_instance", "workspace_id", "instance_id", "id"),  # stats' arms: a self-join
)

# A scheduled entry's runs: one row per run instant, walked in chunks of profile ids (``after``) until done.
journey_runs = sa.Table(
    "journey_runs",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("journey_id", sa.String(64), primary_key=True),
    sa.Column("run_at", UTCDateTime, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("after", sa.String(40), nullable=True),  # the last profile id started
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("started", sa.Integer, nullable=False, server_default="0"),
    # a chunk that failed: tried again at retry_at, twice as long after each failure (the people of a chunk that
    # still fails after RUN_ATTEMPTS go one by one, and those who fail are left out of the run)
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_at", UTCDateTime, nullable=True),
    sa.Column("error", sa.String(300), nullable=True),
)

# A journey's webhook step (interpreter Webhook), queued by the transition and delivered by the journey_webhooks
# task outside it: one row per step key, so a transition given again queues nothing new. ``due_at`` is when the
# next attempt may start (a claimed row's is pushed past the request's timeout: a worker that died mid-request
# leaves it due again, and the receiver drops the repeat by its Idempotency-Key).
journey_webhooks = sa.Table(
    "journey_webhooks",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(120), primary_key=True),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("instance_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("body", JSONDoc, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("done_at", UTCDateTime, nullable=True),
    sa.Column("answer", sa.Integer, nullable=True),  # the last HTTP status received
    sa.Column("error", sa.String(300), nullable=True),  # why the last attempt failed
    sa.Index("ix_journey_webhooks_due", "status", "due_at"),
    sa.Index("ix_journey_webhooks_profile", "workspace_id", "profile_id"),
)

# A manual change of a social audience's membership (a journey's audience step), owned by the audiences package:
# queued in the caller's transaction, one row per key, applied in ``seq`` order by the audience_changes task through
# the audience's own sync. Applied rows are kept (``applied``) so that the key stays taken.
audience_changes = sa.Table(
    "audience_changes",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("key", sa.String(120), nullable=False),
    sa.Column("audience_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),  # add | remove
    sa.Column("queued_at", UTCDateTime, nullable=False),
    sa.Column("applied", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("applied_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("workspace_id", "key"),
    sa.Index("ix_audience_changes_pending", "applied", "audience_id", "seq"),
    sa.Index("ix_audience_changes_profile", "workspace_id", "profile_id"),
)
