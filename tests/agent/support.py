"""Shared set-up of the agent's proxy tests."""

from __future__ import annotations

import ssl
from typing import Any

from fluidity.agent.proxy import Proxy, ProxySettings
from fluidity.agent.tunnel_client import TunnelClient
from fluidity.tunnel import LinkConfig


def offline_proxy(
    settings: ProxySettings | None = None, health: dict[str, Any] | None = None
) -> Proxy:
    """A Proxy whose tunnel never comes up on its own (port 9, never dialled unless a request
    waits for a link): tests hand it a link, or check what it does without one."""
    tunnel = TunnelClient(
        "127.0.0.1",
        9,
        ssl_context=ssl.create_default_context(),
        server_name="unused",
        link_config=LinkConfig(),
    )
    body = health if health is not None else {}
    return Proxy(tunnel, settings or ProxySettings(), health=lambda: (200, body))
