"""Case 4: how often the middleware calls Returning.AI, counted, not timed.

* Burst: ``burst`` concurrent first requests of one user, against a fake with real
  latency: single flight means one upstream call, and every request waits for it.
* Simulated hour: ``sim_requests`` requests from ``sim_users`` users at random moments
  of ``sim_minutes`` minutes, one after another, on a fake clock given to the middleware
  (``clock=``) and advanced before each request. A token lives ``expiresIn`` = 900 s and
  is reused while it has at least ``min_token_ttl`` = 300 s left, so each identity needs
  one call per 600 s window at most: the target is calls <= users x ceil(duration /
  window). For information, the count is also compared with an ideal cache replayed on
  the same schedule (mint only when a token must be replaced), and the shortest time
  between two calls for one identity is reported. A request "waited for a mint" when
  an upstream call was made while it was handled and it took the fake's latency.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from rai_middleware.testing import FakeReturningAI

from .apps import build_app, wrap
from .inprocess import Client
from .plan import Plan
from .report import UPSTREAM, Figure, Target

__all__ = ["ideal_calls", "measure"]

TOKEN_LIFETIME = 900.0
MIN_TOKEN_TTL = 300.0
WINDOW = TOKEN_LIFETIME - MIN_TOKEN_TTL
#: Upstream latency in the simulated hour (real seconds): long enough to tell a request
#: that waited for a mint from one that did not, short enough to replay an hour quickly.
SIM_LATENCY = 0.005
SIM_START = 1_000.0
#: The middleware's keep-warm check interval (``rai_middleware._tokens._WARM_INTERVAL``).
WARM_INTERVAL = 5.0
#: ``keep_warm=`` for the second replay of the hour: identities stay warm for an hour.
KEEP_WARM = 3600.0


@dataclass
class FakeClock:
    now: float = SIM_START

    def __call__(self) -> float:
        return self.now


def schedule(plan: Plan, seed: int = 2024) -> list[tuple[float, str]]:
    """(second, user) of each request, sorted by time; every user appears at least once."""
    rng = random.Random(seed)
    users = [f"user-{number:03d}" for number in range(plan.sim_users)]
    picks = users + [rng.choice(users) for _ in range(plan.sim_requests - len(users))]
    duration = plan.sim_minutes * 60
    return sorted((rng.uniform(0, duration), user) for user in picks)


def ideal_calls(requests: list[tuple[float, str]], window: float = WINDOW) -> int:
    """Calls made by a perfect per-identity cache: mint when the identity has no token
    or its token was minted ``window`` seconds ago or more."""
    minted: dict[str, float] = {}
    calls = 0
    for at, user in requests:
        last = minted.get(user)
        if last is None or at - last >= window:
            minted[user] = at
            calls += 1
    return calls


async def _burst(plan: Plan) -> tuple[int, int, float]:
    """(upstream calls, requests that waited at least the upstream latency, wall time)."""
    fake = FakeReturningAI(latency=plan.upstream_latency)
    async with fake.client() as http:
        app = wrap(build_app(), api_base_url=FakeReturningAI.base_url, http_client=http)
        client = Client(app, "/widget", user="burst-user")

        async def one() -> float:
            started = time.perf_counter()
            response = await client.fetch()
            assert b"embed-token=" in response.body
            return time.perf_counter() - started

        started = time.perf_counter()
        durations = await asyncio.gather(*(one() for _ in range(plan.burst)))
        wall = time.perf_counter() - started
    waited = sum(1 for duration in durations if duration >= plan.upstream_latency)
    return fake.calls, waited, wall


@dataclass
class Hour:
    calls: int
    waited: int
    ideal: int
    users: int
    shortest_gap: float  # seconds between two calls for one identity (inf: never twice)


async def _simulated_hour(plan: Plan, keep_warm: float = 0.0) -> Hour:
    """Replay the schedule on the fake clock. The fake answers after ``SIM_LATENCY`` real
    seconds, so a request that waited for a mint is one that took that long while a call
    was made; a request that only started a background refresh (if the middleware does
    that) returns at once. With ``keep_warm``, the middleware's periodic check (every
    ``WARM_INTERVAL`` seconds of its clock) is replayed on the fake clock too."""
    requests = schedule(plan)
    clock = FakeClock()
    fake = FakeReturningAI(token_lifetime=TOKEN_LIFETIME, latency=SIM_LATENCY)
    stamps: list[tuple[str, float]] = []  # (identity, simulated second) of each call
    async with fake.client() as http:
        app = wrap(
            build_app(),
            api_base_url=FakeReturningAI.base_url,
            http_client=http,
            clock=clock,
            keep_warm=keep_warm,
        )
        waited = 0
        grid = [SIM_START + WARM_INTERVAL]
        for at, user in requests:
            if keep_warm:
                await _replay_warm_checks(app, clock, grid, SIM_START + at)
            clock.now = SIM_START + at
            before = fake.calls
            started = time.perf_counter()
            response = await Client(app, "/widget", user=user).fetch()
            took = time.perf_counter() - started
            assert b"embed-token=" in response.body, "a request got no widget"
            waited += fake.calls > before and took >= SIM_LATENCY
            stamps += [(_identity(body), at) for body in fake.requests[len(stamps) :]]
        await asyncio.sleep(SIM_LATENCY * 4)  # let background refreshes land
        stamps += [(_identity(body), requests[-1][0]) for body in fake.requests[len(stamps) :]]
    last: dict[str, float] = {}
    shortest = math.inf
    for identity, at in stamps:
        if identity in last:
            shortest = min(shortest, at - last[identity])
        last[identity] = at
    return Hour(
        calls=fake.calls,
        waited=waited,
        ideal=ideal_calls(requests),
        users=len({user for _, user in requests}),
        shortest_gap=shortest,
    )


async def _replay_warm_checks(app: Any, clock: FakeClock, grid: list[float], until: float) -> None:
    """The keep-warm task's checks up to ``until``, on its fixed grid of the fake clock
    (``grid[0]`` is the next check's time)."""
    while grid[0] < until:
        clock.now = grid[0]
        if app.tokens.refresh_due():
            # Let those mints land at this moment of the fake clock, as they would in the
            # few milliseconds they take in real time.
            while app.tokens.policy.in_flight():
                await asyncio.sleep(SIM_LATENCY)
        grid[0] += WARM_INTERVAL


def _identity(body: dict[str, Any]) -> str:
    return str(body.get("userIdentifiers", {}).get("data-customer-id"))


async def measure(plan: Plan) -> list[Figure]:
    calls, waited, wall = await _burst(plan)
    figures = [
        Figure(
            "4",
            f"burst: {plan.burst} concurrent first requests of one user: upstream calls",
            calls,
            "count",
            UPSTREAM,
            Target("==", 1),
            detail=f"{waited} of {plan.burst} requests waited for that one call; "
            f"burst served in {wall * 1e3:.0f} ms (upstream latency "
            f"{plan.upstream_latency * 1e3:.0f} ms)",
        )
    ]
    hour = await _simulated_hour(plan)
    windows = math.ceil(plan.sim_minutes * 60 / WINDOW)
    bound = hour.users * windows
    name = f"hour: {plan.sim_requests} requests, {hour.users} users, {plan.sim_minutes:g} min"
    gap = "never twice" if math.isinf(hour.shortest_gap) else f"{hour.shortest_gap / 60:.1f} min"
    figures += [
        Figure(
            "4",
            f"{name}: upstream calls",
            hour.calls,
            "count",
            UPSTREAM,
            Target("<=", bound),
            detail=f"bound: {hour.users} users x {windows} windows of {WINDOW / 60:g} min "
            f"(900 s tokens kept while 300 s remain); shortest gap between two calls "
            f"for one identity: {gap}",
        ),
        Figure(
            "4",
            "hour: calls / calls of an ideal one-per-window cache",
            hour.calls / hour.ideal,
            "ratio",
            UPSTREAM,
            detail=f"ideal {hour.ideal}: mint only when the identity has no token or it is "
            f"{WINDOW / 60:g} min old; above 1 if tokens are renewed earlier (refresh ahead)",
        ),
        Figure(
            "4",
            "hour: requests that waited for a mint",
            hour.waited,
            "count",
            UPSTREAM,
            detail=f"of {plan.sim_requests}; at least {hour.users} (each user's first page)",
        ),
    ]
    warm = await _simulated_hour(plan, keep_warm=KEEP_WARM)
    figures += [
        Figure(
            "4",
            f"hour, keep_warm={KEEP_WARM:g} s: upstream calls",
            warm.calls,
            "count",
            UPSTREAM,
            Target("<=", bound),
            detail=f"shortest gap between two calls for one identity: "
            f"{warm.shortest_gap / 60:.1f} min",
        ),
        Figure(
            "4",
            f"hour, keep_warm={KEEP_WARM:g} s: requests that waited for a mint",
            warm.waited,
            "count",
            UPSTREAM,
            Target("<=", warm.users),
            detail=f"of {plan.sim_requests}; each user's first page must wait, no other",
        ),
    ]
    return figures
