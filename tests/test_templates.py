"""The template helpers: Django's ``{% rai_widget %}`` and Jinja2's ``rai_widget()``.

First the exact bytes each one writes (and what it refuses), then round trips: the helper's
output goes through the real middleware on Django, Starlette (``Jinja2Templates``) and Flask,
against ``FakeReturningAI``, and becomes the widget with the visitor's token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from rai_middleware import ConfigurationError, PlaceholderError, ReturningAIMiddleware
from rai_middleware._placeholder import PlaceholderWriter, attribute_name
from rai_middleware.testing import FakeReturningAI


def need(module: str) -> None:
    """Outside CI, a test whose framework is missing is skipped; in CI it must run."""
    if not os.environ.get("CI"):
        pytest.importorskip(module)


LIBRARY = "rai_middleware.django.templatetags.rai_middleware"
HOSTILE = "\"><script>alert('x')</script>&amp;"
HOSTILE_ESCAPED = "&quot;&gt;&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;amp;"
NAME = "<b>Ann</b> & co"

# What both helpers write for the page of the round trips (context below).
PLACEHOLDERS = (
    '<main><rai-placeholder widget="channel" channel-id="general" theme="dark"'
    f' data-note="{HOSTILE_ESCAPED}">'
    '<a href="/login">Sign in</a> as &lt;b&gt;Ann&lt;/b&gt; &amp; co</rai-placeholder>'
    '<rai-placeholder widget="custom" widget-id="w-1"></rai-placeholder></main>'
)
CONTEXT = {"channel": "general", "note": HOSTILE, "name": NAME}
DJANGO_PAGE = (
    "{% load rai_middleware %}<main>"
    '{% rai_widget "channel" channel_id=channel theme="dark" data_note=note %}'
    '<a href="/login">Sign in</a> as {{ name }}{% end_rai_widget %}'
    '{% rai_widget "custom" widget_id="w-1" only %}</main>'
)
JINJA_PAGE = (
    '{% set fallback %}<a href="/login">Sign in</a> as {{ name }}{% endset %}<main>'
    '{{ rai_widget("channel", fallback, channel_id=channel, theme="dark", data_note=note) }}'
    '{{ rai_widget("custom", widget_id="w-1") }}</main>'
)
# The anonymous visitor's page, and the signed-in visitor's without the scripts.
ANONYMOUS = '<main><a href="/login">Sign in</a> as &lt;b&gt;Ann&lt;/b&gt; &amp; co</main>'
COMMUNITY = "community-123"
USER = {"data-customer-id": "c-42", "data-email": "ann@example.com"}
SCRIPTS = re.compile(r"<script\b.*?</script>", re.DOTALL)
TOKEN = re.compile(r'embed-token="([^"]+)"')


def signed_in_page(token: str) -> str:
    return (
        '<main><div id="returning-ai-widget-1"><rai-channel-widget'
        f' community-id="{COMMUNITY}" channel-id="general" theme="dark"'
        f' data-note="{HOSTILE_ESCAPED}" embed-token="{token}"></rai-channel-widget></div>'
        '<div id="returning-ai-widget-2"><rai-custom-widget'
        f' community-id="{COMMUNITY}" widget-id="w-1" embed-token="{token}">'
        "</rai-custom-widget></div></main>"
    )


def assert_widgets(body: str, fake: FakeReturningAI) -> None:
    """The page holds both widgets, with one token of the fake for USER, minted once."""
    tokens = TOKEN.findall(body)
    assert len(tokens) == 2 and tokens[0] == tokens[1], body
    assert SCRIPTS.sub("", body) == signed_in_page(tokens[0])
    assert len(SCRIPTS.findall(body)) == 2
    claims = fake.decode(tokens[0])
    assert {name: claims[name] for name in USER} == USER
    assert fake.calls == 1
    assert "demo-access-key" not in body
    assert "rai-placeholder" not in body


# -- the writer both helpers use ----------------------------------------------------------


def test_writer_writes_widget_attributes_in_order_and_the_fallback() -> None:
    html = PlaceholderWriter().write(
        "Store ", [("theme", "dark"), ("channel_id", 7), ("height", 1.5)], "Sign in"
    )
    assert html == (
        '<rai-placeholder widget="store" theme="dark" channel-id="7" height="1.5">'
        "Sign in</rai-placeholder>"
    )


def test_writer_without_fallback_writes_an_empty_placeholder() -> None:
    assert PlaceholderWriter().write("custom", [("widget_id", "abc")]) == (
        '<rai-placeholder widget="custom" widget-id="abc"></rai-placeholder>'
    )


def test_writer_escapes_every_value_and_a_text_fallback() -> None:
    html = PlaceholderWriter().write("store", [("data_x", HOSTILE)], HOSTILE)
    assert html == (
        f'<rai-placeholder widget="store" data-x="{HOSTILE_ESCAPED}">'
        f"{HOSTILE_ESCAPED}</rai-placeholder>"
    )


class Safe(str):
    """A string marked safe, as Jinja2's Markup and Django's SafeString are."""

    def __html__(self) -> str:
        return str(self)


def test_writer_inserts_a_safe_fallback_as_html_and_escapes_a_safe_value() -> None:
    html = PlaceholderWriter().write(
        "store", [("title", Safe('Tom &amp; "Jerry"'))], Safe("<em>Sign in</em>")
    )
    # The safe value's text is Tom & "Jerry": written once escaped, never raw.
    assert html == (
        '<rai-placeholder widget="store" title="Tom &amp; &quot;Jerry&quot;">'
        "<em>Sign in</em></rai-placeholder>"
    )


def test_writer_true_is_an_empty_value_false_and_none_are_left_out() -> None:
    html = PlaceholderWriter().write(
        "store", [("data_on", True), ("data_off", False), ("data_none", None), ("x", 0)]
    )
    assert html == '<rai-placeholder widget="store" data-on="" x="0"></rai-placeholder>'


@pytest.mark.parametrize(
    ("keyword", "message"),
    [
        ("Theme", "did you mean 'theme'"),
        ("9lives", "must start with a letter"),
        ("_private", "must start with a letter"),
        ("on click", "not a valid attribute name"),
        ('x"><script', "not a valid attribute name"),
        ("é", "not a valid attribute name"),
        ("", "not a valid attribute name"),
        ("widget", "the widget is the helper's first argument"),
        ("embed_token", "embed-token is the middleware's"),
    ],
)
def test_invalid_attribute_names_are_refused(keyword: str, message: str) -> None:
    with pytest.raises(PlaceholderError, match=re.escape(message)):
        PlaceholderWriter().write("store", [(keyword, "v")])


def test_attribute_name_refuses_what_is_no_string() -> None:
    with pytest.raises(PlaceholderError, match="is not a string"):
        attribute_name(3)  # type: ignore[arg-type]
    assert attribute_name("data_channel_id") == "data-channel-id"


def test_an_attribute_given_twice_is_refused() -> None:
    with pytest.raises(PlaceholderError, match="'channel-id' is given twice"):
        PlaceholderWriter().write("channel", [("channel_id", "a"), ("channel_id", "b")])


@pytest.mark.parametrize("widget", ["stroe", "", None, 3, "store-widget", '"><x'])
def test_unknown_widgets_are_refused(widget: Any) -> None:
    with pytest.raises(PlaceholderError, match=r"unknown widget .*; the widgets are: channel, "):
        PlaceholderWriter().write(widget)


def test_a_fallback_holding_the_end_tag_is_refused() -> None:
    writer = PlaceholderWriter()
    for inner in ("</rai-placeholder>", "x</RAI-Placeholder >", "</rai-placeholder/>"):
        with pytest.raises(PlaceholderError, match="would end the placeholder early"):
            writer.write("store", (), Safe(inner))
    # As text it is harmless (escaped), and a longer tag name is another tag.
    assert writer.write("store", (), "</rai-placeholder>").endswith(
        "&lt;/rai-placeholder&gt;</rai-placeholder>"
    )
    assert writer.write("store", (), Safe("</rai-placeholders>")).endswith(
        "</rai-placeholders></rai-placeholder>"
    )


def test_writer_uses_the_configured_tag_and_widgets() -> None:
    writer = PlaceholderWriter("X-RAI", {"Shop": "my-shop-widget"})
    assert writer.write("shop", [("a", "b")]) == '<x-rai widget="shop" a="b"></x-rai>'
    with pytest.raises(PlaceholderError, match="unknown widget 'store'; the widgets are: shop"):
        writer.write("store")
    assert repr(writer) == "PlaceholderWriter(tag='x-rai', widgets=['shop'])"


@pytest.mark.parametrize(
    ("tag", "widgets", "message"),
    [
        ("rai placeholder", None, "placeholder_tag must be an ASCII tag name"),
        ("<x>", None, "placeholder_tag must be an ASCII tag name"),
        (None, {}, "widgets must be a non-empty mapping"),
        (None, {"store": "bad element"}, "widgets['store'] must be an ASCII tag name"),
    ],
)
def test_invalid_tag_or_widgets_are_configuration_errors(
    tag: Any, widgets: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        PlaceholderWriter(tag, widgets)


# -- Jinja2 -------------------------------------------------------------------------------


def jinja_env(**install_options: Any) -> Any:
    need("jinja2")
    import jinja2

    from rai_middleware.jinja import install

    env = jinja2.Environment(autoescape=True)
    install(env, **install_options)
    return env


def test_jinja_global_writes_the_placeholder_as_markup() -> None:
    env = jinja_env()
    assert env.from_string(JINJA_PAGE).render(CONTEXT) == PLACEHOLDERS
    from markupsafe import Markup

    result = env.globals["rai_widget"]("store", "<b>text</b>", theme="dark")
    assert isinstance(result, Markup)
    assert result == (
        '<rai-placeholder widget="store" theme="dark">&lt;b&gt;text&lt;/b&gt;</rai-placeholder>'
    )
    assert env.globals["rai_widget"]("store", Markup("<b>html</b>")) == (
        '<rai-placeholder widget="store"><b>html</b></rai-placeholder>'
    )


def test_jinja_install_returns_the_global_and_takes_the_tag() -> None:
    need("jinja2")
    import jinja2

    from rai_middleware.jinja import install

    env = jinja2.Environment(autoescape=True)
    rai_widget = install(env, tag="x-rai", widgets={"shop": "my-shop-widget"})
    assert env.globals["rai_widget"] is rai_widget
    page = env.from_string('{{ rai_widget("shop", "Sign in", item_id=5) }}').render()
    assert page == '<x-rai widget="shop" item-id="5">Sign in</x-rai>'


def test_jinja_refuses_invalid_names_while_rendering() -> None:
    env = jinja_env()
    with pytest.raises(PlaceholderError, match="unknown widget 'nope'"):
        env.from_string('{{ rai_widget("nope") }}').render()
    with pytest.raises(PlaceholderError, match="did you mean 'channelid'"):
        env.from_string('{{ rai_widget("channel", channelId="x") }}').render()


def test_jinja_install_refuses_what_is_no_environment() -> None:
    need("jinja2")
    from rai_middleware.jinja import install

    with pytest.raises(TypeError, match=r"templates\.env for Starlette's Jinja2Templates"):
        install(object())
    with pytest.raises(ConfigurationError, match="placeholder_tag"):
        jinja_env(tag="not a tag")


# -- Django -------------------------------------------------------------------------------


@pytest.fixture
def django_engine() -> Any:
    need("django")
    from django.template import Engine

    from tests.test_django import configure_django

    configure_django()
    return Engine(libraries={"rai_middleware": LIBRARY})


def render_django(engine: Any, source: str, context: dict[str, Any] | None = None) -> str:
    from django.template import Context

    return str(engine.from_string(source).render(Context(context or {})))


def test_django_tag_writes_the_placeholder(django_engine: Any) -> None:
    assert render_django(django_engine, DJANGO_PAGE, CONTEXT) == PLACEHOLDERS


def test_django_tag_takes_a_variable_widget_and_autoescapes_the_fallback(
    django_engine: Any,
) -> None:
    source = (
        "{% load rai_middleware %}"
        "{% rai_widget kind data_on=True data_off=None %}{{ name }}{% end_rai_widget %}"
    )
    assert render_django(django_engine, source, {"kind": "Store", "name": NAME}) == (
        '<rai-placeholder widget="store" data-on="">&lt;b&gt;Ann&lt;/b&gt; &amp; co'
        "</rai-placeholder>"
    )


def test_django_tag_reads_the_tag_and_widgets_from_settings(django_engine: Any) -> None:
    from django.test import override_settings

    source = '{% load rai_middleware %}{% rai_widget "shop" only %}'
    rai = {"placeholder_tag": "x-rai", "widgets": {"shop": "my-shop-widget"}}
    with override_settings(RETURNING_AI=rai):
        assert render_django(django_engine, source) == '<x-rai widget="shop"></x-rai>'
        assert render_django(django_engine, source) == '<x-rai widget="shop"></x-rai>'
    with pytest.raises(PlaceholderError, match="unknown widget 'shop'"):
        render_django(django_engine, source)
    not_a_dict = override_settings(RETURNING_AI=["not", "a", "dict"])
    with not_a_dict, pytest.raises(ConfigurationError, match="RETURNING_AI must be a dict"):
        render_django(django_engine, source)


def test_django_tag_keeps_a_few_configurations(django_engine: Any) -> None:
    from django.test import override_settings

    from rai_middleware.django.templatetags import rai_middleware as tags

    source = '{% load rai_middleware %}{% rai_widget "store" only %}'
    for number in range(10):
        with override_settings(RETURNING_AI={"placeholder_tag": f"tag{number}"}):
            assert render_django(django_engine, source) == (
                f'<tag{number} widget="store"></tag{number}>'
            )
    assert 1 <= len(tags._writers) <= 8


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% rai_widget %}{% end_rai_widget %}", "needs the widget first"),
        ("{% rai_widget only %}", "needs the widget first"),
        ('{% rai_widget theme="x" only %}', "needs the widget first"),
        ('{% rai_widget "store" "extra" only %}', "then name=value attributes"),
        ('{% rai_widget "store" Theme="x" only %}', "did you mean 'theme'"),
        ('{% rai_widget "store" embed_token="x" only %}', "embed-token is the middleware's"),
        ('{% rai_widget "store" a="1" a="2" only %}', "attribute 'a' is given twice"),
        ('{% rai_widget "store" %}fallback', "end_rai_widget"),
    ],
)
def test_django_tag_syntax_errors(django_engine: Any, source: str, message: str) -> None:
    from django.template import TemplateSyntaxError

    with pytest.raises(TemplateSyntaxError, match=re.escape(message)):
        django_engine.from_string("{% load rai_middleware %}" + source)


def test_django_unknown_widget_and_nested_placeholder_fail_when_rendering(
    django_engine: Any,
) -> None:
    with pytest.raises(PlaceholderError, match="unknown widget 'stroe'"):
        render_django(django_engine, '{% load rai_middleware %}{% rai_widget "stroe" only %}')
    nested = (
        '{% load rai_middleware %}{% rai_widget "store" %}'
        '{% rai_widget "channel" only %}{% end_rai_widget %}'
    )
    with pytest.raises(PlaceholderError, match="cannot hold another one"):
        render_django(django_engine, nested)


# -- round trips through the real middleware ---------------------------------------------


def identify_header(headers: Any) -> dict[str, str] | None:
    return dict(USER) if headers.get("x-user") == "ann" else None


def django_get(stack: str) -> Any:
    """GET through Django's WSGI handler (sync) or its ASGI handler (async)."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient, Client

    if stack == "sync":
        return Client().get
    return async_to_sync(AsyncClient().get)


