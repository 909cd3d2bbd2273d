"""Profiles: traits, consent, channel activity, timeline, privacy (export and erasure)."""
