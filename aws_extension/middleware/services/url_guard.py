"""The SSRF guard for downloads the middleware makes on a user's behalf (URL imports).

Only http(s) URLs whose host resolves exclusively to public addresses are allowed; loopback, private,
link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified addresses are refused
unless a setting allows them (tests). Every redirect hop is checked again.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aws_extension.middleware.errors import BadRequest


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def check_download_url(url: str, allow_private: bool) -> None:
    """Raise BadRequest unless `url` may be downloaded from."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequest(f"{url!r} is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise BadRequest(f"{url!r}: only http and https URLs can be imported, not {parts.scheme or 'a bare path'}.")
    if not parts.hostname:
        raise BadRequest(f"{url!r} has no host name.")
    if parts.username or parts.password:
        raise BadRequest(f"{url!r}: credentials in the URL are not accepted; pass tokens in params.")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        raise BadRequest(f"{url!r}: the host {parts.hostname} cannot be resolved.") from None
    if allow_private:
        return
    for info in infos:
        address = info[4][0]
        if not _is_public(address):
            raise BadRequest(f"{url!r}: {parts.hostname} resolves to {address}, a private, loopback or "
                             "link-local address; only public addresses can be imported from.")