@pytest.mark.parametrize("stack", ["sync", "async"])
def test_django_round_trip(fake_returning_ai: FakeReturningAI, stack: str) -> None:
    need("django")
    from django.http import HttpResponse
    from django.template import loader
    from django.test import override_settings
    from django.urls import path

    from tests.test_django import configure_django

    configure_django()

    def page(request: Any) -> Any:
        return HttpResponse(loader.render_to_string("page.html", CONTEXT, request))

    urlconf = ModuleType("urls")  # hashable, as Django's URL resolver cache needs
    urlconf.urlpatterns = [path("", page)]  # type: ignore[attr-defined]

    templates = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "OPTIONS": {
                "loaders": [("django.template.loaders.locmem.Loader", {"page.html": DJANGO_PAGE})]
            },
        }
    ]
    with fake_returning_ai.sync_client() as upstream:
        settings = {
            # {% load rai_middleware %} is found through the app, as on a user's site.
            "INSTALLED_APPS": [
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "rai_middleware.django",
            ],
            "TEMPLATES": templates,
            "ROOT_URLCONF": urlconf,
            "MIDDLEWARE": ["rai_middleware.django.ReturningAIMiddleware"],
            "RETURNING_AI": {
                "community_id": COMMUNITY,
                "access_id": "demo-access-id",
                "access_key": "demo-access-key",
                "http_client": upstream,
                "identify": lambda request: identify_header(request.headers),
            },
        }
        with override_settings(**settings):
            anonymous = django_get(stack)("/")
            assert anonymous.content.decode() == ANONYMOUS
            assert fake_returning_ai.calls == 0
            signed_in = django_get(stack)("/", headers={"X-User": "ann"})
    assert signed_in.status_code == 200
    assert_widgets(signed_in.content.decode(), fake_returning_ai)


