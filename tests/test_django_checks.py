"""Django system checks: rai_middleware.E001... and W001..., one test each."""

from __future__ import annotations

import os
from typing import Any

import pytest

if not os.environ.get("CI"):
    pytest.importorskip("django")

from django.core.checks import registry, run_checks
from django.test import override_settings

from rai_middleware._check import check_django
from rai_middleware.django import checks
from rai_middleware.django.apps import ReturningAIConfig
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID
from tests.test_django import configure_django

configure_django()

OURS = checks.MIDDLEWARE
AUTH = checks.AUTHENTICATION
GZIP = checks.GZIP
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
GOOD = {"community_id": COMMUNITY_ID, "access_id": ACCESS_ID, "access_key": ACCESS_KEY}
ORDER = [GZIP, SESSIONS, AUTH, OURS]


def found(returning_ai: Any = GOOD, middleware: list[str] = ORDER) -> list[tuple[str, str]]:
    with override_settings(RETURNING_AI=returning_ai, MIDDLEWARE=middleware):
        return [(m.id or "", m.msg) for m in checks.check_returning_ai()]


def test_a_good_configuration_has_no_message() -> None:
    assert found() == []


def test_e001_returning_ai_is_not_a_dict() -> None:
    assert found("community") == [
        ("rai_middleware.E001", "settings.RETURNING_AI must be a dict of options")
    ]


def test_e002_every_missing_credential() -> None:
    assert found({"community_id": COMMUNITY_ID}) == [
        (
            "rai_middleware.E002",
            "RETURNING_AI['access_id'] is required in mode='access_key': set it in "
            "settings.RETURNING_AI or set the RAI_ACCESS_ID environment variable",
        ),
        (
            "rai_middleware.E002",
            "RETURNING_AI['access_key'] is required in mode='access_key': set it in "
            "settings.RETURNING_AI or set the RAI_ACCESS_KEY environment variable",
        ),
    ]


def test_credentials_from_the_environment_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAI_ACCESS_ID", ACCESS_ID)
    monkeypatch.setenv("RAI_ACCESS_KEY", ACCESS_KEY)
    assert found({"community_id": COMMUNITY_ID}) == []


def test_e003_an_invalid_value() -> None:
    assert found({**GOOD, "timeout": 0, "endpoint_prefix": "rai"}) == [
        (
            "rai_middleware.E003",
            "RETURNING_AI['endpoint_prefix'] must be a path such as '/_rai', got 'rai'",
        ),
        ("rai_middleware.E003", "RETURNING_AI['timeout'] must be greater than 0, got 0"),
    ]


def test_e004_an_unknown_key_with_the_one_meant() -> None:
    assert found({**GOOD, "comunity_id": "x"}) == [
        (
            "rai_middleware.E004",
            "unknown option RETURNING_AI['comunity_id'] (did you mean "
            "RETURNING_AI['community_id']?)",
        )
    ]


def test_e005_identify_cannot_be_imported_or_called() -> None:
    [(code, message)] = found({**GOOD, "identify": "tests.nowhere:identify"})
    assert code == "rai_middleware.E005"
    assert message.startswith("RETURNING_AI['identify']: cannot import 'tests.nowhere:identify'")
    assert found({**GOOD, "identify": 42}) == [
        (
            "rai_middleware.E005",
            "RETURNING_AI['identify'] must be a callable taking the request, or its dotted path",
        )
    ]


def test_w001_listed_above_authentication() -> None:
    assert found(middleware=[GZIP, SESSIONS, OURS, AUTH]) == [
        (
            "rai_middleware.W001",
            f"{OURS} is listed above AuthenticationMiddleware: request.user is not set when it "
            "runs, so every visitor is anonymous and no widget is signed in",
        )
    ]


def identify_by_header(request: Any) -> dict[str, str] | None:  # pragma: no cover
    return None


def test_w001_not_raised_with_an_identify_of_ones_own() -> None:
    options = {**GOOD, "identify": f"{__name__}:identify_by_header"}
    assert found(options, middleware=[GZIP, SESSIONS, OURS, AUTH]) == []


def test_w002_gzip_listed_below() -> None:
    assert found(middleware=[SESSIONS, AUTH, OURS, GZIP]) == [
        (
            "rai_middleware.W002",
            f"GZipMiddleware is listed below {OURS}: pages reach the middleware compressed, "
            "and each is decompressed and compressed again to be rewritten",
        )
    ]


def test_w003_plain_http_upstream_and_short_key() -> None:
    options = {**GOOD, "api_base_url": "http://api.example", "secret_key": "short"}
    assert [code for code, _ in found(options)] == ["rai_middleware.W003"] * 2


def test_w004_middleware_not_listed() -> None:
    assert found(middleware=[SESSIONS, AUTH]) == [
        (
            "rai_middleware.W004",
            f"{OURS} is not in MIDDLEWARE: no placeholder is ever replaced",
        )
    ]


def test_no_message_shows_a_secret() -> None:
    options = {"access_id": "id-SECRET", "access_key": "key-SECRET", "secret_key": "s-SECRET"}
    messages = found({**options, "api_base_url": "http://x", "tmeout": 1}, middleware=[])
    assert messages
    assert not any("SECRET" in message for _, message in messages)


def test_ready_registers_the_checks_with_django() -> None:
    ReturningAIConfig.ready(None)  # type: ignore[arg-type]  # it uses nothing of self
    assert checks.check_returning_ai in registry.registry.get_checks()
    with override_settings(RETURNING_AI="x", MIDDLEWARE=ORDER):
        ids = [m.id for m in run_checks(tags=[checks.TAG])]
    assert ids == ["rai_middleware.E001"]


def test_no_returning_ai_setting_means_the_environment_alone() -> None:
    assert [code for code, _ in found(None)] == ["rai_middleware.E002"] * 3


def test_the_check_command_reads_the_configured_django_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Settings are configured in this process already: check_django reads them.
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.unused_settings")
    with override_settings(
        RETURNING_AI={**GOOD, "api_base_url": "http://api.example"}, MIDDLEWARE=ORDER
    ):
        report = check_django("tests.unused_settings", {"RAI_COLOUR": "x"})
    assert report.settings is not None
    assert report.errors == [
        "unknown environment variable RAI_COLOUR: rai-middleware does not read it (the "
        "variables are RAI_ACCESS_ID, RAI_ACCESS_KEY, RAI_API_BASE_URL, RAI_COMMUNITY_ID, "
        "RAI_SECRET_KEY, RAI_STRICT, RAI_WIDGETS_BASE_URL, RAI_WIDGET_API_KEY)"
    ]
    assert report.warnings == [
        "rai_middleware.W003: RETURNING_AI['api_base_url'] is a plain http:// URL "
        "(http://api.example): "
        "credentials and tokens would cross the network unencrypted; use https:// (loopback "
        "hosts are exempt)"
    ]
