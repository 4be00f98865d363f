from __future__ import annotations

import pytest
from moto.server import ThreadedMotoServer


@pytest.fixture(scope="session")
def moto_server():
    """moto's server on 127.0.0.1 (real HTTP: presigned URLs, other threads); tests reset it as they need."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
