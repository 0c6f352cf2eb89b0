"""Options: validated once, at construction, into an immutable ``Settings``.

Every option is a keyword argument; the three credentials and a few hosts fall back to
``RAI_*`` environment variables. Bad configuration raises ``ConfigurationError`` naming the
keyword and its environment variable, never the value of a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, TypedDict
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError
from ._modes import AccessKeyMode, AttributesMode, IframeMode, Mode

__all__ = [
    "ADAPTER_KEYWORDS",
    "DEFAULT_API_BASE_URL",
    "DEFAULT_IFRAME_SEGMENTS",
    "DEFAULT_LOADER_URL",
    "DEFAULT_SDK_URL",
    "DEFAULT_TOKEN_PATH",
    "DEFAULT_WIDGETS",
    "DEFAULT_WIDGETS_BASE_URL",
    "MODES",
    "Options",
    "Secret",
    "Settings",
    "build_settings",
    "option_names",
]

DEFAULT_API_BASE_URL = "https://api-v2.returning.ai"
DEFAULT_TOKEN_PATH = "/v2/api/widget-access-keys/token"
DEFAULT_SDK_URL = "https://unpkg.com/@returningai/widget-sdk@1.5.1/dist/rai-widget.iife.js"
DEFAULT_PLACEHOLDER_TAG = "rai-placeholder"

#: ``widget="..."`` value -> the SDK's custom element.
DEFAULT_WIDGETS: Mapping[str, str] = MappingProxyType(
    {
        "store": "rai-store-widget",
        "channel": "rai-channel-widget",
        "milestone": "rai-milestone-widget",
        "social": "rai-social-widget",
        "currency": "rai-currency-widget",
        "referral": "rai-referral-widget",
        "custom": "rai-custom-widget",
    }
)

# Custom element and tag names: ASCII, starting with a letter, with a hyphen somewhere is not
# required for the placeholder (the author picks it), but nothing that could break out of a tag.
_TAG_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_.][a-z0-9]+)*\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*\Z")


class Secret:
    """A string that never shows itself in ``repr()``, ``str()`` or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", hashlib.sha256(self._value.encode()).digest()))


#: ``mode=`` value -> its auth flow. A new flow is one module in ``_modes`` and one line here.
MODES: Mapping[str, type[Mode]] = MappingProxyType(
    {
        AccessKeyMode.name: AccessKeyMode,
        IframeMode.name: IframeMode,
        AttributesMode.name: AttributesMode,
    }
)

DEFAULT_WIDGETS_BASE_URL = "https://prod-widgets.returning.ai"
DEFAULT_LOADER_URL = "https://prod-widgets.returning.ai/widget-loader.js"

#: ``widget="..."`` value -> path segment of the iframe widget page (mode ``iframe``).
DEFAULT_IFRAME_SEGMENTS: Mapping[str, str] = MappingProxyType(
    {
        "store": "store-widget",
        "channel": "channel-widget",
        "milestone": "milestone-widget",
        "social": "social-widget",
        "currency": "currency-overview-widget",
        "custom": "custom-widget",
    }
)


class Options(TypedDict, total=False):
    """Every option the middlewares share, by keyword (the README documents each)."""

    mode: str | None
    community_id: str | None
    access_id: str | None
    access_key: str | None
    widget_api_key: str | None
    secret_key: str | None
    api_base_url: str | None
    token_path: str
    sdk_url: str
    widgets_base_url: str | None
    loader_url: str
    iframe_segments: Mapping[str, str] | None
    endpoint_prefix: str
    placeholder_tag: str
    widgets: Mapping[str, str] | None
    timeout: float
    min_token_ttl: float
    refresh_ahead: float
    keep_warm: float
    cache_maxsize: int
    ticket_max_age: int
    max_placeholder_size: int
    failure_threshold: int
    failure_cooldown: float


#: Keywords every middleware takes besides the options: they are objects, not settings.
ADAPTER_KEYWORDS = frozenset({"identify", "http_client", "token_store", "clock"})


def option_names() -> frozenset[str]:
    """Every keyword a middleware accepts: the options and ``ADAPTER_KEYWORDS``. The Django
    and Flask adapters accept exactly these as settings keys."""
    return frozenset(Options.__optional_keys__) | ADAPTER_KEYWORDS


def build_settings(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """``Settings`` from keyword options, with a ConfigurationError for an unknown one."""
    unknown = sorted(set(options) - Options.__optional_keys__)
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r}; the options are: "
            + ", ".join(sorted(Options.__optional_keys__))
        )
    return Settings.from_options(**options, environ=environ)


