"""Options: validated once, at construction, into an immutable ``Settings``.

Every option is a keyword argument; the credentials and a few hosts fall back to ``RAI_*``
environment variables. What each option is (default, variable, check, meaning) is written
once, in ``_options.OPTIONS``; this module applies that table and the decisions that involve
several options (the mode, what it requires, the derived ``secret_key``). Bad configuration
raises ``ConfigurationError`` naming the keyword and its environment variable, never the
value of a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Protocol, TypedDict
from urllib.parse import urlsplit

from starlette.datastructures import Secret as StarletteSecret

from ._exceptions import ConfigurationError
from ._metrics import Event
from ._modes import AccessKeyMode, AttributesMode, IframeMode, Mode, ProxyMode
from ._options import (
    DEFAULT_API_BASE_URL,
    DEFAULT_IFRAME_SEGMENTS,
    DEFAULT_LOADER_URL,
    DEFAULT_PLACEHOLDER_TAG,
    DEFAULT_SDK_URL,
    DEFAULT_TOKEN_PATH,
    DEFAULT_WIDGETS,
    DEFAULT_WIDGETS_BASE_URL,
    OPTIONS,
    SETTINGS,
    Option,
)

__all__ = [
    "ADAPTER_KEYWORDS",
    "DEFAULT_API_BASE_URL",
    "DEFAULT_IFRAME_SEGMENTS",
    "DEFAULT_LOADER_URL",
    "DEFAULT_PLACEHOLDER_TAG",
    "DEFAULT_SDK_URL",
    "DEFAULT_TOKEN_PATH",
    "DEFAULT_WIDGETS",
    "DEFAULT_WIDGETS_BASE_URL",
    "MODES",
    "Options",
    "Secret",
    "SecretInput",
    "Settings",
    "build_settings",
    "check_option_names",
    "option_names",
]

logger = logging.getLogger("rai_middleware")

#: A ``secret_key`` shorter than this (in bytes) gets a warning: it keys the ticket
#: signatures and the identity hashes, so it must not be guessable.
MIN_SECRET_KEY_BYTES = 32
#: Set to ``1`` to make the warnings below ``ConfigurationError`` instead.
STRICT_ENV = "RAI_STRICT"


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
        ProxyMode.name: ProxyMode,
    }
)


class HasSecretValue(Protocol):
    """A secret holder such as pydantic's ``SecretStr``."""

    def get_secret_value(self) -> str: ...


#: What a secret option accepts: a string or a holder that does not show it.
SecretInput = str | Secret | StarletteSecret | HasSecretValue


class Options(TypedDict, total=False):
    """The settings a middleware takes by keyword, typed for ``Unpack``.

    mypy needs these spelled out; the meanings, defaults and checks are in
    ``_options.OPTIONS``, and a test keeps the two lists of names the same."""

    mode: str | None
    community_id: str | None
    access_id: SecretInput | None
    access_key: SecretInput | None
    widget_api_key: SecretInput | None
    secret_key: SecretInput | None
    api_base_url: str | None
    token_path: str
    sdk_url: str
    sdk_integrity: str | None
    widgets_base_url: str | None
    loader_url: str
    iframe_segments: Mapping[str, str] | None
    endpoint_prefix: str
    exclude_paths: tuple[str, ...] | list[str]
    skip: Callable[[Any], object] | str | None
    placeholder_tag: str
    runtime_tag: str
    widgets: Mapping[str, str] | None
    timeout: float
    min_token_ttl: float
    refresh_ahead: float
    keep_warm: float
    proxy_page_ttl: float
    cache_maxsize: int
    ticket_max_age: int
    max_placeholder_size: int
    failure_threshold: int
    failure_cooldown: float
    on_event: Callable[[Event], object] | str | None


#: Keywords every middleware takes besides the options: they are objects, not settings.
ADAPTER_KEYWORDS = frozenset(option.name for option in OPTIONS if option.parse is None)


def option_names() -> frozenset[str]:
    """Every keyword a middleware accepts: the options and ``ADAPTER_KEYWORDS``. The Django
    and Flask adapters accept exactly these as settings keys."""
    return frozenset(option.name for option in OPTIONS)


@dataclass(frozen=True)
class Settings:
    """Everything the middleware needs, checked and normalised. Safe to ``repr()``.

    Built by ``build_settings``, which gives every field (defaults are in ``_options``)."""

    mode: str
    community_id: str | None
    access_id: Secret | None
    access_key: Secret | None
    widget_api_key: Secret | None
    secret_key: Secret = field(repr=False)
    api_base_url: str
    token_path: str
    sdk_url: str
    sdk_integrity: str | None
    widgets_base_url: str
    loader_url: str
    iframe_segments: Mapping[str, str]
    endpoint_prefix: str
    exclude_paths: tuple[str, ...]
    skip: Callable[[Any], object] | None
    placeholder_tag: str
    runtime_tag: str
    widgets: Mapping[str, str]
    timeout: float
    min_token_ttl: float
    refresh_ahead: float
    keep_warm: float
    proxy_page_ttl: float
    cache_maxsize: int
    ticket_max_age: int
    max_placeholder_size: int
    failure_threshold: int
    failure_cooldown: float
    #: Not in the repr: a callable's repr may show whatever it holds.
    on_event: Callable[[Event], object] | None = field(repr=False)
    #: Lifetime assumed for a token whose answer does not say. Not an option: the upstream
    #: decides it, this only covers an answer without ``expiresIn``.
    default_token_lifetime: float = 900.0

    @cached_property
    def auth(self) -> Mode:
        """The auth flow these settings configure."""
        return MODES[self.mode](self)

    @property
    def token_url(self) -> str | None:
        """Where tokens are minted (the mode decides; None: it mints none)."""
        return self.auth.token_url

    @property
    def refresh_path(self) -> str | None:
        """The middleware's own token endpoint for this mode (None: the mode has none)."""
        return self.auth.refresh_path


