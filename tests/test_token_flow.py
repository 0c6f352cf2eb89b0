"""The mint flow driven by hand: no I/O, no threads, no event loop, a fake clock."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from rai_middleware import ReturningAIError, StoreError, TokenError
from rai_middleware._store import StoredToken
from rai_middleware._token_flow import (
    Acquire,
    Deliver,
    Flow,
    Load,
    Op,
    Post,
    Release,
    Save,
    Sleep,
    mint_flow,
    resume,
)
from rai_middleware._tokens import TokenPolicy
from tests.test_tokens import settings, user

WALL = 1_000_000.0
ANSWER = httpx.Response(200, json={"data": {"embedToken": "fresh", "expiresIn": 900}})


class Clock:
    """Fake time: the policy's clock and the flow's deadline timer, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy_and_clock(**overrides: Any) -> tuple[TokenPolicy, Clock]:
    clock = Clock()
    options: dict[str, Any] = {"timeout": 0.5, **overrides}
    return TokenPolicy(settings(**options), clock=clock, wall_clock=lambda: WALL), clock


def sealed(policy: TokenPolicy, value: str, expires_at: float, n: int = 1) -> StoredToken:
    """A store value as the policy writes it under ``user(n)``'s key."""
    return StoredToken(value, expires_at, seal=policy._seal(user(n).key, value, expires_at))


def flow(policy: TokenPolicy, clock: Clock, *, store: bool, budget: float = 0.75) -> Flow:
    return mint_flow(policy, user(1), deadline=clock.now + budget, store=store, timer=clock)


def run(steps: Flow, answers: dict[type, Any]) -> list[Op]:
    """Every op the flow yields, answering each kind from ``answers`` (an exception is
    thrown in), the way a driver would."""
    ops: list[Op] = []
    op = resume(steps)
    while op is not None:
        ops.append(op)
        answer = answers.get(type(op))
        op = resume(steps, error=answer) if isinstance(answer, Exception) else resume(steps, answer)
    return ops


def kinds(ops: list[Op]) -> list[type]:
    return [type(op) for op in ops]


def test_without_a_store_it_posts_then_delivers() -> None:
    policy, clock = policy_and_clock()
    ops = run(flow(policy, clock, store=False, budget=0.5), {Post: ANSWER})
    assert kinds(ops) == [Post, Deliver]
    post, deliver = ops
    assert isinstance(post, Post) and post.timeout == 0.5
    assert isinstance(deliver, Deliver) and deliver.token is not None
    assert deliver.token.value == "fresh"
    assert policy.cached(user(1)) == deliver.token
    assert policy.mint_count == 1


def test_a_stored_token_is_adopted_without_asking_upstream() -> None:
    policy, clock = policy_and_clock()
    ops = run(flow(policy, clock, store=True), {Load: sealed(policy, "shared", WALL + 600)})
    assert kinds(ops) == [Load, Deliver]
    assert isinstance(ops[1], Deliver) and ops[1].token is not None
    assert ops[1].token.value == "shared"
    assert ops[1].token.remaining(clock.now) == 600
    assert policy.mint_count == 0


def test_the_owner_delivers_before_it_saves_and_releases() -> None:
    policy, clock = policy_and_clock()
    ops = run(flow(policy, clock, store=True), {Load: None, Acquire: "me", Post: ANSWER})
    assert kinds(ops) == [Load, Acquire, Load, Post, Deliver, Save, Release]
    acquire, save, release = ops[1], ops[5], ops[6]
    assert isinstance(acquire, Acquire) and acquire.lease == 1.5
    assert isinstance(save, Save) and save.token == sealed(policy, "fresh", WALL + 900)
    assert isinstance(release, Release) and release.owner == "me"


def test_not_the_owner_polls_for_half_a_timeout_then_mints_without_the_lock() -> None:
    policy, clock = policy_and_clock()
    steps = flow(policy, clock, store=True)
    ops: list[Op] = []
    op = resume(steps)
    while op is not None:
        ops.append(op)
        if isinstance(op, Sleep):
            clock.now += op.seconds
        op = resume(steps, ANSWER if isinstance(op, Post) else None)
    polls = kinds(ops).count(Sleep)
    assert polls == 4  # 0.05 s polls while another fits in half the timeout (0.25 s)
    assert kinds(ops)[-3:] == [Post, Deliver, Save]  # no Release: the lock is not ours
    post = ops[-3]
    assert isinstance(post, Post) and post.timeout == pytest.approx(0.5)


