"""Hypothesis strategies for valid journey definitions (as the JSON a user writes) and for inputs."""

from __future__ import annotations

from hypothesis import strategies as st

EVENTS = ["Product Added", "Order Completed", "Cart Emptied", "Order Delivered", "Page Viewed"]
KEYS = ["c1", "c2", "c3"]
SEGMENTS = ["vip", "lapsed"]
CHANNELS = ["web", "app", "store", "email"]
DURATIONS = ["30m", "1h", "6h", "1d", "3d", "1w"]

where = st.lists(
    st.sampled_from([
        {"property": "cart_id", "equals": "c1"}, {"property": "total", "gt": 10},
        {"property": "cart_id", "in": ["c1", "c2"]}, {"property": "sku", "exists": False},
    ]), max_size=2, unique_by=lambda f: str(f)
)  # fmt: skip


@st.composite
def event_match(draw, *, entry: bool = False) -> dict:
    out: dict = {"event": draw(st.sampled_from(EVENTS))}
    if w := draw(where):
        out["where"] = w
    if draw(st.booleans()):
        out["channel"] = draw(st.sampled_from([CHANNELS[0], CHANNELS[:2]]))
    if not entry and draw(st.booleans()):
        out["same"] = draw(st.sampled_from([["cart_id"], [{"property": "order_id", "entry": "cart_id"}]]))
    return out


@st.composite
def criterion(draw) -> dict:
    kind = draw(st.sampled_from(["event", "segment", "rule"]))
    if kind == "event":
        return {"event": draw(event_match())}
    if kind == "rule":
        return {"rule": {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total",
                                       "window": "7d", "gte": 40}}}  # fmt: skip
    return {"segment": {draw(st.sampled_from(["entered", "exited"])): draw(st.sampled_from(SEGMENTS))}}


RULES = [
    {"segment": "vip"}, {"trait": {"name": "plan", "equals": "gold"}},
    {"performed": {"event": "Order Completed", "window": "7d"}}, {"trait": {"name": "computed.clv", "gt": 100}},
]  # fmt: skip


