"""Find placeholder elements in HTML bytes, chunk by chunk, without decoding the page.

``PlaceholderScanner`` is an incremental tokenizer that follows the HTML standard's
tokenizer for one question: is this ``<`` the start of a real placeholder start tag? A
placeholder is only recognised where the browser's tokenizer is in the *data state*. The
contexts it tracks, as the standard defines them:

* tags, start and end, with their attribute names and quoted and unquoted values (a ``>``
  inside a quoted value does not end the tag; a ``<`` anywhere in a tag is part of it);
* comments, including the abrupt ``<!-->`` and ``<!--->`` and the ``--!>`` ending;
* bogus comments (``<?...>``, ``</`` followed by a non-letter, ``<!x...>``) and doctypes,
  which end at the first ``>``;
* ``<![CDATA[...]]>`` in foreign content (inside ``<svg>``/``<math>``, counted by nesting
  depth); elsewhere it is a bogus comment. Foreign content changes nothing else here: a
  ``<script>`` inside ``<svg>`` is treated as raw text, as in HTML;
* raw text and RCDATA (``script``, ``style``, ``xmp``, ``iframe``, ``noembed``,
  ``noframes``, ``noscript``, ``textarea``, ``title``), which end only at their own end tag
  (``</script`` followed by a tag delimiter, any case);
* the script data escaped and double-escaped states (``<!--`` in a script, then
  ``<script>`` inside that, so that a later ``</script>`` does not end the script);
* ``<plaintext>``: everything after it is text, to the end of the body.

Placeholders: ``<rai-placeholder ...>fallback</rai-placeholder>`` ends at the first
``</rai-placeholder`` end tag that the tokenizer sees in the data state (one inside a
comment or a script in the fallback does not count). A placeholder start tag inside the
fallback is part of the fallback, so the outer placeholder is replaced whole, and the end
tag that closes it is the first one (the browser would close the inner element there; the
stray end tag the rewrite leaves is ignored by browsers). A start tag whose attributes end
with ``/`` is a complete, self-closing placeholder (our convention; browsers ignore ``/``).
A placeholder still open at the end of the body is sent as written, and the fallback is
scanned once more for complete placeholders inside it.

Cost: every byte is examined a bounded number of times, whatever the input or chunking.
The state between chunks (the tokenizer state, and inside a tag or script the exact
sub-state) is carried over and resumed, never re-scanned; only a few bytes that might begin
a token cut by the chunk end (``<scri``, ``</rai-placeh``, ``--``) are held and looked at
again. The fast path: one case-insensitive search (a two-byte gate after ``<``, then a
group-free trie of byte sets) finds the next construct that could change the state; the
last ``>`` before it shows whether a tag may be open there (only a quoted value, whose
opening quote follows ``=``, can hide a ``>``). If none can be, the tags in between are
never read; otherwise one regular expression reads them exactly, in C. A comment is then
skipped with one search for its end, and the text and ordinary script and style blocks
that follow with one match; a placeholder whose fallback is plain text is one match too.

Memory: what is held between chunks is an unfinished placeholder (at most ``max_size``
bytes; a longer one is given up, sent on as text and counted in ``oversized``) or such a
short tail.

Everything is done on bytes: tag names are ASCII and matched ASCII-case-insensitively, so
offsets are offsets in the page for every ASCII-compatible charset (UTF-8, Latin-1,
Windows-125x, ...). UTF-16/32 pages must not be fed here; the adapters pass them through.

Joining every passthrough chunk with each placeholder's ``raw`` bytes gives back exactly
the input: nothing is lost, whatever the input.

The interface is small on purpose, so that a compiled accelerator could replace the
implementation: the ``PlaceholderScanner`` class (``feed``, ``close``, ``pending``,
``oversized``), the ``Placeholder`` record and the module-level ``scan`` function.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RESERVED_TAGS", "Placeholder", "PlaceholderScanner", "scan"]

# -- modes: where the tokenizer is between two bytes ---------------------------------------
_DATA = 0
_TAG = 1  # inside a tag; ``_tag_state`` says where exactly
_COMMENT = 2
_BOGUS = 3  # bogus comment or doctype: ends at the first ``>``
_CDATA = 4
_RAW = 5  # raw text or RCDATA: ends at ``</name`` + delimiter
_SCRIPT = 6  # script data; ``_script_state`` says which escaping state
_PLAINTEXT = 7

# -- sub-states inside a tag (the standard's, merged where they act the same for us) -------
_TAG_NAME = 0
_BEFORE_NAME = 1  # before attribute name, after a quoted value, self-closing start tag
_NAME = 2
_AFTER_NAME = 3
_BEFORE_VALUE = 4
_DOUBLE = 5
_SINGLE = 6
_UNQUOTED = 7

# -- what the end of the current tag leads to ---------------------------------------------
_THEN_DATA = 0
_THEN_RAW = 1
_THEN_SCRIPT = 2
_THEN_PLAINTEXT = 3
_THEN_FOREIGN = 4  # <svg>, <math>: one level deeper, unless self-closing
_THEN_UNFOREIGN = 5  # </svg>, </math>
_THEN_OPEN = 6  # the start tag of a placeholder
_THEN_CLOSE = 7  # the end tag of a placeholder
_THEN_GIVEN_UP = 8  # the start tag of a placeholder given up on (oversized)

# -- sub-states of script data ------------------------------------------------------------
_SCRIPT_DATA = 0
_SCRIPT_ESCAPED = 1
_SCRIPT_DOUBLE_ESCAPED = 2

_WS = rb"\t\n\f\r "
_SPACE = frozenset(b"\t\n\f\r ")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

_RAW_ELEMENTS = frozenset(
    (b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript", b"textarea", b"title")
)
_FOREIGN_ELEMENTS = frozenset((b"svg", b"math"))
_SPECIAL_ELEMENTS = _RAW_ELEMENTS | _FOREIGN_ELEMENTS | {b"script", b"plaintext"}
#: Tag names the page parses specially, which no placeholder or runtime tag may take.
RESERVED_TAGS = frozenset(name.decode() for name in _SPECIAL_ELEMENTS)

# Attributes, exactly as the tokenizer reads them (names may start with ``=``, ``"`` or
# ``<``; a value is quoted only right after ``=``). Possessive, and a quoted value matches
# even unfinished (to the end of the buffer), so that no later ``>`` is ever taken for the
# end of the tag by backtracking.
_ATTRIBUTES = (
    rb"(?:[" + _WS + rb"/]++|[^" + _WS + rb"/>][^" + _WS + rb"/>=]*+"
    rb"(?:[" + _WS + rb"]*=[" + _WS + rb"]*+"
    rb"(?:\"[^\"]*+\"?+|'[^']*+'?+|[^" + _WS + rb">\"'][^" + _WS + rb">]*+)?)?)*+"
)
# The same attributes, from the "before attribute name" state to the ``>`` (or the end of
# the buffer), remembering where the last one began: for a tag that does not end in the
# buffer, only that last attribute is walked through in Python.
# (One step of the loop takes the spaces and the attribute after them: half the steps of
# taking each on its own.)
_LAST_ATTRIBUTE = re.compile(
    rb"(?:[" + _WS + rb"/]*+([^" + _WS + rb"/>][^" + _WS + rb"/>=]*+"
    rb"(?>[" + _WS + rb"]*+=[" + _WS + rb"]*+"
    rb"(?:\"[^\"]*+\"?+|'[^']*+'?+|[^" + _WS + rb">\"'][^" + _WS + rb">]*+)?)?))*+"
    rb"[" + _WS + rb"/]*+"
)
_SPACE_SLASH = re.compile(rb"[" + _WS + rb"/]*+")
_SPACES = re.compile(rb"[" + _WS + rb"]*+")
_TAG_NAME_RUN = re.compile(rb"[^" + _WS + rb"/>]*+")
_ATTRIBUTE_NAME_RUN = re.compile(rb"[^" + _WS + rb"/>=]*+")
_UNQUOTED_RUN = re.compile(rb"[^" + _WS + rb">]*+")
_COMMENT_END = re.compile(rb"--!?>")
# Bytes before a quote that make it possibly the opening quote of an attribute value.
_MAY_OPEN = frozenset(b"=\t\n\f\r ")
# A ``<`` that opens a tag, an end tag, a bogus comment or a doctype.
_OPENS = re.compile(rb"<[a-zA-Z!?/]")
_SCRIPT_DATA_STOP = re.compile(rb"(?i)</script(?=[" + _WS + rb"/>])|<!--")
_SCRIPT_ESCAPED_STOP = re.compile(rb"(?i)-->|</?script(?=[" + _WS + rb"/>])")
_SCRIPT_DOUBLE_STOP = re.compile(rb"(?i)-->|</script(?=[" + _WS + rb"/>])")


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
    #: The tag name, lower-cased (the scanner's ``tag`` or one of ``also``). Not compared:
    #: the source bytes say it already.
    tag: bytes = field(default=b"rai-placeholder", compare=False)


Item = bytes | Placeholder


def _names(names: frozenset[bytes] | set[bytes]) -> bytes:
    return b"|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))


@functools.lru_cache(maxsize=64)
def _run_pattern(name: tuple[bytes, ...], *, foreign: bool, inside: bool) -> re.Pattern[bytes]:
    """Text and ordinary tags, consumed in C until something that changes the state.

    Stops before: a comment, a start tag that switches the tokenizer (raw text, script,
    plaintext, svg/math) or is a placeholder (outside one), a placeholder end tag (inside
    one), ``</svg``/``</math`` and CDATA (in foreign content), and anything unfinished at
    the end of the buffer (every alternative needs its closing ``>`` in the buffer)."""
    special_start = set(_SPECIAL_ELEMENTS) | (set() if inside else set(name))
    special_end = (set(_FOREIGN_ELEMENTS) if foreign else set()) | (set(name) if inside else set())
    delimiter = rb"(?=[" + _WS + rb"/>])"
    start = rb"<(?!(?i:" + _names(special_start) + rb")" + delimiter + rb")[a-zA-Z]"
    end = rb"</"
    if special_end:
        end += rb"(?!(?i:" + _names(special_end) + rb")" + delimiter + rb")"
    end += rb"[a-zA-Z]"
    markup = rb"<!(?!--|\[CDATA\[)" if foreign else rb"<!(?!--)"
    pattern = (
        rb"(?:[^<]++|<(?=[^a-zA-Z!?/])"
        rb"|(?:" + start + rb"|" + end + rb")[^" + _WS + rb"/>]*+" + _ATTRIBUTES + rb">"
        rb"|</>|</(?=[^a-zA-Z>])[^>]*+>|<\?[^>]*+>|" + markup + rb"[^>]*+>)*+"
    )
    return re.compile(pattern)


_DELIMITERS = frozenset(_WS + b"/>")


#: One byte of a construct's start: as the first of a branch (a byte set, which ``re``
#: tests before entering the branch), inside a chain (a case-folded literal, cheaper to
#: test), and the bytes it accepts.
Atom = tuple[bytes, bytes, frozenset[int]]


def _trie(words: list[list[Atom]]) -> bytes:
    """A group-free alternation of ``words`` (sequences of one-byte atoms), merged on
    their common prefixes so that each branch begins with its own byte set: ``re`` skips a
    branch whose first set does not match without entering it."""
    branches: dict[bytes, list[list[Atom]]] = {}
    for word in words:
        branches.setdefault(word[0][0], []).append(word)
    out = []
    for group in branches.values():
        first = group[0][0][0] if len(branches) > 1 else group[0][0][1]
        rests = [word[1:] for word in group if len(word) > 1]
        out.append(first + (_trie(rests) if rests else b""))
    return out[0] if len(out) == 1 else b"(?:" + b"|".join(out) + b")"


def _atom(byte: int, *, fold: bool) -> Atom:
    char = bytes([byte])
    if fold and char.isalpha():
        both = frozenset((char.lower()[0], char.upper()[0]))
        return b"[" + char.lower() + char.upper() + b"]", b"(?i:" + char + b")", both
    return re.escape(char), re.escape(char), frozenset((byte,))


@functools.lru_cache(maxsize=64)
def _candidate_pattern(
    name: tuple[bytes, ...], *, foreign: bool, inside: bool
) -> re.Pattern[bytes]:
    """The constructs ``_run_pattern`` stops at, found directly, without reading the
    tags in between. A match is only a candidate: it may sit inside a tag (see ``_sync``).

    Built for ``re``'s costs: most of the time goes into the ``<`` that start nothing of
    interest (``</a>``, ``<img``...), so a lookahead on the next two bytes (each from the
    set that any construct allows there) turns most of them away cheaply, and the few
    left walk a trie whose branches begin with their own byte set. No group (capturing
    groups make ``re`` much slower)."""
    starts = set(_SPECIAL_ELEMENTS) | (set() if inside else set(name))
    ends = (set(_FOREIGN_ELEMENTS) if foreign else set()) | (set(name) if inside else set())
    lookahead = rb"(?=[" + _WS + rb"/>])"
    delimiter = (lookahead, lookahead, _DELIMITERS)
    words = [[_atom(byte, fold=False) for byte in b"!--"]]
    if foreign:
        words.append([_atom(byte, fold=False) for byte in b"![CDATA["])
    words += [[_atom(byte, fold=True) for byte in tag] + [delimiter] for tag in sorted(starts)]
    words += [
        [_atom(0x2F, fold=False)] + [_atom(byte, fold=True) for byte in tag] + [delimiter]
        for tag in sorted(ends)
    ]
    # Nothing here may look past the construct's own name: a candidate inside an
    # attribute value is searched past again and again, so matching, say, a whole comment
    # here would read to the end of the page for each one (quadratic).
    gate = b""
    for at in range(2):
        allowed = frozenset().union(*(word[at][2] for word in words))
        gate += b"[" + b"".join(re.escape(bytes([byte])) for byte in sorted(allowed)) + b"]"
    return re.compile(b"<(?=" + gate + b")" + _trie(words))


Search = Callable[[bytes | bytearray, int], "re.Match[bytes] | None"]


@functools.lru_cache(maxsize=16)
def _patterns(name: tuple[bytes, ...]) -> tuple[tuple[Search, ...], tuple[Search, ...]]:
    """Candidate searches and exact runs, by ``2 * foreign + inside``; built once per set of
    tag names, so that a scanner costs little to create (one per response). Inside an
    element, the end tag of any of the names stops the search; only the open one's counts."""
    variants = [(foreign, inside) for foreign in (False, True) for inside in (False, True)]
    candidates = tuple(
        _candidate_pattern(name, foreign=foreign, inside=inside).search
        for foreign, inside in variants
    )
    runs = tuple(_run_pattern(name, foreign=f, inside=i).match for f, i in variants)
    return candidates, runs


