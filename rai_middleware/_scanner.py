"""Find placeholder elements in HTML bytes, chunk by chunk, without decoding the page.

``PlaceholderScanner`` is a small incremental tokenizer. It is fed the body as it arrives
and returns, for each chunk, the bytes that are certainly not part of a placeholder
(to be sent on at once) and every complete ``Placeholder`` it found. What it holds back
between chunks is at most one unfinished placeholder (capped at ``max_size`` bytes) or a
tail of a few bytes that might start one, so memory is bounded by the largest
placeholder, never by the page.

It knows just enough HTML to leave alone what a browser would not parse as an element:
comments, and the raw text of ``<script>``, ``<style>``, ``<textarea>``, ``<title>``,
``<xmp>``, ``<iframe>``, ``<noembed>`` and ``<noframes>``. A ``<`` that
appears inside another tag (in an attribute value) is skipped too, using the nearest
``<``/``>`` before it; a ``>`` inside a quoted attribute value earlier in that tag can
fool this check, which is the one known limit.

Everything is done on bytes: tag names are ASCII, and ``bytes.lower()`` only touches
ASCII letters, so offsets in the lowered copy are offsets in the page for every
ASCII-compatible charset (UTF-8, Latin-1, Windows-125x, ...). UTF-16/32 pages must not
be fed here; the adapters pass them through.

Joining every passthrough chunk with each placeholder's ``raw`` bytes gives back exactly
the input: nothing is lost, whatever the input.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["Placeholder", "PlaceholderScanner", "scan"]

_TEXT = 0
_COMMENT = 1
_RAWTEXT = 2

# What may follow a tag name for it to be that tag (``<script>``, not ``<scripts>``).
_TAG_DELIMITERS = frozenset(b" \t\n\r\f/>")
_QUOTE_OR_END = re.compile(rb"[>\"']")
# Elements whose content a browser reads as text, not markup: a placeholder there is text.
_RAWTEXT_ELEMENTS = (
    b"script",
    b"style",
    b"textarea",
    b"title",
    b"xmp",
    b"iframe",
    b"noembed",
    b"noframes",
)
# Bytes scanned at a time (see ``feed``).
_WINDOW = 64 * 1024


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One placeholder element, as found in the page.

    ``raw`` is the exact source (open tag to end tag, or the self-closing tag);
    ``attributes`` the bytes between the tag name and ``>`` (still HTML-encoded);
    ``inner`` the fallback content between the tags, empty when self-closing.
    """

    raw: bytes
    attributes: bytes
    inner: bytes
    self_closing: bool


Item = bytes | Placeholder


