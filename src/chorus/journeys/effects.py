"""How the runtime carries out the interpreter's side effects, each on the transition's connection (registered with
``runtime.effect``): a failure rolls back the transition with it, and a transition given again repeats the same
idempotency keys, so nothing happens twice.

- ``Send``: the outbox, on the same connection (``outbox.enqueue_in``), keyed by the step (``<instance>:<step>``),
  the claim's messages in one batch at its flush;
  consent, frequency caps, quiet hours and channel choice are the outbox's, as for any message. A request the
  outbox refuses (its template was deleted since publishing) is recorded on the journey (``error``) and the person
  goes on: one bad step must not stall the journey for everybody behind it.
- ``UpdateTrait``: an ``identify`` of the person stored as any server-side call would be, with the step's key as
  its messageId (a repeat is a no-op); identity resolution folds it into the profile, and its change reaches
  segments and journeys like any other.
- ``ListChange``: the static list (``segments.store.change_list``), idempotent by nature.
- ``AudienceChange``: a change queued for the social audience (``audiences.store.queue_change``, one per key), which
  the audience's own sync applies (``audiences.changes``). An audience deleted since publishing, or that started
  following a segment, is an error recorded on the journey.
- ``Webhook``: queued on the same connection and delivered by a worker task, never inside the transaction
  (``journeys.webhooks``).
- ``Exit`` with messages to withdraw (the goal reached, an exit criterion met, the journey stopped): the outbox skips
  those of them not gone out yet (``outbox.withdraw``), after the claim's messages; one being sent is left alone.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event as Stored
from chorus.collect.messages import normalise
from chorus.errors import ChorusError
from chorus.identity.identifiers import event_anchor
from chorus.journeys import interpreter as j
from chorus.journeys.runtime import Claim, PersonRun, effect, flush
from chorus.messaging import outbox
from chorus.profiles.state import apply_event
from chorus.timeutil import iso


@effect(j.Send)
def send(run: PersonRun, s: j.State, c: j.Send) -> None:
    try:
        req = outbox.parse_request(c.request())
    except ChorusError as exc:
        run.error(s, c, exc)
        return
    assert run.claim is not None
    run.claim.defer("messages", (run, s, c, req))  # with the claim's other messages, in one outbox batch


@flush("messages")
def send_all(claim: Claim, items: list) -> None:
    """The claim's messages as one outbox batch (consent, caps across the batch, quiet hours and channel choice are
    the outbox's); a request it refuses is recorded on that person's journey."""
    results = outbox.enqueue_in(claim.conn, claim.js.ws, [(req, c.key) for _, _, c, req in items], claim.js.links,
                                claim.at)  # fmt: skip
    for (run, s, c, _), (result, _created) in zip(items, results, strict=True):
        if isinstance(result, ChorusError):
            run.error(s, c, result)


@effect(j.Exit)
def withdraw(run: PersonRun, s: j.State, c: j.Exit) -> None:
    """An instance left because its messages stopped being relevant (interpreter ``Exit.withdraw``): those not gone
    out yet are withdrawn, in the transition's transaction, after the claim's messages (one it sent in this very
    claim included)."""
    assert run.claim is not None
    run.claim.defer("withdrawals", (s, c))


@flush("withdrawals")
def withdraw_all(claim: Claim, items: list) -> None:
    by_journey: dict[str, list[tuple[str, str]]] = {}
    for s, c in items:
        by_journey.setdefault(s.journey_id, []).extend((key, _why(s, c)) for key in c.withdraw)
    for jid, keyed in sorted(by_journey.items()):
        outbox.withdraw(claim.conn, claim.ws, jid, keyed, claim.at)


def _why(s: j.State, c: j.Exit) -> str:
    return f"journey {s.journey_id}: the person left it ({c.reason}) before it went out"


@effect(j.UpdateTrait)
def update_trait(run: PersonRun, s: j.State, c: j.UpdateTrait) -> None:
    ident = run.ident
    if not ident:
        run.error(s, c, ChorusError("the profile has no identifier to address an identify to"))
        return
    raw = {
        **{k: v for k, v in ident.items() if k != "context"},
        "type": "identify", "traits": {c.trait: c.value},
        "context": {**ident.get("context", {}), "channel": "internal"},
        "messageId": f"chorus-journey-{c.key}", "timestamp": iso(run.now),
    }  # fmt: skip
    ev = normalise(raw, received_at=run.now, source_kind="internal", require_ids=False)
    if not isinstance(ev, Stored):
        run.error(s, c, ChorusError(f"the trait {c.trait} cannot be set: {ev.reason}"))
        return
    source = ws_api.internal_source(run.conn, run.ws, "internal", "chorus-journeys")
    ingest.store(run.conn, source, [ev], [], run.now)
    # the trait is hers from now on, for what this run is given next too (a second entry of the same batch, a
    # timer already due): her person was read before the step, and the stored identify reaches her profile only
    # when the worker resolves it (an outside probe: the live runtime took `else` where the simulator, which folds
    # the step's identify at once, took `then`)
    state = copy.deepcopy(dict(run.person.state))
    # anchored as identity resolution anchors the stored identify (a "sum" trait keeps a part per anchor; review)
    anchor = event_anchor(ev.payload, run.js.ws.identity, trusted=True) or run.person.id
    apply_event(state, ev.payload, anchor, dict(run.js.ws.settings.get("trait_policies") or {}))
    run.person = replace(run.person, state=state)
    run.stepped.append((ev.payload, anchor))  # and into her state as of an earlier instant (PersonRun.person_at)


@effect(j.ListChange)
def list_change(run: PersonRun, s: j.State, c: j.ListChange) -> None:
    from chorus.segments import store as segments_store

    pid = run.person.id
    try:
        segments_store.change_list(run.conn, run.ws, c.list, [pid] if c.action == "add" else [],
                                   [pid] if c.action == "remove" else [], run.now)  # fmt: skip
    except ChorusError as exc:  # the list was deleted since publishing
        run.error(s, c, exc)


@effect(j.AudienceChange)
def audience_change(run: PersonRun, s: j.State, c: j.AudienceChange) -> None:
    from chorus.messaging.audiences import store as audiences_store

    try:
        audiences_store.queue_change(run.conn, run.ws, c.audience, run.person.id, c.action, c.key, run.now)
    except ChorusError as exc:  # deleted, or following a segment, since publishing
        run.error(s, c, exc)