@functools.lru_cache(maxsize=16)
def _setup(
    tag: str, also: tuple[str, ...]
) -> tuple[tuple[bytes, ...], tuple[Search, ...], tuple[Search, ...], Search, int]:
    """What a scanner for these tag names starts from, worked out once (a scanner is made
    for every response): the names, lower-cased; the candidate searches and exact runs;
    the usual placeholder of the first name in one match (the others go the general way);
    and the longest tag name whose identity matters (a name cut by the chunk end is held
    until it is this long or ends)."""
    names = tuple(dict.fromkeys(t.lower().encode("ascii") for t in (tag, *also)))
    candidates, runs = _patterns(names)
    longest = max(*(len(n) for n in names), *map(len, _SPECIAL_ELEMENTS))
    return names, candidates, runs, _simple_pattern(names[0]), longest


@functools.lru_cache(maxsize=16)
def _simple_pattern(name: bytes) -> Search:
    """The usual placeholder, whole: its start tag, a fallback without ``<`` (so without
    any construct), and ``</name>`` right after. Groups: the attributes, the fallback."""
    named = rb"(?i:" + re.escape(name) + rb")"
    start = rb"<" + named + rb"(?=[" + _WS + rb"/>])(" + _ATTRIBUTES + rb")>"
    return re.compile(start + rb"([^<]*+)</" + named + rb">").match


