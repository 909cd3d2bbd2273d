"""Social audiences: a set of profiles uploaded to Meta (Custom Audiences) or Google (Customer Match), or
exported as their customer-file CSV, so that ads reach the people the brand already knows.

- :mod:`normalise` and :mod:`rows`: each platform's normalisation and SHA-256 hashing, and a profile's row;
- :mod:`membership`: the caller's list, the sync modes and the diff with what the platform holds;
- :mod:`meta` and :mod:`google`: the platform clients (configurable base URLs, batches within the platform's
  limits, retries of transient failures);
- :mod:`settings`: the ``audiences`` workspace setting and audience definitions;
- :mod:`store` and :mod:`sync`: the tables, the sync and the export;
- :mod:`follow`: audiences whose members are a segment's (a change-feed consumer and a worker task);
- :mod:`changes`: manual changes queued by others (a journey's audience step), applied by a worker task.

Consent is checked with :func:`chorus.messaging.policy.ads_decision` (channel ``ads``). See
docs/messaging.md, "Social audiences", and docs/decisions/0008-audience-membership-given-by-caller.md.
"""


def register(registry) -> None:
    """What audiences adds (see chorus.registry): the ``audiences`` setting; the person's member rows, erased (the
    rows a platform holds are queued for removal at the next sync); and following segments: a feed consumer that
    notes a followed segment changed, and a task that syncs those audiences once per interval; and a task that
    applies the manual changes queued (a journey's audience step); a followed segment is kept from deletion."""
    from chorus.messaging.audiences import changes, follow, settings, store
    from chorus.messaging.providers import refuse_others_on_save
    from chorus.registry import Step

    registry.setting("audiences", settings.validate)
    # checked again in the change's transaction, where the workspace is known: another's CHORUS_WS_ variable is a 400
    registry.on_setting("audiences", "workspace_variables", refuse_others_on_save(settings.validate))
    registry.erasure("audiences", store.forget, tables=store.ERASURE_TABLES, export=store.export)
    from chorus.profiles import feed

    registry.consumer(follow.CONSUMER, follow.handle)
    feed.interest(follow.CONSUMER, follow.wants)
    registry.task("audience_follow", follow.FollowTask, step=Step.DELIVER, label="audience segment sync")
    registry.task("audience_changes", changes.ChangesTask, step=Step.DELIVER, label="audience manual changes")
    registry.segment_users("audiences", segment_followers)


def segment_followers(conn, ws: str, segment_id: str) -> list[str]:
    """The audiences that follow segment ``segment_id`` (chorus.registry.SegmentUsers): its deletion would empty
    them and stop them following. One whose following has stopped uses it no more."""
    from chorus.messaging.audiences import store

    return [f"audience {a['name']!r}" for a in store.list_all(conn, ws)
            if a.get("source", {}).get("segment") == segment_id and a["source"]["following"]]  # fmt: skip
