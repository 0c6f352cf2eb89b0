"""The scanner against an independent HTML5 tokenizer (html5lib), on generated documents.

Why this is a real check: html5lib's ``HTMLTokenizer`` is a separate, character-level
implementation of the standard's tokenizer (every state of it: tags and attribute values,
comments with their odd endings, bogus comments, doctype, CDATA, script escapes). We only
do for it what html5lib's own tree builder does and a tokenizer cannot do alone:

* after a start tag of ``script`` / ``style``, ``xmp``, ``iframe``, ``noembed``,
  ``noframes``, ``noscript`` / ``textarea``, ``title`` / ``plaintext``, switch its state to
  script data / RAWTEXT / RCDATA / PLAINTEXT (the tree builder's "generic raw text" and
  "RCDATA" algorithms; ``noscript`` as a browser with scripting enabled);
* give it a stand-in parser whose open elements say whether the current node is foreign
  (inside ``<svg>``/``<math>``, counted by depth), because that is what its
  ``markupDeclarationOpenState`` consults to accept ``<![CDATA[``. Foreign content changes
  only that, as in the scanner.

The placeholders the scanner must report are then computed from html5lib's tokens alone:
every ``rai-placeholder`` start tag html5lib emits (start tags are only emitted from the
data state), except those inside an open placeholder's fallback, which ends at the first
``rai-placeholder`` end tag; one still open at the end is sent as written and its fallback
is searched once more. We compare the sequence of (attributes, self-closing), with the
scanner's attributes parsed by html5lib too.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from rai_middleware._scanner import Placeholder, PlaceholderScanner, scan

html5lib = pytest.importorskip("html5lib")
_tokenizer = pytest.importorskip("html5lib._tokenizer")
_constants = pytest.importorskip("html5lib.constants")

START = _constants.tokenTypes["StartTag"]
END = _constants.tokenTypes["EndTag"]
EMPTY = _constants.tokenTypes["EmptyTag"]
NAME = "rai-placeholder"

RAWTEXT = {"style", "xmp", "iframe", "noembed", "noframes", "noscript"}
RCDATA = {"textarea", "title"}


class _Element:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace


class _Tree:
    defaultNamespace = "html"

    def __init__(self) -> None:
        self.openElements = [_Element("html")]


class _Parser:
    """What html5lib's tokenizer asks of its parser: is the current node foreign?"""

    def __init__(self) -> None:
        self.tree = _Tree()


class _Tokenizer(_tokenizer.HTMLTokenizer):  # type: ignore[misc,name-defined]
    """html5lib's tokenizer, keeping each start tag's last attribute as written (its
    attribute map keeps the first of repeated names)."""

    def emitCurrentToken(self) -> None:
        token = self.currentToken
        if token["type"] == START and token["data"]:
            token["last"] = list(token["data"][-1])
        super().emitCurrentToken()


def reference_tokens(data: bytes) -> list[dict[str, Any]]:
    """Tag tokens of ``data`` from html5lib's tokenizer, driven as its tree builder does."""
    parser = _Parser()
    tokenizer = _Tokenizer(data.decode("latin-1"), parser=parser)
    tags: list[dict[str, Any]] = []
    for token in tokenizer:
        kind = token["type"]
        if kind not in (START, END, EMPTY):
            continue
        tags.append(token)
        name = token["name"]
        opened = parser.tree.openElements
        if kind == END:
            if name in ("svg", "math") and len(opened) > 1:
                opened.pop()
            continue
        if name == "script":
            tokenizer.state = tokenizer.scriptDataState
        elif name in RAWTEXT:
            tokenizer.state = tokenizer.rawtextState
        elif name in RCDATA:
            tokenizer.state = tokenizer.rcdataState
        elif name == "plaintext":
            tokenizer.state = tokenizer.plaintextState
        elif name in ("svg", "math") and not token.get("selfClosing"):
            opened.append(_Element("svg"))
    return tags


def _attributes(token: dict[str, Any]) -> dict[str, str]:
    data = token["data"]
    pairs = data.items() if isinstance(data, dict) else data
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


class _Ambiguous(Exception):
    pass


