"""An origin's oversized response head costs its own request a 502, not the link.

Before, a 70 KB header made the server send a Response frame above the agent's limit, and the
agent closed the whole link: every transfer of every client failed with it.
"""

from __future__ import annotations

import hashlib

import trio

from fluidity.server.origin_pool import MAX_HEAD
from tests.support.origins import http_origin, pattern_sha256

from .helpers import Tunnel, client, url

TRANSFER = 32 * 1024 * 1024


async def test_oversized_heads_are_502_while_a_transfer_on_the_link_goes_on(
    tunnel: Tunnel,
) -> None:
    with trio.fail_after(60):
        async with (
            http_origin() as origin,
            client(tunnel) as http,
            client(tunnel) as other,
            http.stream("GET", url(origin, f"/stream?n={TRANSFER}")) as download,
        ):
            digest = hashlib.sha256()
            chunks = download.aiter_raw()
            digest.update(await anext(chunks))  # the transfer is under way
            # 70 KB in one header: refused by the server's pool while reading.
            one_big = await other.get(url(origin, "/headers?size=70000"))
            # 60 KB on the wire in 8600 tiny headers, more once framed: refused as the reply
            # would not fit in one frame.
            many = await other.get(url(origin, "/headers?count=8600"))
            fine = await other.get(url(origin, "/echo"))
            async for chunk in chunks:
                digest.update(chunk)
    assert one_big.status_code == 502
    assert one_big.headers["x-fluidity-error"] == (
        f"the origin's response head is larger than the tunnel carries ({MAX_HEAD} bytes)"
    )
    assert many.status_code == 502
    assert "response head is too large for the tunnel" in many.headers["x-fluidity-error"]
    assert fine.status_code == 200
    assert digest.hexdigest() == pattern_sha256(TRANSFER)
    assert "disconnected" not in tunnel.server.log()  # one link all along