def test_not_the_owner_adopts_the_token_the_owner_saves() -> None:
    policy, clock = policy_and_clock()
    steps = flow(policy, clock, store=True)
    loads = iter([None, None, sealed(policy, "theirs", WALL + 900)])
    ops: list[Op] = []
    op = resume(steps)
    while op is not None:
        ops.append(op)
        op = resume(steps, next(loads) if isinstance(op, Load) else None)
    assert kinds(ops) == [Load, Acquire, Sleep, Load, Sleep, Load, Deliver]
    assert isinstance(ops[-1], Deliver) and ops[-1].token is not None
    assert ops[-1].token.value == "theirs"


def test_a_store_failure_means_minting_per_process_for_a_cool_down() -> None:
    policy, clock = policy_and_clock()
    ops = run(flow(policy, clock, store=True), {Load: StoreError("down"), Post: ANSWER})
    assert kinds(ops) == [Load, Post, Deliver]  # nothing more asked of a failed store
    assert not policy.store_in_use()
    ops = run(flow(policy, clock, store=True), {Post: ANSWER})
    assert kinds(ops) == [Post, Deliver]
    clock.now += 31
    assert policy.store_in_use()


def test_a_failed_save_still_releases_the_lock_and_starts_the_cool_down() -> None:
    policy, clock = policy_and_clock()
    answers = {Load: None, Acquire: "me", Post: ANSWER, Save: StoreError("full")}
    ops = run(flow(policy, clock, store=True), answers)
    # Releasing is worth a try: otherwise other processes wait out the lease.
    assert kinds(ops) == [Load, Acquire, Load, Post, Deliver, Save, Release]
    assert not policy.store_in_use()


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (httpx.ConnectError("refused"), "ConnectError: refused"),
        (TimeoutError(), "timed out after 0.5 s"),
        (httpx.ReadTimeout("slow"), "timed out after 0.5 s"),
    ],
)
def test_a_transport_failure_is_delivered_as_a_token_error(
    failure: Exception, message: str
) -> None:
    policy, clock = policy_and_clock()
    ops = run(flow(policy, clock, store=False), {Post: failure})
    assert kinds(ops) == [Post, Deliver]
    deliver = ops[1]
    assert isinstance(deliver, Deliver) and deliver.token is None
    assert deliver.error is not None and str(deliver.error) == message
    assert deliver.error.__cause__ is None  # nothing from the request leaks into it


def test_the_owner_releases_the_lock_after_a_failed_mint() -> None:
    policy, clock = policy_and_clock()
    answers = {Load: None, Acquire: "me", Post: httpx.Response(500)}
    ops = run(flow(policy, clock, store=True), answers)
    assert kinds(ops) == [Load, Acquire, Load, Post, Deliver, Release]
    assert isinstance(ops[4], Deliver) and ops[4].error is not None
    assert ops[4].error.status_code == 500


def store_ops_take(policy: TokenPolicy, clock: Clock, seconds: float) -> list[Op]:
    """The flow's ops when every store op takes ``seconds`` (each within its own timeout)
    and Returning.AI answers at once."""
    steps = flow(policy, clock, store=True)
    ops: list[Op] = []
    op = resume(steps)
    while op is not None:
        ops.append(op)
        if isinstance(op, (Load, Acquire, Save, Release)):
            clock.now += seconds
        op = resume(
            steps, "me" if isinstance(op, Acquire) else ANSWER if isinstance(op, Post) else None
        )
    return ops


def test_a_store_op_past_half_the_timeout_ends_the_lookup_and_the_mint_keeps_a_timeout() -> None:
    policy, clock = policy_and_clock()  # timeout 0.5: the lookup has until 0.25 s
    ops = store_ops_take(policy, clock, 0.3)
    assert kinds(ops) == [Load, Post, Deliver]  # not load, lock, load, then too late to mint
    load, post, deliver = ops
    assert isinstance(load, Load) and load.timeout == pytest.approx(0.25)
    assert isinstance(post, Post) and post.timeout == pytest.approx(0.45)
    assert isinstance(deliver, Deliver) and deliver.token is not None
    assert not policy.store_in_use()  # minting per process for a cool-down, said once


