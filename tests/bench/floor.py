"""The stack's floor: an HTTP/1.1 server on trio and h11 alone (`python -m tests.bench.floor`).

It answers every GET from memory with 200 and `n` bytes (`?n=N` in the target, like the
origin), parsing and writing each exchange with h11 the way the agent does with its clients,
over trio sockets. Nothing in Fluidity can cost less per request than this: each of its two
processes does at least this much (the agent is an h11 server to its clients, the server an
h11 client to origins, which costs the same) and then carries the request over the link. The
bench measures its CPU per request with the same load generator in the same run, so the ratio
of each Fluidity process to it says how much of a GET's cost is the stack and how much ours.
"""

from __future__ import annotations

import argparse
import contextlib
from functools import partial

import h11
import trio

from .origin import DEFAULT_SIZE, SIZE_QUERY
from .ready import write_ready

HOST = "127.0.0.1"
READ_SIZE = 64 * 1024
_HEADERS = [(b"content-type", b"application/octet-stream")]


async def serve(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if not isinstance(event, h11.Request):
                return
            match = SIZE_QUERY.search(event.target)
            body = b"x" * (int(match[1]) if match else DEFAULT_SIZE)
            while conn.next_event() is not h11.NEED_DATA and conn.their_state is not h11.DONE:
                pass  # a GET: its EndOfMessage; a body is read and dropped
            headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
            out = conn.send(h11.Response(status_code=200, reason=b"OK", headers=headers))
            out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


async def main(ready_file: str | None) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host=HOST))
        port = listeners[0].socket.getsockname()[1]
        if ready_file:
            write_ready(ready_file, {"listen_port": port})
        print(f"bench floor listening on {HOST}:{port}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ready-file", help="write the port here as JSON once listening")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, args.ready_file)
