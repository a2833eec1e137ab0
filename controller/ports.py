"""Loopback ports for the servers the emulator, the demo and the tests start themselves."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, kept from the kernel's own picks for about a minute.

    A port read off a bind to port 0 and let go is free for anyone: between that moment and the
    child server's bind, an outgoing connection's local port or another bind to port 0 can take
    it (a worker then reports "address already in use" and never becomes ready). A connection
    accepted on it and closed from this side leaves the port in TIME_WAIT, which the kernel skips
    when it picks a port, while a server that sets SO_REUSEADDR (asyncio, aiohttp, http.server,
    Redis, NATS and Go servers all do) can still bind it.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first holds the TIME_WAIT
    return port
