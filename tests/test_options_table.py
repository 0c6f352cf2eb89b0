"""The options table (``_options.OPTIONS``) agrees with everything that restates it.

``Options`` and ``Settings`` must be spelled out for mypy, and the table of docs/options.md (the
documentation site's options reference) is generated from the rows: after changing a row,
rewrite it with ``python -m tests.test_options_table``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from rai_middleware._config import (
    ADAPTER_KEYWORDS,
    MODES,
    Options,
    Secret,
    Settings,
    build_settings,
    option_names,
)
from rai_middleware._exceptions import ConfigurationError
from rai_middleware._identity import Identity
from rai_middleware._modes import PageAuth, PageContext, Widget
from rai_middleware._options import DEFAULT_SDK_URL, DEFAULT_WIDGETS, OPTIONS, SETTINGS, Option

OPTIONS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "options.md"
# The page's table: from its header row to the first line that is not a row.
OPTIONS_TABLE = re.compile(r"(?ms)^# Options\n.*?^(\| Option \|.*?\n)(?!\|)")

ACCESS = {"community_id": "c", "access_id": "i", "access_key": "k"}


def options_table() -> str:
    """docs/options.md's table, in markdown, from the rows (and the modes' requirements)."""
    lines = ["| Option | Type | Default | Meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        lines.append(
            f"| `{option.name}` | {option.type_text} | {_default_cell(option)} "
            f"| {option.doc}{_required_in(option.name)} |"
        )
    return "\n".join(lines) + "\n"


def _default_cell(option: Option) -> str:
    shown = option.default_text
    if shown is None and option.default is not None:
        shown = f"`{option.default}`"
    parts = [f"env `{option.env}`"] if option.env else []
    return ", else ".join([*parts, shown] if shown else parts)


def _required_in(name: str) -> str:
    modes = [f"`{mode.name}`" for mode in MODES.values() if name in mode.required]
    if not modes:
        return ""
    return f" Required in mode{'s' if len(modes) > 1 else ''} {', '.join(modes)}."


def _page_table() -> str:
    found = OPTIONS_TABLE.search(OPTIONS_PAGE.read_text(encoding="utf-8"))
    assert found, "docs/options.md has no table under '# Options'"
    return found.group(1)


# The table and what restates it. -------------------------------------------------------------


def test_docs_options_table_is_generated_from_the_rows() -> None:
    assert _page_table() == options_table(), "run: python -m tests.test_options_table"


def test_options_typeddict_names_the_settings_rows() -> None:
    assert Options.__optional_keys__ == SETTINGS.keys()
    assert not Options.__required_keys__


def test_settings_has_one_field_per_settings_row() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    # default_token_lifetime is no option: the upstream's answer decides it.
    assert fields == {*SETTINGS, "default_token_lifetime"}


def test_adapter_keywords_are_the_rows_without_a_check() -> None:
    assert {"identify", "http_client", "token_store", "clock"} == ADAPTER_KEYWORDS
    assert option_names() == {*SETTINGS, *ADAPTER_KEYWORDS}
    assert len(OPTIONS) == len(option_names()), "a name is in the table twice"


@pytest.mark.parametrize("option", [o for o in SETTINGS.values() if o.default is not None])
def test_each_default_passes_its_check_and_has_the_settings_type(option: Option) -> None:
    assert option.parse is not None
    assert option.parse(option.name, option.default) == option.default
    hint = typing.get_type_hints(Settings)[option.name]
    assert isinstance(option.default, typing.get_origin(hint) or hint)
    if option.default_text is not None and isinstance(option.default, (str, int, float)):
        # The documented note may add to a plain default ("(12 h)"), never contradict it.
        assert f"`{option.default}`" in option.default_text


def test_what_modes_require_has_an_environment_variable() -> None:
    for mode in MODES.values():
        for name in mode.required:
            assert SETTINGS[name].env, (mode.name, name)
        assert mode.key_seed is None or mode.key_seed in mode.required


def test_mode_row_lists_every_mode() -> None:
    assert all(f'`"{name}"`' in SETTINGS["mode"].type_text for name in MODES)


def test_environment_variables_are_distinct_and_prefixed() -> None:
    names = [o.env for o in OPTIONS if o.env]
    assert len(names) == len(set(names))
    assert all(name == "RAI_" + o.name.upper() for o in OPTIONS if (name := o.env))


# Building settings from the table. -----------------------------------------------------------


def test_defaults_come_from_the_rows() -> None:
    settings = build_settings(ACCESS, environ={})
    for name, option in SETTINGS.items():
        if option.default is not None:
            assert getattr(settings, name) == option.default, name
    assert settings.widgets is DEFAULT_WIDGETS
    assert settings.mode == "access_key"
    assert settings.access_key == Secret("k")
    assert settings.default_token_lifetime == 900.0


def test_none_is_the_same_as_not_given() -> None:
    given = dict.fromkeys(SETTINGS)
    assert build_settings({**given, **ACCESS}, environ={}) == build_settings(ACCESS, environ={})


def test_environment_fills_what_is_not_given() -> None:
    environ = {
        "RAI_COMMUNITY_ID": "env-c",
        "RAI_ACCESS_ID": "env-i",
        "RAI_ACCESS_KEY": " env-k ",
        "RAI_SECRET_KEY": "env-s",
        "RAI_API_BASE_URL": "http://127.0.0.1:9/",
        "RAI_WIDGETS_BASE_URL": "https://widgets.example/",
    }
    settings = build_settings({"access_key": "kw"}, environ=environ)
    assert settings.community_id == "env-c"
    assert settings.access_key == Secret("kw")
    assert settings.secret_key == Secret("env-s")
    assert settings.api_base_url == "http://127.0.0.1:9"
    assert settings.widgets_base_url == "https://widgets.example"
    assert build_settings({}, environ=environ).access_key == Secret("env-k")


def test_mode_drops_the_credentials_it_does_not_use() -> None:
    iframe = build_settings({"community_id": "c", "widget_api_key": "w"}, environ={})
    assert iframe.mode == "iframe"
    assert iframe.widget_api_key == Secret("w")
    assert iframe.access_key is None
    both = build_settings({**ACCESS, "widget_api_key": "w"}, environ={})
    assert both.mode == "access_key"
    assert both.widget_api_key is None
    attributes = build_settings({"mode": "attributes", **ACCESS}, environ={})
    assert (attributes.access_id, attributes.access_key) == (None, None)
    assert len(attributes.secret_key.reveal()) == 64


def test_secret_key_is_derived_from_the_modes_key() -> None:
    one = build_settings(ACCESS, environ={}).secret_key
    assert one == build_settings(ACCESS, environ={}).secret_key
    assert one != build_settings({**ACCESS, "access_key": "k2"}, environ={}).secret_key
    assert one.reveal() != "k"


# Errors. ------------------------------------------------------------------------------------


def test_unknown_option_lists_the_options() -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_settings({**ACCESS, "colour": "blue"}, environ={})
    message = str(caught.value)
    assert message.startswith("unknown option 'colour'; the options are: ")
    assert all(name in message for name in SETTINGS)


def test_unknown_option_says_which_it_likely_meant() -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_settings({**ACCESS, "acess_key": "typo"}, environ={})
    assert str(caught.value) == "unknown option 'acess_key' (did you mean 'access_key'?)"


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_settings({"timeout": 0, "tmeout": 1, "endpoint_prefix": "x"}, environ={})
    assert caught.value.problems == (
        "unknown option 'tmeout' (did you mean 'timeout'?)",
        "endpoint_prefix must be a path such as '/_rai', got 'x'",
        "timeout must be greater than 0, got 0",
        "community_id is required in mode='access_key': pass community_id=... to the "
        "middleware or set the RAI_COMMUNITY_ID environment variable",
        "access_id is required in mode='access_key': pass access_id=... to the "
        "middleware or set the RAI_ACCESS_ID environment variable",
        "access_key is required in mode='access_key': pass access_key=... to the "
        "middleware or set the RAI_ACCESS_KEY environment variable",
    )
    assert str(caught.value) == "6 configuration problems:" + "".join(
        f"\n  - {problem}" for problem in caught.value.problems
    )


@pytest.mark.parametrize(("mode", "name"), [(m, n) for m in MODES for n in MODES[m].required])
def test_missing_requirement_names_keyword_variable_and_mode(mode: str, name: str) -> None:
    options = {"mode": mode, **ACCESS, "widget_api_key": "w"}
    del options[name]
    with pytest.raises(ConfigurationError) as caught:
        build_settings(options, environ={})
    assert str(caught.value) == (
        f"{name} is required in mode={mode!r}: pass {name}=... to the middleware "
        f"or set the {SETTINGS[name].env} environment variable"
    )


def test_unknown_mode() -> None:
    with pytest.raises(ConfigurationError, match="mode must be one of 'access_key'"):
        build_settings({**ACCESS, "mode": "magic"}, environ={})


@pytest.mark.parametrize("option", [o for o in SETTINGS.values() if o.env])
def test_errors_name_the_keyword_and_the_variable(option: Option) -> None:
    assert option.env is not None
    others = {k: v for k, v in ACCESS.items() if k != option.name}
    for options, environ, subject in (
        ({option.name: " "}, {}, f"{option.name} "),
        ({option.name: 42}, {}, f"{option.name} "),
        ({}, {option.env: " "}, f"the {option.env} environment variable "),
    ):
        with pytest.raises(ConfigurationError) as caught:
            build_settings({**others, **options}, environ=environ)
        message = str(caught.value)
        assert message.startswith(subject), message


def test_errors_never_show_a_secret() -> None:
    secrets = {o.name: f"secret-{o.name}-value" for o in SETTINGS.values() if o.secret}
    for bad in ({"timeout": -1}, {"community_id": "a/b"}, {"mode": "magic"}, {"x": 1}):
        with pytest.raises(ConfigurationError) as caught:
            build_settings({**ACCESS, **secrets, **bad}, environ={})
        assert not any(value in str(caught.value) for value in secrets.values())


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("community_id", "a/b", "community_id must not contain '/'"),
        ("token_path", "v2/token", "token_path must be a path starting with '/'"),
        ("endpoint_prefix", "/rai/", "endpoint_prefix must not end with '/'"),
        ("placeholder_tag", "<x>", "placeholder_tag must be an ASCII tag name"),
        ("widgets", {}, "widgets must be a non-empty mapping"),
        ("widgets", {"x": "bad element"}, "widgets['x'] must be an ASCII tag name"),
        ("iframe_segments", {"x": "a/b"}, "iframe_segments['x'] must be a URL path segment"),
        ("timeout", 0, "timeout must be greater than 0"),
        ("timeout", float("inf"), "timeout must be a finite number"),
        ("min_token_ttl", -1, "min_token_ttl must be 0 or more"),
        ("cache_maxsize", True, "cache_maxsize must be a positive integer"),
        ("ticket_max_age", 1.5, "ticket_max_age must be a positive integer"),
        ("mode", 3, "mode must be a string"),
    ],
)
def test_checks_from_the_rows(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        build_settings({**ACCESS, name: value}, environ={})


# sdk_url and loader_url: an absolute URL or a same-origin path. ------------------------------


@pytest.mark.parametrize("name", ["sdk_url", "loader_url"])
@pytest.mark.parametrize(
    "value",
    [
        "/static/rai-widget.iife.js",
        "/rai.js?v=1.5.1#x",
        "/",
        "https://cdn.example/rai.js",
        "http://127.0.0.1:8000/rai.js",
    ],
)
def test_script_urls_may_be_absolute_or_same_origin_paths(name: str, value: str) -> None:
    assert getattr(build_settings({**ACCESS, name: value}, environ={}), name) == value


@pytest.mark.parametrize("name", ["sdk_url", "loader_url"])
@pytest.mark.parametrize(
    "value",
    [
        "//evil.example/rai.js",  # another host, scheme-relative
        "/\\evil.example/rai.js",  # browsers read a backslash as a slash
        "/\t/evil.example/rai.js",  # browsers drop tabs and newlines
        "/static/rai widget.js",
        '/static/"rai".js',
        "/static/'rai'.js",
        "/static/<rai>.js",
        "static/rai.js",
        "javascript:alert(1)",
        "ftp://cdn.example/rai.js",
        "",
    ],
)
def test_script_urls_refuse_other_hosts_and_markup(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name} must be an absolute http\\(s\\) URL or"):
        build_settings({**ACCESS, name: value}, environ={})


def test_same_origin_sdk_path_is_rendered_as_given() -> None:
    settings = build_settings({**ACCESS, "sdk_url": "/static/rai-widget.iife.js"}, environ={})
    auth = PageAuth(Identity.create({"data-x": "1"}, b"k"), token="tok", ticket="tic")
    page = PageContext("/", "/_rai/embed-token")
    assert (
        '<script src="/static/rai-widget.iife.js" data-turbo-eval="false">'
        in settings.auth.render_once(page, auth)
    )
    assert settings.sdk_url != DEFAULT_SDK_URL


def test_same_origin_loader_path_is_rendered_as_given() -> None:
    options = {"mode": "attributes", "loader_url": "/static/widget-loader.js"}
    settings = build_settings(options, environ={})
    widget = Widget("store", "rai-store-widget", [("widget-id", "W1")], 0)
    auth = PageAuth(Identity.create({"data-x": "1"}, b"k"))
    rendered = settings.auth.render(PageContext("/", "/_rai"), widget, auth)
    assert rendered is not None
    assert '<script src="/static/widget-loader.js"' in rendered


if __name__ == "__main__":
    # Rewrite docs/options.md's table from the rows.
    text = OPTIONS_PAGE.read_text(encoding="utf-8")
    table = _page_table()
    OPTIONS_PAGE.write_text(text.replace(table, options_table(), 1), encoding="utf-8")
    sys.stdout.write(f"{OPTIONS_PAGE}: options table rewritten\n")
