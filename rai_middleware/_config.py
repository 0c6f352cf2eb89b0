"""Options: validated once, at construction, into an immutable ``Settings``.

Every option is a keyword argument; the credentials and a few hosts fall back to ``RAI_*``
environment variables. What each option is (default, variable, check, meaning) is written
once, in ``_options.OPTIONS``; this module applies that table and the decisions that involve
several options (the mode, what it requires, the derived ``secret_key``). Bad configuration
raises one ``ConfigurationError`` listing every problem, each naming what the user wrote
(the keyword, ``RETURNING_AI['...']``, the Flask config key, the environment variable; a
``Spelling`` says which), never the value of a secret.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypedDict
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError
from ._exclude import conflicts
from ._metrics import Event
from ._modes import AccessKeyMode, AttributesMode, IframeMode, Mode, ProxyMode
from ._modes.proxy import ROUTE
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
from ._scanner import RESERVED_TAGS

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
    "DJANGO",
    "FLASK",
    "KEYWORDS",
    "MIN_SECRET_KEY_BYTES",
    "MODES",
    "STRICT_ENV",
    "Options",
    "Review",
    "Secret",
    "SecretInput",
    "Settings",
    "Spelling",
    "build_settings",
    "check_option_names",
    "env_name",
    "option_names",
    "review_settings",
    "unknown_options",
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


if TYPE_CHECKING:
    from starlette.datastructures import Secret as StarletteSecret

    #: What a secret option accepts: a string or a holder that does not show it.
    SecretInput = str | Secret | StarletteSecret | HasSecretValue
else:  # Starlette is optional at run time (the testing extra); the alias is for type checkers.
    SecretInput = str | Secret | HasSecretValue


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


@dataclass(frozen=True)
class Spelling:
    """How the user writes an option where a middleware is configured, for messages:
    ``name`` and ``setting`` are templates over ``{name}`` (the keyword) and ``{key}`` (its
    ``RAI_*`` spelling)."""

    #: The option as written: ``timeout``, ``RETURNING_AI['timeout']``...
    name: str
    #: How to give it a value: ``pass timeout=... to the middleware``...
    setting: str
    #: An unknown one: ``unknown option 'tmeout'``...
    unknown: str

    def of(self, option: str) -> str:
        return self.name.format(name=option, key=env_name(option))

    def how_to_set(self, option: str) -> str:
        return self.setting.format(name=option, key=env_name(option))

    def unknown_name(self, option: str) -> str:
        return self.unknown.format(name=option, key=env_name(option))


def env_name(option: str) -> str:
    """The ``RAI_*`` spelling of an option (a Flask config key; for the options that read
    the environment, their variable): ``community_id`` -> ``RAI_COMMUNITY_ID``."""
    return "RAI_" + option.upper()


#: The keyword arguments of ``ReturningAIMiddleware`` and ``ReturningAIWSGIMiddleware``.
KEYWORDS = Spelling("{name}", "pass {name}=... to the middleware", "unknown option {name!r}")
#: Django's ``settings.RETURNING_AI`` dict.
DJANGO = Spelling(
    "RETURNING_AI[{name!r}]",
    "set it in settings.RETURNING_AI",
    "unknown option RETURNING_AI[{name!r}]",
)
#: Flask's ``app.config`` keys (or the keywords of ``ReturningAI(...)``).
FLASK = Spelling(
    "app.config[{key!r}]",
    "set app.config[{key!r}] (or pass {name}=... to ReturningAI)",
    "unknown option app.config[{key!r}]",
)


def unknown_options(names: Iterable[object], spelling: Spelling = KEYWORDS) -> list[str]:
    """A problem for each name that is no option, with the likeliest one it meant."""
    known = sorted(option_names())

    def spelled(option: str) -> str:
        written = spelling.of(option)
        return repr(written) if written == option else written

    problems = []
    for name in sorted(str(name) for name in names if name not in option_names()):
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
        hint = (
            f" (did you mean {spelled(close[0])}?)"
            if close
            else f"; the options are: {', '.join(spelling.of(option) for option in known)}"
        )
        problems.append(spelling.unknown_name(name) + hint)
    return problems


def check_option_names(names: Iterable[object], spelling: Spelling = KEYWORDS) -> None:
    """ConfigurationError naming every name that is no option nor adapter keyword."""
    problems = unknown_options(names, spelling)
    if problems:
        raise ConfigurationError.of(problems)


@dataclass(frozen=True)
class Review:
    """What ``review_settings`` found, each problem a sentence naming the option: unknown
    names, invalid values, missing requirements, and warnings (accepted but unsafe). The
    settings are None when there is an error."""

    settings: Settings | None
    unknown: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    #: The option names (not sentences) that the chosen mode requires and nobody gave.
    missing: tuple[str, ...] = ()
    missing_text: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def errors(self) -> tuple[str, ...]:
        return (*self.unknown, *self.invalid, *self.missing_text)


def build_settings(
    options: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    spelling: Spelling = KEYWORDS,
    problems: Iterable[str] = (),
) -> Settings:
    """``Settings`` from keyword options (and ``environ``, by default ``os.environ``).

    One ``ConfigurationError`` lists every problem: ``problems`` (the adapter's own) and the
    options'. The warnings are logged, or refused with ``RAI_STRICT=1``."""
    env = os.environ if environ is None else environ
    found = review_settings(options, env, spelling=spelling)
    errors = [*problems, *found.errors]
    strict = env.get(STRICT_ENV, "").strip() == "1"
    if strict:
        errors += [f"{warning} (refused because {STRICT_ENV}=1)" for warning in found.warnings]
    if errors:
        raise ConfigurationError.of(errors)
    for warning in found.warnings:
        logger.warning("%s", warning)
    assert found.settings is not None  # no errors
    return found.settings


def review_settings(
    options: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    spelling: Spelling = KEYWORDS,
) -> Review:
    """Every problem of these options at once, and the settings when there is none.
    Adapter keywords (``identify``, ``http_client``...) are skipped: they are no settings."""
    env = os.environ if environ is None else environ
    unknown = unknown_options(options, spelling)
    invalid: list[str] = []
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for name, option in SETTINGS.items():
        try:
            values[name] = _value(option, options.get(name), env, spelling)
        except ConfigurationError as error:
            invalid.append(str(error))
            values[name] = option.default
            failed.add(name)
    chosen = _mode(values["mode"], values["access_key"], values["widget_api_key"])
    missing: list[str] = []
    if chosen is None:
        invalid.append(
            f"{spelling.of('mode')} must be one of {', '.join(map(repr, MODES))}, "
            f"got {values['mode']!r}"
        )
    else:
        values["mode"] = chosen.name
        missing = [n for n in chosen.required if values[n] is None and n not in failed]
        # What the widgets call may not be excluded: the endpoint, the proxy widget route.
        prefix = values["endpoint_prefix"]
        own = [prefix + chosen.endpoint] if chosen.endpoint else []
        own += [prefix + ROUTE] if chosen.widget_route else []
        exclusions = values["exclude_paths"]
        invalid += [f"{spelling.of('exclude_paths')}: {p}" for p in conflicts(exclusions, own)]
    for name in ("placeholder_tag", "runtime_tag"):
        if values[name] in RESERVED_TAGS:
            invalid.append(
                f"{spelling.of(name)} must not be {values[name]!r}: the page's parser reads that "
                "element specially, so the tag would never be found"
            )
    if values["runtime_tag"] == values["placeholder_tag"]:
        invalid.append(
            f"{spelling.of('runtime_tag')} must differ from {spelling.of('placeholder_tag')} "
            f"(both are {values['runtime_tag']!r})"
        )
    found = Review(
        None,
        unknown=tuple(unknown),
        invalid=tuple(invalid),
        missing=tuple(missing),
        missing_text=tuple(
            f"{spelling.of(name)} is required in mode={values['mode']!r}: "
            f"{spelling.how_to_set(name)} or set the {SETTINGS[name].env} environment variable"
            for name in missing
        ),
        warnings=tuple(_weak_points(values, spelling)),
    )
    if found.errors or chosen is None:
        return found
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
    return replace(found, settings=Settings(**values))


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _weak_points(values: Mapping[str, Any], spelling: Spelling) -> list[str]:
    """What is accepted but unsafe: a plain-http upstream that is not this machine (the
    credentials would cross the network in the clear) and a short ``secret_key``. Never
    shows the key."""
    problems = [
        f"{spelling.of(name)} is a plain http:// URL ({values[name]}): credentials and tokens "
        "would cross the network unencrypted; use https:// (loopback hosts are exempt)"
        for name in ("api_base_url", "widgets_base_url")
        if values[name].lower().startswith("http://") and not _loopback(values[name])
    ]
    key = values["secret_key"]
    if key is not None and len(key.encode()) < MIN_SECRET_KEY_BYTES:
        problems.append(
            f"{spelling.of('secret_key')} is shorter than {MIN_SECRET_KEY_BYTES} bytes: it signs "
            "refresh tickets and keys the identity hashes; use e.g. secrets.token_hex(32)"
        )
    return problems


def _value(option: Option, given: Any, env: Mapping[str, str], spelling: Spelling) -> Any:
    """The option's checked value: the keyword, else its environment variable (an empty one
    counts as unset), else its default. An error names what the user wrote: the keyword (as
    ``spelling`` writes it) or the environment variable."""
    assert option.parse is not None  # SETTINGS holds only the rows that parse
    value, name = given, spelling.of(option.name)
    if value is None and option.env is not None:
        value, name = env.get(option.env) or None, f"the {option.env} environment variable"
    if value is None:
        return option.default
    return option.parse(name, value)


def _mode(
    mode: str | None, access_key: str | None, widget_api_key: str | None
) -> type[Mode] | None:
    """The auth flow chosen, or None for an unknown ``mode``."""
    if mode is None:
        # Access Key Embed is the documented default; the legacy iframe flow is chosen only
        # when its key is the one given.
        if widget_api_key is not None and access_key is None:
            return IframeMode
        return AccessKeyMode
    return MODES.get(mode)