def test_django_round_trip_with_a_custom_tag(fake_returning_ai: FakeReturningAI) -> None:
    need("django")
    from django.http import HttpResponse
    from django.template import Context, Engine
    from django.test import Client, override_settings
    from django.urls import path

    from tests.test_django import configure_django

    configure_django()
    engine = Engine(
        libraries={"rai_middleware": "rai_middleware.django.templatetags.rai_middleware"}
    )
    source = '{% load rai_middleware %}{% rai_widget "store" only %}'

    def page(request: Any) -> Any:
        return HttpResponse(engine.from_string(source).render(Context()))

    urlconf = ModuleType("urls")  # hashable, as Django's URL resolver cache needs
    urlconf.urlpatterns = [path("", page)]  # type: ignore[attr-defined]

    with fake_returning_ai.sync_client() as upstream:
        rai = {
            "community_id": COMMUNITY,
            "access_id": "demo-access-id",
            "access_key": "demo-access-key",
            "http_client": upstream,
            "identify": lambda request: dict(USER),
            "placeholder_tag": "x-rai",
        }
        middleware = ["rai_middleware.django.ReturningAIMiddleware"]
        with override_settings(ROOT_URLCONF=urlconf, MIDDLEWARE=middleware, RETURNING_AI=rai):
            body = Client().get("/").content.decode()
    token = TOKEN.findall(body)[0]
    assert SCRIPTS.sub("", body) == (
        f'<div id="returning-ai-widget-1"><rai-store-widget community-id="{COMMUNITY}"'
        f' embed-token="{token}"></rai-store-widget></div>'
    )