def expected_placeholders(tags: list[dict[str, Any]]) -> list[tuple[dict[str, str], bool]]:
    """The scanner's rule (see the module docstring), applied to html5lib's tokens."""

    def walk(start: int, *, again: bool) -> list[tuple[dict[str, str], bool]]:
        found: list[tuple[dict[str, str], bool]] = []
        open_at = -1
        for i in range(start, len(tags)):
            token = tags[i]
            if token["name"] != NAME:
                continue
            if token["type"] == END:
                if open_at >= 0:
                    found.append((_attributes(tags[open_at]), False))
                    open_at = -1
            elif open_at < 0:
                last = token.get("last") or ["", ""]
                if not token.get("selfClosing") and last[1].endswith("/"):
                    # ``a=b/>`` is self-closing by our convention, ``a="b/">`` is not;
                    # the tokens cannot tell them apart.
                    raise _Ambiguous
                if token.get("selfClosing"):
                    found.append((_attributes(token), True))
                else:
                    open_at = i
        if open_at >= 0 and again:
            found += walk(open_at + 1, again=False)
        return found

    return walk(0, again=True)


def scanned_placeholders(items: list[Any]) -> list[tuple[dict[str, str], bool]]:
    out = []
    for item in items:
        if isinstance(item, Placeholder):
            start_tag = (
                b"<" + NAME.encode() + item.attributes + (b"/>" if item.self_closing else b">")
            )
            (token,) = reference_tokens(start_tag)
            out.append((_attributes(token), item.self_closing))
    return out


# -- the generator --------------------------------------------------------------------------

HOSTILE = [
    ">",
    "<",
    "a > b",
    "<rai-placeholder widget=x />",
    "<rai-placeholder widget=y>",
    "</rai-placeholder>",
    "<!--",
    "-->",
    "<script>",
    "</script>",
    "'",
    '"',
    "=",
    "`",
    "/",
    "&amp;",
    "\xe9",
]
TEXT = [
    "hello",
    " ",
    "\n",
    "\r\n",
    "a < b",
    "<",
    "<<",
    "< ",
    "<3",
    ">",
    "&",
    "-",
    "--",
    "-->",
    "--!>",
    "]]>",
    "rai-placeholder",
    "</",
    "</>",
    "</ x>",
    "</1>",
    "<?php x ?>",
    "<?x>y",
    "<!x>",
    "<!-x>",
    "<![CDATA[",
    "<!DOCTYPE html>",
    '<!doctype html public "a>b">',
    "\xc9",
]
ELEMENTS = ["div", "p", "a", "span", "b", "svg", "math", "rai-placeholderx", "rai-placeholder-x"]
RAW_ELEMENTS = ["script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "textarea"]
RAW_ELEMENTS += ["title"]
SPACES = [" ", "  ", "\n", "\t", "\f", "\r\n"]


def _case(rng: random.Random, word: str) -> str:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in word)


def _value(rng: random.Random) -> str:
    pieces = "".join(rng.choice([*HOSTILE, "x", " ", "abc"]) for _ in range(rng.randint(0, 3)))
    form = rng.randrange(4)
    if form == 0:
        return '"' + pieces.replace('"', "") + '"'
    if form == 1:
        return "'" + pieces.replace("'", "") + "'"
    if form == 2:  # unquoted: anything but spaces and ``>``; never ending in ``/``
        value = "".join(c for c in pieces if c not in " \t\n\r\f>").rstrip("/")
        return value or "v"
    return rng.choice(['"unterminated >', "'", '"'])  # broken on purpose


def _attributes_text(rng: random.Random) -> str:
    out = ""
    # Distinct names: html5lib drops repeated attributes, which would hide values.
    names = ["widget", "title", "data-x", "a", '"q', "'q", "<x", "=x", "x<"]
    for name in rng.sample(names, rng.randint(0, 3)):
        out += rng.choice([*SPACES, "/", " / "])
        out += _case(rng, name)
        if rng.random() < 0.7:
            out += rng.choice(["=", " = ", "=\n"]) + _value(rng)
    if rng.random() < 0.3:
        out += rng.choice(SPACES)
    return out


def _tag(rng: random.Random, name: str) -> str:
    end = rng.choice([">", ">", "/>", " />"])
    if rng.random() < 0.05:
        end = ""  # unterminated: the rest of the document is inside the tag
    return "<" + _case(rng, name) + _attributes_text(rng) + end