@st.composite
def definition(draw) -> dict:
    """A valid journey: nodes n0..nk, each leading to later nodes (n{i} always to n{i+1}, so all are reachable);
    a waiting node with max_visits may also lead back, which makes a bounded loop through a waiting node."""
    k = draw(st.integers(1, 7))
    ids = [f"n{i}" for i in range(k + 1)]
    holdout_ok = draw(st.booleans())
    kinds = draw(st.lists(st.sampled_from(
        ["delay", "wait", "condition", "split", "message", "update_trait", "list", "audience", "webhook"]
    ), min_size=k, max_size=k))  # fmt: skip
    messages = [ids[i] for i, kind in enumerate(kinds) if kind == "message"]
    nodes: dict = {}
    floor = 0  # loops go back no further than the node after the last one with an overflow (it must not return)
    for i, kind in enumerate(kinds):
        later = st.sampled_from(ids[i + 1 :])
        nxt = ids[i + 1]
        body: dict = {"type": kind}
        if kind == "delay":
            form = draw(st.sampled_from(["for", "at", "until"]))
            if form == "for":
                body["for"] = draw(st.sampled_from(DURATIONS))
            elif form == "at":
                body["at"] = draw(st.sampled_from(["00:00", "02:30", "09:00", "23:59"]))
                if draw(st.booleans()):
                    body["weekdays"] = draw(st.sampled_from([["mon"], ["sat", "sun"]]))
            else:
                body["until"] = draw(st.sampled_from([{"trait": "birthday"}, {"property": "due"}]))
                if draw(st.booleans()):
                    body["offset"] = draw(st.sampled_from(["-1d", "+2h"]))
                if draw(st.booleans()):
                    body["missing"] = draw(later)
            body["next"] = nxt
        elif kind == "wait":
            n = draw(st.integers(1, 3))
            branches = []
            for b in range(n):
                br: dict = {"name": f"b{b}"}
                pick = draw(st.sampled_from(["event", "segment", "message"] if messages else ["event", "segment"]))
                if pick == "event":
                    br["event"] = draw(event_match())
                elif pick == "segment":
                    br["segment"] = {draw(st.sampled_from(["entered", "exited"])): draw(st.sampled_from(SEGMENTS))}
                else:
                    br["message"] = {"status": draw(st.sampled_from(["opened", ["clicked", "opened"]]))}
                    if draw(st.booleans()):
                        br["message"]["node"] = draw(st.sampled_from(messages))
                br["next"] = draw(later)
                branches.append(br)
            body["branches"] = branches
            body["timeout"] = {"after": draw(st.sampled_from(DURATIONS)), "next": nxt}
        elif kind == "condition":
            if draw(st.booleans()):
                body["if"] = draw(st.sampled_from(RULES))
            else:
                body["entry"] = {"property": "cart_id", "equals": "c1"}
            body["then"], body["else"] = nxt, draw(later)
        elif kind == "split":
            n = draw(st.integers(2, 3))
            cuts = sorted(draw(st.lists(st.integers(1, 99), min_size=n - 1, max_size=n - 1, unique=True)))
            weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
            arms = [{"name": f"a{a}", "weight": w, "next": nxt if a == 0 else draw(later)}
                    for a, w in enumerate(weights)]  # fmt: skip
            if holdout_ok and draw(st.booleans()):
                arms[-1] = {"name": arms[-1]["name"], "weight": arms[-1]["weight"], "holdout": True}
            body["arms"] = arms
            if draw(st.booleans()):
                body["seed"] = "shared"
            if draw(st.booleans()):
                body["by"] = draw(st.sampled_from(["profile", "identifier"]))
        elif kind == "message":
            body["template"] = draw(st.sampled_from(["t1", "t2"]))
            body["channel"] = draw(st.sampled_from(["auto", "sms", ["email", "push"]]))
            body["kind"] = draw(st.sampled_from(["marketing", "transactional"]))
            if draw(st.booleans()):
                body["topic"] = "offers"
            if draw(st.booleans()):
                body["data"] = {"code": "X1", "n": [1, 2]}
            body["next"] = nxt
        elif kind == "update_trait":
            body.update(trait="stage", value=draw(st.sampled_from([1, "b", None, True])), next=nxt)
        elif kind in ("list", "audience"):
            body.update({kind: "l1", "action": draw(st.sampled_from(["add", "remove"])), "next": nxt})
        else:
            body.update(url="https://hooks.example.com/j", next=nxt)
            if draw(st.booleans()):
                body["method"] = "PUT"
        if kind in ("delay", "wait") and draw(st.integers(0, 3)) == 0:
            body["max_visits"] = draw(st.integers(1, 3))
            back = draw(st.sampled_from(ids[floor : i + 1]))
            if kind == "delay":
                body["next"] = back
            else:
                body["timeout"] = {**body["timeout"], "next": back}
            body["overflow"] = nxt  # the way out keeps the later nodes reachable
            floor = i + 1
        nodes[ids[i]] = body
    nodes[ids[k]] = {"type": "exit"}
    entry = draw(st.sampled_from(["event", "event_key", "segment", "schedule", "api"]))
    doc: dict = {"id": "gen", "start": "n0", "nodes": nodes}
    if entry == "event":
        doc["entry"] = {"event": draw(event_match(entry=True))}
    elif entry == "event_key":
        doc["entry"] = {"event": {**draw(event_match(entry=True)), "key": "cart_id"}}
    elif entry == "segment":
        doc["entry"] = {"segment": draw(st.sampled_from(SEGMENTS))}
    elif entry == "schedule":
        doc["entry"] = {"schedule": draw(st.sampled_from([
            {"at": "2026-03-02T09:00:00Z"}, {"segment": "vip", "every": "1d", "start": "2026-03-02T09:00:00Z"},
            {"time": "09:00", "on": "2026-03-08"}, {"time": "09:00", "weekdays": ["mon", "thu"]},
        ]))}  # fmt: skip
    else:
        doc["entry"] = {"api": draw(st.sampled_from([{}, {"key": "cart_id"}]))}
    modes = ["never", "after_exit", {"cooldown": "1d"}]
    if entry == "event_key":
        modes.append("per_key")
    doc["reentry"] = draw(st.sampled_from(modes))
    if holdout_ok or draw(st.booleans()):
        doc["goal"] = draw(criterion())
        if holdout_ok or draw(st.booleans()):
            doc["goal"]["within"] = draw(st.sampled_from(DURATIONS))
        doc["exit_on_goal"] = draw(st.booleans())
    if draw(st.booleans()):
        doc["exit"] = draw(st.lists(criterion(), min_size=1, max_size=2))
    return doc
