"""Widget pages for mode ``proxy``, without doing I/O: what to fetch, how to read the
answer, and the page cache. The token services fetch (``widget_page``); this decides.

- The page is ``GET {widgets_base_url}/{segment}/{widget_id}?color={color}``, sent with
  nothing of the visitor's (no cookie, no ``Authorization``): only ``Accept: text/html``.
- Only a ``200`` answer of media type ``text/html``, at most ``MAX_PAGE_BYTES``, holding the
  empty ``token`` of ``window.__WIDGET_INIT__``, is used. It gets its ``<base>`` here and is
  cached as it is, without any token, for ``proxy_page_ttl`` seconds (keyed by segment,
  widget id and color; at most ``CACHE_CHARS`` characters in all, least recently used out
  first): the same for every visitor.
- Concurrent requests for one page share one fetch (single flight), and wait for it no
  longer than the fetch's own deadline.
- A timeout, a network error, a 5xx, a 401, 403 or 429 and an answer that is not HTML count
  towards the circuit breaker, as a failed mint does; while it is open no page is fetched.
  Any other 4xx (an unknown widget) and a page without the token slot do not.
"""

from __future__ import annotations

import codecs
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cachetools import TTLCache

from ._exceptions import TokenError
from ._modes.proxy import add_base, has_token_slot
from ._needs import PageNeed
from ._upstream import UPSTREAM_WIDE_4XX, transport_error

if TYPE_CHECKING:
    from ._config import Settings
    from ._tokens import TokenPolicy

__all__ = [
    "CACHE_CHARS",
    "MAX_PAGE_BYTES",
    "PAGE_HEADERS",
    "Fetched",
    "PageFlight",
    "PageTooLarge",
    "WidgetPages",
]

logger = logging.getLogger("rai_middleware")

#: The largest widget page used (decoded bytes); a larger answer is refused.
MAX_PAGE_BYTES = 1024 * 1024
#: What the page cache holds at most, in characters, over all its pages.
CACHE_CHARS = 16 * 1024 * 1024
#: The only headers sent for a widget page.
PAGE_HEADERS = {b"accept": b"text/html"}


class PageTooLarge(Exception):
    """The widgets host's answer is larger than ``MAX_PAGE_BYTES``."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """The widgets host's answer, read in full."""

    status: int
    content_type: str
    body: bytes = field(repr=False)


class PageFlight:
    """One fetch of one page in progress: the waiters' answer is ``page`` once ``settled``
    (None: no page to be had). Only ``WidgetPages`` changes it, under its lock."""

    __slots__ = ("_wakers", "deadline", "page", "settled")

    def __init__(self, deadline: float) -> None:
        #: ``time.monotonic()`` by which every waiter has its answer.
        self.deadline = deadline
        self.page: str | None = None
        self.settled = False
        self._wakers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"PageFlight(settled={self.settled})"


