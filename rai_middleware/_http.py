"""Small, protocol-free helpers over raw HTTP header lists (``[(name, value), ...]``)."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CACHE_HEADERS",
    "FRAGMENT_REQUEST_HEADERS",
    "PRIVATE_PAGE_HEADERS",
    "TURBO_STREAM",
    "ResponseInfo",
    "csp_nonce",
    "fragment_request",
    "inspect_response",
    "may_be_page",
    "private_page_keeps",
    "rewrite_headers",
    "same_origin",
    "streamed_headers",
]

RawHeaders = list[tuple[bytes, bytes]]

#: Turbo Stream responses are HTML fragments (``<turbo-stream>`` elements) too.
TURBO_STREAM = b"text/vnd.turbo-stream.html"
_HTML_TYPES = frozenset({b"text/html", b"application/xhtml+xml", TURBO_STREAM})
_DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
_CHARSET = re.compile(rb"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/=_-]+)'")
_PRIVATE_CACHE_CONTROL = (b"cache-control", b"private, no-store")
# Headers that describe the body the app wrote, and are wrong for the one we send.
_VALIDATORS = frozenset(
    {b"etag", b"last-modified", b"content-md5", b"digest", b"content-digest", b"repr-digest"}
)
#: What every rewritten page varies on: who the visitor is (a session cookie, or HTTP auth).
_VARY_ON = (b"Cookie", b"Authorization")

# -- the headers of a private page (one that carries a token or an identity) ---------------
#
# The rule, an allow-list: a private page keeps an app header when
#   1. its name is on PRIVATE_PAGE_HEADERS (the standard headers an HTML page uses, none of
#      which lets a cache keep the page; Set-Cookie, every one, included), or
#   2. it is no standard header about caching (CACHE_HEADERS) and its name says nothing
#      about caching either: no word of _CACHE_WORDS between its hyphens, and none of
#      "cache", "expire", "surrogate" anywhere in it (an app's own X-Request-Id or HX-Trigger
#      stays; X-Accel-Expires, CDN-Cache-Control, Vercel-CDN-Cache-Control, Edge-Control,
#      Netlify-Vary, X-Cache-Tags and any vendor's next one go).
# Everything else is dropped; then ``Cache-Control: private, no-store`` is added and Vary
# gets Cookie and Authorization (merged with the app's own Vary). Content-Length and the
# validators of the app's body follow the rules of every rewritten page.

#: The standard response headers a private page keeps as the app sent them.
PRIVATE_PAGE_HEADERS = frozenset(
    {
        b"accept-ch",
        b"accept-ranges",
        b"access-control-allow-credentials",
        b"access-control-allow-headers",
        b"access-control-allow-methods",
        b"access-control-allow-origin",
        b"access-control-expose-headers",
        b"access-control-max-age",  # a CORS preflight's lifetime, not the page's
        b"allow",
        b"alt-svc",
        b"clear-site-data",
        b"connection",
        b"content-disposition",
        b"content-encoding",
        b"content-language",
        b"content-location",
        b"content-security-policy",
        b"content-security-policy-report-only",
        b"content-type",
        b"critical-ch",
        b"cross-origin-embedder-policy",
        b"cross-origin-embedder-policy-report-only",
        b"cross-origin-opener-policy",
        b"cross-origin-opener-policy-report-only",
        b"cross-origin-resource-policy",
        b"date",
        b"document-policy",
        b"feature-policy",
        b"keep-alive",
        b"link",
        b"location",
        b"nel",
        b"origin-agent-cluster",
        b"permissions-policy",
        b"referrer-policy",
        b"refresh",
        b"report-to",
        b"reporting-endpoints",
        b"retry-after",
        b"server",
        b"server-timing",
        b"set-cookie",
        b"strict-transport-security",
        b"timing-allow-origin",
        b"trailer",
        b"transfer-encoding",
        b"via",
        b"x-content-type-options",
        b"x-dns-prefetch-control",
        b"x-frame-options",
        b"x-permitted-cross-domain-policies",
        b"x-powered-by",
        b"x-request-id",
        b"x-robots-tag",
        b"x-ua-compatible",
        b"x-xss-protection",
    }
)
#: Standard headers that let a cache keep (or say it kept) a page: never on a private one.
#: CDNs obey Surrogate-Control and (Cloudflare-)CDN-Cache-Control *instead of*
#: Cache-Control (RFC 9213); nginx obeys X-Accel-Expires, and Akamai Edge-Control, over it.
CACHE_HEADERS = frozenset(
    {
        b"age",
        b"cache-control",
        b"cache-status",
        b"cdn-cache-control",
        b"edge-control",
        b"expires",
        b"pragma",
        b"surrogate-control",
        b"surrogate-key",
        b"warning",
        b"x-accel-expires",
    }
)
_CACHE_WORDS = frozenset(
    {b"age", b"cache", b"cdn", b"edge", b"expires", b"pragma", b"stale", b"ttl", b"vary"}
)
_CACHE_FRAGMENTS = (b"cache", b"expire", b"surrogate")


@functools.lru_cache(maxsize=512)
def private_page_keeps(name: bytes) -> bool:
    """Whether a private page keeps the app's header ``name`` (lower case): the rule above."""
    if name in PRIVATE_PAGE_HEADERS:
        return True
    if name in CACHE_HEADERS or any(fragment in name for fragment in _CACHE_FRAGMENTS):
        return False
    return not _CACHE_WORDS.intersection(name.split(b"-"))


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What the start message says about a response, read in one pass over the headers."""

    candidate: bool
    encoding: str = "utf-8"
    csp: str | None = None
    #: ``gzip`` or ``deflate`` for a compressed candidate; None for an identity body.
    content_encoding: str | None = None
    #: An HTML page left alone only because of its (unsupported) Content-Encoding.
    skipped_encoding: str | None = None
    #: An HTML page left alone because its charset is unknown or not ASCII-compatible.
    skipped_charset: str | None = None
    #: ``application/xhtml+xml``: parsed as XML, so inline scripts need CDATA sections.
    xhtml: bool = False
    #: The app's ``Content-Length``, when it sent a valid one.
    content_length: int | None = None
    #: A ``text/vnd.turbo-stream.html`` response: a fragment, whatever the request.
    turbo_stream: bool = False


_PAGE_TYPES = (b"text/html", b"application/xhtml+xml", TURBO_STREAM[:21])


#: Request headers that ask for a fragment of a page: htmx (``HX-Request``, also sent by
#: ``hx-boost``), a Turbo Frame (``Turbo-Frame``), Unpoly (``X-Up-Version``).
FRAGMENT_REQUEST_HEADERS = ("hx-request", "turbo-frame", "x-up-version")
_FRAGMENT_REQUEST_BYTES = frozenset(name.encode() for name in FRAGMENT_REQUEST_HEADERS)


def fragment_request(headers: object) -> bool:
    """Does the request ask for a fragment (one of ``FRAGMENT_REQUEST_HEADERS``, with any
    value but ``false``)? ``headers`` is what the entrance has: ASGI's list of byte pairs,
    a WSGI environ (``HTTP_HX_REQUEST``) or a framework's case-insensitive header mapping."""
    if headers is None:
        return False
    get = getattr(headers, "get", None)
    if get is not None:
        for name in FRAGMENT_REQUEST_HEADERS:
            value = get(name) or get("HTTP_" + name.upper().replace("-", "_"))
            if isinstance(value, str) and value.strip() and value.strip().lower() != "false":
                return True
        return False
    for name, value in headers:  # type: ignore[attr-defined]
        if name.lower() in _FRAGMENT_REQUEST_BYTES and value.strip().lower() not in (b"", b"false"):
            return True
    return False


