"""Child processes of the server case (3), one per port, each on 127.0.0.1 only.

``python -m benchmarks.serve app --variant bare|wrapped|recipe``
    reads the fake upstream's base URL from its first stdin line (so that it can start,
    and import, while the upstream starts), then serves the benchmark app with uvicorn
    (h11, no access log) on a free port: bare, behind the middleware, or with the
    hand-written recipe route. Prints ``PORT <n>``; stops at the end of stdin.

``python -m benchmarks.serve upstream --latency 0.03``
    serves ``FakeReturningAI`` with ``run_in_thread``; prints ``URL <base url>``, then
    answers each ``calls`` line on stdin with the number of token calls so far, and
    stops at the end of stdin.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from collections.abc import Sequence

__all__ = ["main"]

VARIANTS = ("bare", "wrapped", "recipe")


def serve_app(variant: str) -> None:
    import uvicorn

    from .apps import build_app, wrap

    upstream = sys.stdin.readline().strip()
    app = build_app(upstream_url=upstream)
    asgi = wrap(app, api_base_url=upstream) if variant == "wrapped" else app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        asgi,
        host="127.0.0.1",
        port=sock.getsockname()[1],
        loop="asyncio",
        http="h11",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=1024,
    )
    server = uvicorn.Server(config)

    def stop_at_end_of_stdin() -> None:
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=stop_at_end_of_stdin, daemon=True).start()
    server.run(sockets=[sock])


def serve_upstream(latency: float) -> None:
    from rai_middleware.testing import FakeReturningAI

    fake = FakeReturningAI(latency=latency)
    with fake.run_in_thread() as url:
        print(f"URL {url}", flush=True)
        for line in sys.stdin:
            if line.strip() == "calls":
                print(fake.calls, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    commands = parser.add_subparsers(dest="command", required=True)
    app = commands.add_parser("app")
    app.add_argument("--variant", choices=VARIANTS, required=True)
    upstream = commands.add_parser("upstream")
    upstream.add_argument("--latency", type=float, default=0.03)
    args = parser.parse_args(argv)
    if args.command == "app":
        serve_app(args.variant)
    else:
        serve_upstream(args.latency)


if __name__ == "__main__":
    main()
