"""Profiles: traits, consent, channel activity, timeline, privacy (export and erasure)."""


def register(registry) -> None:
    """What profiles adds (see chorus.registry): the trait policies setting, the profile row erased last, the
    change feed's task and the backfill of the activity summary."""
    from chorus.profiles import feed, privacy
    from chorus.registry import Phase, Step

    registry.setting("trait_policies", _trait_policies)
    registry.erasure("profiles", privacy.forget_profile, tables=privacy.PROFILE_TABLES, phase=Phase.PROFILE)
    # the change feed: the person's recorded changes go, and one change says she was erased (after the profile row)
    registry.erasure("feed", feed.forget, tables=feed.TABLES, phase=Phase.PROFILE)
    registry.task("feed", _feed_task, step=Step.DECIDE, label="change feed consumers")
    # profiles stored before the state kept its activity summary get it, a batch a pass (decision 0046)
    registry.task("activity_backfill", _backfill_task, step=Step.UNIFY, label="activity summary backfill")


def _feed_task(engine, options):
    from chorus import registry as reg
    from chorus.profiles.feed import FeedTask

    return FeedTask(engine, (options.registry or reg.installed()).consumers())


def _backfill_task(engine, options):
    from chorus.profiles.activity import Backfill

    return Backfill(engine, options)


def _trait_policies(value: object) -> dict:
    from chorus.profiles.state import POLICIES

    if not isinstance(value, dict) or any(p not in POLICIES for p in value.values()):
        raise ValueError(f"settings.trait_policies: each policy must be one of {', '.join(POLICIES)}")
    return value