@dataclass(frozen=True)
class Settings:
    """Everything the middleware needs, checked and normalised. Safe to ``repr()``."""

    mode: str
    community_id: str | None
    access_id: Secret | None
    access_key: Secret | None
    widget_api_key: Secret | None
    secret_key: Secret = field(repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    token_path: str = DEFAULT_TOKEN_PATH
    sdk_url: str = DEFAULT_SDK_URL
    widgets_base_url: str = DEFAULT_WIDGETS_BASE_URL
    loader_url: str = DEFAULT_LOADER_URL
    iframe_segments: Mapping[str, str] = field(default_factory=lambda: DEFAULT_IFRAME_SEGMENTS)
    endpoint_prefix: str = "/_rai"
    placeholder_tag: str = DEFAULT_PLACEHOLDER_TAG
    widgets: Mapping[str, str] = field(default_factory=lambda: DEFAULT_WIDGETS)
    timeout: float = 3.0
    min_token_ttl: float = 300.0
    refresh_ahead: float = 120.0
    keep_warm: float = 0.0
    default_token_lifetime: float = 900.0
    cache_maxsize: int = 10_000
    ticket_max_age: int = 12 * 60 * 60
    max_placeholder_size: int = 64 * 1024
    failure_threshold: int = 5
    failure_cooldown: float = 30.0

    @cached_property
    def auth(self) -> Mode:
        """The auth flow these settings configure."""
        return MODES[self.mode](self)

    @property
    def token_url(self) -> str:
        """Where tokens are minted (the mode decides)."""
        return self.auth.token_url

    @property
    def refresh_path(self) -> str | None:
        """The middleware's own token endpoint for this mode (None: the mode has none)."""
        return self.auth.refresh_path

    @classmethod
    def from_options(
        cls,
        *,
        mode: str | None = None,
        community_id: str | None = None,
        access_id: str | None = None,
        access_key: str | None = None,
        widget_api_key: str | None = None,
        secret_key: str | None = None,
        api_base_url: str | None = None,
        token_path: str = DEFAULT_TOKEN_PATH,
        sdk_url: str = DEFAULT_SDK_URL,
        widgets_base_url: str | None = None,
        loader_url: str = DEFAULT_LOADER_URL,
        iframe_segments: Mapping[str, str] | None = None,
        endpoint_prefix: str = "/_rai",
        placeholder_tag: str = DEFAULT_PLACEHOLDER_TAG,
        widgets: Mapping[str, str] | None = None,
        timeout: float = 3.0,
        min_token_ttl: float = 300.0,
        refresh_ahead: float = 120.0,
        keep_warm: float = 0.0,
        cache_maxsize: int = 10_000,
        ticket_max_age: int = 12 * 60 * 60,
        max_placeholder_size: int = 64 * 1024,
        failure_threshold: int = 5,
        failure_cooldown: float = 30.0,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        env = os.environ if environ is None else environ
        akey = _optional_str("access_key", access_key, env, "RAI_ACCESS_KEY")
        wkey = _optional_str("widget_api_key", widget_api_key, env, "RAI_WIDGET_API_KEY")
        chosen = MODES[_mode(mode, access_key=akey, widget_api_key=wkey)]
        given = {
            "community_id": _optional_str("community_id", community_id, env, "RAI_COMMUNITY_ID"),
            "access_id": _optional_str("access_id", access_id, env, "RAI_ACCESS_ID"),
            "access_key": akey,
            "widget_api_key": wkey,
        }
        for name in chosen.required:
            if given[name] is None:
                raise ConfigurationError(
                    f"{name} is required in mode={chosen.name!r}: pass {name}=... to the "
                    f"middleware or set the {_ENV[name]} environment variable"
                )
        community = given["community_id"]
        if community is not None and any(c in community for c in "/?#"):
            raise ConfigurationError("community_id must not contain '/', '?' or '#'")
        # Credentials the mode does not use are not kept: less to leak.
        aid, akey, wkey = (
            given[name] if name in chosen.required else None
            for name in ("access_id", "access_key", "widget_api_key")
        )
        # Attribute Auth needs no secret; identity hashes still want a key.
        seed = given[chosen.key_seed] if chosen.key_seed else None
        seed = seed or secrets.token_hex(32)
        skey = _optional_str("secret_key", secret_key, env, "RAI_SECRET_KEY")
        if skey is None:
            # Derived, so that nothing beyond the credential is required; the derivation is
            # one-way, so a leaked ticket key tells nothing about the credential.
            skey = hmac.new(
                seed.encode(), b"rai-middleware/refresh-ticket-key/v1", hashlib.sha256
            ).hexdigest()
        base = _optional_str("api_base_url", api_base_url, env, "RAI_API_BASE_URL")
        base = _url("api_base_url", base or DEFAULT_API_BASE_URL, "RAI_API_BASE_URL").rstrip("/")
        widgets_base = _optional_str(
            "widgets_base_url", widgets_base_url, env, "RAI_WIDGETS_BASE_URL"
        )
        widgets_base = _url(
            "widgets_base_url", widgets_base or DEFAULT_WIDGETS_BASE_URL, "RAI_WIDGETS_BASE_URL"
        )
        if not isinstance(token_path, str) or not token_path.startswith("/"):
            raise ConfigurationError("token_path must be a path starting with '/'")
        return cls(
            mode=chosen.name,
            community_id=community,
            access_id=Secret(aid) if aid is not None else None,
            access_key=Secret(akey) if akey is not None else None,
            widget_api_key=Secret(wkey) if wkey is not None else None,
            secret_key=Secret(skey),
            api_base_url=base,
            token_path=token_path,
            sdk_url=_url("sdk_url", sdk_url),
            widgets_base_url=widgets_base.rstrip("/"),
            loader_url=_url("loader_url", loader_url),
            iframe_segments=_segments(iframe_segments),
            endpoint_prefix=_prefix(endpoint_prefix),
            placeholder_tag=_tag_name("placeholder_tag", placeholder_tag),
            widgets=_widgets(widgets),
            timeout=_positive("timeout", timeout),
            min_token_ttl=_non_negative("min_token_ttl", min_token_ttl),
            refresh_ahead=_non_negative("refresh_ahead", refresh_ahead),
            keep_warm=_non_negative("keep_warm", keep_warm),
            cache_maxsize=_positive_int("cache_maxsize", cache_maxsize),
            ticket_max_age=_positive_int("ticket_max_age", ticket_max_age),
            max_placeholder_size=_positive_int("max_placeholder_size", max_placeholder_size),
            failure_threshold=_positive_int("failure_threshold", failure_threshold),
            failure_cooldown=_non_negative("failure_cooldown", failure_cooldown),
        )


_ENV = {
    "community_id": "RAI_COMMUNITY_ID",
    "access_id": "RAI_ACCESS_ID",
    "access_key": "RAI_ACCESS_KEY",
    "widget_api_key": "RAI_WIDGET_API_KEY",
}


def _mode(mode: str | None, *, access_key: str | None, widget_api_key: str | None) -> str:
    if mode is None:
        # Access Key Embed is the documented default; the legacy iframe flow is chosen only
        # when its key is the one given.
        if widget_api_key is not None and access_key is None:
            return IframeMode.name
        return AccessKeyMode.name
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def _segments(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if value is None:
        return DEFAULT_IFRAME_SEGMENTS
    if not isinstance(value, Mapping) or not value:
        raise ConfigurationError("iframe_segments must be a non-empty mapping")
    checked = {}
    for key, segment in value.items():
        if not isinstance(segment, str) or not _SEGMENT.match(segment):
            raise ConfigurationError(
                f"iframe_segments[{key!r}] must be a URL path segment such as 'store-widget', "
                f"got {segment!r}"
            )
        checked[str(key).strip().lower()] = segment
    return MappingProxyType(checked)


def _required_str(name: str, value: str | None, env: Mapping[str, str], var: str) -> str:
    found = _optional_str(name, value, env, var)
    if found is None:
        raise ConfigurationError(
            f"{name} is required: pass {name}=... to the middleware "
            f"or set the {var} environment variable"
        )
    return found


def _optional_str(name: str, value: str | None, env: Mapping[str, str], var: str) -> str | None:
    if value is None:
        value = env.get(var) or None
        origin = f"the {var} environment variable"
    else:
        origin = name
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{name} must be a string (or set the {var} environment variable), "
            f"got {type(value).__name__}"
        )
    value = value.strip()
    if not value:
        raise ConfigurationError(f"{origin} is empty: {name} needs a value (env {var})")
    return value


def _url(name: str, value: str, var: str | None = None) -> str:
    where = f" (keyword {name} or the {var} environment variable)" if var else ""
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string URL{where}, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an absolute http(s) URL{where}, got {value!r}")
    return value


def _prefix(value: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) < 2:
        raise ConfigurationError(f"endpoint_prefix must be a path such as '/_rai', got {value!r}")
    if any(c in value for c in "?#\"'<> ") or value.endswith("/"):
        raise ConfigurationError(
            f"endpoint_prefix must not end with '/' nor contain ?, #, quotes, <, > "
            f"or spaces, got {value!r}"
        )
    return value


def _tag_name(name: str, value: str) -> str:
    if not isinstance(value, str) or not _TAG_NAME.match(value.lower()):
        raise ConfigurationError(
            f"{name} must be an ASCII tag name such as 'rai-placeholder', got {value!r}"
        )
    return value.lower()


def _widgets(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if value is None:
        return DEFAULT_WIDGETS
    if not isinstance(value, Mapping) or not value:
        raise ConfigurationError("widgets must be a non-empty mapping of widget name to element")
    checked = {}
    for key, element in value.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigurationError(f"widgets: {key!r} is not a widget name")
        checked[key.strip().lower()] = _tag_name(f"widgets[{key!r}]", element)
    return MappingProxyType(checked)


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(name: str, value: float) -> float:
    number = _number(name, value)
    if number <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {value!r}")
    return number


def _non_negative(name: str, value: float) -> float:
    number = _number(name, value)
    if number < 0:
        raise ConfigurationError(f"{name} must be 0 or more, got {value!r}")
    return number


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value