class WidgetPages:
    """The page rules and cache, thread-safe, one per token service (sharing its policy's
    clock and breaker)."""

    def __init__(self, settings: Settings, policy: TokenPolicy) -> None:
        self._settings = settings
        self._policy = policy
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str, str], PageFlight] = {}
        self._cache: TTLCache[tuple[str, str, str], str] | None = None
        if settings.proxy_page_ttl > 0:
            self._cache = TTLCache(
                maxsize=CACHE_CHARS, ttl=settings.proxy_page_ttl, timer=policy.now, getsizeof=len
            )

    def __repr__(self) -> str:
        return f"WidgetPages(ttl={self._settings.proxy_page_ttl:g})"

    def url(self, need: PageNeed) -> str:
        base = self._settings.widgets_base_url
        return f"{base}/{need.segment}/{need.widget_id}?color={need.color}"

    def cached(self, need: PageNeed) -> str | None:
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get(_key(need))

    def join(self, need: PageNeed, *, deadline: float) -> tuple[PageFlight, bool]:
        """The page's flight, and whether the caller leads it (fetches, then ``settle``)."""
        key = _key(need)
        with self._lock:
            flight = self._inflight.get(key)
            if flight is not None:
                return flight, False
            flight = self._inflight[key] = PageFlight(deadline)
            return flight, True

    def settle(self, need: PageNeed, flight: PageFlight, page: str | None) -> None:
        """The leader's outcome: every waiter wakes with it."""
        with self._lock:
            flight.page, flight.settled = page, True
            wakers, flight._wakers = flight._wakers, []
            if self._inflight.get(_key(need)) is flight:
                del self._inflight[_key(need)]
        for wake in wakers:
            wake()

    def when_settled(self, flight: PageFlight, wake: Callable[[], None]) -> None:
        """Call ``wake`` (from the thread that settles it) once ``flight`` has its page; at
        once if it has."""
        with self._lock:
            if not flight.settled:
                flight._wakers.append(wake)
                return
        wake()

    def in_flight(self) -> int:
        return len(self._inflight)

    def refused(self, need: PageNeed) -> bool:
        """True (logged at debug: the breaker said why once) when no page may be fetched."""
        reason = self._policy.upstream_refusal()
        if reason is not None:
            logger.debug("not fetching widget page %s: %s", _name(need), reason)
        return reason is not None

    def accept(self, need: PageNeed, fetched: Fetched) -> str | None:
        """The page (with its ``<base>``, no token) if the answer is usable, cached; else
        None, logged, and counted by the breaker when it concerns every visitor."""
        status = fetched.status
        media, _, params = fetched.content_type.partition(";")
        if status != 200:
            if status >= 500 or status in UPSTREAM_WIDE_4XX:
                self._policy.upstream_failed(TokenError(f"HTTP {status}"), _what(need))
            else:
                logger.warning(
                    "the widgets host answered HTTP %d for widget page %s; answering 503",
                    status,
                    _name(need),
                )
            return None
        if media.strip().lower() != "text/html":
            shown = media.strip()[:60]
            failure = TokenError(f"HTTP 200 with Content-Type {shown!r}, not text/html")
            self._policy.upstream_failed(failure, _what(need))
            return None
        page = add_base(
            _decode(fetched.body, params), f"{self._settings.widgets_base_url}/{need.segment}/"
        )
        if not has_token_slot(page):
            logger.error(
                'widget page %s has no window.__WIDGET_INIT__ = { token: "" } to put the '
                "token in; answering 503",
                _name(need),
            )
            return None
        self._policy.upstream_answered()
        if self._cache is not None:
            with self._lock:
                self._cache[_key(need)] = page
        return page

    def failed(self, need: PageNeed, error: BaseException) -> None:
        """The fetch raised: a timeout or network error counts towards the breaker."""
        if isinstance(error, PageTooLarge):
            logger.error(
                "widget page %s is larger than %d bytes; answering 503",
                _name(need),
                MAX_PAGE_BYTES,
            )
            return
        failure = transport_error(error, self._settings.timeout)
        self._policy.upstream_failed(failure, _what(need))


def _key(need: PageNeed) -> tuple[str, str, str]:
    return (need.segment, need.widget_id, need.color)


def _name(need: PageNeed) -> str:
    return f"{need.segment}/{need.widget_id}?color={need.color}"


def _what(need: PageNeed) -> str:
    return f"widget page request ({_name(need)})"


def _decode(body: bytes, params: str) -> str:
    """The body in the ``charset`` of the Content-Type's parameters if it is one a web page
    is written in (UTF-8, ASCII, ISO-8859-*, windows-125*), else UTF-8; undecodable bytes
    become U+FFFD. Python's other codecs are refused: ``unicode_escape`` would turn the text
    ``\\x3c`` into a real ``<``, and ``idna`` or ``punycode`` raise on ordinary pages."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            try:
                codec = codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                break
            if codec in ("utf-8", "ascii") or codec.startswith(("iso8859-", "cp125")):
                return body.decode(codec, "replace")
            break
    return body.decode("utf-8", "replace")