def _fragment(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(13)
    if kind <= 1:
        return "".join(rng.choice(TEXT) for _ in range(rng.randint(1, 3)))
    if kind == 2:
        return _tag(rng, rng.choice(ELEMENTS))
    if kind == 3:
        return "</" + _case(rng, rng.choice(ELEMENTS + RAW_ELEMENTS + ["rai-placeholder"]))
    if kind == 4:
        return rng.choice(["<!-->", "<!--->", "<!---->", "<!-- x --!>", "<!--", "<!-- <!-- -->"])
    if kind == 5:
        inner = (
            "".join(_fragment(rng, depth + 1) for _ in range(rng.randint(0, 2)))
            if depth < 2
            else ""
        )
        return "<!--" + inner + rng.choice(["-->", "--!>", "- ->", ""])
    if kind == 6:
        element = rng.choice(RAW_ELEMENTS)
        body = "".join(rng.choice(TEXT + HOSTILE) for _ in range(rng.randint(0, 3)))
        close = rng.choice(["</" + _case(rng, element) + rng.choice([">", " >", "/>", "x>"]), ""])
        return _tag(rng, element) + body + close
    if kind == 7:  # script escapes
        pieces = ["<!--", "-->", "<script>", "</script>", "<script ", "</script ", "x", "--", "<"]
        body = "".join(rng.choice(pieces + HOSTILE) for _ in range(rng.randint(1, 6)))
        return "<script>" + body
    if kind == 8:
        return rng.choice(["<svg>", "<math>", "<svg/>", "</svg>", "</math>", "<![CDATA[", "]]>"])
    if kind == 9 and rng.random() < 0.1:
        return "<plaintext>"
    if kind <= 10:
        name = _case(rng, "rai-placeholder")
        return _tag(rng, name) + rng.choice(["", "fallback", "</" + name + ">"])
    if kind == 11 and depth < 2:
        inner = "".join(_fragment(rng, depth + 1) for _ in range(rng.randint(0, 3)))
        return "<rai-placeholder widget=w>" + inner + "</rai-placeholder>"
    return "".join(rng.choice(HOSTILE) for _ in range(rng.randint(1, 3)))


def document(rng: random.Random) -> bytes:
    return "".join(_fragment(rng) for _ in range(rng.randint(1, 8))).encode("latin-1")


def _check(data: bytes, rng: random.Random) -> bool:
    try:
        expected = expected_placeholders(reference_tokens(data))
    except _Ambiguous:
        return False
    items = scan(data)
    assert scanned_placeholders(items) == expected, data
    # Any chunking gives the same, and nothing is lost.
    scanner = PlaceholderScanner()
    chunked: list[Any] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 12)
        chunked += scanner.feed(data[pos : pos + step])
        pos += step
    chunked += scanner.close()
    assert [i for i in chunked if isinstance(i, Placeholder)] == [
        i for i in items if isinstance(i, Placeholder)
    ], data
    joined = b"".join(i if isinstance(i, bytes) else i.raw for i in chunked)
    assert joined == data
    return True


@pytest.mark.parametrize("seed", range(4))
def test_scanner_agrees_with_html5lib_on_generated_documents(seed: int) -> None:
    rng = random.Random(seed)
    checked = sum(_check(document(rng), rng) for _ in range(750))
    assert checked > 700  # few documents are left out as ambiguous


@pytest.mark.parametrize(
    "data",
    [
        b'<div title="a > b <rai-placeholder widget=store>x</rai-placeholder>">',
        b'<svg><![CDATA[<rai-placeholder widget=x />]]></svg><rai-placeholder widget="y"/>',
        b"<![CDATA[<rai-placeholder widget=x />]]>",
        b"<script><!--<script></script><rai-placeholder widget=x /></script>-->",
        b"<noscript><rai-placeholder widget=x /></noscript>",
        b"<plaintext><rai-placeholder widget=x />",
        b"</ <rai-placeholder widget=x />",
        b"<rai-placeholder a><!-- </rai-placeholder> --><rai-placeholder b/></rai-placeholder>",
    ],
)
def test_scanner_agrees_with_html5lib_on_known_traps(data: bytes) -> None:
    assert _check(data, random.Random(0))
