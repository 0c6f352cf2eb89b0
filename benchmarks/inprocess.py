"""Cases 1 and 2, in-process: the middleware's cost per request, and the scanner's speed.

Case 1 calls the ASGI app directly (``site.Client``: no socket, no HTTP client), the bare
app and the same app behind the middleware in the same rounds, alternating. Figures:
the median over rounds of wrapped / bare, and of wrapped - bare (µs added).

Case 2 times ``PlaceholderScanner`` (the public class the middleware uses, one instance
per page, ``feed`` + ``close``) on a page without a placeholder, the template page with
three and the dense page, whole and in 16 KB chunks, in the same rounds as two
references over the same bytes: ``bytes.find`` of the tag (case-sensitive: a lower bound
no correct scan can reach) and a compiled ``re`` with IGNORECASE finding every tag
(case-insensitive, as the scanner must be, but blind to HTML contexts).
"""

from __future__ import annotations

import re
from functools import partial

from starlette.types import ASGIApp

from rai_middleware._scanner import PlaceholderScanner
from rai_middleware.testing import FakeReturningAI

from .harness import Batch, Figure, Plan, Samples, interleave, repeat, us
from .site import CHUNK, TAG, Client, FloorMiddleware, build_app, page, render, wrap

MB = 1024 * 1024
_IGNORECASE = re.compile(re.escape(TAG), re.IGNORECASE)


def scan(chunks: list[bytes]) -> int:
    """Placeholders found by one scanner fed ``chunks``: what the middleware does."""
    scanner = PlaceholderScanner(TAG[1:].decode(), max_size=64 * 1024)
    items = [item for chunk in chunks for item in scanner.feed(chunk)] + scanner.close()
    return sum(not isinstance(item, bytes | bytearray | memoryview) for item in items)


def find_all(data: bytes) -> int:
    count, at = 0, data.find(TAG)
    while at >= 0:
        count, at = count + 1, data.find(TAG, at + 1)
    return count


def find_all_ignorecase(data: bytes) -> int:
    return sum(1 for _ in _IGNORECASE.finditer(data))


def _overhead(case: str, name: str, samples: Samples, ratio: float, added: float) -> list[Figure]:
    """The ratio and the µs added, with the issue's targets."""
    detail = f"bare {us(samples.median('bare'))}, wrapped {us(samples.median('wrapped'))}"
    return [
        Figure(
            case,
            f"{name}: µs added",
            samples.difference("wrapped", "bare") * 1e6,
            "µs",
            ("<=", added),
            detail,
            [x * 1e6 for x in samples.differences("wrapped", "bare")],
        ),
        Figure(
            case,
            f"{name}: wrapped / bare",
            samples.ratio("wrapped", "bare"),
            "ratio",
            ("<=", ratio),
            rounds=samples.ratios("wrapped", "bare"),
        ),
    ]


async def _check(bare: Client, wrapped: Client) -> None:
    """Fail loudly if the apps do not do what the figures claim to measure."""
    plain, rewritten = await bare.fetch(), await wrapped.fetch()
    assert plain.status == rewritten.status == 200, bare.scope["path"]
    widgets = plain.body.count(TAG)
    assert TAG not in rewritten.body, f"{bare.scope['path']}: placeholders left"
    assert rewritten.body.count(b"embed-token=") == widgets, "widgets missing"
    if not widgets:
        assert plain.body == rewritten.body, "the middleware changed a page without widgets"


