"""Which names the server answers to, which pages may post to it, and which proxies may name the client.

Standard library only: the command line checks ``--allowed_host`` and
``--trusted_proxy`` before Gradio is imported.

A web page elsewhere can make a browser talk to the UI: by rebinding its own
DNS name to 127.0.0.1 (the request then carries the attacker's name in
``Host``), or by posting a form across origins (the request carries the page's
``Origin``). :class:`HostPolicy` answers only to the names the server is known
by, and accepts a state-changing request from a page only when the page is the
UI itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

# Loopback names a local browser may use, whatever address the server is bound to.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Addresses that mean "every interface": the server's own name tells nothing about how users reach it.
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
# Gradio's share links arrive through a tunnel under this domain.
SHARE_DOMAIN = ".gradio.live"


def host_name(value: str) -> str | None:
    """The host name of a ``Host`` header value or an origin (``[::1]:7860`` -> ``::1``), lower case; ``None`` if malformed."""
    value = value.strip()
    if not value:
        return None
    try:
        parts = urlsplit(value if "://" in value else f"//{value}")
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return None
    return parts.hostname


def parse_proxy(value: str) -> str:
    """``--trusted_proxy`` as uvicorn takes it: an address or a network (``10.0.0.0/8``); ``ValueError`` otherwise."""
    value = value.strip()
    if "/" in value:
        return str(ipaddress.ip_network(value, strict=False))
    return str(ipaddress.ip_address(value))


@dataclass(frozen=True)
class HostPolicy:
    """The host names requests may name, and whether a request's ``Origin`` may change anything.

    ``named``: the names the operator gave (``--allowed_host``, a non-wildcard
    ``--server_name``). ``proxied``: those from ``--allowed_host``, where a page
    may post from too (a reverse proxy may rewrite ``Host`` but not ``Origin``);
    otherwise a page must be the UI itself, port included. ``share``: also answer under Gradio's
    share domain. ``any_host``: answer to every name (a server bound to all
    interfaces with no ``--allowed_host``: it cannot know the names it is reached
    by, and off loopback a password is required anyway).
    """

    named: frozenset[str]
    proxied: frozenset[str] = frozenset()
    share: bool = False
    any_host: bool = False

    @classmethod
    def build(cls, server_name: str, allowed_hosts: Iterable[str] = (), share: bool = False) -> HostPolicy:
        """The policy for a server bound to ``server_name`` and also known as ``allowed_hosts``."""
        given = frozenset(name for name in (host_name(host) for host in allowed_hosts) if name)
        names = set(given)
        bound = host_name(server_name)
        wildcard = server_name.strip("[]") in WILDCARD_ADDRESSES
        if not wildcard and bound:
            names.add(bound)
        return cls(named=frozenset(names), proxied=given, share=share, any_host=wildcard and not names)

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header is meant for this server."""
        name = host_name(host) if host else None
        if name is None:
            return False
        return (
            self.any_host
            or name in LOOPBACK_HOSTS
            or name in self.named
            or (self.share and name.endswith(SHARE_DOMAIN))
        )

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a request from a page at ``origin`` (``None``: not from a page) may change state here.

        The page must be the UI itself (same host and port as the request) or on a name given with ``--allowed_host``.
        """
        if origin is None:
            return True
        try:
            parts = urlsplit(origin)
            netloc_matches = host is not None and parts.netloc.lower() == host.strip().lower()
        except ValueError:
            return False
        if parts.scheme not in ("http", "https"):
            return False  # "null" (a sandboxed or file page) and anything else
        name = host_name(origin)
        return netloc_matches or name in self.proxied or (self.share and bool(name) and name.endswith(SHARE_DOMAIN))
