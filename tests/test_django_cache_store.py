"""Issue 15, item 8: ``rai_middleware.django.DjangoCacheTokenStore``, the site's ``CACHES``
as the shared token store. The contract tests of the Redis store (tests/test_redis.py),
against Django's local-memory cache: one mint per identity across instances that share
the cache (``cache.add`` as the lock), the lock released by its owner only, values bound
to their key and checked, and a failing cache falling back to per-process minting with
one warning."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")

from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.test import override_settings

from rai_middleware import ConfigurationError, ReturningAIMiddleware, ReturningAIWSGIMiddleware
from rai_middleware._identity import Identity
from rai_middleware._store import StoredToken, StoreError
from rai_middleware._sync_tokens import SyncTokenService
from rai_middleware.django import DjangoCacheTokenStore
from rai_middleware.django import ReturningAIMiddleware as DjangoMiddleware
from rai_middleware.testing import FakeReturningAI
from tests.conftest import html_app
from tests.test_django import configure_django
from tests.test_wsgi import call, wsgi_page

configure_django()

PAGE = b'<rai-placeholder widget="store">fallback</rai-placeholder>'
SECRET = "shared-secret-for-every-process-0123456789"


class BrokenCache(LocMemCache):  # type: ignore[misc]
    """A cache whose server is down: every operation raises."""

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("memcached://user:hunter2@cache.internal is unreachable")

    get = set = add = delete = _fail


@pytest.fixture
def cache() -> Iterator[Any]:
    """A fresh local-memory cache as ``default``, and ``down`` that always fails."""
    location = f"rai-tests-{time.monotonic_ns()}"
    with override_settings(
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "LOCATION": location,
            },
            "down": {"BACKEND": "tests.test_django_cache_store.BrokenCache", "LOCATION": "x"},
        }
    ):
        yield caches["default"]


@pytest.fixture(scope="module")
def served_fake() -> Iterator[tuple[FakeReturningAI, str]]:
    fake = FakeReturningAI()
    with fake.run_in_thread() as url:
        yield fake, url


@pytest.fixture
def upstream(served_fake: tuple[FakeReturningAI, str]) -> tuple[FakeReturningAI, str]:
    fake, url = served_fake
    fake.reset()
    fake.token_lifetime = 900
    return fake, url


def wsgi_site(api_base_url: str, **options: Any) -> ReturningAIWSGIMiddleware:
    options.setdefault("token_store", DjangoCacheTokenStore())
    options.setdefault("community_id", "c")
    return ReturningAIWSGIMiddleware(
        wsgi_page(PAGE),
        identify=lambda environ: {"data-customer-id": environ["PATH_INFO"].strip("/")},
        access_id="demo-access-id",
        access_key="demo-access-key",
        secret_key=SECRET,
        api_base_url=api_base_url,
        **options,
    )


def key_of(site: ReturningAIWSGIMiddleware, user: str) -> str:
    """``user``'s key in the store: an identity hash scoped to the site's mode and community."""
    return Identity.create({"data-customer-id": user}, site.core.identity_secret).key


def token_in(body: bytes) -> str:
    return body.split(b'embed-token="')[1].split(b'"')[0].decode()


# -- the store contract ------------------------------------------------------------------


def test_the_lock_is_taken_once_and_released_only_by_its_owner(cache: Any) -> None:
    store = DjangoCacheTokenStore()
    owner = store.acquire("k", 5)
    assert owner is not None
    assert store.acquire("k", 5) is None
    store.release("k", "someone-else.9999999999.0")
    store.release("k", "not-an-owner")
    assert store.acquire("k", 5) is None
    store.release("k", owner)
    assert store.acquire("k", 5) is not None
    assert cache.get("rai:lock:k") is not None


def test_a_lease_under_a_second_is_a_whole_second(cache: Any) -> None:
    # memcached counts in seconds and reads 0 as "never expires".
    store = DjangoCacheTokenStore()
    assert store.acquire("k", 0.05) is not None
    expires = cache._expire_info[cache.make_and_validate_key("rai:lock:k")]
    assert 0.9 < expires - time.time() <= 1.0
    assert store.acquire("k", 0.05) is None


def test_a_lock_about_to_lapse_is_left_to_expire(
    cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DjangoCacheTokenStore()
    owner = store.acquire("k", 1)
    assert owner is not None
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 0.6)  # 0.4 s left < RELEASE_MARGIN
    store.release("k", owner)
    assert cache.get("rai:lock:k") == owner


def test_tokens_round_trip_and_expired_ones_are_not_kept(cache: Any) -> None:
    store = DjangoCacheTokenStore(prefix="site1:")
    token = StoredToken("tok-1", time.time() + 600, seal="s")
    store.save("k", token)
    assert store.load("k") == token
    assert json.loads(cache.get("site1:tok:k")) == {"t": "tok-1", "exp": token.expires_at, "m": "s"}
    store.save("old", StoredToken("tok-0", time.time() - 1))
    assert store.load("old") is None and cache.get("site1:tok:old") is None
    assert store.load("absent") is None
    store.close()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("[" * 10_000 + "]" * 10_000, "over 8 KiB"),
        ('{"t": {"t": "x"}, "exp": 1}', "nested"),
        ('{"t": "tok", "exp": "soon", "m": ""}', "not a token"),
        (b"\xff\xfe", "not UTF-8"),
        (42, "not a string"),
    ],
)
def test_a_value_of_the_wrong_shape_is_ignored_and_logged_once(
    cache: Any, caplog: pytest.LogCaptureFixture, value: object, reason: str
) -> None:
    cache.set("rai:tok:k", value)
    store = DjangoCacheTokenStore()
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        assert [store.load("k") for _ in range(3)] == [None] * 3
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1
    assert said[0].startswith("a token value in Django's cache 'default' is ") and reason in said[0]


def test_a_failing_cache_raises_store_error_without_its_message(cache: Any) -> None:
    store = DjangoCacheTokenStore("down")
    for operation in (
        lambda: store.load("k"),
        lambda: store.acquire("k", 1),
        lambda: store.save("k", StoredToken("t", time.time() + 60)),
    ):
        with pytest.raises(StoreError) as raised:
            operation()
        assert str(raised.value) == "Django's cache 'down' failed: ConnectionError"
        assert raised.value.__context__ is None and raised.value.__cause__ is None


def test_repr_and_arguments() -> None:
    assert repr(DjangoCacheTokenStore()) == "DjangoCacheTokenStore(alias='default', prefix='rai:')"
    assert DjangoCacheTokenStore("sessions").alias == "sessions"
    with pytest.raises(TypeError):
        DjangoCacheTokenStore("")
    with pytest.raises(TypeError):
        DjangoCacheTokenStore(prefix=3)  # type: ignore[arg-type]


# -- through the middleware ------------------------------------------------------------


def test_instances_sharing_the_cache_mint_once_per_user(
    cache: Any, upstream: tuple[FakeReturningAI, str]
) -> None:
    fake, url = upstream
    # Four "processes" (each its own token service and local cache), twelve pages at once.
    sites = [wsgi_site(url, timeout=10) for _ in range(4)]
    barrier = threading.Barrier(12)
    tokens: dict[str, set[str]] = {}
    lock = threading.Lock()

    def serve(site: Any, user: str) -> None:
        barrier.wait()
        token = token_in(call(site, f"/{user}")[2])
        with lock:
            tokens.setdefault(user, set()).add(token)

    threads = [
        threading.Thread(target=serve, args=(site, user))
        for site in sites
        for user in ("ann", "ben", "cat")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for site in sites:
        site.close()
    assert fake.calls == 3
    assert {user: len(found) for user, found in tokens.items()} == {"ann": 1, "ben": 1, "cat": 1}
    for user, found in tokens.items():
        assert fake.decode(next(iter(found)))["data-customer-id"] == user


def test_the_cache_holds_no_identifier(cache: Any, upstream: tuple[FakeReturningAI, str]) -> None:
    _, url = upstream
    site = ReturningAIWSGIMiddleware(
        wsgi_page(PAGE),
        identify=lambda environ: {"data-email": "secret.person@example.com"},
        community_id="c",
        access_id="demo-access-id",
        access_key="demo-access-key",
        secret_key=SECRET,
        api_base_url=url,
        token_store=DjangoCacheTokenStore(),
    )
    call(site, "/")
    site.close()
    keys = list(cache._cache)  # LocMemCache's own storage: every key, with its version
    assert len(keys) == 1 and ":rai:tok:" in keys[0]
    assert "secret.person" not in keys[0] and "secret.person" not in str(cache._cache)


def test_two_communities_sharing_the_cache_and_the_secret_never_share_a_token(
    cache: Any, upstream: tuple[FakeReturningAI, str]
) -> None:
    """Identity hashes (the store's keys) are scoped to the mode and the community."""
    fake, url = upstream
    first, second = wsgi_site(url, community_id="community-A"), wsgi_site(url, community_id="B")
    token_a = token_in(call(first, "/alice")[2])
    token_b = token_in(call(second, "/alice")[2])
    assert token_a != token_b
    assert fake.calls == 2  # B minted its own; it did not read A's from the shared store
    assert len(cache._cache) == 2
    first.close()
    second.close()


def test_a_value_copied_under_another_key_gives_that_visitor_no_token(
    cache: Any, upstream: tuple[FakeReturningAI, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = upstream
    site = wsgi_site(url)
    alice = token_in(call(site, "/alice")[2])
    stolen = cache.get("rai:tok:" + key_of(site, "alice"))
    cache.set("rai:tok:" + key_of(site, "bob"), stolen, 60)
    other = wsgi_site(url)  # another process: bob is not in its local cache
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        bob = token_in(call(other, "/bob")[2])
    site.close()
    other.close()
    assert bob != alice and fake.decode(bob)["data-customer-id"] == "bob"
    assert fake.calls == 2
    assert "not sealed for its key" in caplog.text


def test_a_failing_cache_still_serves_pages_with_one_warning(
    cache: Any, upstream: tuple[FakeReturningAI, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = upstream
    site = wsgi_site(url, token_store=DjangoCacheTokenStore("down"))
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        bodies = [call(site, f"/u{n}")[2] for n in range(3)]
    site.close()
    assert all(b"embed-token" in body for body in bodies)
    assert fake.calls == 3
    text = caplog.text
    assert sum("shared token store failed" in r.getMessage() for r in caplog.records) == 1
    assert "the shared token store failed (Django's cache 'down' failed: ConnectionError)" in text
    assert "hunter2" not in text


# -- the Django middleware, sync and async -----------------------------------------------


def django_settings(url: str) -> dict[str, Any]:
    return {
        "community_id": "c",
        "access_id": "demo-access-id",
        "access_key": "demo-access-key",
        "secret_key": SECRET,
        "api_base_url": url,
        "identify": lambda request: {"data-customer-id": request.path.strip("/")},
        "token_store": DjangoCacheTokenStore(),
    }


def test_django_sync_and_async_middlewares_share_one_token(
    cache: Any, upstream: tuple[FakeReturningAI, str]
) -> None:
    from django.http import HttpResponse
    from django.test import RequestFactory

    fake, url = upstream

    def view(request: Any) -> HttpResponse:
        return HttpResponse(PAGE)

    async def aview(request: Any) -> HttpResponse:
        return HttpResponse(PAGE)

    with override_settings(RETURNING_AI=django_settings(url)):
        sync_middleware = DjangoMiddleware(view)
        async_middleware = DjangoMiddleware(aview)
    # A synchronous store: the async middleware runs the thread token service.
    assert async_middleware.async_mode and isinstance(async_middleware.tokens, SyncTokenService)
    first = sync_middleware(RequestFactory().get("/ada")).content
    second = asyncio.run(async_middleware(RequestFactory().get("/ada"))).content
    sync_middleware.close()
    async_middleware.close()
    assert token_in(first) == token_in(second)
    assert fake.decode(token_in(first))["data-customer-id"] == "ada"
    assert fake.calls == 1


def test_the_asgi_middleware_refuses_the_synchronous_store() -> None:
    with pytest.raises(ConfigurationError) as raised:
        ReturningAIMiddleware(
            html_app(PAGE),
            community_id="c",
            access_id="i",
            access_key="k",
            token_store=DjangoCacheTokenStore(),  # type: ignore[arg-type]
        )
    assert str(raised.value) == (
        "token_store must be an asyncio token store such as "
        "rai_middleware.redis.RedisTokenStore, got DjangoCacheTokenStore"
    )
