"""Issue 12, item 7: a compressed stream that cannot be decoded, on every entrance.

Before anything was rewritten, it goes out unchanged from its first byte to its last (the
attack run's client got 110 of 330 bytes while the log said "sending it unchanged"); once
rewritten bytes have left, the response ends there, and the log says which happened.
"""

# ruff: noqa: F811  (the suite's fixtures, imported, are the tests' parameters)
from __future__ import annotations

import logging
import zlib

import pytest

from rai_middleware.testing import FakeReturningAI
from tests.entrances import (
    GZIP_STREAM,
    GZIP_THEN_GARBAGE,
    MISLABELLED_GZIP,
    STREAM_AFTER,
    STREAM_BEFORE,
    Site,
)
from tests.test_entrances import (  # noqa: F401  (fixtures)
    ALICE,
    clock,
    entrance,
    fake,
    make_site,
    served_fake,
    site,
    widget_page,
    widget_parts,
)


def gunzip_prefix(data: bytes) -> bytes:
    """What a browser shows of a gzip body that may end early."""
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def test_a_mislabelled_gzip_stream_is_sent_unchanged_to_its_last_byte(
    site: Site, fake: FakeReturningAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        response = site.get("/gzip-mislabelled", headers=ALICE)
    assert response.status == 200
    assert response.header("Content-Encoding") == ["gzip"]
    assert response.body == b"".join(MISLABELLED_GZIP)
    assert len(response.body) == sum(map(len, MISLABELLED_GZIP))
    assert "nothing of it was rewritten: sending it unchanged from its first byte" in caplog.text


def test_a_flushed_gzip_stream_goes_as_the_apps_bytes_until_the_placeholder(
    site: Site, fake: FakeReturningAI
) -> None:
    response = site.get("/gzip-stream", headers=ALICE)
    assert response.header("Content-Encoding") == ["gzip"]
    assert response.body.startswith(GZIP_STREAM[0])  # the app's own first chunk
    token, _ = widget_parts(widget_page(STREAM_BEFORE, STREAM_AFTER), gunzip_prefix(response.body))
    assert fake.decode(token)["data-customer-id"] == "alice"
    assert zlib.decompress(response.body, 16 + zlib.MAX_WBITS)  # a whole, valid gzip stream


def test_a_gzip_stream_that_breaks_after_rewritten_bytes_ends_with_an_error(
    site: Site, fake: FakeReturningAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        response = site.get("/gzip-then-garbage", headers=ALICE)
    assert response.body.startswith(GZIP_THEN_GARBAGE[0])
    assert b"garbage" not in response.body
    assert b"embed-token" in gunzip_prefix(response.body)
    assert "after rewritten bytes had left; ending the response there" in caplog.text