def check_option_names(names: Iterable[object], where: str = "") -> None:
    """ConfigurationError naming the first name that is no option nor adapter keyword."""
    unknown = sorted(str(name) for name in names if name not in option_names())
    if unknown:
        raise ConfigurationError(
            f"{where}unknown option {unknown[0]!r}; the options are: "
            + ", ".join(sorted(option_names()))
        )


def build_settings(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """``Settings`` from keyword options (and ``environ``, by default ``os.environ``)."""
    unknown = sorted(set(options) - SETTINGS.keys())
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r}; the options are: " + ", ".join(sorted(SETTINGS))
        )
    env = os.environ if environ is None else environ
    values = {name: _value(option, options.get(name), env) for name, option in SETTINGS.items()}
    chosen = MODES[_mode(values["mode"], values["access_key"], values["widget_api_key"])]
    values["mode"] = chosen.name
    for name in chosen.required:
        if values[name] is None:
            raise ConfigurationError(
                f"{name} is required in mode={chosen.name!r}: pass {name}=... to the "
                f"middleware or set the {SETTINGS[name].env} environment variable"
            )
    if values["runtime_tag"] == values["placeholder_tag"]:
        raise ConfigurationError(
            f"runtime_tag must differ from placeholder_tag (both are {values['runtime_tag']!r})"
        )
    _warn_weak(values, env)
    if values["secret_key"] is None:
        # Attribute Auth needs no credential; its identity hashes still want a key.
        seed = values[chosen.key_seed] if chosen.key_seed else None
        seed = seed or secrets.token_hex(32)
        # Derived, so that nothing beyond the credential is required; the derivation is
        # one-way, so a leaked ticket key tells nothing about the credential.
        values["secret_key"] = hmac.new(
            seed.encode(), b"rai-middleware/refresh-ticket-key/v1", hashlib.sha256
        ).hexdigest()
    kept = {*chosen.required, "secret_key"}
    for name, option in SETTINGS.items():
        if option.secret:
            # Credentials the mode does not use are not kept: less to leak.
            value = values[name]
            values[name] = Secret(value) if value is not None and name in kept else None
    return Settings(**values)


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_weak(values: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Warn (or, with ``RAI_STRICT=1``, refuse) what is accepted but unsafe: a plain-http
    upstream that is not this machine (the credentials would cross the network in the
    clear) and a short ``secret_key``. Never shows the key."""
    problems = [
        f"{name} is a plain http:// URL ({values[name]}): credentials and tokens would cross "
        "the network unencrypted; use https:// (loopback hosts are exempt)"
        for name in ("api_base_url", "widgets_base_url")
        if values[name].lower().startswith("http://") and not _loopback(values[name])
    ]
    key = values["secret_key"]
    if key is not None and len(key.encode()) < MIN_SECRET_KEY_BYTES:
        problems.append(
            f"secret_key is shorter than {MIN_SECRET_KEY_BYTES} bytes: it signs refresh "
            "tickets and keys the identity hashes; use e.g. secrets.token_hex(32)"
        )
    strict = env.get(STRICT_ENV, "").strip() == "1"
    for problem in problems:
        if strict:
            raise ConfigurationError(f"{problem} (refused because {STRICT_ENV}=1)")
        logger.warning("%s", problem)


def _value(option: Option, given: Any, env: Mapping[str, str]) -> Any:
    """The option's checked value: the keyword, else its environment variable (an empty one
    counts as unset), else its default. An error names the variable and where the value
    came from."""
    assert option.parse is not None  # SETTINGS holds only the rows that parse
    value, where = given, f"keyword {option.name} or the {option.env} environment variable"
    if value is None and option.env is not None:
        value, where = env.get(option.env) or None, f"from the {option.env} environment variable"
    if value is None:
        return option.default
    try:
        return option.parse(option.name, value)
    except ConfigurationError as error:
        if option.env is None:
            raise
        raise ConfigurationError(f"{error} ({where})") from None


def _mode(mode: str | None, access_key: str | None, widget_api_key: str | None) -> str:
    if mode is None:
        # Access Key Embed is the documented default; the legacy iframe flow is chosen only
        # when its key is the one given.
        if widget_api_key is not None and access_key is None:
            return IframeMode.name
        return AccessKeyMode.name
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode
