"""Issue 15, item 2: the secret options (``access_id``, ``access_key``, ``widget_api_key``,
``secret_key``) take a ``str``, Starlette's ``Secret``, this package's ``Secret`` or anything
with ``get_secret_value()`` (pydantic's ``SecretStr``), on every entrance, and no repr of
anything the package builds shows one, however it came in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Secret as StarletteSecret
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse
from starlette.routing import Route

from rai_middleware import ConfigurationError, ReturningAIMiddleware, ReturningAIWSGIMiddleware
from rai_middleware._config import Secret
from rai_middleware.testing import FakeReturningAI
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID, SECRET_KEY

WIDGET_KEY = "widget-api-key-WWWWWWWWWWWWWWWWWWWWWW"
SECRETS = (ACCESS_ID, ACCESS_KEY, SECRET_KEY, WIDGET_KEY)
PAGE = b'<html><body><rai-placeholder widget="store">fallback</rai-placeholder></body></html>'


class Vault:
    """A holder of the pydantic ``SecretStr`` kind, without pydantic."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Vault(***)"


def pydantic_secret(value: str) -> Any:
    pydantic = pytest.importorskip("pydantic")
    return pydantic.SecretStr(value)


HOLDERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "starlette": StarletteSecret,
    "package": Secret,
    "get_secret_value": Vault,
    "pydantic": pydantic_secret,
}


@pytest.fixture(params=list(HOLDERS), ids=list(HOLDERS))
def hold(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    return HOLDERS[str(request.param)]


def secret_options(hold: Callable[[str], Any]) -> dict[str, Any]:
    return {
        "community_id": COMMUNITY_ID,
        "access_id": hold(ACCESS_ID),
        "access_key": hold(ACCESS_KEY),
        "secret_key": hold(SECRET_KEY),
    }


def reprs(root: object, depth: int = 4) -> Iterator[str]:
    """The repr of ``root`` and of every package object under it (held in ``__dict__`` or
    ``__slots__``), a few levels deep."""
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(root, 0)]
    while todo:
        obj, level = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if level and not type(obj).__module__.startswith("rai_middleware"):
            continue  # a str inside a holder is the secret itself, not a repr of ours
        yield repr(obj)
        if level >= depth:
            continue
        children = list(getattr(obj, "__dict__", {}).values())
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    children.append(getattr(obj, name))
        todo.extend((child, level + 1) for child in children)


def assert_no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


# -- accepted, and used ----------------------------------------------------------------