@pytest.mark.anyio
async def test_starlette_jinja2templates_round_trip(fake_returning_ai: FakeReturningAI) -> None:
    need("jinja2")
    import jinja2
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route
    from starlette.templating import Jinja2Templates

    from rai_middleware.jinja import install

    env = jinja2.Environment(loader=jinja2.DictLoader({"page.html": JINJA_PAGE}), autoescape=True)
    templates = Jinja2Templates(env=env)
    install(templates.env)  # the one line

    async def page(request: Request) -> Any:
        return templates.TemplateResponse(request, "page.html", CONTEXT)

    async with fake_returning_ai.client() as upstream:
        app = ReturningAIMiddleware(
            Starlette(routes=[Route("/", page)]),
            community_id=COMMUNITY,
            access_id="demo-access-id",
            access_key="demo-access-key",
            http_client=upstream,
            identify=lambda scope: identify_header(
                {name.decode(): value.decode() for name, value in scope["headers"]}
            ),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            anonymous = await client.get("/")
            assert anonymous.text == ANONYMOUS
            assert fake_returning_ai.calls == 0
            signed_in = await client.get("/", headers={"X-User": "ann"})
    assert signed_in.status_code == 200
    assert_widgets(signed_in.text, fake_returning_ai)


@pytest.fixture
def flask_app(fake_returning_ai: FakeReturningAI) -> Iterator[Any]:
    need("flask")
    from flask import Flask, render_template_string

    from rai_middleware.flask import ReturningAI
    from rai_middleware.jinja import install

    app = Flask(__name__)
    install(app.jinja_env)  # the one line

    @app.get("/")
    def page() -> str:
        return render_template_string(JINJA_PAGE, **CONTEXT)

    with fake_returning_ai.sync_client() as upstream:
        ReturningAI(
            app,
            community_id=COMMUNITY,
            access_id="demo-access-id",
            access_key="demo-access-key",
            http_client=upstream,
            identify=lambda request: identify_header(request.headers),
        )
        yield app
        ReturningAI.core(app).close()


def test_flask_round_trip(flask_app: Any, fake_returning_ai: FakeReturningAI) -> None:
    client = flask_app.test_client()
    anonymous = client.get("/")
    assert anonymous.get_data(as_text=True) == ANONYMOUS
    assert fake_returning_ai.calls == 0
    signed_in = client.get("/", headers={"X-User": "ann"})
    assert signed_in.status_code == 200
    assert_widgets(signed_in.get_data(as_text=True), fake_returning_ai)


def test_round_trip_with_the_upstream_failing_serves_the_fallback(
    flask_app: Any, fake_returning_ai: FakeReturningAI
) -> None:
    fake_returning_ai.fail_always(status=500, identity={"data-customer-id": "c-42"})
    page = flask_app.test_client().get("/", headers={"X-User": "ann"})
    assert page.get_data(as_text=True) == ANONYMOUS
    assert fake_returning_ai.calls == 1


@pytest.mark.anyio
async def test_jinja_global_in_an_async_environment_as_quart_uses() -> None:
    need("jinja2")
    import jinja2

    from rai_middleware.jinja import install

    env = jinja2.Environment(autoescape=True, enable_async=True)
    install(env)
    page = await env.from_string('{{ rai_widget("store", "<Sign in>") }}').render_async()
    assert page == '<rai-placeholder widget="store">&lt;Sign in&gt;</rai-placeholder>'