@functools.lru_cache(maxsize=64)
def _end_tag_pattern(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?i)</" + re.escape(name) + rb"(?=[" + _WS + rb"/>])")


def _block(name: bytes) -> bytes:
    """The usual raw text element after its ``<``, whole: start tag, text, ``</name>`` (no
    script escape, no other ending of the end tag)."""
    named = rb"(?i:" + re.escape(name) + rb")"
    stop = rb"<(?!/" + named + rb"[" + _WS + rb"/>]" + (rb"|!--)" if name == b"script" else rb")")
    start = named + rb"(?=[" + _WS + rb"/>])" + _ATTRIBUTES + rb">"
    return start + rb"[^<]*+(?:" + stop + rb"[^<]*+)*+</" + named + rb">"


#: From a position in the data state: text and whole raw text elements of the usual kind,
#: as many as follow each other. Anything else (a tag, a comment, a script with ``<!--``
#: in it...) ends it; the general way then reads that, once. (Comments are not in it:
#: ``re`` reads a comment's text much slower than it searches for ``-->``.)
_SKIP_BODY = (
    rb"(?:[^<]++|<(?:"
    + b"|".join(_block(name) for name in sorted(_RAW_ELEMENTS | {b"script"}))
    + rb"))*+"
)
_SKIP = re.compile(_SKIP_BODY).match
#: The end of a comment (searched from after ``<!--``), then ``_SKIP``.
_COMMENT_END_SKIP = re.compile(rb"--!?>" + _SKIP_BODY).search


class PlaceholderScanner:
    """Incremental scanner. One instance per response; not shared between requests."""

    __slots__ = (
        "_buf",
        "_candidates",
        "_foreign",
        "_foreign_at_open",
        "_last_byte",
        "_longest",
        "_max_size",
        "_mode",
        "_name",
        "_names",
        "_open",
        "_open_end",
        "_pos",
        "_raw_end",
        "_runs",
        "_script_state",
        "_simple",
        "_skipping",
        "_slash",
        "_start",
        "_tag_start",
        "_tag_state",
        "_then",
        "oversized",
        "steps",
    )

    def __init__(
        self,
        tag: str = "rai-placeholder",
        *,
        max_size: int = 64 * 1024,
        also: tuple[str, ...] = (),
    ) -> None:
        # ``also``: more tag names found the same way (``Placeholder.tag`` says which).
        # Inside one element, another's start tag is part of its fallback.
        names, self._candidates, self._runs, self._simple, self._longest = _setup(tag, tuple(also))
        self._names = names
        self._name = names[0]  # the open (or last opened) element's name
        self._open = b"<" + self._name
        self._max_size = max_size
        self._buf: bytes | bytearray = b""  # bytes not yet released
        self._pos = 0  # where scanning resumes in ``_buf``
        self._mode = _DATA
        self._tag_state = _TAG_NAME
        self._tag_start = 0
        self._then = _THEN_DATA
        self._raw_end = b""
        self._script_state = _SCRIPT_DATA
        self._foreign = 0
        self._foreign_at_open = 0
        self._start = -1  # offset of the open placeholder's ``<`` in ``_buf``, or -1
        self._open_end = 0  # offset just after its start tag
        self._skipping = False  # inside a placeholder given up on (oversized)
        self._slash = False  # the tag just read ended with a self-closing ``/>``
        self._last_byte = 0  # the last byte of the previous chunk, inside a tag
        #: How many placeholders were given up on because they exceeded ``max_size``.
        self.oversized = 0
        #: Bytes examined by Python-level steps and C calls; for tests of linear cost.
        self.steps = 0

    @property
    def pending(self) -> bytes:
        """The bytes held back, not yet returned by ``feed``."""
        return bytes(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Item]:
        """Scan the next chunk; return what can be released now, in order."""
        if not data:
            return []
        if isinstance(data, memoryview):
            data = data.tobytes()  # (``in`` on a memoryview compares items, not bytes)
        if self._mode == _DATA and self._pos == len(self._buf) and b"<" not in data:
            # Text in the data state changes nothing: pass it on, or add it to the
            # placeholder being held, without scanning (1-byte chunks stay cheap).
            self.steps += len(data)
            if self._start < 0:
                return [bytes(data)]
            if len(self._buf) + len(data) - self._start <= self._max_size:
                if not isinstance(self._buf, bytearray):
                    self._buf = bytearray(self._buf)
                self._buf += data
                self._pos = len(self._buf)
                return []
        held = self._buf
        if not held:
            self._buf = bytes(data)
        elif self._start < 0 and len(held) <= _SHORT:
            # A few bytes cut by the chunk end (``<scri``): one copy, and pieces of bytes
            # are sliced without another.
            self._buf = bytes(held) + data
        else:  # a placeholder growing chunk by chunk (or a long tail): appended in place
            if not isinstance(held, bytearray):
                self._buf = held = bytearray(held)
            held += data
        out: list[Item] = []
        self._scan(out, final=False)
        return out

    def close(self) -> list[Item]:
        """End of the body: release everything still held (an unfinished placeholder
        stays as it was written)."""
        out: list[Item] = []
        if self._buf:
            self._scan(out, final=True)
        if self._start >= 0:
            self._reopen(out)
        if self._buf:
            out.append(bytes(self._buf))
        self._buf = b""
        self._pos = 0
        return _joined(out)

    def _reopen(self, out: list[Item]) -> None:
        """An unfinished placeholder at the end: send its start tag as written and look
        for complete placeholders in its fallback (once; nothing more is held)."""
        buf, start = self._buf, self._start
        self._start = -1
        if self._mode == _TAG and self._then == _THEN_OPEN:
            return  # the start tag itself is unfinished: all of it is text
        if start:
            out.append(bytes(buf[:start]))
        out.append(bytes(buf[start : self._open_end]))
        self._buf = buf[self._open_end :]
        self._pos = 0
        self._mode = _DATA
        self._foreign = self._foreign_at_open
        self._scan(out, final=True)
        if self._start >= 0:  # another unfinished one inside: text this time
            self._start = -1

    # -- the main loop ---------------------------------------------------------------------

    def _scan(self, out: list[Item], *, final: bool) -> None:
        """Scan ``_buf`` from ``_pos``; put what is certain in ``out``; keep the rest."""
        buf = self._buf
        n = len(buf)
        pos = self._pos
        emitted = 0  # everything before this is in ``out``
        hold = n  # a token cut by the end of the buffer starts here (rescanned next time)
        self.steps += n - pos
        while pos < n:
            mode = self._mode
            if mode == _DATA:
                pos = self._data(buf, pos, n)
                if pos >= n:
                    break
                if self._start < 0 and not self._skipping:
                    # The usual placeholder in one step; anything else the general way.
                    simple = self._simple(buf, pos)
                    if simple is not None:
                        end = simple.end()
                        attributes = bytes(simple.group(1))
                        if end - pos <= self._max_size and not attributes.endswith(b"/"):
                            if pos > emitted:
                                out.append(_piece(buf, emitted, pos))
                            raw = bytes(buf[pos:end])
                            inner = bytes(simple.group(2))
                            out.append(Placeholder(raw, attributes, inner, False, self._names[0]))
                            emitted = pos = end
                            continue
                result = self._dispatch(buf, pos, n, final)
                if result < 0:  # undecided until more bytes come
                    hold = pos
                    break
                pos = result
            elif mode == _TAG:
                end = self._tag(buf, pos, n)
                if end < 0:
                    pos = n
                    break
                pos = end
                found = self._tag_done(buf, end)
                if found is not None:
                    start = self._start if self._then == _THEN_CLOSE else self._tag_start
                    if start > emitted:
                        out.append(_piece(buf, emitted, start))
                    out.append(found)
                    emitted = end
                    self._start = -1
                self._after_tag(buf, end)
            elif mode == _COMMENT:
                match = _COMMENT_END.search(buf, pos)
                if match is None:
                    hold = pos if final else max(pos, n - 3)
                    break
                pos = match.end()
                self._mode = _DATA
            elif mode == _BOGUS:
                end = buf.find(b">", pos)
                if end < 0:
                    pos = n
                    break
                pos = end + 1
                self._mode = _DATA
            elif mode == _CDATA:
                end = buf.find(b"]]>", pos)
                if end < 0:
                    hold = pos if final else max(pos, n - 2)
                    break
                pos = end + 3
                self._mode = _DATA
            elif mode == _RAW:
                match = _end_tag_pattern(self._raw_end).search(buf, pos)
                if match is None:
                    hold = pos if final else max(pos, n - len(self._raw_end) - 2)
                    break
                pos = self._enter_end_tag(match.end())
                if pos < n and buf[pos] == 0x3E:  # the usual ``</style>``: done
                    self._mode = _DATA
                    pos += 1
            elif mode == _SCRIPT:
                result = self._script(buf, pos, n)
                if result < 0:  # ``~result``: where the current escaping state began
                    hold = n if final else max(~result, n - 8)
                    break
                pos = result
                if pos < n and buf[pos] == 0x3E:  # the usual ``</script>``: done
                    self._mode = _DATA
                    pos += 1
            else:  # _PLAINTEXT
                pos = n
                break
        if final:
            hold = n
        self._release(buf, out, emitted, hold, n)

    def _release(
        self, buf: bytes | bytearray, out: list[Item], emitted: int, hold: int, n: int
    ) -> None:
        """Send what is certain, keep the rest for the next chunk."""
        start = self._start
        if start >= 0 and not self._skipping and n - start > self._max_size:
            # Too big to be a placeholder we should hold: give up on it; what follows
            # is still its fallback (any placeholder start tag there is part of it).
            self.oversized += 1
            self._skipping = True
            self._start = start = -1
            if self._mode == _TAG and self._then == _THEN_OPEN:
                self._then = _THEN_GIVEN_UP  # still in its start tag
            elif self._mode == _TAG and self._then == _THEN_CLOSE:
                self._then = _THEN_DATA  # in its end tag: the placeholder is over
                self._skipping = False
        if self._mode == _TAG and n:
            self._last_byte = buf[n - 1]  # for ``/>`` cut between the two bytes
        keep = start if 0 <= start < hold else hold
        if keep > emitted:
            out.append(_piece(buf, emitted, keep))
        self._pos = hold - keep
        if keep == 0:
            self._buf = buf  # typically a placeholder still growing: nothing moves
            return
        self._buf = buf[keep:] if keep < n else b""
        if start >= 0:
            self._start = start - keep
            self._open_end -= keep
        self._tag_start -= keep

    # -- data state --------------------------------------------------------------------------

    def _data(self, buf: bytes | bytearray, pos: int, n: int) -> int:
        """Through the data state to the next construct that changes the state (returned,
        for ``_dispatch``), skipping the usual comments and raw text blocks on the way."""
        # Inside a placeholder, its end tag stops the search and its start tag does not.
        kind = 2 * (self._foreign > 0) + (self._start >= 0 or self._skipping)
        search = self._candidates[kind]
        rfind = buf.rfind
        while True:
            # Jump to just before the next construct that matters when the bytes before
            # it show that no tag is open there; else read exactly from where we are.
            candidate = search(buf, pos)
            target = candidate.start() if candidate is not None else n
            if target > pos:
                # ``_sync``, with its usual cases inline: a ``>`` right before the target,
                # after quotes that close values (not after ``=`` or spaces); or only
                # text since the last construct (``-->\n<script``).
                gt = rfind(b">", pos, target)
                if gt == target - 1:
                    at = rfind(b'"', pos, gt)
                    synced = at < 0 or (at > pos and buf[at - 1] not in _MAY_OPEN)
                    if synced:
                        at = rfind(b"'", pos, gt)
                        synced = at < 0 or (at > pos and buf[at - 1] not in _MAY_OPEN)
                else:
                    synced = gt < 0 and target < n and buf.find(b"<", pos, target) < 0
                if synced:
                    pos = target
                else:
                    pos = _sync(buf, pos, target)
                    if pos != target:
                        opens = _OPENS.search(buf, pos, target)
                        if opens is not None and buf.find(b">", opens.start()) < 0:
                            return opens.start()  # a tag that cannot end in this buffer
                        return self._runs[kind](buf, pos).end()  # type: ignore[union-attr]
            if candidate is None:
                return pos
            if buf[pos + 1] == 0x21:  # <!-- (or CDATA): a whole comment in one step
                if buf[pos + 2] != 0x2D:
                    return pos
                after = buf[pos + 4 : pos + 6]
                if after[:1] == b">" or after == b"->":  # <!--> and <!--->
                    pos += 5 if after[:1] == b">" else 6
                    pos = _SKIP(buf, pos).end()  # type: ignore[union-attr]
                    continue
                # Its end, and what follows it in the data state (``-->\n<script>...``).
                closing = _COMMENT_END_SKIP(buf, pos + 4)
                if closing is None:
                    return pos
                pos = closing.end()
            else:
                end = _SKIP(buf, pos).end()  # type: ignore[union-attr]
                if end == pos:
                    return pos  # a construct to enter, or an unusual raw text element
                pos = end

    # -- what the data state stopped at ------------------------------------------------

    def _dispatch(self, buf: bytes | bytearray, pos: int, n: int, final: bool) -> int:
        """At a ``<`` the run did not consume: enter the construct and return where to
        resume, or -1 if the bytes so far cannot tell which construct it is."""
        self.steps += 1
        if pos + 1 >= n:
            return n if final else -1
        second = buf[pos + 1]
        if second == 0x21:  # <!
            if buf[pos + 2 : pos + 4] == b"--":
                return self._comment(buf, pos, n, final)
            if self._foreign and buf[pos + 2 : pos + 9] == b"[CDATA[":
                self._mode = _CDATA
                return pos + 9
            if not final and (
                b"--".startswith(buf[pos + 2 : pos + 4])
                or (self._foreign and b"[CDATA[".startswith(buf[pos + 2 : pos + 9]))
            ):
                return -1
            self._mode = _BOGUS
            return pos + 2
        if second == 0x3F:  # <?
            self._mode = _BOGUS
            return pos + 1
        if second == 0x2F:  # </
            if pos + 2 >= n:
                return n if final else -1
            if buf[pos + 2] not in _LETTERS:
                if buf[pos + 2] == 0x3E:
                    return pos + 3  # </> is nothing
                self._mode = _BOGUS
                return pos + 2
            return self._enter_tag(buf, pos, pos + 2, n, final, end_tag=True)
        if second in _LETTERS:
            return self._enter_tag(buf, pos, pos + 1, n, final, end_tag=False)
        return pos + 1  # a ``<`` that opens nothing is text

    def _comment(self, buf: bytes | bytearray, pos: int, n: int, final: bool) -> int:
        after = buf[pos + 4 : pos + 6]
        if after[:1] == b">":
            return pos + 5  # <!-->
        if after == b"->":
            return pos + 6  # <!--->
        if not final and len(after) < 2 and after in (b"", b"-"):
            return -1  # <!-- or <!--- at the end: could still be one of those
        self._mode = _COMMENT
        return pos + 4

    def _enter_tag(
        self,
        buf: bytes | bytearray,
        pos: int,
        name_start: int,
        n: int,
        final: bool,
        *,
        end_tag: bool,
    ) -> int:
        name_end = _TAG_NAME_RUN.match(buf, name_start).end()  # type: ignore[union-attr]
        if name_end >= n and not final and name_end - name_start <= self._longest:
            return -1  # the name may go on, and could still be one that matters
        name = bytes(buf[name_start:name_end]).lower()
        then = _THEN_DATA
        if end_tag:
            if name == self._name and self._start >= 0:
                then = _THEN_CLOSE
            elif name == self._name and self._skipping:
                self._skipping = False  # the end of the placeholder given up on
            elif name in _FOREIGN_ELEMENTS and self._foreign:
                then = _THEN_UNFOREIGN
        elif name in self._names and self._start < 0 and not self._skipping:
            self._name, self._open = name, b"<" + name
            then = _THEN_OPEN
            self._start = pos
            self._foreign_at_open = self._foreign
        elif name == b"script":
            then = _THEN_SCRIPT
        elif name in _RAW_ELEMENTS:
            then = _THEN_RAW
            self._raw_end = name
        elif name == b"plaintext":
            then = _THEN_PLAINTEXT
        elif name in _FOREIGN_ELEMENTS:
            then = _THEN_FOREIGN
        self._tag_start = pos  # for a placeholder's end tag: where its fallback ends
        self._then = then
        self._mode = _TAG
        self._tag_state = _TAG_NAME
        self._slash = False
        return name_end

    def _enter_end_tag(self, name_end: int) -> int:
        """After ``</name`` that ends raw text or a script: the rest of the end tag."""
        self._mode = _TAG
        self._tag_state = _BEFORE_NAME
        self._then = _THEN_DATA
        self._slash = False
        return name_end

    # -- tags ----------------------------------------------------------------------------

    def _tag(self, buf: bytes | bytearray, pos: int, n: int) -> int:
        """Go on through a tag from ``_tag_state``; the offset after its ``>``, or -1 with
        the sub-state saved if the buffer ends first. Sets ``_slash`` for ``/>``."""
        state = self._tag_state
        slash = self._slash
        # An ordinary tag only comes here when it does not end in the buffer (the run
        # would have read it): no use trying to read its end in one step.
        unfinished = state == _TAG_NAME and self._then == _THEN_DATA
        if state == _TAG_NAME:
            pos = _TAG_NAME_RUN.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                self._slash = False
                return -1
            byte = buf[pos]
            pos += 1
            if byte == 0x3E:
                self._slash = False
                return pos
            state = _BEFORE_NAME
            slash = byte == 0x2F
        last = None
        if state == _BEFORE_NAME and self._then != _THEN_FOREIGN and not unfinished:
            # The whole rest of the tag in C (attributes only stop at ``>`` or the end of
            # the buffer). If it does not end in this buffer, the same read says where
            # its last attribute began, and the loop below only walks that one.
            last = _LAST_ATTRIBUTE.match(buf, pos)
            end = last.end()  # type: ignore[union-attr]
            if end < n:
                return end + 1
        skipped = False
        while True:
            if state == _BEFORE_NAME and not skipped:
                skipped = True
                if last is None:
                    last = _LAST_ATTRIBUTE.match(buf, pos)
                if last is not None and last.end() >= n and last.start(1) > pos:
                    pos = last.start(1)  # everything before it is complete attributes
                    slash = False
            if state == _BEFORE_NAME:
                run_end = _SPACE_SLASH.match(buf, pos).end()  # type: ignore[union-attr]
                if run_end > pos:
                    slash = buf[run_end - 1] == 0x2F
                pos = run_end
                if pos >= n:
                    break
                if buf[pos] == 0x3E:
                    self._slash = slash
                    return pos + 1
                state = _NAME
                pos += 1  # this byte starts a name, whatever it is (even ``=``)
            elif state == _NAME:
                pos = _ATTRIBUTE_NAME_RUN.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                byte = buf[pos]
                pos += 1
                if byte == 0x3E:
                    self._slash = False
                    return pos
                if byte == 0x3D:
                    state = _BEFORE_VALUE
                elif byte == 0x2F:
                    state = _BEFORE_NAME
                    slash = True
                else:
                    state = _AFTER_NAME
            elif state == _AFTER_NAME:
                pos = _SPACES.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                byte = buf[pos]
                if byte == 0x3E:
                    self._slash = False
                    return pos + 1
                if byte == 0x3D:
                    state = _BEFORE_VALUE
                    pos += 1
                elif byte == 0x2F:
                    state = _BEFORE_NAME
                    slash = True
                    pos += 1
                else:
                    state = _NAME
            elif state == _BEFORE_VALUE:
                pos = _SPACES.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                byte = buf[pos]
                if byte == 0x3E:
                    self._slash = False
                    return pos + 1
                if byte == 0x22:
                    state = _DOUBLE
                    pos += 1
                elif byte == 0x27:
                    state = _SINGLE
                    pos += 1
                else:
                    state = _UNQUOTED
            elif state in (_DOUBLE, _SINGLE):
                end = buf.find(b'"' if state == _DOUBLE else b"'", pos)
                if end < 0:
                    pos = n
                    break
                pos = end + 1
                state = _BEFORE_NAME
                slash = False
            elif state == _UNQUOTED:
                pos = _UNQUOTED_RUN.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                byte = buf[pos]
                pos += 1
                if byte == 0x3E:
                    self._slash = False
                    return pos
                state = _BEFORE_NAME
                slash = False
            else:  # _TAG_NAME
                pos = _TAG_NAME_RUN.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                byte = buf[pos]
                pos += 1
                if byte == 0x3E:
                    self._slash = False
                    return pos
                state = _BEFORE_NAME
                slash = byte == 0x2F
        # A slash at the very end of the buffer is lost here; it only matters for
        # ``<svg/>`` cut exactly between ``/`` and ``>``, so keep it in the state.
        self._tag_state = state
        self._slash = slash
        return -1

    def _tag_done(self, buf: bytes | bytearray, end: int) -> Placeholder | None:
        """The tag ending at ``end`` is complete: a placeholder, if it finishes one."""
        then = self._then
        if then == _THEN_OPEN:
            start = self._start
            attributes = bytes(buf[start + len(self._open) : end - 1])
            if attributes.endswith(b"/"):
                self._start = -1
                raw = bytes(buf[start:end])
                if len(raw) > self._max_size:
                    self.oversized += 1
                    return None
                return Placeholder(raw, attributes[:-1], b"", True, self._name)
            self._open_end = end
            return None
        if then == _THEN_CLOSE:
            start = self._start
            if end - start > self._max_size:
                self.oversized += 1
                self._start = -1
                return None
            open_end = self._open_end
            return Placeholder(
                bytes(buf[start:end]),
                bytes(buf[start + len(self._open) : open_end - 1]),
                bytes(buf[open_end : self._tag_start]),
                False,
                self._name,
            )
        return None

    def _after_tag(self, buf: bytes | bytearray, end: int) -> None:
        then = self._then
        self._mode = _DATA
        if then == _THEN_SCRIPT:
            self._mode = _SCRIPT
            self._script_state = _SCRIPT_DATA
        elif then == _THEN_RAW:
            self._mode = _RAW
        elif then == _THEN_PLAINTEXT:
            self._mode = _PLAINTEXT
        elif then == _THEN_FOREIGN:
            if not self._slash:  # ``<svg/>`` opens nothing
                self._foreign += 1
        elif then == _THEN_UNFOREIGN:
            self._foreign -= 1
        elif then == _THEN_GIVEN_UP:
            # A self-closing one is over; otherwise its fallback follows.
            before = buf[end - 2] if end >= 2 else self._last_byte
            self._skipping = before != 0x2F
        self._then = _THEN_DATA

    # -- script data ---------------------------------------------------------------------

    def _script(self, buf: bytes | bytearray, pos: int, n: int) -> int:
        """Through a script's text, its escaped and double-escaped states; the offset to
        resume at (inside its end tag), or ``~pos`` if nothing decisive is in the buffer
        from ``pos``, where the current escaping state began."""
        while True:
            state = self._script_state
            if state == _SCRIPT_DATA:
                match = _SCRIPT_DATA_STOP.search(buf, pos)
                if match is None:
                    return ~pos
                if buf[match.start() + 1] == 0x2F:  # </script
                    return self._enter_end_tag(match.end())
                self._script_state = _SCRIPT_ESCAPED
                pos = match.start() + 2  # the ``--`` of ``<!--`` may end it: ``<!-->``
            elif state == _SCRIPT_ESCAPED:
                match = _SCRIPT_ESCAPED_STOP.search(buf, pos)
                if match is None:
                    return ~pos
                found = match.group()
                if found == b"-->":
                    self._script_state = _SCRIPT_DATA
                elif found[1] == 0x2F:
                    return self._enter_end_tag(match.end())
                else:
                    self._script_state = _SCRIPT_DOUBLE_ESCAPED
                pos = match.end()
            else:
                match = _SCRIPT_DOUBLE_STOP.search(buf, pos)
                if match is None:
                    return ~pos
                if match.group() == b"-->":
                    self._script_state = _SCRIPT_DATA
                else:
                    self._script_state = _SCRIPT_ESCAPED
                    pos = match.end() + 1  # the delimiter goes with it
                    continue
                pos = match.end()


