"""transports/_net.py: how a peer is named when there is no socket to ask, or the socket
cannot say (not connected, or the peer already gone): the listening endpoint, else
"unknown", never an exception in a log line's way."""

from __future__ import annotations

import socket

from transports._net import peer_name


def test_no_socket_is_named_by_the_listening_endpoint_or_unknown() -> None:
    assert peer_name(None, "unix:/run/lmtp.sock") == "unix:/run/lmtp.sock"
    assert peer_name(None) == "unknown"


def test_a_socket_that_cannot_name_its_peer_falls_back() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unconnected:
        assert peer_name(unconnected, "127.0.0.1:2424") == "127.0.0.1:2424"
        assert peer_name(unconnected) == "unknown"


def test_a_connected_tcp_socket_is_named_by_its_peer() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                client_port = client.getsockname()[1]
                assert peer_name(accepted, "ignored") == f"127.0.0.1:{client_port}"
                assert peer_name(client) == f"127.0.0.1:{port}"
