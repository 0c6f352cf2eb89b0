"""Case 1: the middleware's cost in-process, with no socket and no HTTP client.

Each request is one direct call of the ASGI app with a minimal scope (the keys uvicorn
sets), a ``receive`` that gives one empty request body, and a ``send`` that only counts
bytes. Bare and wrapped rounds alternate; each figure is the median over rounds of the
wrapped / bare time ratio measured within the round.

Case 2's first figure (the scan against ``bytes.find``) is taken from case 1d's rounds,
where the same find is timed alongside the requests.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive

from rai_middleware.testing import FakeReturningAI

from .apps import USER_HEADER, FloorMiddleware, build_app, wrap
from .pages import PLACEHOLDER_TAG, static_page
from .plan import Plan
from .report import NO_PLACEHOLDER, OVERHEAD, SCAN, Figure, Target
from .timing import Batch, interleave

__all__ = ["Client", "Response", "find_all", "measure", "middleware_stack"]

#: The single user of the in-process cases: ``identify`` always finds this visitor.
USER = "bench-user"


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    messages: int = 0


class Client:
    """Calls an ASGI app directly, as a server would, without a socket."""

    def __init__(self, app: ASGIApp, path: str, *, user: str | None = USER) -> None:
        self.app = app
        headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"benchmarks"),
            (b"accept", b"text/html,application/json"),
        ]
        if user is not None:
            headers.append((USER_HEADER, user.encode()))
        self._scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
            "state": {},
        }
        self.received = 0  # body bytes, so that the sends are not optimised into nothing

    @staticmethod
    def _receive() -> Receive:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # Only a disconnect listener gets here (StreamingResponse): wait to be cancelled.
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        return receive

    async def _count(self, message: Message) -> None:
        body = message.get("body")
        if body:
            self.received += len(body)

    async def batch(self, n: int) -> None:
        """``n`` requests in a row; the timed unit of the benchmarks."""
        app, scope, count = self.app, self._scope, self._count
        for _ in range(n):
            await app(dict(scope, state={}), self._receive(), count)

    async def fetch(self) -> Response:
        """One request, keeping everything the app sent (for the sanity checks)."""
        response = Response()
        parts: list[bytes] = []

        async def keep(message: Message) -> None:
            response.messages += 1
            if message["type"] == "http.response.start":
                response.status = message["status"]
                response.headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                parts.append(bytes(message.get("body", b"")))

        await self.app(dict(self._scope, state={}), self._receive(), keep)
        response.body = b"".join(parts)
        return response


def find_all(data: bytes, needle: bytes = PLACEHOLDER_TAG) -> int:
    """Every occurrence of ``needle``, by ``bytes.find``: one pass over ``data``."""
    count = 0
    at = data.find(needle)
    while at >= 0:
        count += 1
        at = data.find(needle, at + 1)
    return count


def _find_batch(data: bytes) -> Batch:
    async def batch(n: int) -> None:
        for _ in range(n):
            find_all(data)

    return batch


@dataclass
class Stack:
    bare: ASGIApp
    floor: ASGIApp
    wrapped: ASGIApp
    fake: FakeReturningAI


def middleware_stack() -> Stack:
    """One Starlette app; the same app behind the floor middleware and behind ours, the
    latter minting from an in-process fake Returning.AI."""
    fake = FakeReturningAI()
    app = build_app()
    wrapped = wrap(app, api_base_url=FakeReturningAI.base_url, http_client=fake.client())
    return Stack(bare=app, floor=FloorMiddleware(app), wrapped=wrapped, fake=fake)


async def check(stack: Stack) -> None:
    """Fail loudly if the apps do not do what the figures claim they measure."""
    for path in ("/json", "/static/100k", "/static/5m"):
        bare, wrapped = (
            await Client(stack.bare, path).fetch(),
            await Client(stack.wrapped, path).fetch(),
        )
        assert bare.status == wrapped.status == 200, path
        assert bare.body == wrapped.body, f"{path}: the middleware changed a page it should not"
    for path in ("/page", "/stream"):
        bare, wrapped = (
            await Client(stack.bare, path).fetch(),
            await Client(stack.wrapped, path).fetch(),
        )
        assert bare.body.count(PLACEHOLDER_TAG) == 3, path
        assert PLACEHOLDER_TAG not in wrapped.body, f"{path}: placeholders left"
        assert wrapped.body.count(b"embed-token=") == 3, f"{path}: widgets missing"
        if path == "/stream":
            assert bare.messages > 5 and wrapped.messages > 5, "not streamed"
    assert static_page(100 * 1024).count(PLACEHOLDER_TAG) == 0


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


async def measure(plan: Plan) -> list[Figure]:
    stack = middleware_stack()
    await check(stack)  # also warms the token cache: every later page is a cache hit
    calls_before = stack.fake.calls
    rounds, seconds = plan.rounds, plan.batch_seconds

    def clients(path: str, *names: str) -> dict[str, Batch]:
        apps = {"bare": stack.bare, "floor": stack.floor, "wrapped": stack.wrapped}
        return {name: Client(apps[name], path).batch for name in names}

    figures: list[Figure] = []

    json_s = await interleave(
        clients("/json", "bare", "floor", "wrapped"), rounds=rounds, seconds_per_batch=seconds
    )
    figures.append(
        Figure(
            "1a",
            "small JSON, floor middleware / bare",
            json_s.ratio("floor", "bare"),
            "ratio",
            OVERHEAD,
            detail=f"bare {_us(json_s.median('bare'))}, floor {_us(json_s.median('floor'))}",
            extra={"per round": json_s.ratios("floor", "bare")},
        )
    )
    figures.append(
        Figure(
            "1a",
            "small JSON, wrapped / bare",
            json_s.ratio("wrapped", "bare"),
            "ratio",
            OVERHEAD,
            Target("<=", 1.08),
            detail=f"wrapped {_us(json_s.median('wrapped'))}, "
            f"+{_us(json_s.difference('wrapped', 'bare'))}",
            extra={"per round": json_s.ratios("wrapped", "bare")},
        )
    )

    for case, path, name, bound in (
        ("1b", "/page", "template page, 3 widgets", 1.05),
        ("1c", "/stream", "template page streamed (16 KB)", 1.10),
    ):
        samples = await interleave(
            clients(path, "bare", "wrapped"), rounds=rounds, seconds_per_batch=seconds
        )
        figures.append(
            Figure(
                case,
                f"{name}, wrapped / bare",
                samples.ratio("wrapped", "bare"),
                "ratio",
                OVERHEAD,
                Target("<=", bound),
                detail=f"bare {_us(samples.median('bare'))}, "
                f"wrapped {_us(samples.median('wrapped'))}, "
                f"+{_us(samples.difference('wrapped', 'bare'))}",
                extra={"per round": samples.ratios("wrapped", "bare")},
            )
        )

    scan_figures: list[Figure] = []
    for label, path, size in (("100 KB", "/static/100k", 100 * 1024), ("5 MB", "/static/5m", 0)):
        data = static_page(size or 5 * 1024 * 1024)
        subjects = clients(path, "bare", "wrapped")
        subjects["find"] = _find_batch(data)
        samples = await interleave(subjects, rounds=rounds, seconds_per_batch=seconds)
        added = samples.difference("wrapped", "bare")
        figures.append(
            Figure(
                "1d",
                f"pre-rendered {label}, no placeholder, wrapped / bare",
                samples.ratio("wrapped", "bare"),
                "ratio",
                NO_PLACEHOLDER,
                detail=f"bare {_us(samples.median('bare'))}, "
                f"wrapped {_us(samples.median('wrapped'))}, +{_us(added)}",
                extra={"per round": samples.ratios("wrapped", "bare")},
            )
        )
        ratios = [
            find / (wrapped - bare) if wrapped > bare else float("inf")
            for find, wrapped, bare in zip(
                samples.per_call["find"],
                samples.per_call["wrapped"],
                samples.per_call["bare"],
                strict=True,
            )
        ]
        scan_figures.append(
            Figure(
                "2",
                f"{label} page: find time / added time",
                statistics.median(ratios),
                "ratio",
                SCAN,
                Target(">=", 0.5),
                detail=f"find {_us(samples.median('find'))}, added {_us(added)} "
                f"({len(data) / max(added, 1e-12) / 1e9:.2f} GB/s)",
                extra={"per round": [round(ratio, 4) for ratio in ratios]},
            )
        )
    assert stack.fake.calls == calls_before, "a cached page called upstream"
    return figures + scan_figures
