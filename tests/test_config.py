"""Construction: options, environment variables and the errors for bad configuration."""

from __future__ import annotations

from typing import Any

import pytest

from rai_middleware import ConfigurationError, ReturningAIError, ReturningAIMiddleware, TokenError
from rai_middleware._config import DEFAULT_SDK_URL, DEFAULT_WIDGETS, Secret


async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


FULL: dict[str, Any] = {"community_id": "c", "access_id": "i", "access_key": "k"}


def test_defaults_are_documented_values() -> None:
    settings = ReturningAIMiddleware(app, **FULL).settings
    assert settings.api_base_url == "https://api-v2.returning.ai"
    assert settings.token_url == "https://api-v2.returning.ai/v2/api/widget-access-keys/token"
    assert settings.sdk_url == DEFAULT_SDK_URL
    assert DEFAULT_SDK_URL == (
        "https://unpkg.com/@returningai/widget-sdk@1.5.1/dist/rai-widget.iife.js"
    )
    assert settings.endpoint_prefix == "/_rai"
    assert settings.refresh_path == "/_rai/embed-token"
    assert settings.timeout == 3.0
    assert settings.min_token_ttl == 300
    assert settings.cache_maxsize == 10_000
    assert settings.ticket_max_age == 12 * 60 * 60
    assert settings.placeholder_tag == "rai-placeholder"
    assert dict(settings.widgets) == {
        "store": "rai-store-widget",
        "channel": "rai-channel-widget",
        "milestone": "rai-milestone-widget",
        "social": "rai-social-widget",
        "currency": "rai-currency-widget",
        "referral": "rai-referral-widget",
        "custom": "rai-custom-widget",
    }
    assert settings.widgets is DEFAULT_WIDGETS


def test_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAI_COMMUNITY_ID", "env-community")
    monkeypatch.setenv("RAI_ACCESS_ID", "env-id")
    monkeypatch.setenv("RAI_ACCESS_KEY", "env-key")
    monkeypatch.setenv("RAI_SECRET_KEY", "env-secret")
    monkeypatch.setenv("RAI_API_BASE_URL", "http://127.0.0.1:9/")
    settings = ReturningAIMiddleware(app).settings
    assert settings.community_id == "env-community"
    assert settings.access_id == Secret("env-id")
    assert settings.access_key == Secret("env-key")
    assert settings.secret_key.reveal() == "env-secret"
    assert settings.api_base_url == "http://127.0.0.1:9"


def test_keyword_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAI_ACCESS_KEY", "env-key")
    assert ReturningAIMiddleware(app, **FULL).settings.access_key == Secret("k")


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("community_id", "RAI_COMMUNITY_ID"),
        ("access_id", "RAI_ACCESS_ID"),
        ("access_key", "RAI_ACCESS_KEY"),
    ],
)
def test_missing_credential_names_keyword_and_env_var(missing: str, variable: str) -> None:
    options = {k: v for k, v in FULL.items() if k != missing}
    with pytest.raises(ConfigurationError) as caught:
        ReturningAIMiddleware(app, **options)
    assert missing in str(caught.value)
    assert variable in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ReturningAIError)


def test_empty_env_var_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAI_ACCESS_KEY", "")
    with pytest.raises(ConfigurationError, match="RAI_ACCESS_KEY"):
        ReturningAIMiddleware(app, community_id="c", access_id="i")


def test_secret_key_is_derived_from_access_key_when_not_given() -> None:
    one = ReturningAIMiddleware(app, **FULL).settings.secret_key.reveal()
    two = ReturningAIMiddleware(app, **FULL).settings.secret_key.reveal()
    other = ReturningAIMiddleware(app, **{**FULL, "access_key": "k2"}).settings.secret_key
    assert one == two
    assert one != other.reveal()
    assert one != "k" and len(one) == 64


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("access_key", "   ", "access_key is empty"),
        ("access_key", 42, "access_key must be a string"),
        ("api_base_url", "ftp://x", "api_base_url must be an absolute http(s) URL"),
        ("api_base_url", "/relative", "api_base_url must be an absolute http(s) URL"),
        ("sdk_url", "javascript:alert(1)", "sdk_url must be an absolute http(s) URL"),
        ("endpoint_prefix", "rai", "endpoint_prefix must be a path"),
        ("endpoint_prefix", "/rai/", "endpoint_prefix must not end with '/'"),
        ("endpoint_prefix", '/r"ai', "endpoint_prefix must not end with '/'"),
        ("placeholder_tag", "rai placeholder", "placeholder_tag must be an ASCII tag name"),
        ("placeholder_tag", "<x>", "placeholder_tag must be an ASCII tag name"),
        ("timeout", 0, "timeout must be greater than 0"),
        ("timeout", float("nan"), "timeout must be a finite number"),
        ("timeout", "3", "timeout must be a finite number"),
        ("min_token_ttl", -1, "min_token_ttl must be 0 or more"),
        ("cache_maxsize", 0, "cache_maxsize must be a positive integer"),
        ("cache_maxsize", True, "cache_maxsize must be a positive integer"),
        ("ticket_max_age", 1.5, "ticket_max_age must be a positive integer"),
        ("max_placeholder_size", 0, "max_placeholder_size must be a positive integer"),
        ("failure_threshold", 0, "failure_threshold must be a positive integer"),
        ("failure_cooldown", -5, "failure_cooldown must be 0 or more"),
        ("token_path", "v2/token", "token_path must be a path"),
        ("widgets", {}, "widgets must be a non-empty mapping"),
        ("widgets", {"x": "bad element"}, "must be an ASCII tag name"),
        ("identify", "not callable", "identify must be a callable"),
        ("http_client", object(), "http_client must be an httpx.AsyncClient"),
    ],
)
def test_invalid_option_raises_configuration_error(option: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReturningAIMiddleware(app, **{**FULL, option: value})


def test_custom_widget_mapping_is_normalised() -> None:
    settings = ReturningAIMiddleware(app, **FULL, widgets={" Leaderboard ": "RAI-Leaderboard"})
    assert dict(settings.settings.widgets) == {"leaderboard": "rai-leaderboard"}


def test_token_error_carries_status_code() -> None:
    error = TokenError("HTTP 500", status_code=500)
    assert error.status_code == 500
    assert isinstance(error, ReturningAIError)
    assert TokenError("x").status_code is None


def test_public_names_are_exported() -> None:
    import rai_middleware

    assert set(rai_middleware.__all__) == {
        "EVENTS",
        "FAILURE_KINDS",
        "ConfigurationError",
        "Event",
        "PlaceholderError",
        "ReturningAIError",
        "ReturningAIMiddleware",
        "ReturningAIWSGIMiddleware",
        "Stats",
        "StoreError",
        "SyncTokenStore",
        "TokenError",
        "TokenStore",
        "__version__",
    }
    assert ReturningAIMiddleware.__module__ == "rai_middleware"


def test_unknown_option_is_a_configuration_error_listing_the_options() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option 'acess_key'.*access_key"):
        ReturningAIMiddleware(app, **FULL, acess_key="typo")  # type: ignore[call-arg]
