"""Small, protocol-free helpers over raw HTTP header lists (``[(name, value), ...]``)."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ResponseInfo",
    "csp_nonce",
    "inspect_response",
    "may_be_page",
    "rewrite_headers",
    "same_origin",
    "streamed_headers",
]

RawHeaders = list[tuple[bytes, bytes]]

_HTML_TYPES = frozenset({b"text/html", b"application/xhtml+xml"})
_DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
_CHARSET = re.compile(rb"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/=_-]+)'")
_PRIVATE_CACHE_CONTROL = (b"cache-control", b"private, no-store")
# Headers that describe the body the app wrote, and are wrong for the one we send.
_VALIDATORS = frozenset(
    {b"etag", b"last-modified", b"content-md5", b"digest", b"content-digest", b"repr-digest"}
)
# What tells a cache (the browser's, a proxy's, a CDN's) to keep a page. A page with a
# token must not be kept by any shared cache: CDNs obey Surrogate-Control and
# (Cloudflare-)CDN-Cache-Control *instead of* Cache-Control (RFC 9213), so those go too.
# nginx obeys X-Accel-Expires, and Akamai Edge-Control, over Cache-Control.
_SHARED_CACHE_HEADERS = frozenset(
    {
        b"cache-control",
        b"expires",
        b"pragma",
        b"surrogate-control",
        b"surrogate-key",
        b"x-accel-expires",
        b"edge-control",
    }
)


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


_PAGE_TYPES = (b"text/html", b"application/xhtml+xml")


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
    return ResponseInfo(
        True, encoding, csp, content_encoding, xhtml=xhtml, content_length=content_length
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
    drops validators of the app's body and adds ``Vary: Cookie``; ``private`` (a token is
    or may be in the page) also sets ``Cache-Control: private, no-store``.
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
        if private and (lname in _SHARED_CACHE_HEADERS or lname.endswith(b"cdn-cache-control")):
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
        if b"cookie" not in seen and b"*" not in seen:
            vary.append(b"Cookie")
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
    validators and ``Vary: Cookie`` (a later placeholder may still change the body for
    this visitor), and ``private, no-store`` for a signed-in visitor (a token may follow).
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
