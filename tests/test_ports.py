"""free_port(): a port the kernel will not hand to anyone else before our own server binds it."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from controller.ports import free_port


def test_a_free_port_is_kept_from_binds_that_let_the_kernel_choose():
    port = free_port()
    with socket.socket() as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE


async def test_a_server_that_reuses_addresses_binds_it_and_serves():
    port = free_port()
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", port)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_ports_handed_out_one_after_another_are_all_different():
    # Let go at once, a port read off a bind to 0 came back within a few hundred picks.
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
