"""The identity graph as a pure, deterministic state machine.

Profiles are a function of the set of *links* (pairs of identifiers seen on one event, each with the key
``(timestamp, message id)`` of its earliest sighting) replayed in key order. The resolver applies a new link
incrementally when it sorts after every link already touching the profiles involved, and otherwise replays the
whole connected component — so the result never depends on the order in which events arrive.

Rules for a link ``(a, b)`` where ``a`` anchors the event:
- neither has a profile: one new profile holds both;
- one has a profile: the other joins it, unless that would give the profile a second value of a *unique* kind
  (two user ids), or the link is a *claim* (below) that would move a known identifier or an address into a
  profile known before the event: then the newcomer gets a profile of its own;
- both have different profiles: they merge unless they hold different values of a unique kind, or the link is a
  claim and both are *known* (hold a non-anonymous identifier) or the merge would move a known identifier or an
  address into a profile known before the event.
  An ``alias`` link between two user ids from a trusted source merges them on purpose (a rename); the other
  unique kinds still guard it.

Trust (decision 0022): a link is TRUSTED (the server write key, imports, Chorus itself), VOUCHED (the public write
key with a valid ``userHash``: it proves the event's ``userId``, which anchors the event, and nothing else in it)
or UNTRUSTED (the public write key without one). VOUCHED and UNTRUSTED links are *claims*. A vouched link may
bring new identifiers into the profile that holds its own proven user id (her new phone); otherwise a claim only
moves anonymous identifiers (a visitor becoming a customer reads nothing) into a profile that was known before
its event.
- Survivor: a known profile beats an anonymous one; otherwise the earliest created; ties by id.

Limits (``identifier_limits``): a profile holds at most n values of a limited kind, whoever sends the link. A link
that would take it past n is refused like a second user id: the newcomer gets a profile of its own, or the two
profiles stay apart. In key order, so the first n values seen keep their place whatever the arrival order. A
trusted rename (an alias between two user ids) is the exception here too: it merges whatever they hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chorus.identity.identifiers import IdentityConfig, kind_of

Key = tuple[str, str]  # (fixed-width ISO timestamp, message id): sorts like the instants, ties by id

UNTRUSTED, VOUCHED, TRUSTED = 0, 1, 2  # a link's trust: the value stored in identity_links.trust


def new_profile_id() -> str:
    return "p_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True, slots=True, order=True)
class Link:
    key: Key
    a: str
    b: str  # == a for a lone identifier ("this identifier exists")
    trust: int  # UNTRUSTED, VOUCHED or TRUSTED

    @property
    def trusted(self) -> bool:
        return self.trust == TRUSTED


@dataclass(slots=True)
class Node:
    id: str
    created: Key
    links_max: Key
    idents: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Merge:
    survivor: str
    merged: str
    reason: str
    key: Key


class Graph:
    def __init__(self, cfg: IdentityConfig, new_id: Callable[[], str] = new_profile_id):
        self.cfg = cfg
        self.new_id = new_id
        self.owner: dict[str, str] = {}
        self.nodes: dict[str, Node] = {}
        self.merges: list[Merge] = []
        self.refusals: list[tuple[Link, str]] = []
        self._unique = cfg.unique_kinds
        self._anon = cfg.anonymous_kinds
        self._limits = {k: n for k, n in cfg.limits.items() if k not in self._unique}
        # Identifiers that got their profile from links of the key being applied (one event): a profile known
        # only through them was not known before that event (a sign-up), see :meth:`claim_guard`.
        self._at: Key | None = None
        self._fresh: set[str] = set()

    # -- loading an existing slice of the graph ---------------------------------------------------------------
    def add_node(self, node: Node) -> None:
        self.nodes[node.id] = node
        for ident in node.idents:
            self.owner[ident] = node.id

    # -- predicates -----------------------------------------------------------------------------------------
    def known(self, node: Node) -> bool:
        return any(kind_of(i) not in self._anon for i in node.idents)

    def address(self, ident: str) -> bool:
        """Messages can be sent to it (email, phone, a declared kind with a channel, e.g. a push token)."""
        return bool(self.cfg.address_channels(kind_of(ident)))

    def known_before(self, node: Node) -> bool:
        """Known through an identifier it held before the event being applied."""
        return any(kind_of(i) not in self._anon and i not in self._fresh for i in node.idents)

    def claimed(self, ident: str) -> bool:
        """Would moving this identifier into someone's profile let its claimant read or redirect their data? Known
        identifiers name a person (her user id: its owner reads her inbox with its userHash), addresses receive
        her messages; only an anonymous id that is no address is harmless."""
        return kind_of(ident) not in self._anon or self.address(ident)

    def claim_guard(self, link: Link, target: Node, moving: Iterable[str]) -> str | None:
        """Anyone can claim anything with the public write key, and a userHash proves only the user id it signs: a
        claim never moves a known identifier or an address into a profile that was known before the event, or the
        claimant would read that customer's data or receive her messages (receipts, her name, her orders).
        Anonymous ids still move (that is how a visitor becomes a customer, and they read nothing), and so do the
        identifiers of a sign-up: the event that makes a profile known (its new user id) may bring its email and
        phone along. A vouched link may also add to the profile of the user id it proves (her new phone)."""
        if link.trust == TRUSTED or not self.known_before(target):
            return None
        if link.trust == VOUCHED and link.a in target.idents:  # link.a: the event's proven user id (its anchor)
            return None
        if any(self.claimed(i) for i in moving):
            return "a claimed identifier would join a known profile and the source is not trusted"
        return None

    def _unique_values(self, idents: Iterable[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for i in idents:
            k = kind_of(i)
            if k in self._unique:
                out.setdefault(k, set()).add(i)
        return out

    def conflict(self, left: Iterable[str], right: Iterable[str]) -> str | None:
        lv, rv = self._unique_values(left), self._unique_values(right)
        for k in lv.keys() & rv.keys():
            if lv[k] != rv[k]:
                return f"different {k}"
        return None

    def over_limit(self, held: set[str], coming: Iterable[str]) -> str | None:
        """Would ``coming`` take a profile holding ``held`` past a kind's limit? Counted only for kinds that
        arrive, so an ordinary link costs nothing."""
        if not self._limits:
            return None
        new = [i for i in coming if i not in held]
        for k in sorted({kind_of(i) for i in new} & self._limits.keys()):
            n = sum(1 for i in held if kind_of(i) == k) + sum(1 for i in new if kind_of(i) == k)
            if n > self._limits[k]:
                return f"more than {self._limits[k]} {k} on one profile"
        return None

    # -- transitions ----------------------------------------------------------------------------------------
    def _create(self, ident: str, key: Key) -> Node:
        node = Node(self.new_id(), key, key, {ident})
        self.nodes[node.id] = node
        self._own(ident, node)
        return node

    def _own(self, ident: str, node: Node) -> None:
        node.idents.add(ident)
        self.owner[ident] = node.id
        self._fresh.add(ident)

    @staticmethod
    def _touch(node: Node, key: Key) -> None:
        if key > node.links_max:
            node.links_max = key

    @staticmethod
    def rename(link: Link) -> bool:
        """A trusted alias between two user ids: it merges their profiles on purpose."""
        return link.trust == TRUSTED and kind_of(link.a) == "user_id" and kind_of(link.b) == "user_id"

    def conflict_for(self, link: Link, left: Iterable[str], right: Iterable[str]) -> str | None:
        """A trusted alias may give a profile a second user id (a rename); no other unique kind is exempt."""
        if self.rename(link):
            lv, rv = self._unique_values(left), self._unique_values(right)
            lv.pop("user_id", None)
            rv.pop("user_id", None)
            for k in lv.keys() & rv.keys():
                if lv[k] != rv[k]:
                    return f"different {k}"
            return None
        return self.conflict(left, right)

    def apply(self, link: Link) -> str:
        """Apply one link; return the id of the profile that owns ``link.a`` afterwards."""
        a, b, key = link.a, link.b, link.key
        if key != self._at:  # links are applied in key order, so one event's links come together
            self._at, self._fresh = key, set()
        pa = self.nodes.get(self.owner.get(a, ""))
        pb = self.nodes.get(self.owner.get(b, "")) if b != a else pa
        if pa is None and pb is None:
            pa = self._create(a, key)
            if b != a:
                self._own(b, pa)
            return pa.id
        if pa is None:
            assert pb is not None
            self._touch(pb, key)
            why = (
                self.conflict_for(link, pb.idents, [a])
                or self.over_limit(pb.idents, [a])
                or self.claim_guard(link, pb, [a])
            )
            if why is None:
                self._own(a, pb)
                return pb.id
            self.refusals.append((link, why))
            return self._create(a, key).id
        self._touch(pa, key)
        if pb is None:
            why = (
                self.conflict_for(link, pa.idents, [b])
                or self.over_limit(pa.idents, [b])
                or self.claim_guard(link, pa, [b])
            )
            if why is None:
                self._own(b, pa)
            else:
                self.refusals.append((link, why))
                self._create(b, key)
            return pa.id
        if pb is pa:
            return pa.id
        self._touch(pb, key)
        why = self.conflict_for(link, pa.idents, pb.idents)
        if why is None and not self.rename(link):  # a rename merges whatever else they hold, past a limit too
            why = self.over_limit(pa.idents, pb.idents)
        if why is None and link.trust != TRUSTED and self.known(pa) and self.known(pb):
            why = "both profiles are known and the source is not trusted"
        survivor, loser = self.survivor(pa, pb)
        why = why or self.claim_guard(link, survivor, loser.idents)
        if why is not None:
            self.refusals.append((link, why))
            return pa.id
        # kinds only: merge records outlive nothing but should not copy addresses around
        self._merge(survivor, loser, key, f"{kind_of(a)} seen with {kind_of(b)}")
        return survivor.id

    def survivor(self, x: Node, y: Node) -> tuple[Node, Node]:
        kx, ky = self.known(x), self.known(y)
        if kx != ky:
            return (x, y) if kx else (y, x)
        return (x, y) if (x.created, x.id) <= (y.created, y.id) else (y, x)

    def _merge(self, survivor: Node, loser: Node, key: Key, reason: str) -> None:
        for ident in loser.idents:
            self.owner[ident] = survivor.id
        survivor.idents |= loser.idents
        survivor.links_max = max(survivor.links_max, loser.links_max)
        del self.nodes[loser.id]
        self.merges.append(Merge(survivor.id, loser.id, reason, key))

    def partition(self) -> frozenset[frozenset[str]]:
        """The grouping of identifiers into profiles, independent of profile ids (used by tests)."""
        return frozenset(frozenset(n.idents) for n in self.nodes.values())


def replay(links: Iterable[Link], cfg: IdentityConfig, new_id: Callable[[], str] = new_profile_id) -> Graph:
    """The reference semantics: all links, earliest first."""
    g = Graph(cfg, new_id)
    for link in sorted(set(links)):
        g.apply(link)
    return g


def links_of(anchor: str, others: Iterable[str], key: Key, trust: int) -> list[Link]:
    return [Link(key, anchor, anchor, trust), *(Link(key, anchor, o, trust) for o in others)]
