"""Streaming gzip/deflate: decode an inner middleware's compressed page, re-encode ours.

A page compressed by a GZip middleware further in is still a page to rewrite. It is
decoded as it streams, scanned like any other, and encoded again with the same encoding.
Each outgoing chunk is flushed (``Z_SYNC_FLUSH``) so that streaming stays streaming.
"""

from __future__ import annotations

import zlib
from typing import Any

__all__ = ["MAX_INFLATED", "BodyCodec", "codec_for"]

#: The most one compressed message may inflate to. Compression middleware sends pages in
#: messages of kilobytes; a message that inflates past this is refused, not held in memory
#: (a whole page sent that way goes out unchanged; mid-stream, the response ends).
MAX_INFLATED = 16 * 1024 * 1024

# For ``Content-Encoding: deflate`` RFC 9110 means the zlib format; some servers send raw
# deflate. Decoding tries zlib and falls back to raw on the first chunk.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


class BodyCodec:
    """Decode the app's chunks and encode ours. One instance per response."""

    __slots__ = ("_decoder", "_encoder", "_fresh", "_wbits", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._wbits = _GZIP_WBITS if name == "gzip" else _ZLIB_WBITS
        self._decoder = zlib.decompressobj(self._wbits)
        self._encoder = zlib.compressobj(6, zlib.DEFLATED, self._wbits)
        self._fresh = True

    def decode(self, data: bytes, *, final: bool) -> bytes:
        """Raises ``zlib.error`` on a corrupt stream, and on one message that inflates
        past ``MAX_INFLATED`` bytes (a decompression bomb is not a page to rewrite)."""
        try:
            out = self._decoder.decompress(data, MAX_INFLATED)
        except zlib.error:
            if not (self._fresh and self._wbits == _ZLIB_WBITS):
                raise
            self._wbits = _RAW_WBITS
            self._decoder = zlib.decompressobj(_RAW_WBITS)
            self._encoder = zlib.compressobj(6, zlib.DEFLATED, _RAW_WBITS)
            out = self._decoder.decompress(data, MAX_INFLATED)
        if self._decoder.unconsumed_tail:
            raise zlib.error(f"one message inflates past {MAX_INFLATED} bytes")
        self._fresh = self._fresh and not data
        if final:
            out += self._decoder.flush()
            if not self._decoder.eof:
                raise zlib.error("the compressed body ends before its end marker")
        return out

    def decoder_copy(self) -> Any:
        """The decompressor as it stands (to try a continuation on without touching it)."""
        return self._decoder.copy()

    @property
    def ended(self) -> bool:
        """The compressed stream's end marker has been read."""
        return bool(self._decoder.eof)

    @property
    def trailing(self) -> bytes:
        """Bytes that came after the end of the compressed stream."""
        return bytes(self._decoder.unused_data)

    def encode(self, data: bytes, *, final: bool) -> bytes:
        out = self._encoder.compress(data)
        return out + self._encoder.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def codec_for(content_encoding: str) -> BodyCodec | None:
    name = content_encoding.strip().lower()
    if name in ("gzip", "x-gzip"):
        return BodyCodec("gzip")
    if name == "deflate":
        return BodyCodec("deflate")
    return None
