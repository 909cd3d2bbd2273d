"""Which hosts the worker may call on an address somebody else chose: a web push endpoint comes from the browser, so
from anyone holding the public write key, and the worker must not be aimed at itself, the internal network or a
cloud metadata service with it (an outside probe registered ``https://2130706433/``, ``https://[::ffff:127.0.0.1]/``
and ``https://169.254.169.254/`` and the worker connected).

Two checks: :func:`endpoint_problem` when the endpoint is registered (its text: an IP literal in any of the
encodings a resolver accepts, ``localhost``), and :func:`refused_address` for every address the host resolves to
when the worker connects (a DNS name can point inward, and can change between the two).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import urllib3

# Set to 1 only to test against a push service on this machine (a stand-in on 127.0.0.1): loopback endpoints, over
# http too, are then accepted and called. Any other private, link-local or reserved address is refused even then.
ALLOW_LOOPBACK_ENV = "CHORUS_ALLOW_LOOPBACK_PUSH"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def loopback_allowed() -> bool:
    return os.environ.get(ALLOW_LOOPBACK_ENV) == "1"


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` is written as, or None for a name. IPv4 in every form the C resolver takes as an address
    (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``), so what is checked is what would be connected to."""
    host = host.rstrip(".")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address, and so is any IPv4 address an IPv6 one carries (IPv4-mapped, -compatible,
    6to4, Teredo, NAT64): ``::ffff:127.0.0.1`` is 127.0.0.1."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is None and (ip in _NAT64 or ip.packed[:12] == bytes(12)):
            embedded = ipaddress.IPv4Address(ip.packed[12:])
        if embedded is not None and not is_public(embedded):
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:  # fec0::/10: deprecated, still routed inside
        return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _loopback_name(host: str) -> bool:
    host = host.rstrip(".").lower()
    return host == "localhost" or host.endswith(".localhost")  # RFC 6761: always the machine itself


def endpoint_problem(endpoint: str) -> str | None:
    """Why a web push endpoint cannot be registered (None: it may be). It must be an ``https`` URL on a public host:
    not ``localhost``, not an IP literal in a private, loopback, link-local, reserved or unspecified range."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if not host:
        return "must be the push service URL"
    ip = literal_address(host)
    loopback = _loopback_name(host) or (ip is not None and ip.is_loopback)
    if loopback and loopback_allowed():
        return None if parts.scheme in ("https", "http") else "must be https"
    if loopback or (ip is not None and not is_public(ip)):
        return "must be a public push service (not a loopback, private, link-local or reserved address)"
    if parts.scheme != "https":
        return "must be https"
    return None


def refused_address(host: str, port: int) -> tuple[list[str], str | None]:
    """The addresses ``host`` resolves to, and why the worker must not connect to them (None: it may). Every address
    is checked, not only the first: a name with one inward address among public ones is refused.
    ``socket.gaierror`` when the name does not resolve."""
    found = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    allow_loopback = loopback_allowed()
    for text in found:
        ip = ipaddress.ip_address(str(text).split("%", 1)[0])
        if is_public(ip) or (allow_loopback and (ip.is_loopback or getattr(ip.ipv4_mapped, "is_loopback", False))):
            continue
        return found, f"the push endpoint's host {host} resolves to {ip}, which is not a public address: not called"
    return found, None


ADDRESSES_TRIED = 3  # of a host's checked addresses, connected to in turn until one answers


def connect_in_turn(conn, addresses: Iterable[str], connect: Callable[[], socket.socket]) -> socket.socket:
    """Connect urllib3's ``conn`` to its checked ``addresses`` (never a second lookup of its host, which a DNS name
    could answer differently), in the resolver's order: the next one after a refusal or a connect timeout
    (NewConnectionError is a ConnectTimeoutError; a black-holed first address must not hide the others), and a few
    at most, each with its own connect timeout. ``connect``: the connection class's own ``_new_conn``. The Host
    header and the TLS server name keep the host (webhooks, web push)."""
    host, error = conn._dns_host, None
    try:
        for address in list(dict.fromkeys(addresses))[:ADDRESSES_TRIED]:
            conn._dns_host = address
            try:
                return connect()
            except urllib3.exceptions.ConnectTimeoutError as exc:
                error = exc
    finally:
        conn._dns_host = host
    raise error or urllib3.exceptions.NewConnectionError(conn, f"{host} has no checked address")