def _sync(buf: bytes | bytearray, pos: int, target: int) -> int:
    """A position at or after ``pos`` (in the data state) and at or before ``target``
    that is certainly in the data state, as close to ``target`` as can be told cheaply.

    Between ``pos`` and ``target`` there is no comment, raw text element or other
    construct that changes the state, only text, tags, bogus comments and doctypes; in
    those a ``>`` ends what it is in unless it is inside a quoted attribute value. It is
    not, if the last quote of each kind before it cannot open a value (a value's opening
    quote always follows ``=`` and optional spaces). Then the state after it is data."""
    gt = buf.rfind(b">", pos, target)
    if gt < 0:
        return _text_until(buf, pos, target)
    for quote in (b'"', b"'"):
        at = buf.rfind(quote, pos, gt)
        if at > pos:
            before = buf[at - 1]
            if before == 0x3D or (
                before in _SPACE
                and bytes(buf[max(pos, at - 64) : at]).rstrip(b"\t\n\f\r ").endswith(b"=")
            ):
                return pos  # it may open a value that hides this ``>``: read from ``pos``
        elif at == pos:
            return pos
    return _text_until(buf, gt + 1, target)


def _text_until(buf: bytes | bytearray, pos: int, target: int) -> int:
    """From ``pos`` (data state): ``target`` if all before it is text, else ``pos``. At
    the end of the buffer, a last ``<`` may begin a construct: stop there."""
    if _OPENS.search(buf, pos, target):
        return pos
    if target == len(buf):
        last = buf.rfind(b"<", pos, target)
        if last >= 0:
            return last
    return target


#: Held bytes short enough to be copied with each chunk rather than appended to.
_SHORT = 256


def _piece(buf: bytes | bytearray, start: int, end: int) -> bytes:
    """``bytes(buf[start:end])`` with one copy, not two for a bytearray."""
    if isinstance(buf, bytes):
        return buf[start:end]
    # Released at once: a bytearray with a live export cannot grow (``held += data``).
    with memoryview(buf) as view, view[start:end] as piece:
        return piece.tobytes()


def _joined(items: list[Item]) -> list[Item]:
    """Adjacent passthrough pieces as one (the rescan at the end may cut them)."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += item
        elif item != b"":
            out.append(item)
    return out


def scan(
    data: bytes,
    tag: str = "rai-placeholder",
    *,
    max_size: int = 64 * 1024,
    also: tuple[str, ...] = (),
) -> list[Item]:
    """Scan a whole body at once (the pure-function form of ``PlaceholderScanner``)."""
    scanner = PlaceholderScanner(tag, max_size=max_size, also=also)
    return scanner.feed(data) + scanner.close()