@pytest.mark.anyio
async def test_asgi_mints_with_a_key_given_in_any_holder(hold: Callable[[str], Any]) -> None:
    fake = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY)

    async def page(scope: Any, receive: Any, send: Any) -> None:
        await HTMLResponse(PAGE)(scope, receive, send)

    async with fake.client() as client:
        app = ReturningAIMiddleware(
            page,
            identify=lambda scope: {"data-customer-id": "c-1"},
            http_client=client,
            api_base_url=FakeReturningAI.base_url,
            **secret_options(hold),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as browser:
            body = (await browser.get("/")).content
        assert fake.calls == 1
        token = body.split(b'embed-token="')[1].split(b'"')[0].decode()
        assert fake.decode(token)["data-customer-id"] == "c-1"
        assert app.settings.secret_key == Secret(SECRET_KEY)
        assert_no_secret_in(*reprs(app))


def test_wsgi_and_the_widget_api_key_take_holders(hold: Callable[[str], Any]) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [PAGE]

    wrapped = ReturningAIWSGIMiddleware(
        app, community_id=COMMUNITY_ID, widget_api_key=hold(WIDGET_KEY), secret_key=hold(SECRET_KEY)
    )
    assert wrapped.settings.mode == "iframe"
    assert wrapped.settings.widget_api_key == Secret(WIDGET_KEY)
    assert_no_secret_in(*reprs(wrapped))


def test_django_settings_take_holders(hold: Callable[[str], Any]) -> None:
    pytest.importorskip("django")
    from django.test import override_settings

    from rai_middleware.django import ReturningAIMiddleware as DjangoMiddleware
    from tests.test_django import configure_django

    configure_django()
    with override_settings(RETURNING_AI=secret_options(hold)):
        middleware = DjangoMiddleware(lambda request: None)
    assert middleware.settings.access_key == Secret(ACCESS_KEY)
    assert_no_secret_in(*reprs(middleware))


def test_flask_config_takes_holders(hold: Callable[[str], Any]) -> None:
    pytest.importorskip("flask")
    from flask import Flask

    from rai_middleware.flask import ReturningAI, config_key

    app = Flask(__name__)
    app.config.update({config_key(name): value for name, value in secret_options(hold).items()})
    ReturningAI(app)
    state = ReturningAI.core(app)
    assert state.settings.access_key == Secret(ACCESS_KEY)
    assert_no_secret_in(*reprs(state), repr(app.extensions))
    state.close()


# -- reprs of the frameworks' own records ----------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["starlette-secret", "environment"])
async def test_starlettes_user_middleware_repr_shows_no_secret(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "environment":
        monkeypatch.setenv("RAI_ACCESS_KEY", ACCESS_KEY)
        monkeypatch.setenv("RAI_SECRET_KEY", SECRET_KEY)
        options: dict[str, Any] = {"community_id": COMMUNITY_ID, "access_id": "id"}
    else:
        options = {
            "community_id": COMMUNITY_ID,
            "access_id": "id",
            "access_key": StarletteSecret(ACCESS_KEY),
            "secret_key": StarletteSecret(SECRET_KEY),
        }
    app = Starlette(
        routes=[Route("/", lambda request: HTMLResponse(PAGE))],
        middleware=[Middleware(ReturningAIMiddleware, **options)],
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/")).content == b"<html><body>fallback</body></html>"
    assert_no_secret_in(repr(app.user_middleware), repr(app.middleware_stack))
    assert_no_secret_in(*reprs(app.middleware_stack))
    await _close(app.middleware_stack)


def test_starlette_itself_prints_a_plain_string_keyword_hence_secret_or_environment() -> None:
    """Starlette's ``Middleware`` record reprs every keyword it keeps: a ``str`` key shows
    there, before the package sees it. The docs say to pass a ``Secret`` or use the
    environment; the middleware built from it shows nothing (the tests above)."""
    record = Middleware(ReturningAIMiddleware, access_key=ACCESS_KEY)
    assert ACCESS_KEY in repr(record)
    assert ACCESS_KEY not in repr(Middleware(ReturningAIMiddleware, access_key=Secret(ACCESS_KEY)))


@pytest.mark.anyio
async def test_fastapis_add_middleware_with_a_secret_shows_none() -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    app.add_middleware(
        ReturningAIMiddleware,
        community_id=COMMUNITY_ID,
        access_id=StarletteSecret(ACCESS_ID),
        access_key=StarletteSecret(ACCESS_KEY),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/nowhere")).status_code == 404
    assert_no_secret_in(repr(app.user_middleware), repr(app.middleware_stack))
    await _close(app.middleware_stack)


async def _close(stack: Any) -> None:
    """Close the client of the middleware a stack built (no lifespan ran)."""
    while not isinstance(stack, ReturningAIMiddleware):
        stack = stack.app
    await stack.aclose()


# -- refused, without the value ---------------------------------------------------------


class Broken:
    def get_secret_value(self) -> str:
        raise OSError(f"vault unreachable while reading {ACCESS_KEY}")


class NotText:
    def get_secret_value(self) -> bytes:
        return ACCESS_KEY.encode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Broken(), "access_key: Broken.get_secret_value() raised OSError"),
        (
            NotText(),
            "access_key must be a string, a starlette Secret or an object with "
            "get_secret_value() (pydantic's SecretStr), got NotText",
        ),
        (
            42,
            "access_key must be a string, a starlette Secret or an object with "
            "get_secret_value() (pydantic's SecretStr), got int",
        ),
        (StarletteSecret("  "), "access_key is empty: it needs a value"),
    ],
)
def test_a_holder_that_gives_no_string_is_refused_without_its_value(
    value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        ReturningAIWSGIMiddleware(
            lambda environ, start_response: [], community_id="c", access_id="i", access_key=value
        )
    assert str(raised.value) == message  # names the keyword: that is where it came from
    chain: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert all(type(error) is ConfigurationError for error in chain)
    assert_no_secret_in(*(str(error) for error in chain), *(repr(error) for error in chain))
