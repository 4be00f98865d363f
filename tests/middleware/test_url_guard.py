"""The SSRF guard's enforcement: connections check the address they really reached, not what a check saw."""

from __future__ import annotations

import socket

import pytest

from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.services.url_guard import RefusedAddress, check_download_url, guarded_session
from tests.helpers import FileServer

PUBLIC_ADDRESS = "93.184.215.14"


@pytest.fixture
def server():
    with FileServer({"/model.safetensors": (200, {}, b"weights")}) as running:
        yield running


def test_loopback_connections_are_refused_before_a_byte_is_sent(server):
    for scheme_url in (server.url, server.url.replace("http://", "https://")):  # the TLS connection too
        with pytest.raises(RefusedAddress, match="127.0.0.1, a private"):
            guarded_session(allow_private=False).get(f"{scheme_url}/model.safetensors", timeout=5)
    assert server.hits == {}


def test_allow_private_setting_lets_tests_reach_the_loopback(server):
    response = guarded_session(allow_private=True).get(f"{server.url}/model.safetensors", timeout=5)
    assert response.status_code == 200 and response.content == b"weights"


def test_dns_rebinding_between_check_and_connect_is_refused(server, monkeypatch):
    """The host resolves to a public address for the check, then to the loopback for the connection."""
    real_getaddrinfo = socket.getaddrinfo
    answers = iter([PUBLIC_ADDRESS, "127.0.0.1"])

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example":
            return real_getaddrinfo(host, port, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.example:{server.url.rsplit(':', 1)[1]}/model.safetensors"
    check_download_url(url, allow_private=False)  # the check sees a public address
    with pytest.raises(RefusedAddress, match="rebind.example connected to 127.0.0.1"):
        guarded_session(allow_private=False).get(url, timeout=5)
    assert server.hits == {}


def test_the_early_check_refuses_private_hosts_with_a_clear_message():
    with pytest.raises(InvalidRequest, match="169.254.169.254, a private, loopback or link-local"):
        check_download_url("http://169.254.169.254/latest/meta-data/", allow_private=False)


def test_guarded_sessions_ignore_proxy_settings(server, monkeypatch):
    """Through a proxy the peer would be the proxy; the guard's sessions connect directly."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    response = guarded_session(allow_private=True).get(f"{server.url}/model.safetensors", timeout=5)
    assert response.status_code == 200 and server.hits == {"/model.safetensors": 1}