class PlaceholderScanner:
    """Incremental scanner. One instance per response; not shared between requests."""

    __slots__ = (
        "_close",
        "_in_tag",
        "_max_size",
        "_needle_numbers",
        "_needles",
        "_open",
        "_pattern",
        "_pending",
        "_rawtext_end",
        "_state",
        "oversized",
    )

    def __init__(self, tag: str = "rai-placeholder", *, max_size: int = 64 * 1024) -> None:
        name = tag.lower().encode("ascii")
        self._open = b"<" + name
        self._close = b"</" + name
        self._max_size = max_size
        # (needle, kind, needs a delimiter after it); kind: _COMMENT, _RAWTEXT, or -1 for ours.
        self._needles: tuple[tuple[bytes, int, bool], ...] = (
            (b"<!--", _COMMENT, False),
            *((b"<" + element, _RAWTEXT, True) for element in _RAWTEXT_ELEMENTS),
            (self._open, -1, True),
        )
        self._pattern = _construct_pattern(tuple(needle for needle, _, _ in self._needles))
        self._needle_numbers = {needle: i for i, (needle, _, _) in enumerate(self._needles)}
        self._pending = b""
        self._state = _TEXT
        self._rawtext_end = b""
        self._in_tag = False
        #: How many placeholders were given up on because they exceeded ``max_size``.
        self.oversized = 0

    @property
    def pending(self) -> bytes:
        """The bytes held back, not yet returned by ``feed``."""
        return self._pending

    def feed(self, data: bytes | bytearray | memoryview) -> list[Item]:
        """Scan the next chunk; return what can be released now, in order."""
        out: list[Item] = []
        if len(data) <= _WINDOW:
            self._feed_window(data, out)
        else:
            # A big chunk is scanned a window at a time, so that the lowered copy and the
            # pieces it is cut into stay small whatever the app sends at once.
            view = memoryview(data)
            for start in range(0, len(view), _WINDOW):
                self._feed_window(view[start : start + _WINDOW], out)
        return out

    def _feed_window(self, data: bytes | bytearray | memoryview, out: list[Item]) -> None:
        buf = self._pending + data if self._pending else bytes(data)
        self._pending = b""
        if buf:
            self._scan(buf, out, final=False)

    def close(self) -> list[Item]:
        """End of the body: release everything still held (an unfinished placeholder
        stays as it was written)."""
        buf, self._pending = self._pending, b""
        out: list[Item] = []
        if buf:
            self._scan(buf, out, final=True)
        return out

    def _scan(self, buf: bytes, out: list[Item], *, final: bool) -> None:
        low = buf.lower()
        n = len(buf)
        pos = 0  # where scanning resumes
        emitted = 0  # everything before this has been put in ``out``
        text_start = 0  # where the current run of plain text began, for ``_inside_tag``
        hold = n  # from here on, bytes go back to ``_pending``
        while pos < n:
            if self._state == _COMMENT:
                end = low.find(b"-->", pos)
                if end < 0:
                    hold = n if final else max(pos, n - 2)
                    break
                pos = text_start = end + 3
                self._state = _TEXT
                self._in_tag = False
                continue
            if self._state == _RAWTEXT:
                end = self._find_tag(low, self._rawtext_end, pos, n)
                if end == -1:
                    hold = n if final else max(pos, n - len(self._rawtext_end))
                    break
                if end == -2:  # needle at the very end; need the next byte to decide
                    if final:
                        hold = n
                        break
                    hold = n - len(self._rawtext_end)
                    break
                # Inside the end tag now; its ``>`` follows.
                pos = text_start = end + len(self._rawtext_end)
                self._state = _TEXT
                self._in_tag = True
                continue
            found = self._next_construct(low, pos, n)
            if found is None:
                if not final:
                    # Hold a tail that may be the start of a needle cut by the chunk end.
                    longest = max(len(needle) for needle, _, _ in self._needles)
                    last_lt = low.rfind(b"<", max(pos, n - longest))
                    if last_lt >= 0 and self._could_start_needle(low[last_lt:]):
                        hold = last_lt
                self._in_tag = self._inside_tag(low, text_start, hold)
                break
            index, needle_number = found
            if index < 0:  # a needle sits at the end of the chunk, undecided
                if final:
                    self._in_tag = self._inside_tag(low, text_start, n)
                    break
                hold = -index - 1
                self._in_tag = self._inside_tag(low, text_start, hold)
                break
            if self._inside_tag(low, text_start, index):
                pos = index + 1
                continue
            needle, kind, _ = self._needles[needle_number]
            if kind == _COMMENT:
                self._state = _COMMENT
                pos = index + 2  # so that ``<!-->`` and ``<!--->`` end where browsers end them
                continue
            if kind == _RAWTEXT:
                self._state = _RAWTEXT
                self._rawtext_end = b"</" + needle[1:]
                pos = index + len(needle)
                continue
            placeholder = self._parse_placeholder(buf, low, index)
            if placeholder is None and final:  # unfinished at the end of the body
                pos = index + 1
                continue
            if placeholder is None and n - index <= self._max_size:  # unfinished: wait
                hold = index
                self._in_tag = False
                break
            if placeholder is None or len(placeholder.raw) > self._max_size:
                # Too big to be a placeholder we should hold: let it through as text,
                # whether or not its end happens to be in this chunk.
                self.oversized += 1
                pos = index + len(self._open)
                continue
            if index > emitted:
                out.append(buf[emitted:index])
            out.append(placeholder)
            pos = emitted = text_start = index + len(placeholder.raw)
            self._in_tag = False
        if hold > emitted:
            out.append(buf[emitted:hold])
        self._pending = buf[hold:] if hold < n else b""

    def _next_construct(self, low: bytes, pos: int, n: int) -> tuple[int, int] | None:
        """Earliest needle at or after ``pos``: (index, needle number).

        An index below zero, ``-(index + 1)``, means a needle whose delimiter byte has not
        arrived yet."""
        search = self._pattern.search
        while (match := search(low, pos)) is not None:
            needle = match.group()
            number = self._needle_numbers[needle]
            index = match.start()
            if number == 0:  # <!-- needs no delimiter
                return index, 0
            after = match.end()
            if after == n:
                return -index - 1, number
            if low[after] in _TAG_DELIMITERS:
                return index, number
            pos = index + 1  # ``<scripts``, ``<rai-placeholderx``: not ours
        return None

    def _could_start_needle(self, tail: bytes) -> bool:
        return any(needle.startswith(tail) for needle, _, _ in self._needles)

    @staticmethod
    def _find_tag(low: bytes, needle: bytes, pos: int, n: int) -> int:
        """Index of ``needle`` followed by a tag delimiter; -1 if absent, -2 if undecided."""
        at = low.find(needle, pos)
        while at >= 0:
            after = at + len(needle)
            if after >= n:
                return -2
            if low[after] in _TAG_DELIMITERS:
                return at
            at = low.find(needle, at + 1)
        return -1

    def _inside_tag(self, low: bytes, start: int, end: int) -> bool:
        """Is ``end`` inside another element's tag, judged by the nearest ``<``/``>``?

        Inside if a tag opened (``<`` then a letter or ``/``) after the last ``>``; a ``<``
        that opens nothing (``a < b``, or one in an attribute value) does not decide."""
        gt = low.rfind(b">", start, end)
        lt = low.find(b"<", max(gt + 1, start), end)
        while lt >= 0:
            following = low[lt + 1 : lt + 2]
            if following.isalpha() or following in (b"/", b""):
                return True
            lt = low.find(b"<", lt + 1, end)
        return self._in_tag if gt < 0 else False

    def _parse_placeholder(self, buf: bytes, low: bytes, index: int) -> Placeholder | None:
        """The placeholder starting at ``index``, or None if its end has not arrived."""
        attrs_start = index + len(self._open)
        pos = attrs_start
        while True:
            match = _QUOTE_OR_END.search(buf, pos)
            if match is None:
                return None
            if match.group() == b">":
                tag_end = match.end()
                break
            closing_quote = buf.find(match.group(), match.end())
            if closing_quote < 0:
                return None
            pos = closing_quote + 1
        attributes = buf[attrs_start : tag_end - 1]
        if attributes.endswith(b"/"):
            return Placeholder(buf[index:tag_end], attributes[:-1], b"", True)
        close_at = self._find_tag(low, self._close, tag_end, len(buf))
        if close_at < 0:
            return None
        close_end = buf.find(b">", close_at + len(self._close))
        if close_end < 0:
            return None
        return Placeholder(buf[index : close_end + 1], attributes, buf[tag_end:close_at], False)


@functools.lru_cache(maxsize=16)
def _construct_pattern(needles: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """All needles in one pass, searched on the lowered buffer. A plain alternation of
    literals (no groups, no lookahead) keeps ``re``'s fast path that jumps from '<' to '<'
    in C; which needle matched, and whether a delimiter follows, is checked in Python for
    the few matches. Longest first, so that a tag name that begins like another wins."""
    ordered = sorted((needle[1:] for needle in needles), key=len, reverse=True)
    return re.compile(b"<(?:" + b"|".join(re.escape(name) for name in ordered) + b")")


def scan(data: bytes, tag: str = "rai-placeholder", *, max_size: int = 64 * 1024) -> list[Item]:
    """Scan a whole body at once (the pure-function form of ``PlaceholderScanner``)."""
    scanner = PlaceholderScanner(tag, max_size=max_size)
    return scanner.feed(data) + scanner.close()
