"""The real server's log (at its default level, info) holds nothing a client sent."""

from __future__ import annotations

import trio

from tests.support.curl import curl
from tests.support.origins import http_origin

from .helpers import Tunnel

SECRET = "s3cr3t-T0KEN-4242"


async def test_queries_credentials_and_auth_headers_never_reach_the_server_log(
    tunnel: Tunnel,
) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    headers = [
        "-H", f"Authorization: Bearer {SECRET}",
        "-H", f"Proxy-Authorization: Basic {SECRET}",
        "-H", f"Cookie: session={SECRET}",
    ]  # fmt: skip
    with trio.fail_after(60):
        async with http_origin() as origin:
            targets = [
                f"http://origin.test:{origin.port}/echo?token={SECRET}",
                f"http://user:{SECRET}@origin.test:{origin.port}/status/404?token={SECRET}",
                f"http://user:{SECRET}@nosuchhost.test/?token={SECRET}",
                f"http://origin.test:{closed_port}/?token={SECRET}",
                f"http://origin.test:{origin.port}/hang?token={SECRET}",  # 504 after 3 s
            ]
            codes = []
            for target in targets:
                code, out, err = await curl(
                    "-x", tunnel.proxy, "-o", "/dev/null", "-w", "%{http_code}", *headers, target
                )
                assert code == 0, err
                codes.append(out)
    assert codes == ["200", "404", "502", "502", "504"]
    log = tunnel.server.log()
    assert "502" in log  # the failures were logged
    assert SECRET not in log
