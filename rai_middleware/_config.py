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
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_API_BASE_URL",
    "DEFAULT_SDK_URL",
    "DEFAULT_TOKEN_PATH",
    "DEFAULT_WIDGETS",
    "Secret",
    "Settings",
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
_UNSET = object()


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


@dataclass(frozen=True)
class Settings:
    """Everything the middleware needs, checked and normalised. Safe to ``repr()``."""

    community_id: str
    access_id: Secret
    access_key: Secret
    secret_key: Secret = field(repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    token_path: str = DEFAULT_TOKEN_PATH
    sdk_url: str = DEFAULT_SDK_URL
    endpoint_prefix: str = "/_rai"
    placeholder_tag: str = DEFAULT_PLACEHOLDER_TAG
    widgets: Mapping[str, str] = field(default_factory=lambda: DEFAULT_WIDGETS)
    timeout: float = 3.0
    min_token_ttl: float = 300.0
    default_token_lifetime: float = 900.0
    cache_maxsize: int = 10_000
    ticket_max_age: int = 12 * 60 * 60
    max_placeholder_size: int = 64 * 1024
    failure_threshold: int = 5
    failure_cooldown: float = 30.0

    @property
    def token_url(self) -> str:
        return self.api_base_url + self.token_path

    @property
    def refresh_path(self) -> str:
        return self.endpoint_prefix + "/embed-token"

    @classmethod
    def from_options(
        cls,
        *,
        community_id: str | None,
        access_id: str | None,
        access_key: str | None,
        secret_key: str | None,
        api_base_url: str | None,
        token_path: str,
        sdk_url: str,
        endpoint_prefix: str,
        placeholder_tag: str,
        widgets: Mapping[str, str] | None,
        timeout: float,
        min_token_ttl: float,
        cache_maxsize: int,
        ticket_max_age: int,
        max_placeholder_size: int,
        failure_threshold: int,
        failure_cooldown: float,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        env = os.environ if environ is None else environ
        community = _required_str("community_id", community_id, env, "RAI_COMMUNITY_ID")
        aid = _required_str("access_id", access_id, env, "RAI_ACCESS_ID")
        akey = _required_str("access_key", access_key, env, "RAI_ACCESS_KEY")
        skey = _optional_str("secret_key", secret_key, env, "RAI_SECRET_KEY")
        if skey is None:
            # Derived, so that nothing beyond the access key is required; the derivation is
            # one-way, so a leaked ticket key tells nothing about the access key.
            skey = hmac.new(
                akey.encode(), b"rai-middleware/refresh-ticket-key/v1", hashlib.sha256
            ).hexdigest()
        base = _optional_str("api_base_url", api_base_url, env, "RAI_API_BASE_URL")
        base = _url("api_base_url", base or DEFAULT_API_BASE_URL).rstrip("/")
        if not isinstance(token_path, str) or not token_path.startswith("/"):
            raise ConfigurationError("token_path must be a path starting with '/'")
        return cls(
            community_id=community,
            access_id=Secret(aid),
            access_key=Secret(akey),
            secret_key=Secret(skey),
            api_base_url=base,
            token_path=token_path,
            sdk_url=_url("sdk_url", sdk_url),
            endpoint_prefix=_prefix(endpoint_prefix),
            placeholder_tag=_tag_name("placeholder_tag", placeholder_tag),
            widgets=_widgets(widgets),
            timeout=_positive("timeout", timeout),
            min_token_ttl=_non_negative("min_token_ttl", min_token_ttl),
            cache_maxsize=_positive_int("cache_maxsize", cache_maxsize),
            ticket_max_age=_positive_int("ticket_max_age", ticket_max_age),
            max_placeholder_size=_positive_int("max_placeholder_size", max_placeholder_size),
            failure_threshold=_positive_int("failure_threshold", failure_threshold),
            failure_cooldown=_non_negative("failure_cooldown", failure_cooldown),
        )


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
        raise ConfigurationError(f"{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ConfigurationError(f"{origin} is empty: {name} needs a value (env {var})")
    return value


def _url(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string URL, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an absolute http(s) URL, got {value!r}")
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
