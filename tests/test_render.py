"""Rendering: attribute parsing, widget markup, the script tags and the refresh script."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rai_middleware._config import build_settings
from rai_middleware._identity import Identity
from rai_middleware._modes import PageAuth, PageContext, Widget
from rai_middleware._modes.access_key import (
    REFRESH_SCRIPT,
    AccessKeyMode,
    WidgetMarkup,
    render_scripts,
    render_widget,
)
from rai_middleware._render import (
    Memo,
    container_id,
    parse_attributes,
    read_placeholder,
    widget_attributes,
)
from rai_middleware._scanner import scan
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID

_MODE_OPTIONS = {
    "community_id": "community-1",
    "access_id": ACCESS_ID,
    "access_key": ACCESS_KEY,
    "secret_key": "s" * 32,
}

# -- parse_attributes ------------------------------------------------------------------------


def test_parse_double_single_unquoted_and_valueless_attributes() -> None:
    raw = b' widget="channel" channel-id=\'abc\' theme=dark hidden height = "700px"'
    assert parse_attributes(raw, "utf-8") == [
        ("widget", "channel"),
        ("channel-id", "abc"),
        ("theme", "dark"),
        ("hidden", ""),
        ("height", "700px"),
    ]


def test_parse_empty_attribute_bytes() -> None:
    assert parse_attributes(b"", "utf-8") == []
    assert parse_attributes(b"  \n\t ", "utf-8") == []


def test_parse_empty_values() -> None:
    assert parse_attributes(b" a=\"\" b='' c", "utf-8") == [("a", ""), ("b", ""), ("c", "")]


def test_parse_attributes_without_space_between_them() -> None:
    assert parse_attributes(b" x=\"a\"y='b'z=c", "utf-8") == [("x", "a"), ("y", "b"), ("z", "c")]


def test_parse_keeps_whitespace_and_other_quote_inside_quoted_values() -> None:
    raw = b' title="it\'s  a\nb > c" alt=\'say "hi"\''
    assert parse_attributes(raw, "utf-8") == [("title", "it's  a\nb > c"), ("alt", 'say "hi"')]


def test_parse_decodes_entities() -> None:
    raw = b' title="a &amp; b &quot;q&quot; &lt;x&gt; &#39;s &#x41;&nbsp;" t2=&amp;amp;'
    assert parse_attributes(raw, "utf-8") == [
        ("title", 'a & b "q" <x> \'s A\xa0'),
        ("t2", "&amp;"),
    ]


def test_parse_duplicate_attribute_first_one_wins() -> None:
    raw = b" widget=channel theme=dark WIDGET=milestone theme=light widget"
    assert parse_attributes(raw, "utf-8") == [("widget", "channel"), ("theme", "dark")]


def test_parse_lowercases_names_but_not_values() -> None:
    raw = b' Channel-ID="AbC" WIDGET=Channel'
    assert parse_attributes(raw, "utf-8") == [("channel-id", "AbC"), ("widget", "Channel")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b' "foo=1 ok=3', [("ok", "3")]),
        (b" a<b=2 ok=3", [("ok", "3")]),
        (b' a"b=1 x', [("x", "")]),
        (b" it's=1 x=2", [("x", "2")]),
        (b" 1abc=1 -x=2 x.y=3", [("x.y", "3")]),
        (b" on(click)=1 a&b=2 ok", [("ok", "")]),
        (b" caf\xc3\xa9=1 ok=2", [("ok", "2")]),
        (b" \xe9t\xe9=1 ok=2", [("ok", "2")]),
        (b" data-x_y:z.w=1", [("data-x_y:z.w", "1")]),
        (b" _a=1 :b=2", [("_a", "1"), (":b", "2")]),
    ],
)
def test_parse_drops_names_that_are_not_plain_attribute_names(
    raw: bytes, expected: list[tuple[str, str]]
) -> None:
    # ``"foo`` and ``a"b`` are names in HTML (parse errors, but names): dropped whole, not
    # read as ``foo`` or ``a`` + ``b``.
    assert parse_attributes(raw, "utf-8") == expected


def test_parse_skips_slashes_between_attributes() -> None:
    assert parse_attributes(b"/widget=a / x=1/", "utf-8") == [("widget", "a"), ("x", "1/")]


@pytest.mark.parametrize(
    ("raw", "encoding", "expected"),
    [
        (b' title="caf\xe9"', "latin-1", "caf\xe9"),
        (b' title="caf\xc3\xa9"', "utf-8", "caf\xe9"),
        (b' title="caf\xc3\xa9"', "latin-1", "caf\xc3\xa9"),
        (b' title="\x80 \x96"', "windows-1252", "\u20ac \u2013"),
        (b' title="caf\xe9"', "utf-8", "caf\ufffd"),
        (b" title=\xff\xfe", "utf-8", "\ufffd\ufffd"),
    ],
)
def test_parse_decodes_values_with_the_page_encoding(
    raw: bytes, encoding: str, expected: str
) -> None:
    assert parse_attributes(raw, encoding) == [("title", expected)]


def test_parse_the_attributes_the_scanner_reports() -> None:
    page = b"<rai-placeholder widget=\"channel\" title='a>b' hidden>fb</rai-placeholder>"
    (placeholder,) = scan(page)
    assert not isinstance(placeholder, bytes)
    assert parse_attributes(placeholder.attributes, "utf-8") == [
        ("widget", "channel"),
        ("title", "a>b"),
        ("hidden", ""),
    ]


# -- render_widget ---------------------------------------------------------------------------

ISSUE_ATTRIBUTES = [
    ("widget", "channel"),
    ("channel-id", "abc"),
    ("theme", "dark"),
    ("height", "700px"),
]


def test_render_widget_issue_example() -> None:
    html = render_widget(
        "rai-channel-widget", ISSUE_ATTRIBUTES, index=1, token="T", community_id="C"
    )
    assert html == (
        '<div id="returning-ai-widget-1"><rai-channel-widget community-id="C" channel-id="abc"'
        ' theme="dark" height="700px" embed-token="T"></rai-channel-widget></div>'
    )


def test_render_widget_from_parsed_placeholder() -> None:
    attributes = parse_attributes(
        b' widget="channel" channel-id="abc" theme="dark" height="700px"', "utf-8"
    )
    assert render_widget(
        "rai-channel-widget", attributes, index=1, token="T", community_id="C"
    ) == render_widget("rai-channel-widget", ISSUE_ATTRIBUTES, index=1, token="T", community_id="C")


def test_container_id_and_index() -> None:
    assert container_id(7) == "returning-ai-widget-7"
    assert render_widget("rai-x", [], index=3, token="t", community_id="c") == (
        '<div id="returning-ai-widget-3"><rai-x community-id="c" embed-token="t"></rai-x></div>'
    )


def test_render_widget_keeps_placeholder_community_id_in_its_position() -> None:
    attributes = [("theme", "dark"), ("community-id", "P"), ("height", "1px")]
    assert render_widget("rai-x", attributes, index=2, token="T", community_id="C") == (
        '<div id="returning-ai-widget-2"><rai-x theme="dark" community-id="P" height="1px"'
        ' embed-token="T"></rai-x></div>'
    )


def test_render_widget_drops_placeholder_embed_token_and_widget() -> None:
    attributes = [("embed-token", "EVIL"), ("widget", "channel"), ("theme", "dark")]
    html = render_widget("rai-x", attributes, index=1, token="T", community_id="C")
    assert html == (
        '<div id="returning-ai-widget-1"><rai-x community-id="C" theme="dark"'
        ' embed-token="T"></rai-x></div>'
    )
    assert "EVIL" not in html


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ('"><script>alert(1)</script>', "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("' onload='x", "&#x27; onload=&#x27;x"),
        ("a&b", "a&amp;b"),
        ("&amp;", "&amp;amp;"),
        ("<rai-placeholder widget=x/>", "&lt;rai-placeholder widget=x/&gt;"),
        ("caf\xe9 \u20ac", "caf\xe9 \u20ac"),
    ],
)
def test_render_widget_escapes_attribute_values(value: str, escaped: str) -> None:
    html = render_widget("rai-x", [("title", value)], index=1, token="T", community_id="C")
    assert html == (
        f'<div id="returning-ai-widget-1"><rai-x community-id="C" title="{escaped}"'
        ' embed-token="T"></rai-x></div>'
    )


def test_render_widget_escapes_token_and_community_id() -> None:
    html = render_widget(
        "rai-x", [], index=1, token='t"><script>x</script>', community_id="c' onclick='y"
    )
    assert html == (
        '<div id="returning-ai-widget-1"><rai-x community-id="c&#x27; onclick=&#x27;y"'
        ' embed-token="t&quot;&gt;&lt;script&gt;x&lt;/script&gt;"></rai-x></div>'
    )


def test_render_widget_escapes_placeholder_community_id() -> None:
    html = render_widget("rai-x", [("community-id", '"><b>')], index=1, token="T", community_id="C")
    assert html == (
        '<div id="returning-ai-widget-1"><rai-x community-id="&quot;&gt;&lt;b&gt;"'
        ' embed-token="T"></rai-x></div>'
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["title", "theme", "community-id", "embed-token", "widget"]),
            st.text(),
        ),
        max_size=4,
        unique_by=lambda attribute: attribute[0],
    ),
    st.text(),
    st.text(),
)
def test_rendered_widget_never_lets_a_value_out_of_its_quotes(
    attributes: list[tuple[str, str]], token: str, community_id: str
) -> None:
    rendered = render_widget("rai-x", attributes, index=1, token=token, community_id=community_id)
    # Escaped values hold no quote or angle bracket: blanking them leaves the fixed markup.
    skeleton = re.sub(r'="[^"<>]*"', '=""', rendered)
    kept = [(name, value) for name, value in attributes if name not in {"widget", "embed-token"}]
    if all(name != "community-id" for name, _ in attributes):
        kept.insert(0, ("community-id", community_id))
    kept.append(("embed-token", token))
    names = "".join(f' {name}=""' for name, _ in kept)
    assert skeleton == f'<div id=""><rai-x{names}></rai-x></div>'
    values = [html.unescape(value) for value in re.findall(r'="([^"]*)"', rendered)]
    assert values == ["returning-ai-widget-1", *(value for _, value in kept)]


# -- render_scripts --------------------------------------------------------------------------


def markup(**changes: str | None) -> WidgetMarkup:
    values: dict[str, str | None] = {
        "token": "TOKEN",
        "ticket": "TICKET",
        "community_id": "C",
        "sdk_url": "https://cdn.example/sdk.js",
        "refresh_url": "/_rai/token",
        "nonce": None,
    }
    values.update(changes)
    return WidgetMarkup(
        token=str(values["token"]),
        ticket=str(values["ticket"]),
        community_id=str(values["community_id"]),
        sdk_url=str(values["sdk_url"]),
        refresh_url=str(values["refresh_url"]),
        nonce=values["nonce"],
    )


def test_render_scripts_without_nonce() -> None:
    assert render_scripts(markup()) == (
        '<script src="https://cdn.example/sdk.js" data-turbo-eval="false"></script>'
        '<script data-rai-ticket="TICKET" data-rai-endpoint="/_rai/token">'
        + REFRESH_SCRIPT
        + "</script>"
    )


def test_render_scripts_with_empty_nonce_writes_no_nonce() -> None:
    assert render_scripts(markup(nonce="")) == render_scripts(markup())


def test_render_scripts_with_nonce() -> None:
    assert render_scripts(markup(nonce="n0nce")) == (
        '<script src="https://cdn.example/sdk.js" nonce="n0nce" data-turbo-eval="false"></script>'
        '<script nonce="n0nce" data-rai-ticket="TICKET" data-rai-endpoint="/_rai/token">'
        + REFRESH_SCRIPT
        + "</script>"
    )


def test_render_scripts_escapes_every_value() -> None:
    html = render_scripts(
        markup(
            sdk_url='https://x/"><script>a()</script>',
            ticket="t'><rai-placeholder widget=x/>",
            refresh_url="/r?a=1&b=2",
            nonce='n"x',
        )
    )
    assert html == (
        '<script src="https://x/&quot;&gt;&lt;script&gt;a()&lt;/script&gt;" nonce="n&quot;x"'
        ' data-turbo-eval="false"></script><script nonce="n&quot;x"'
        ' data-rai-ticket="t&#x27;&gt;&lt;rai-placeholder widget=x/&gt;"'
        ' data-rai-endpoint="/r?a=1&amp;b=2">' + REFRESH_SCRIPT + "</script>"
    )
    assert "<rai-placeholder" not in html


def test_render_scripts_in_a_fragment_leave_the_sdk_to_the_runtime() -> None:
    assert render_scripts(markup(), sdk=False) == (
        '<script data-rai-ticket="TICKET" data-rai-endpoint="/_rai/token">'
        + REFRESH_SCRIPT
        + "</script>"
    )


def test_render_scripts_does_not_write_the_token() -> None:
    assert "TOKEN" not in render_scripts(markup(token="TOKEN"))


def test_rendered_markup_never_contains_the_placeholder_tag() -> None:
    widget = render_widget(
        "rai-channel-widget", ISSUE_ATTRIBUTES, index=1, token="T", community_id="C"
    )
    scripts = render_scripts(markup(nonce="n"))
    assert "rai-placeholder" not in widget
    assert "rai-placeholder" not in scripts
    # A second rewriting layer finds nothing to do.
    page = (widget + scripts).encode()
    assert scan(page) == [page]


# -- widget_attributes -----------------------------------------------------------------------

WIDGETS = {"channel": "rai-channel-widget", "milestone": "rai-milestone-widget"}


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ([("widget", "channel")], ("channel", "rai-channel-widget")),
        ([("theme", "x"), ("widget", "milestone")], ("milestone", "rai-milestone-widget")),
        ([("widget", "Channel")], ("Channel", "rai-channel-widget")),
        ([("widget", "CHANNEL")], ("CHANNEL", "rai-channel-widget")),
        ([("widget", "  channel\n")], ("  channel\n", "rai-channel-widget")),
        ([("widget", "\tMileStone ")], ("\tMileStone ", "rai-milestone-widget")),
        ([("widget", "unknown")], ("unknown", None)),
        ([("widget", "chan nel")], ("chan nel", None)),
        ([("widget", "")], ("", None)),
        ([("widget", "  ")], ("  ", None)),
        ([("widget", "channel"), ("widget", "milestone")], ("channel", "rai-channel-widget")),
        ([("theme", "dark")], (None, None)),
        ([], (None, None)),
    ],
)
def test_widget_attributes(
    attributes: list[tuple[str, str]], expected: tuple[str | None, str | None]
) -> None:
    assert widget_attributes(attributes, WIDGETS) == expected


def test_widget_attributes_from_a_parsed_mixed_case_placeholder() -> None:
    attributes = parse_attributes(b' WIDGET=" Channel "', "utf-8")
    assert widget_attributes(attributes, WIDGETS) == (" Channel ", "rai-channel-widget")


# -- REFRESH_SCRIPT --------------------------------------------------------------------------


def test_refresh_script_cannot_end_its_script_element_early() -> None:
    assert "</script" not in REFRESH_SCRIPT.lower()
    assert "<!--" not in REFRESH_SCRIPT
    assert "<script" not in REFRESH_SCRIPT.lower()


def test_refresh_script_keeps_the_token_out_of_storage_and_urls() -> None:
    assert "localStorage" not in REFRESH_SCRIPT
    assert "sessionStorage" not in REFRESH_SCRIPT
    assert "document.cookie" not in REFRESH_SCRIPT


def test_refresh_script_posts_the_ticket_in_a_header() -> None:
    assert 'method:"POST"' in REFRESH_SCRIPT
    assert 'headers:{"X-RAI-Ticket":ticket}' in REFRESH_SCRIPT
    assert 'credentials:"same-origin"' in REFRESH_SCRIPT
    assert 'getAttribute("data-rai-ticket")' in REFRESH_SCRIPT
    assert 'getAttribute("data-rai-endpoint")' in REFRESH_SCRIPT
    assert "rai-placeholder" not in REFRESH_SCRIPT


# -- what is remembered between pages ----------------------------------------------------------


def test_memo_forgets_everything_when_full() -> None:
    memo: Memo[str, int] = Memo(3)
    for number, key in enumerate("abc"):
        assert memo.put(key, number) == number
    assert (memo.get("a"), memo.get("c"), len(memo)) == (0, 2, 3)
    memo.put("d", 3)
    assert (memo.get("a"), memo.get("d"), len(memo)) == (None, 3, 1)


def test_memo_repr_shows_no_key() -> None:
    memo: Memo[str, str] = Memo(8)
    memo.put("secret-token", "markup")
    assert repr(memo) == "Memo(1/8)"


def test_read_placeholder_keeps_attributes_immutable() -> None:
    written, element, attributes = read_placeholder(
        b' widget="Store" theme=dark', "utf-8", {"store": "rai-store-widget"}
    )
    assert (written, element) == ("Store", "rai-store-widget")
    assert attributes == (("widget", "Store"), ("theme", "dark"))


def test_widget_markup_is_remembered_per_token() -> None:
    mode = AccessKeyMode(build_settings(dict(_MODE_OPTIONS)))
    page, attributes = PageContext("/", "/_rai/embed-token"), (("widget", "store"),)
    widget = Widget("store", "rai-store-widget", attributes, 1, "p-1")
    alice = PageAuth(Identity({"data-x": "a"}, "ka"), "tok-alice", "ticket")
    bob = PageAuth(Identity({"data-x": "b"}, "kb"), "tok-bob", "ticket")
    first = mode.render(page, widget, alice)
    again = mode.render(page, Widget("store", "rai-store-widget", attributes, 2, "p-2"), alice)
    other = mode.render(page, widget, bob)
    assert first == (
        '<div id="returning-ai-widget-p-1"><rai-store-widget community-id="community-1" '
        'embed-token="tok-alice"></rai-store-widget></div>'
    )
    assert again == first.replace("p-1", "p-2")
    assert other == first.replace("tok-alice", "tok-bob")


def test_runtime_parts_are_shared_but_each_visitor_keeps_their_ticket_and_token() -> None:
    from tests.conftest import runtime_script

    mode = AccessKeyMode(build_settings(dict(_MODE_OPTIONS, community_id=COMMUNITY_ID)))
    scripts = []
    for ticket, token, expires_in in (("t-1", "tok-a", 900), ("t-2", "tok-b", 899)):
        page = PageContext("/", "/_rai/embed-token")
        page.scripts_written = True
        auth = PageAuth(Identity({"data-x": ticket}, ticket), token, ticket, expires_in)
        scripts.append(mode.render_runtime(page, auth).encode())
    assert scripts == [
        runtime_script(ticket="t-1", token="tok-a", expires_in=900, sdk_tag=True),
        runtime_script(ticket="t-2", token="tok-b", expires_in=899, sdk_tag=True),
    ]