def test_a_slow_lock_is_still_released_after_delivery() -> None:
    policy, clock = policy_and_clock()
    ops = store_ops_take(policy, clock, 0.15)  # load 0.15, lock 0.30: past 0.25
    assert kinds(ops) == [Load, Acquire, Post, Deliver, Release]
    acquire, post = ops[1], ops[2]
    assert isinstance(acquire, Acquire) and acquire.timeout == pytest.approx(0.1)
    assert isinstance(post, Post) and post.timeout == pytest.approx(0.45)
    assert isinstance(ops[3], Deliver) and ops[3].token is not None
    assert policy.mint_count == 1


def test_a_bug_in_the_driver_is_not_taken_for_a_transport_failure() -> None:
    policy, clock = policy_and_clock()
    with pytest.raises(RuntimeError, match="closed"):
        run(flow(policy, clock, store=False), {Post: RuntimeError("the client is closed")})


def test_deliver_counts_failures_and_the_breaker_opens_at_the_threshold() -> None:
    policy, clock = policy_and_clock(failure_threshold=2)
    for _ in range(2):
        flight, leader = policy.join(user(1), deadline=1.0)
        assert leader
        ops = run(flow(policy, clock, store=False), {Post: httpx.Response(502)})
        deliver = ops[-1]
        assert isinstance(deliver, Deliver)
        policy.deliver(flight, deliver.token, deliver.error)
        with pytest.raises(TokenError, match="HTTP 502"):
            flight.outcome()
    with pytest.raises(TokenError, match="cool-down"):
        policy.join(user(1), deadline=1.0)
    assert policy.lead(user(1), deadline=1.0) is None


def test_a_flight_that_timed_out_counts_once_and_keeps_its_first_outcome() -> None:
    policy, _ = policy_and_clock()
    flight, _ = policy.join(user(1), deadline=1.0)
    follower, leader = policy.join(user(1), deadline=99.0)
    assert follower is flight and not leader
    woken: list[str] = []
    policy.when_settled(flight, lambda: woken.append("waiter"))
    policy.expire(flight)
    policy.expire(flight)  # a follower at the same deadline
    policy.deliver(flight, error=TokenError("timed out after 0.5 s"))  # the late outcome
    assert woken == ["waiter"]
    assert policy._consecutive_failures == 1
    assert policy.in_flight() == 0
    with pytest.raises(TokenError, match="timed out"):
        flight.outcome()
    late: list[str] = []
    policy.when_settled(flight, lambda: late.append("late"))  # settled: woken at once
    assert late == ["late"]


def test_join_after_a_flight_landed_returns_the_cached_token() -> None:
    policy, clock = policy_and_clock()
    run(flow(policy, clock, store=False), {Post: ANSWER})
    flight, leader = policy.join(user(1), deadline=1.0)
    assert not leader and flight.settled
    assert flight.outcome().value == "fresh"


def test_store_error_is_a_returning_ai_error_importable_from_the_store_module() -> None:
    from rai_middleware import _store

    assert issubclass(StoreError, ReturningAIError)
    assert _store.StoreError is StoreError
    assert StoreError.__module__ == "rai_middleware"


def test_no_secret_or_token_in_the_reprs_of_ops_flights_and_services() -> None:
    from rai_middleware._async_tokens import TokenService
    from rai_middleware._sync_tokens import SyncTokenService
    from tests.conftest import ACCESS_ID, ACCESS_KEY

    policy, clock = policy_and_clock()
    ops = run(flow(policy, clock, store=True), {Load: None, Acquire: "owner-x", Post: ANSWER})
    flight, _ = policy.join(user(2), deadline=1.0)
    shown = repr([*ops, flight, policy])
    shown += repr(TokenService(policy.settings, policy=policy))
    shown += repr(SyncTokenService(policy.settings, policy=policy))
    for secret in (ACCESS_KEY, ACCESS_ID, "fresh", "owner-x"):
        assert secret not in shown