def may_be_page(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """The cheap first look: a 200 whose Content-Type starts like HTML. A response that
    fails it is certainly not a candidate; ``inspect_response`` decides for the others."""
    if status != 200:
        return False
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"content-type":
            return value.lstrip()[:21].lower().startswith(_PAGE_TYPES)
    return False


def inspect_response(status: int, headers: Iterable[tuple[bytes, bytes]]) -> ResponseInfo:
    """Is this an HTML page we may rewrite, and in which charset?"""
    if status != 200:
        return ResponseInfo(False)
    content_type: bytes | None = None
    csp: str | None = None
    content_encoding: str | None = None
    content_length: int | None = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            content_length = int(value) if value.strip().isdigit() else None
        elif lname == b"content-type":
            content_type = value
        elif lname == b"content-encoding":
            coding = value.strip().lower()
            if coding not in (b"", b"identity"):
                content_encoding = coding.decode("latin-1")
        elif lname == b"content-disposition":
            if value.split(b";", 1)[0].strip().lower() == b"attachment":
                return ResponseInfo(False)
        elif lname == b"content-security-policy" and csp is None:
            csp = value.decode("latin-1")
    if content_type is None:
        return ResponseInfo(False)
    page = _page_encoding(content_type)
    if page is None:
        return ResponseInfo(False)
    if isinstance(page, str):
        return ResponseInfo(False, skipped_charset=page)
    encoding, xhtml = page
    if content_encoding is not None and content_encoding not in _DECODABLE:
        return ResponseInfo(False, skipped_encoding=content_encoding)
    turbo_stream = content_type.split(b";", 1)[0].strip().lower() == TURBO_STREAM
    return ResponseInfo(
        True,
        encoding,
        csp,
        content_encoding,
        xhtml=xhtml,
        content_length=content_length,
        turbo_stream=turbo_stream,
    )


@functools.lru_cache(maxsize=64)
def _page_encoding(content_type: bytes) -> tuple[str, bool] | str | None:
    """(charset, is XHTML) of an HTML Content-Type we can rewrite; None if it is not HTML;
    the charset label itself if it is HTML in a charset we must not rewrite.

    Sites send a handful of distinct values, so the answer is cached."""
    media_type = content_type.split(b";", 1)[0].strip().lower()
    if media_type not in _HTML_TYPES:
        return None
    xhtml = media_type == b"application/xhtml+xml"
    match = _CHARSET.search(content_type)
    if match is None:
        return "utf-8", xhtml
    label = match.group(1).decode("latin-1")
    encoding = _ascii_compatible(label)
    return label if encoding is None else (encoding, xhtml)


# Python's names of the charsets in which an ASCII byte need not mean that ASCII character:
# the HTML standard's non-ASCII-compatible encodings, and the other stateful ones.
_NOT_ASCII_COMPATIBLE = ("utf-16", "utf-32", "iso2022", "utf-7", "hz")
_ASCII = bytes(range(128))
_ASCII_TEXT = _ASCII.decode("ascii")


def _ascii_compatible(label: str) -> str | None:
    """Python's name of the charset ``label``, if Python knows it and every ASCII byte in it
    stands for that ASCII character (so tags can be found in the bytes); else None."""
    try:
        encoding = codecs.lookup(label).name
        same = _ASCII.decode(encoding) == _ASCII_TEXT  # rot13 and base64 raise LookupError
    except (LookupError, UnicodeError):
        return None
    if not same or encoding.startswith(_NOT_ASCII_COMPATIBLE):
        return None  # EBCDIC, UTF-16 and the like: the page is sent as it is
    return encoding


def csp_nonce(policy: str | None) -> str | None:
    """The script nonce of a Content-Security-Policy header, if it has one."""
    if not policy:
        return None
    directives: dict[str, str] = {}
    for directive in policy.split(";"):
        parts = directive.strip().split(None, 1)
        if parts:
            directives.setdefault(parts[0].lower(), parts[1] if len(parts) > 1 else "")
    for name in ("script-src-elem", "script-src", "default-src"):
        if name in directives:
            match = _NONCE.search(directives[name])
            return match.group(1) if match else None
    return None


def rewrite_headers(
    headers: RawHeaders,
    *,
    content_length: int | None,
    private: bool,
    rewritten: bool,
) -> RawHeaders:
    """Headers for a body we changed (or may change, for a stream).

    ``content_length`` None drops the header (the server then chunks). ``rewritten``
    drops validators of the app's body and merges ``Cookie, Authorization`` into ``Vary``
    (the page depends on who the visitor is); ``private`` (a token or an identity is, or
    may be, in the page) keeps only what ``private_page_keeps`` allows and sets
    ``Cache-Control: private, no-store``.
    """
    out: RawHeaders = []
    changed = rewritten or private
    vary_at: int | None = None
    vary: list[bytes] = []  # the tokens of every Vary header, as first spelled
    seen: set[bytes] = set()
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            continue
        if changed and lname in _VALIDATORS:
            continue
        if private and lname != b"vary" and not private_page_keeps(lname):
            continue
        if lname == b"vary" and changed:
            for token in value.split(b","):
                token = token.strip()
                if token and token.lower() not in seen:
                    seen.add(token.lower())
                    vary.append(token)
            if vary_at is not None:
                continue  # merged into the first Vary header
            vary_at = len(out)
        out.append((name, value))
    if changed:
        if b"*" not in seen:
            vary.extend(token for token in _VARY_ON if token.lower() not in seen)
        merged = b", ".join(vary)
        if vary_at is None:
            out.append((b"vary", merged))
        else:
            out[vary_at] = (out[vary_at][0], merged)
    if private:
        out.append(_PRIVATE_CACHE_CONTROL)
    if content_length is not None:
        out.append((b"content-length", str(content_length).encode("ascii")))
    return out


def streamed_headers(headers: RawHeaders, *, private: bool) -> RawHeaders:
    """Headers of a page whose body streams through the rewrite. They leave before later
    chunks are seen, so: no Content-Length (the server chunks), none of the app's
    validators and ``Vary: Cookie, Authorization`` (a later placeholder may still change
    the body for this visitor), and the private page's headers for a signed-in visitor (a
    token may follow).
    Every adapter uses this one rule."""
    return rewrite_headers(headers, content_length=None, private=private, rewritten=True)


def _origin_tuple(scheme: str, hostport: str) -> tuple[str, str, int] | None:
    scheme = scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    if default is None:
        return None
    host, sep, port = hostport.lower().rpartition(":")
    if not sep or "]" in port:
        host, port = hostport.lower(), ""
    if not host:
        return None
    try:
        number = int(port) if port else default
    except ValueError:
        return None
    return scheme, host, number


def same_origin(origin: bytes, scheme: str, host: bytes | None) -> bool:
    """Does the ``Origin`` header name the origin this request was sent to?"""
    if host is None:
        return False
    text = origin.decode("latin-1").strip()
    origin_scheme, sep, rest = text.partition("://")
    if not sep or "/" in rest:
        return False
    own_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    theirs = _origin_tuple(origin_scheme, rest)
    ours = _origin_tuple(own_scheme, host.decode("latin-1").strip())
    return theirs is not None and theirs == ours
