"""The parts' HTTP server: uvicorn's, whose graceful stop first takes in what clients have already sent.

uvicorn's stop closes its listening socket, then every connection holding no request. A connection
the kernel has completed but the process has not accepted yet, or accepted but not read yet, holds
bytes of a request the client has sent in full or in part; closing it resets the client, so a request
sent before the stop is lost. That happens whenever the process was not scheduled between the client's
send and the SIGTERM (a busy machine, a rolling restart under load): reproduced by stopping the process
(SIGSTOP), connecting, sending half a request, then SIGTERM and SIGCONT: uvicorn 0.54 reset 5 of 5.
`GracefulServer` lets the event loop turn a few times first (each turn polls the sockets: accepts, then
reads), so those requests are held by the time uvicorn's stop looks, and are answered as the last of
their connections.

`vmc serve` (the image) and the embedded launcher (`python -m deploy.server`, uvicorn's command-line
options that the launcher uses) both run it.
"""
from __future__ import annotations

import argparse
import asyncio
import socket

import uvicorn

# Turns of the event loop before uvicorn's stop: one to accept what waits in the listening socket's queue,
# one to read what those connections hold, and a spare for a head that arrived in two reads.
TAKE_IN_TURNS = 3


class GracefulServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for _ in range(TAKE_IN_TURNS):
            await asyncio.sleep(0)
        await super().shutdown(sockets)


def serve(config: uvicorn.Config) -> None:
    GracefulServer(config).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.server", description=__doc__.splitlines()[0])
    parser.add_argument("app", help="import string of the app factory (module:function)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http", default="httptools", help="uvicorn's HTTP protocol (name or import string)")
    parser.add_argument("--timeout-keep-alive", type=int, default=5)
    parser.add_argument("--timeout-graceful-shutdown", type=int, required=True)
    args = parser.parse_args(argv)
    serve(uvicorn.Config(args.app, factory=True, host=args.host, port=args.port, loop="uvloop", http=args.http,
                         access_log=False, timeout_keep_alive=args.timeout_keep_alive,
                         timeout_graceful_shutdown=args.timeout_graceful_shutdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
