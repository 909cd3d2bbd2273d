"""A person cut to what the rules can read (segments.needs) gets the same answer and the same next_change as the
whole person; the store reads exactly that cut."""

from __future__ import annotations

from hypothesis import given

from chorus.segments import rules as r
from chorus.segments.evaluate import evaluate
from chorus.segments.needs import needs, restrict
from tests.segments.test_properties import SETTINGS, nows, people, rule_json


@SETTINGS
@given(rule_json, people(), nows)
def test_the_restricted_person_gets_the_same_answer_and_next_change(raw, who, now):
    rule = r.parse(raw)
    cut = restrict(who, needs([rule], now))
    assert evaluate(rule, cut, now) == evaluate(rule, who, now)
