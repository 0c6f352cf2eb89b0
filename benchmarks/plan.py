"""How long and how hard each case runs: the full run, and the ``--quick`` smoke run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Plan"]


@dataclass(frozen=True)
class Plan:
    name: str
    #: In-process cases (1, 2): interleaved rounds, and the length of one timed batch.
    rounds: int
    batch_seconds: float
    #: Server case (3): measured seconds per variant and round, rounds, warm-up seconds.
    server_seconds: float
    server_rounds: int
    server_warmup: float
    concurrency: int = 16
    server_users: int = 20
    upstream_latency: float = 0.030
    #: Upstream case (4).
    burst: int = 100
    sim_users: int = 100
    sim_requests: int = 1000
    sim_minutes: float = 60.0
    #: Shared-store case (5): worker processes, and the users each of them serves at once.
    store_processes: int = 4
    store_users: int = 20


FULL = Plan(
    name="full",
    rounds=101,
    batch_seconds=0.02,
    server_seconds=1.5,
    server_rounds=15,
    server_warmup=0.3,
)

QUICK = Plan(
    name="quick",
    rounds=3,
    batch_seconds=0.002,
    server_seconds=0.5,
    server_rounds=1,
    server_warmup=0.2,
    burst=10,
    sim_users=10,
    sim_requests=100,
    store_processes=2,
    store_users=5,
)
