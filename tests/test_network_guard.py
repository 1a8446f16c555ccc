import socket

import pytest


def test_connecting_outside_loopback_fails() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(RuntimeError, match="network"),
    ):
        sock.connect(("93.184.216.34", 80))


def test_loopback_is_allowed() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with server, socket.create_connection(server.getsockname(), timeout=2):
        conn, _ = server.accept()
        conn.close()
