"""The SSRF guard for requests the middleware makes on a user's behalf (URL imports, webhooks).

Only http(s) URLs whose host resolves exclusively to public addresses are allowed; loopback, private,
link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified addresses are refused
unless a setting allows them (tests). Every redirect hop is checked again.

`check_download_url` is the early check that gives the user a clear 400. The enforcement is
`guarded_session`: its connections check the address they actually connected to before a byte is sent, so a
host that resolves to a public address for the check and a private one for the connection (DNS rebinding)
is still refused.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from aws_extension.middleware.errors import InvalidRequest


class RefusedAddress(Exception):
    """A guarded connection reached a non-public address."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def check_download_url(url: str, allow_private: bool) -> None:
    """Raise InvalidRequest unless `url` may be downloaded from."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest(f"{url!r} is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"{url!r}: only http and https URLs can be imported, not {parts.scheme or 'a bare path'}.")
    if not parts.hostname:
        raise InvalidRequest(f"{url!r} has no host name.")
    if parts.username or parts.password:
        raise InvalidRequest(f"{url!r}: credentials in the URL are not accepted; pass tokens in params.")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        raise InvalidRequest(f"{url!r}: the host {parts.hostname} cannot be resolved.") from None
    if allow_private:
        return
    for info in infos:
        address = info[4][0]
        if not _is_public(address):
            raise InvalidRequest(f"{url!r}: {parts.hostname} resolves to {address}, a private, loopback or "
                             "link-local address; only public addresses can be imported from.")


class _PublicPeerOnly:
    """Mixed into urllib3's connections: refuse the socket unless its peer is a public address."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        address = sock.getpeername()[0]
        if not _is_public(address):
            sock.close()
            raise RefusedAddress(f"{self.host} connected to {address}, a private, loopback or link-local "  # type: ignore[attr-defined]
                                 "address; only public addresses can be reached.")
        return sock


class _PublicHTTPConnection(_PublicPeerOnly, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicPeerOnly, HTTPSConnection):
    pass


class _PublicHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPConnectionPool,
                                                   "https": _PublicHTTPSConnectionPool}


def guarded_session(allow_private: bool) -> requests.Session:
    """A session for user-given URLs: it raises RefusedAddress on connecting to a non-public address.

    It ignores proxy settings from the environment: through a proxy the peer would be the proxy, and the
    guard could not see where the request really goes.
    """
    session = requests.Session()
    session.trust_env = False
    if not allow_private:
        adapter = _PublicOnlyAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session
