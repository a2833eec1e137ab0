"""controller.vast's SDK client: offline-safe for a local (plain-http) Vast, untouched for the real one."""

from __future__ import annotations

import ssl

import pytest
from support import free_port

from controller.vast import sdk_client


async def test_a_local_client_has_its_ssl_context_without_downloading_vasts_certificate() -> None:
    """Fails if the SDK stops taking the context we set (the one private name we touch)."""
    client = sdk_client("key", webserver_url="http://127.0.0.1:1", autoscaler_url="http://127.0.0.1:1")
    client.SSL_CERT_URL = f"http://127.0.0.1:{free_port()}/never"  # any download would fail
    try:
        assert isinstance(await client.get_ssl_context(), ssl.SSLContext)
    finally:
        await client.close()


async def test_a_client_of_the_real_vast_downloads_the_certificate() -> None:
    client = sdk_client("key", webserver_url="https://console.vast.ai", autoscaler_url="https://run.vast.ai")
    client.SSL_CERT_URL = f"http://127.0.0.1:{free_port()}/never"
    try:
        with pytest.raises(OSError):
            await client.get_ssl_context()
    finally:
        await client.close()
