"""Who may be sent what, and on which channel: plain functions over a profile view and workspace settings.

Consent slots on a profile are ``channel:topic`` (``*`` for all channels or all topics). The rules, enforced here
for every send:

* A channel-wide denial (``sms:*`` after STOP, ``email:*`` after a hard bounce or a spam complaint) blocks every
  message on that channel, transactional ones included.
* Transactional messages ignore every other opt-out.
* Marketing messages are blocked by ``*:*``, by the topic (``email:offers`` or ``*:offers``) and by the
  ``marketing`` meta-topic (``email:marketing``: "no marketing on this channel"); between a topic-level grant and
  denial the newest wins. A topic in ``opt_in`` mode needs a grant; ``opt_out`` topics (the default) need no
  denial.
"""

from __future__ import annotations

from dataclasses import dataclass

MESSAGE_CHANNELS = ("email", "sms", "push", "whatsapp", "messenger", "in_app", "webhook")
DEFAULT_FALLBACK = ["email", "push", "sms", "whatsapp", "messenger", "in_app"]
# Activity on a touchpoint says which message channels the person is likely to see now.
ACTIVITY_IMPLIES = {
    "email": ("email",),
    "sms": ("sms",),
    "whatsapp": ("whatsapp",),
    "messenger": ("messenger",),
    "push": ("push",),
    "app": ("push", "in_app"),
    "web": ("in_app", "push"),
}
ALWAYS_REACHABLE = ("in_app", "webhook")  # the inbox belongs to the profile; the webhook URL to the workspace


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _slot(consent: dict, channel: str, topic: str) -> dict | None:
    return consent.get(f"{channel}:{topic}")


def consent_decision(profile: dict, channel: str, topic: str, kind: str, topics: dict | None = None) -> Decision:
    consent = profile.get("consent") or {}
    wide = _slot(consent, channel, "*")
    if wide and wide["status"] == "denied":
        return Decision(False, f"{channel} is blocked for this person ({channel}:* denied by {wide['source']})")
    if kind == "transactional":
        return Decision(True, "transactional message; only channel-wide blocks apply")
    every = _slot(consent, "*", "*")
    if every and every["status"] == "denied":
        return Decision(False, f"all marketing is denied (*:* by {every['source']})")
    stated = [
        (c["at"], slot, c)
        for slot in (f"{channel}:{topic}", f"*:{topic}", f"{channel}:marketing", "*:marketing")
        if (c := consent.get(slot)) is not None and c["status"] in ("granted", "denied")
    ]
    newest = max(stated, key=lambda s: (s[0], s[1])) if stated else None
    if newest and newest[2]["status"] == "denied":
        return Decision(False, f"{newest[1]} denied by {newest[2]['source']} at {newest[0]}")
    mode = ((topics or {}).get(topic) or {}).get("mode", "opt_out")
    if mode == "opt_in" and not (newest and newest[2]["status"] == "granted" and newest[1].endswith(f":{topic}")):
        return Decision(False, f"topic {topic} is opt-in and {channel}:{topic} has not been granted")
    return Decision(True, f"{newest[1]} granted" if newest else f"topic {topic} is {mode} and nothing was denied")


def addresses_for(profile: dict, channel: str) -> list[str]:
    if channel in ALWAYS_REACHABLE:
        return [profile["id"]]
    return list((profile.get("addresses") or {}).get(channel) or [])


@dataclass(frozen=True)
class Choice:
    channel: str | None
    address: str | None
    reason: str
    considered: list[dict]

    def as_dict(self) -> dict:
        return {"channel": self.channel, "reason": self.reason, "considered": self.considered}


def _recency(profile: dict) -> dict[str, str]:
    """Message channel -> the latest activity that suggests the person sees it."""
    out: dict[str, str] = {}
    for activity, stats in (profile.get("channels") or {}).items():
        for ch in ACTIVITY_IMPLIES.get(activity, ()):
            if stats.get("last_seen") and stats["last_seen"] > out.get(ch, ""):
                out[ch] = stats["last_seen"]
    return out


def choose_channel(
    profile: dict,
    variants: list[str],
    requested: str | list[str],
    *,
    topic: str,
    kind: str,
    topics: dict | None = None,
    fallback: list[str] | None = None,
) -> Choice:
    """The channel to send on, and why.

    ``requested`` is ``"auto"`` or an explicit list (tried in order). With ``auto``, among the channels that have a
    variant, consent and an address: the profile's ``preferred_channel`` trait if usable, else the most recently
    active one, else the workspace fallback order.
    """
    considered: list[dict] = []
    usable: dict[str, str] = {}
    order = list(requested) if isinstance(requested, list) else list(dict.fromkeys([*variants, *MESSAGE_CHANNELS]))
    for ch in order:
        if ch not in variants:
            considered.append({"channel": ch, "usable": False, "reason": "the message has no variant for it"})
            continue
        addrs = addresses_for(profile, ch)
        if not addrs:
            considered.append({"channel": ch, "usable": False, "reason": "no reachable address"})
            continue
        d = consent_decision(profile, ch, topic, kind, topics)
        considered.append({"channel": ch, "usable": d.allowed, "reason": d.reason})
        if d.allowed:
            usable[ch] = addrs[0]
    if not usable:
        return Choice(None, None, "no channel has a variant, an address and consent", considered)
    if isinstance(requested, list):
        ch = next(c for c in requested if c in usable)
        return Choice(ch, usable[ch], f"first usable of the requested channels {requested}", considered)
    preferred = (profile.get("traits") or {}).get("preferred_channel")
    if preferred in usable:
        return Choice(preferred, usable[preferred], "the profile's preferred channel", considered)
    recency = _recency(profile)
    active = [c for c in usable if c in recency]
    if active:
        ch = max(active, key=lambda c: (recency[c], -MESSAGE_CHANNELS.index(c)))
        return Choice(ch, usable[ch], f"most recently active channel (last seen {recency[ch]})", considered)
    for ch in fallback or DEFAULT_FALLBACK:
        if ch in usable:
            return Choice(ch, usable[ch], "workspace fallback order", considered)
    ch = next(iter(usable))
    return Choice(ch, usable[ch], "the only usable channels are outside the fallback order", considered)
