"""Small pure helpers: response inspection, CSP, origins, identities, codecs."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import pytest

from rai_middleware._codec import BodyCodec, codec_for
from rai_middleware._http import csp_nonce, inspect_response, rewrite_headers, same_origin
from rai_middleware._identity import Identity, IdentityKey, checked_identity, default_identify


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-type", b"text/html")], (True, "utf-8", None)),
        ([(b"Content-Type", b"text/html; charset=latin-1")], (True, "iso8859-1", None)),
        ([(b"content-type", b'text/html; charset="UTF-8"')], (True, "utf-8", None)),
        (
            [(b"content-type", b"text/html"), (b"content-encoding", b"identity")],
            (True, "utf-8", None),
        ),
        (
            [(b"content-type", b"text/html"), (b"content-encoding", b"gzip")],
            (True, "utf-8", "gzip"),
        ),
        ([(b"content-type", b"text/htmlx")], (False, "utf-8", None)),
        ([(b"content-type", b"text/html; charset=utf-32")], (False, "utf-8", None)),
        (
            [(b"content-type", b"text/html"), (b"content-disposition", b"inline")],
            (True, "utf-8", None),
        ),
        ([], (False, "utf-8", None)),
    ],
)
def test_inspect_response(headers: list[tuple[bytes, bytes]], expected: tuple[Any, ...]) -> None:
    info = inspect_response(200, headers)
    assert (info.candidate, info.encoding, info.content_encoding) == expected


def test_inspect_response_keeps_the_first_csp() -> None:
    info = inspect_response(
        200,
        [
            (b"content-type", b"text/html"),
            (b"content-security-policy", b"script-src 'nonce-a'"),
            (b"content-security-policy", b"script-src 'nonce-b'"),
        ],
    )
    assert csp_nonce(info.csp) == "a"


@pytest.mark.parametrize(
    ("policy", "nonce"),
    [
        (None, None),
        ("", None),
        ("default-src 'self'", None),
        ("default-src 'nonce-d'", "d"),
        ("default-src 'nonce-d'; script-src 'self'", None),
        ("script-src 'self' 'nonce-abc+/='; style-src 'nonce-s'", "abc+/="),
        ("script-src-elem 'nonce-e'; script-src 'nonce-s'", "e"),
        ("  ; SCRIPT-SRC 'nonce-u'", "u"),
    ],
)
def test_csp_nonce(policy: str | None, nonce: str | None) -> None:
    assert csp_nonce(policy) == nonce


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "same"),
    [
        (b"http://a.example", "http", b"a.example", True),
        (b"http://a.example:80", "http", b"a.example", True),
        (b"https://a.example", "https", b"a.example:443", True),
        (b"http://[::1]:8000", "http", b"[::1]:8000", True),
        (b"http://a.example", "http", None, False),
        (b"http://a.example/path", "http", b"a.example", False),
        (b"ftp://a.example", "ftp", b"a.example", False),
        (b"http://a.example:x", "http", b"a.example", False),
        (b"http://", "http", b"a.example", False),
        (b"null", "http", b"a.example", False),
        (b"https://a.example", "wss", b"a.example", True),
    ],
)
def test_same_origin(origin: bytes, scheme: str, host: bytes | None, same: bool) -> None:
    assert same_origin(origin, scheme, host) is same


def test_rewrite_headers_keeps_vary_star_and_adds_cookie_once() -> None:
    star = rewrite_headers([(b"vary", b"*")], content_length=1, private=True, rewritten=True)
    assert (b"vary", b"*") in star
    empty = rewrite_headers([(b"Vary", b" ")], content_length=None, private=False, rewritten=True)
    assert empty == [(b"Vary", b"Cookie, Authorization")]
    untouched = rewrite_headers(
        [(b"etag", b"x"), (b"content-length", b"9")],
        content_length=None,
        private=False,
        rewritten=False,
    )
    assert untouched == [(b"etag", b"x")]


class _User:
    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


class _Broken:
    is_authenticated = True

    @property
    def identity(self) -> str:
        raise NotImplementedError

    username = "bob"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, None),
        (_User(is_authenticated=False, id=1), None),
        (_User(is_authenticated="yes", id=1), None),
        (_User(is_authenticated=True, customer_id="c", id=1), {"data-customer-id": "c"}),
        (_User(is_authenticated=True, pk=5, email=""), {"data-customer-id": "5"}),
        (_User(is_authenticated=True, email="e@x"), {"data-email": "e@x"}),
        (_User(is_authenticated=True), None),
        (_User(is_authenticated=True, id=lambda: 1, username="u"), {"data-customer-id": "u"}),
        (_Broken(), {"data-customer-id": "bob"}),
    ],
)
def test_default_identify(user: Any, expected: dict[str, str] | None) -> None:
    assert default_identify({"user": user} if user is not None else {}) == expected


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (["data-x"], "expected a mapping"),
        ({"data-x": True}, "values must be strings"),
        ({"data-x": 1.5}, "values must be strings"),
        ({1: "x"}, "keys must be the 'data-*' field names"),
        ({"data-": "x"}, "keys must be the 'data-*' field names"),
    ],
)
def test_checked_identity_refuses_bad_results(
    result: object, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        assert checked_identity(result, default_identify, b"k") is None
    assert message in caplog.text


def test_an_identity_is_keyed_once_and_only_for_the_same_identifiers() -> None:
    secret = IdentityKey(b"k")
    alice = checked_identity({"data-id": "alice"}, default_identify, secret)
    again = checked_identity({"data-id": "alice"}, default_identify, secret)
    bob = checked_identity({"data-id": "bob"}, default_identify, secret)
    assert alice is again
    assert alice == Identity.create({"data-id": "alice"}, b"k")
    assert bob is not None and alice is not None and bob.key != alice.key
    assert "alice" not in repr(secret)
    with pytest.raises(TypeError):  # shared between requests: read-only
        alice.identifiers["data-id"] = "mallory"  # type: ignore[index]


def test_checked_identity_converts_ints_and_drops_empty_values() -> None:
    identity = checked_identity({"data-id": 7, "data-email": ""}, default_identify, b"k")
    assert identity is not None
    assert identity.identifiers == {"data-id": "7"}
    assert checked_identity({"data-email": ""}, default_identify, b"k") is None
    assert "data-id" in repr(identity) and "7" not in repr(identity)


def test_codec_for_names() -> None:
    assert codec_for("GZIP") is not None
    assert codec_for("x-gzip") is not None
    assert codec_for("deflate") is not None
    assert codec_for("br") is None


def test_codec_raises_on_a_truncated_stream() -> None:
    codec = BodyCodec("gzip")
    data = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = data.compress(b"hello") + data.flush()
    with pytest.raises(zlib.error):
        codec.decode(body[:-4], final=True)


def test_codec_raw_deflate_corruption_after_the_first_chunk_is_an_error() -> None:
    codec = BodyCodec("deflate")
    compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    first = compressor.compress(b"x" * 100) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert codec.decode(first, final=False) == b"x" * 100
    with pytest.raises(zlib.error):
        codec.decode(b"\xff" * 20 + b"\x00" * 20, final=True)


def test_vary_headers_merge_into_one_set_of_tokens() -> None:
    headers = [(b"Vary", b"Accept, cookie"), (b"X-Other", b"1"), (b"vary", b"Cookie, Origin")]
    merged = rewrite_headers(headers, content_length=None, private=False, rewritten=True)
    assert merged == [(b"Vary", b"Accept, cookie, Origin, Authorization"), (b"X-Other", b"1")]