async def case1(plan: Plan) -> list[Figure]:
    fake = FakeReturningAI()
    app = build_app()
    wrapped = wrap(app, api_base_url=FakeReturningAI.base_url, http_client=fake.client())
    # The same middleware with the JSON route excluded (issue 15): a prefix check, then the
    # app with the server's own receive and send.
    excluded = wrap(
        app,
        api_base_url=FakeReturningAI.base_url,
        http_client=fake.client(),
        exclude_paths=("/json", "/static"),
    )
    apps: dict[str, ASGIApp] = {
        "bare": app,
        "floor": FloorMiddleware(app),
        "wrapped": wrapped,
        "excluded": excluded,
    }
    assert b"embed-token=" in (await Client(wrapped, "/widget").fetch()).body  # mints
    calls = fake.calls

    async def rounds(path: str, *names: str) -> Samples:
        clients = {name: Client(apps[name], path) for name in names}
        await _check(clients["bare"], clients["wrapped"])
        subjects: dict[str, Batch] = {name: c.batch for name, c in clients.items()}
        return await interleave(subjects, rounds=plan.rounds, seconds=plan.batch_seconds)

    json_bare, json_excluded = (
        await Client(app, "/json").fetch(),
        await Client(excluded, "/json").fetch(),
    )
    assert (json_bare.status, json_bare.body) == (json_excluded.status, json_excluded.body)
    samples = await rounds("/json", "bare", "floor", "wrapped", "excluded")
    figures = [
        Figure(
            "1a",
            "small JSON: floor middleware / bare",
            samples.ratio("floor", "bare"),
            "ratio",
            detail=f"bare {us(samples.median('bare'))}; floor: wraps send, reads headers",
            rounds=samples.ratios("floor", "bare"),
        ),
        Figure(
            "1a",
            "small JSON: wrapped / bare",
            samples.ratio("wrapped", "bare"),
            "ratio",
            ("<=", 1.08),
            f"+{us(samples.difference('wrapped', 'bare'))}",
            samples.ratios("wrapped", "bare"),
        ),
        Figure(
            "1e",
            "small JSON, excluded (exclude_paths): wrapped / bare",
            samples.ratio("excluded", "bare"),
            "ratio",
            ("<=", 1.02),
            f"+{us(samples.difference('excluded', 'bare'))}",
            samples.ratios("excluded", "bare"),
        ),
    ]
    figures += _overhead(
        "1b", "100 KB page, 3 widgets", await rounds("/page", "bare", "wrapped"), 1.07, 130
    )
    assert (await Client(app, "/stream").fetch()).messages > 5, "not streamed"
    samples = await rounds("/stream", "bare", "wrapped")
    figures += _overhead("1c", "same page streamed in 16 KB chunks", samples, 1.09, 160)
    for label, path, size in (("100 KB", "/static/100k", 100 * 1024), ("5 MB", "/static/5m", 0)):
        samples = await rounds(path, "bare", "wrapped")
        added = samples.difference("wrapped", "bare")
        data = page(size or 5 * MB, placeholders=False)
        figures.append(
            Figure(
                "1d",
                f"{label} page, no placeholder: wrapped / bare",
                samples.ratio("wrapped", "bare"),
                "ratio",
                detail=f"+{us(added)}, {len(data) / max(added, 1e-12) / 1e9:.2f} GB/s",
                rounds=samples.ratios("wrapped", "bare"),
            )
        )
    assert fake.calls == calls, "a timed request called upstream"
    return figures


async def case2(plan: Plan) -> list[Figure]:
    pages = (
        ("no placeholder, 100 KB", page(100 * 1024, placeholders=False), None),
        ("template page, 3 widgets, 100 KB", render().encode(), 1.0),
        ("dense page, 1 MB", page(MB, dense=True), 0.3),
    )
    subjects = (
        ("whole", "scanner, whole page"),
        ("chunks", "scanner, 16 KB chunks"),
        ("re", "reference: re IGNORECASE finditer of the tag (case-insensitive)"),
        ("find", "reference: bytes.find of the tag (case-sensitive)"),
    )
    figures = []
    for label, data, bound in pages:
        chunks = [data[start : start + CHUNK] for start in range(0, len(data), CHUNK)]
        expected = find_all(data)
        assert scan([data]) == scan(chunks) == find_all_ignorecase(data) == expected, label
        batches = {
            "whole": repeat(partial(scan, [data])),
            "chunks": repeat(partial(scan, chunks)),
            "re": repeat(partial(find_all_ignorecase, data)),
            "find": repeat(partial(find_all, data)),
        }
        samples = await interleave(batches, rounds=plan.rounds, seconds=plan.batch_seconds)
        for name, what in subjects:
            detail = f"{us(samples.median(name))} per page"
            if name != "re":
                detail += f", {samples.ratio('re', name):.2f} x the speed of the re"
            figures.append(
                Figure(
                    "2",
                    f"{label}: {what}",
                    samples.rate(name, len(data)),
                    "GB/s",
                    (">=", bound) if bound and name == "whole" else None,
                    detail,
                    [len(data) / t / 1e9 for t in samples.per_call[name]],
                )
            )
    return figures
