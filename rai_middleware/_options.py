"""The options, each written once: name, default, environment variable, check and meaning.

``_config.build_settings`` reads this table to build ``Settings``, and the table of
docs/options.md is generated from it (``tests/test_options_table.py`` checks that they
agree), so a new option is one row here plus its statically typed lines in ``Options``
and ``Settings``.

A check takes the keyword and the given value and returns the value to keep, or raises a
``ConfigurationError`` that starts with the keyword and never shows a secret's value.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError
from ._exclude import normalise_prefix

__all__ = [
    "DEFAULT_API_BASE_URL",
    "DEFAULT_IFRAME_SEGMENTS",
    "DEFAULT_LOADER_URL",
    "DEFAULT_PLACEHOLDER_TAG",
    "DEFAULT_RUNTIME_TAG",
    "DEFAULT_SDK_URL",
    "DEFAULT_TOKEN_PATH",
    "DEFAULT_WIDGETS",
    "DEFAULT_WIDGETS_BASE_URL",
    "OPTIONS",
    "SETTINGS",
    "Option",
]

DEFAULT_API_BASE_URL = "https://api-v2.returning.ai"
DEFAULT_TOKEN_PATH = "/v2/api/widget-access-keys/token"
DEFAULT_SDK_URL = "https://unpkg.com/@returningai/widget-sdk@1.5.1/dist/rai-widget.iife.js"
DEFAULT_WIDGETS_BASE_URL = "https://prod-widgets.returning.ai"
DEFAULT_LOADER_URL = "https://prod-widgets.returning.ai/widget-loader.js"
DEFAULT_PLACEHOLDER_TAG = "rai-placeholder"
DEFAULT_RUNTIME_TAG = "rai-runtime"

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


@dataclass(frozen=True)
class Option:
    """One row. ``type_text``, ``default_text`` and ``doc`` are markdown for docs/options.md
    (links are relative to docs/)."""

    name: str
    type_text: str
    doc: str
    #: Checks and normalises a given value; None marks an adapter keyword (an object the
    #: middleware uses, such as ``identify``), which is documented here but is no setting.
    parse: Callable[[str, Any], Any] | None = None
    #: Used when the option is not given (or given as None). Trusted as is, not parsed
    #: (the tests parse every one); None: the environment variable, else decided by
    #: ``build_settings`` (``mode``, ``secret_key``) or absent.
    default: object = None
    #: Read when the keyword is not given; an empty variable counts as unset.
    env: str | None = None
    #: Kept as a ``Secret`` and dropped when the chosen mode does not use it.
    secret: bool = False
    #: The documented default, where the value alone would say too little.
    default_text: str | None = None


# Checks. -------------------------------------------------------------------------------------

# Custom element and tag names: ASCII, starting with a letter, with a hyphen somewhere is not
# required for the placeholder (the author picks it), but nothing that could break out of a tag.
_TAG_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_.][a-z0-9]+)*\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*\Z")
# A same-origin path. Not "//" nor "/\" (browsers read both as another host), and no
# whitespace or control characters (browsers drop tabs and newlines, so "/\t/x" is "//x").
_LOCAL_PATH = re.compile(r"/(?![/\\])[^\x00-\x20\x7f\"'<>\\`]*\Z")


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _text(name: str, value: object) -> str:
    # The type only, never the value: several of these are secrets.
    value = _string(name, value).strip()
    if not value:
        raise ConfigurationError(f"{name} is empty: it needs a value")
    return value


def reveal_secret(name: str, value: object) -> object:
    """The string inside a secret holder: Starlette's ``Secret`` (``str()``), this
    package's ``Secret`` (``reveal()``), or anything with ``get_secret_value()`` (pydantic's
    ``SecretStr``). Any other value is returned as it is, for the check to judge."""
    # Starlette is optional: a value can only be its Secret if the module is loaded already.
    starlette = sys.modules.get("starlette.datastructures")
    if starlette is not None and isinstance(value, starlette.Secret):
        return str(value)
    for method in ("reveal", "get_secret_value"):
        unwrap = getattr(value, method, None)
        if callable(unwrap) and not isinstance(value, str):
            failed = ""
            try:
                return unwrap()
            except Exception as exc:  # the holder's own error may quote the value
                failed = type(exc).__name__
            # Raised outside the except: the holder's exception is not even its context.
            raise ConfigurationError(f"{name}: {type(value).__name__}.{method}() raised {failed}")
    return value


def _secret(name: str, value: object) -> str:
    revealed = reveal_secret(name, value)
    if not isinstance(revealed, str):
        raise ConfigurationError(
            f"{name} must be a string, a starlette Secret or an object with "
            f"get_secret_value() (pydantic's SecretStr), got {type(value).__name__}"
        )
    return _text(name, revealed)


def _community_id(name: str, value: object) -> str:
    value = _text(name, value)
    if any(c in value for c in "/?#"):
        raise ConfigurationError(f"{name} must not contain '/', '?' or '#'")
    return value


def _url(name: str, value: object) -> str:
    value = _text(name, value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an absolute http(s) URL, got {value!r}")
    return value


def _base_url(name: str, value: object) -> str:
    return _url(name, value).rstrip("/")


def _script_url(name: str, value: object) -> str:
    # A site that self-hosts the script under ``script-src 'self'`` gives a path.
    value = _string(name, value)
    if _LOCAL_PATH.match(value):
        return value
    try:
        return _url(name, value)
    except ConfigurationError:
        raise ConfigurationError(
            f"{name} must be an absolute http(s) URL or a path starting with a single '/' "
            f"without spaces, quotes or <>, such as '/static/rai-widget.iife.js', got {value!r}"
        ) from None


# Subresource Integrity: one or more "sha256|sha384|sha512-<base64>" separated by spaces.
_INTEGRITY = re.compile(
    r"sha(?:256|384|512)-[A-Za-z0-9+/]+={0,2}(?: +sha(?:256|384|512)-[A-Za-z0-9+/]+={0,2})*\Z"
)


def _integrity(name: str, value: object) -> str:
    value = _string(name, value).strip()
    if not _INTEGRITY.match(value):
        raise ConfigurationError(
            f"{name} must be a Subresource Integrity hash such as 'sha384-<base64>', got {value!r}"
        )
    return value


def _path(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigurationError(f"{name} must be a path starting with '/'")
    return value


def _prefix(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) < 2:
        raise ConfigurationError(f"{name} must be a path such as '/_rai', got {value!r}")
    if any(c in value for c in "?#\"'<> ") or value.endswith("/"):
        raise ConfigurationError(
            f"{name} must not end with '/' nor contain ?, #, quotes, <, > or spaces, got {value!r}"
        )
    return value


def _prefixes(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, set, frozenset)):
        raise ConfigurationError(
            f"{name} must be a tuple of path prefixes such as ('/api', '/static'), "
            f"got {type(value).__name__}"
        )
    checked: list[str] = []
    for prefix in value:
        if (
            not isinstance(prefix, str)
            or not _LOCAL_PATH.match(prefix)
            or any(c in prefix for c in "?#")
        ):
            raise ConfigurationError(
                f"{name}: {prefix!r} is not a path prefix (a single leading '/', no query, "
                "fragment, spaces, quotes or <>)"
            )
        normalised = normalise_prefix(prefix)
        if normalised not in checked:
            checked.append(normalised)
    return tuple(checked)


def _callable(name: str, value: object) -> Callable[..., object]:
    """A callable, or the dotted path of one (``"myapp.rai.skip"`` or ``"myapp.rai:skip"``),
    as Django settings and Flask config give them."""
    if isinstance(value, str):
        module, _, attribute = value.rpartition(":" if ":" in value else ".")
        try:
            value = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigurationError(f"{name}: cannot import {value!r} ({exc})") from None
    if not callable(value):
        raise ConfigurationError(f"{name} must be a callable, or its dotted path")
    return value


def _tag_name(name: str, value: object) -> str:
    if not isinstance(value, str) or not _TAG_NAME.match(value.lower()):
        raise ConfigurationError(
            f"{name} must be an ASCII tag name such as 'rai-placeholder', got {value!r}"
        )
    return value.lower()


def _widgets(name: str, value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigurationError(f"{name} must be a non-empty mapping of widget name to element")
    checked = {}
    for key, element in value.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigurationError(f"{name}: {key!r} is not a widget name")
        checked[key.strip().lower()] = _tag_name(f"{name}[{key!r}]", element)
    return MappingProxyType(checked)


def _segments(name: str, value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigurationError(f"{name} must be a non-empty mapping")
    checked = {}
    for key, segment in value.items():
        if not isinstance(segment, str) or not _SEGMENT.match(segment):
            raise ConfigurationError(
                f"{name}[{key!r}] must be a URL path segment such as 'store-widget', "
                f"got {segment!r}"
            )
        checked[str(key).strip().lower()] = segment
    return MappingProxyType(checked)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(name: str, value: object) -> float:
    number = _number(name, value)
    if number <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {value!r}")
    return number


def _non_negative(name: str, value: object) -> float:
    number = _number(name, value)
    if number < 0:
        raise ConfigurationError(f"{name} must be 0 or more, got {value!r}")
    return number


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _callback(name: str, value: object) -> Callable[..., object]:
    """A callable, or the dotted path of one (``"myapp.metrics.on_event"`` or
    ``"myapp.metrics:on_event"``: settings files and ``app.config`` hold strings)."""
    if isinstance(value, str):
        module, _, attribute = value.rpartition(":" if ":" in value else ".")
        try:
            value = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigurationError(f"{name}: cannot import {value!r} ({exc})") from None
    if not callable(value):
        raise ConfigurationError(
            f"{name} must be a callable or its dotted path, got {type(value).__name__}"
        )
    return value


# The table, in the order of docs/options.md. --------------------------------------------------

OPTIONS: tuple[Option, ...] = (
    Option(
        "community_id",
        "`str`",
        "Your Returning.AI community id; added to every widget as `community-id`.",
        _community_id,
        env="RAI_COMMUNITY_ID",
    ),
    Option(
        "access_id",
        "`str`",
        "Access Key Embed id.",
        _secret,
        env="RAI_ACCESS_ID",
        secret=True,
    ),
    Option(
        "access_key",
        "`str` or a secret holder",
        "Access Key Embed secret. Never leaves the server except to the token endpoint. Like "
        "every secret option, it takes a `str`, Starlette's `Secret` or anything with "
        "`get_secret_value()` (pydantic's `SecretStr`); see [Secrets](secrets.md).",
        _secret,
        env="RAI_ACCESS_KEY",
        secret=True,
    ),
    Option(
        "identify",
        "`callable(scope)`, sync or async",
        'Returns the visitor\'s `userIdentifiers` (`{"data-customer-id": ...}`) or `None` for '
        "anonymous. See [Who is the visitor](identify.md).",
        default_text='reads `scope["user"]`',
    ),
    Option(
        "mode",
        '`"access_key"` \\| `"iframe"` \\| `"attributes"` \\| `"proxy"`',
        "Which Returning.AI auth flow to use; see [Auth modes](modes/index.md).",
        _string,
        default_text='`"access_key"`, or `"iframe"` when only `widget_api_key` is given',
    ),
    Option(
        "widget_api_key",
        "`str` or a secret holder",
        "The legacy Widget API key. Secret, like `access_key`.",
        _secret,
        env="RAI_WIDGET_API_KEY",
        secret=True,
    ),
    Option(
        "api_base_url",
        "`str`",
        "Where Access Key tokens are minted.",
        _base_url,
        DEFAULT_API_BASE_URL,
        env="RAI_API_BASE_URL",
    ),
    Option(
        "token_path",
        "`str`",
        "Path of the token endpoint under `api_base_url`.",
        _path,
        DEFAULT_TOKEN_PATH,
    ),
    Option(
        "sdk_url",
        "`str`",
        "The widget SDK script added to pages (pinned): an absolute http(s) URL, or a path "
        "such as `/static/rai-widget.iife.js` for a copy your site serves itself "
        "(`script-src 'self'`).",
        _script_url,
        DEFAULT_SDK_URL,
    ),
    Option(
        "sdk_integrity",
        "`str`",
        "Subresource Integrity hash of the script at `sdk_url` (`sha384-...`): the SDK "
        '`<script>` gets `integrity` and `crossorigin="anonymous"`, so a browser refuses '
        "a changed script. Compute it from the exact file: `openssl dgst -sha384 -binary "
        "rai-widget.iife.js \\| openssl base64 -A`, prefixed with `sha384-`. Mode "
        "`access_key`.",
        _integrity,
        default_text="`None` (no check)",
    ),
    Option(
        "widgets_base_url",
        "`str`",
        "The widgets host: signin (`/widget/{community_id}/signin`), iframe pages and the "
        "loader's `data-api-url` (modes `iframe`, `attributes`, `proxy`).",
        _base_url,
        DEFAULT_WIDGETS_BASE_URL,
        env="RAI_WIDGETS_BASE_URL",
    ),
    Option(
        "iframe_segments",
        "`Mapping[str, str]`",
        "`widget=` value to the path segment of the widget page (modes `iframe`, `attributes`, "
        "`proxy`).",
        _segments,
        DEFAULT_IFRAME_SEGMENTS,
        default_text=", ".join(f"{k} `{v}`" for k, v in DEFAULT_IFRAME_SEGMENTS.items()),
    ),
    Option(
        "loader_url",
        "`str`",
        "The loader script (mode `attributes`): an absolute http(s) URL or a same-origin path, "
        "as for `sdk_url`.",
        _script_url,
        DEFAULT_LOADER_URL,
    ),
    Option(
        "endpoint_prefix",
        "`str`",
        "Where the middleware serves its own endpoints (`{prefix}/embed-token`, or "
        "`{prefix}/signin` in mode `iframe`, or `{prefix}/widget/{segment}/{widget_id}` in mode "
        "`proxy`). It wins over the app: a route of yours at "
        "that exact path is never reached. The middleware logs the path it answers (INFO) "
        "when it is constructed.",
        _prefix,
        "/_rai",
    ),
    Option(
        "exclude_paths",
        "`tuple[str, ...]`",
        "Path prefixes the middleware leaves alone, matched by whole segments under the "
        "mount point (`root_path`, `SCRIPT_NAME`): `/api` excludes `/api` and `/api/...`, not "
        "`/apiary`. Checked before anything else: the app gets the server's own `receive` "
        "and `send` and an untouched scope (`pathsend` stays available). See "
        "[Excluding routes](excluding-routes.md).",
        _prefixes,
        (),
        default_text="`()`",
    ),
    Option(
        "skip",
        "`callable(request) -> bool` or its dotted path",
        "Leave a request alone when this returns true; called with the ASGI scope, the WSGI "
        "environ, or Django's or Flask's request, after `exclude_paths`. If it raises, the "
        "request is handled as usual and the exception logged.",
        _callable,
        default_text="`None`",
    ),
    Option(
        "placeholder_tag",
        "`str`",
        "The tag the middleware looks for.",
        _tag_name,
        DEFAULT_PLACEHOLDER_TAG,
    ),
    Option(
        "runtime_tag",
        "`str`",
        "The tag replaced, for a signed-in visitor, by the SDK and the browser runtime "
        "(`window.raiMiddleware.token()`, placeholders rendered in the browser); by nothing "
        "for an anonymous one. For pages whose widgets are rendered in the browser (an SPA's "
        "shell). Modes `access_key`, `iframe`.",
        _tag_name,
        DEFAULT_RUNTIME_TAG,
    ),
    Option(
        "widgets",
        "`Mapping[str, str]`",
        "`widget=` value to SDK element name, replacing the defaults.",
        _widgets,
        DEFAULT_WIDGETS,
        default_text="the table in [Placeholders](placeholders.md)",
    ),
    Option(
        "timeout",
        "`float` (s)",
        "Upper bound on one token request as a whole (a slow or trickling answer included); a "
        "page never waits longer for a token (however many pages share the mint), or 1.5 "
        "times `timeout` with a `token_store`, however slowly the store answers.",
        _positive,
        3.0,
    ),
    Option(
        "min_token_ttl",
        "`float` (s)",
        "A token is put in a page only if it still has this long to live.",
        _non_negative,
        300.0,
    ),
    Option(
        "refresh_ahead",
        "`float` (s)",
        "A cached token with less than `min_token_ttl + refresh_ahead` left is replaced by one "
        "background mint while it keeps being served, so visitors after the first never wait "
        "for a mint. `0` turns it off.",
        _non_negative,
        120.0,
    ),
    Option(
        "keep_warm",
        "`float` (s)",
        "Keep the tokens of identities seen within this many seconds fresh on their own: a "
        "background check every 5 s renews a token shortly before it would stop being "
        "servable, so a visitor who comes back never waits for a mint. At most one mint per "
        "identity per token window while it stays active. ASGI only.",
        _non_negative,
        0.0,
        default_text="`0.0` (off)",
    ),
    Option(
        "proxy_page_ttl",
        "`float` (s)",
        "Mode `proxy`: how long a widget page fetched from `widgets_base_url` is kept (without "
        "any token, keyed by segment, widget id and color) and served to every visitor. `0` "
        "turns the cache off.",
        _non_negative,
        60.0,
    ),
    Option(
        "cache_maxsize",
        "`int`",
        "Identities whose token is kept (least recently used go first).",
        _positive_int,
        10_000,
    ),
    Option(
        "http_client",
        "`httpx.AsyncClient` or `httpx2.AsyncClient` (WSGI, Django, Flask: `httpx.Client` or "
        "`httpx2.Client`)",
        "Use this client for upstream calls (its timeouts, proxies, transport). Not closed by "
        "the middleware. Any object with the same methods fits; see "
        "[HTTP clients](http-clients.md).",
        default_text="own client",
    ),
    Option(
        "token_store",
        "`RedisTokenStore` (ASGI), `SyncRedisTokenStore` (WSGI, Django, Flask) or `None`",
        "A store shared by processes and hosts, so that each identity is minted once for all "
        "of them; see [Deployment](deployment.md).",
        default_text="`None` (per process)",
    ),
    Option(
        "secret_key",
        "`str` or a secret holder",
        "Signs refresh tickets and keys the identity hashes. Set it when several processes "
        "must accept each other's tickets and you rotate keys.",
        _secret,
        env="RAI_SECRET_KEY",
        secret=True,
        default_text="derived (HMAC) from the mode's key (`access_key`, `widget_api_key`), "
        "random per process in mode `attributes`",
    ),
    Option(
        "ticket_max_age",
        "`int` (s)",
        "How long a page's refresh ticket is accepted.",
        _positive_int,
        12 * 60 * 60,
        default_text="`43200` (12 h)",
    ),
    Option(
        "max_placeholder_size",
        "`int` (bytes)",
        "A placeholder larger than this is passed through as text, with a warning; bounds "
        "memory per response.",
        _positive_int,
        64 * 1024,
    ),
    Option(
        "failure_threshold",
        "`int`",
        "Failed token requests in a row that open the circuit breaker.",
        _positive_int,
        5,
    ),
    Option(
        "failure_cooldown",
        "`float` (s)",
        "How long the breaker stays open: no upstream calls, fallbacks served at once, one log "
        "line.",
        _non_negative,
        30.0,
    ),
    Option(
        "on_event",
        "`callable(Event)` or its dotted path",
        "Called with each event (name, identity hash, duration; see `docs/metrics.md`) on a "
        "background thread of its own: a slow or failing callable never delays a page.",
        _callback,
        default_text="`None`",
    ),
    Option(
        "clock",
        "`callable() -> float`",
        "The clock token expiry is kept on. For tests.",
        default_text="`time.monotonic`",
    ),
)

#: The rows that are settings (everything but the adapter keywords), by name.
SETTINGS: Mapping[str, Option] = MappingProxyType(
    {option.name: option for option in OPTIONS if option.parse is not None}
)
