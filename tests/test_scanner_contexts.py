"""The scanner in every tokenizer context, with exact bytes; and its cost on hostile input."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rai_middleware._scanner import Item, Placeholder, PlaceholderScanner, scan

W = Placeholder(b"<rai-placeholder widget=w/>", b" widget=w", b"", True)


def items_of(data: bytes, chunk: int = 0) -> list[Item]:
    """Scanned whole (``chunk`` 0) or in chunks of ``chunk`` bytes; passthrough joined."""
    if chunk:
        scanner = PlaceholderScanner()
        raw: list[Item] = []
        for i in range(0, len(data), chunk):
            raw += scanner.feed(data[i : i + chunk])
        raw += scanner.close()
    else:
        raw = scan(data)
    out: list[Item] = []
    for item in raw:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += item
        elif item != b"":
            out.append(item)
    return out


def check(data: bytes, expected: list[Item]) -> None:
    for chunk in (0, 1, 2, 3, 7):
        assert items_of(data, chunk) == expected, chunk


# Each case: bytes before the placeholder, and whether the placeholder is live there.
CONTEXTS = [
    # data
    (b"<p>x</p>", True),
    (b"a < b ", True),
    (b"<<", True),
    # tags and attribute values
    (b'<div title="a > b ', False),
    (b"<div title='a > b ", False),
    (b'<div title="a > b">', True),
    (b"<div title=a>", True),
    (b"<div title=", False),  # the placeholder is the unquoted value
    (b"<div ", False),  # ... an attribute name
    (b"<div title=x ", False),
    (b'<div a"b=">" ', False),  # a quote in a name opens nothing; ``=">"`` is a value
    (b'<div a="x"b=">">', True),
    (b"</div title='>' ", False),  # end tags have attributes too
    (b'<div a=">" b=\'>\' c=">">', True),
    # comments
    (b"<!-- ", False),
    (b"<!-->", True),
    (b"<!--->", True),
    (b"<!---->", True),
    (b"<!-- x --!>", True),
    (b"<!-- x --!", False),
    (b"<!--!>", False),
    (b"<!-- -- > ", False),
    (b"<!-- <!--> ", True),
    # bogus comments and doctype
    (b"<?php ", False),
    (b"<?x>", True),
    (b"</ ", False),
    (b"</1>", True),
    (b"</>", True),
    (b"<!x ", False),
    (b"<!DOCTYPE html ", False),
    (b'<!DOCTYPE html PUBLIC "a>', True),  # a quote does not protect ``>`` in a doctype
    # CDATA only in foreign content
    (b"<![CDATA[ ", False),  # a bogus comment...
    (b"<![CDATA[>", True),  # ... ending at the first ``>``
    (b"<svg><![CDATA[ > ", False),
    (b"<svg><![CDATA[ ]]>", True),
    (b"<math><![CDATA[ > ", False),
    (b"<svg></svg><![CDATA[>", True),
    (b"<svg/><![CDATA[>", True),  # self-closing: no foreign content opened
    # raw text and RCDATA
    *((b"<" + name + b">", False) for name in (b"style", b"xmp", b"iframe", b"noembed")),
    *((b"<" + name + b">", False) for name in (b"noframes", b"noscript", b"textarea", b"title")),
    (b"<TEXTAREA rows=2>", False),
    (b"<title></titlex>", False),
    (b"<title></title>", True),
    (b"<title></TITLE\n>", True),
    (b"<style></style a='>' ", False),
    (b"<noscript></noscript>", True),
    (b"<textarea/>", False),  # ``/`` does not close an HTML element
    # script and its escapes
    (b"<script>", False),
    (b"<script></script>", True),
    (b"<script><!--", False),
    (b"<script><!--</script>", True),
    (b"<script><!--<script>", False),
    (b"<script><!--<script></script>", False),
    (b"<script><!--<script></script>-->", False),
    (b"<script><!--<script></script>--></script>", True),
    (b"<script><!--<script>--></script>", True),
    (b"<script><!-->", False),
    (b"<script><!--></script>", True),
    (b"<script><!--<scriptx></script>", True),
    # plaintext
    (b"<plaintext>", False),
    (b"<plaintext></plaintext>", False),
]


@pytest.mark.parametrize(("before", "live"), CONTEXTS)
def test_placeholder_is_live_only_in_the_data_state(before: bytes, live: bool) -> None:
    data = before + W.raw
    check(data, [before, W] if live else [data])


@pytest.mark.parametrize(
    "data",
    [
        b'<div title="a > b <rai-placeholder widget=store>x</rai-placeholder>">',
        b"<noscript><rai-placeholder widget=x>y</rai-placeholder></noscript>",
        b"<plaintext><rai-placeholder widget=x/></plaintext><rai-placeholder widget=x/>",
        b"<svg><![CDATA[<rai-placeholder widget=x/>]]>",
        b"<script><!--<script></script><rai-placeholder widget=x/></script>",
    ],
)
def test_the_issues_examples_are_left_alone(data: bytes) -> None:
    check(data, [data])


def test_fallback_is_tokenized_too() -> None:
    # ``</rai-placeholder>`` in a comment or script of the fallback does not end it.
    raw = (
        b"<rai-placeholder widget=w><!-- </rai-placeholder> -->"
        b"<script>'</rai-placeholder>'</script></rai-placeholder>"
    )
    inner = raw[len(b"<rai-placeholder widget=w>") : -len(b"</rai-placeholder>")]
    check(raw + b"!", [Placeholder(raw, b" widget=w", inner, False), b"!"])


def test_nested_placeholder_is_part_of_the_outer_fallback() -> None:
    raw = b"<rai-placeholder a><rai-placeholder b>x</rai-placeholder>"
    inner = b"<rai-placeholder b>x"
    after = b"y</rai-placeholder>"
    check(raw + after, [Placeholder(raw, b" a", inner, False), after])


def test_end_tag_of_a_placeholder_may_carry_attributes() -> None:
    raw = b"<rai-placeholder a>x</rai-placeholder b='>'>"
    check(raw, [Placeholder(raw, b" a", b"x", False)])


def test_unquoted_value_ending_in_slash_is_self_closing_by_convention() -> None:
    check(b"<rai-placeholder widget=w/>", [W])


def test_svg_closing_tag_ends_foreign_content_by_depth() -> None:
    before = b"<svg><svg></svg><![CDATA[ > "
    check(before + W.raw, [before + W.raw])
    before = b"<svg><svg></svg></svg><![CDATA[>"
    check(before + W.raw, [before, W])


def test_oversized_placeholder_keeps_its_fallback_as_fallback() -> None:
    # Given up at 40 bytes, in any chunking; the start tag inside its fallback is still
    # fallback, and the next placeholder after its end is found.
    data = b"<rai-placeholder a>" + b"x" * 40 + W.raw + b"</rai-placeholder>" + W.raw
    for chunk in (0, 1, 5, 64):
        scanner = PlaceholderScanner(max_size=40)
        items = items_of(data, chunk) if chunk == 0 else []
        if chunk:
            for i in range(0, len(data), chunk):
                items += scanner.feed(data[i : i + chunk])
            items += scanner.close()
        else:
            items = scan(data, max_size=40)
        assert [i for i in items if isinstance(i, Placeholder)] == [W], chunk


# -- cost -------------------------------------------------------------------------------------

MB = 1 << 20


def pathological(shape: str, size: int) -> bytes:
    unit = {
        "lt": b"1 < 2 <",
        "lt-tag": b"1 < 2 <a",
        "prefix": b"<rai-placeholder",
        "prefix-space": b"<rai-placeholder ",
        "open": b"<rai-placeholder widget=x>",
        "attributes": b' a=1 b="x>" c',
        "comment-open": b"<!-- <!-",
        "script-escapes": b"<script><!--<script>",
        "end-tags": b"</rai-placeholder </script",
        # Constructs that only look like one, inside attribute values, never closed:
        # finding each must not cost a look at the rest of the page.
        "hidden-comments": b'<p title="<!--"><b></b><script>x</script>',
        "hidden-scripts": b'<p title="<script>"><b></b><style>x</style>',
    }[shape]
    body = unit * (size // len(unit))
    return b"<div" + body + b">" if shape == "attributes" else body


SHAPES = [
    "lt",
    "lt-tag",
    "prefix",
    "prefix-space",
    "open",
    "attributes",
    "comment-open",
    "script-escapes",
    "end-tags",
    "hidden-comments",
    "hidden-scripts",
]


def _seconds(data: bytes, chunk: int = 0) -> float:
    start = time.perf_counter()
    if chunk:
        scanner = PlaceholderScanner()
        for i in range(0, len(data), chunk):
            scanner.feed(data[i : i + chunk])
        scanner.close()
    else:
        scan(data)
    return time.perf_counter() - start


# The issue's two cases took 18 s and 5.7 s (quadratic); unloaded, they now take a few
# milliseconds and 0.06 s. The suite asserts what cannot flake, the bytes examined per
# byte of input, and a ceiling ten times above the target that a quadratic scan still
# cannot meet on any machine this runs on, coverage tracing included.
CEILING = 1.0


def test_192_kb_of_unescaped_lt_is_scanned_in_linear_time() -> None:
    page = b"<p>" + b"if a < b and c <d then " * (192 * 1024 // 24) + b"</p>"
    scanner = PlaceholderScanner()
    scanner.feed(page)
    scanner.close()
    assert scanner.steps / len(page) <= 20
    assert min(_seconds(page) for _ in range(3)) < CEILING


def test_64_kb_placeholder_in_one_byte_chunks_is_never_rescanned() -> None:
    data = b"<rai-placeholder widget=x>" + b"y" * (64 * 1024 - 50) + b"</rai-placeholder>"
    best = CEILING
    for _ in range(3):
        start = time.perf_counter()
        scanner = PlaceholderScanner()
        found = [item for i in range(len(data)) for item in scanner.feed(data[i : i + 1])]
        best = min(best, time.perf_counter() - start)
    assert found[-1] == Placeholder(data, b" widget=x", data[26:-18], False)
    assert scanner.steps / len(data) <= 20  # each byte looked at a bounded number of times
    assert best < CEILING


@pytest.mark.parametrize("shape", [shape for shape in SHAPES if not shape.startswith("hidden")])
def test_1_mb_of_a_pathological_shape_costs_at_most_5_times_a_normal_page(shape: str) -> None:
    """Against the benchmark's dense 1 MB page (a comment and a script per product card).

    One shape gets 10 times: ``1 < 2 <a`` repeated is a single 1 MB tag that never ends;
    its attributes are read twice in C (once to find it does not end, once to find where
    its last attribute begins), which costs about 8 dense pages today."""
    pytest.importorskip("jinja2", reason="the benchmark's dense page is a Jinja2 template")
    from benchmarks.site import page

    normal = page(1024 * 1024, dense=True)
    normal_time = min(_seconds(normal) for _ in range(3))
    data = pathological(shape, MB)
    factor = 10 if shape == "lt-tag" else 5
    assert min(_seconds(data) for _ in range(3)) <= factor * normal_time + 0.002


@pytest.mark.parametrize("shape", SHAPES)
def test_time_grows_linearly_with_input_size(shape: str) -> None:
    """Four times the input, at most about four times the time (a quadratic scan would
    take sixteen). The "hidden" shapes hold a construct every 40 bytes, each costing a
    few Python steps, so they are slower per byte than a page, but still linear."""
    small = min(_seconds(pathological(shape, MB // 8)) for _ in range(3))
    large = min(_seconds(pathological(shape, MB // 2)) for _ in range(3))
    assert large <= 6 * small + 0.003


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(SHAPES),
    st.integers(1, 4),
    st.sampled_from([0, 1, 3, 100, 4096]),
)
def test_bytes_examined_grow_linearly_with_input_size(shape: str, units: int, chunk: int) -> None:
    sizes = [2000 * units, 8000 * units]
    per_byte = []
    for size in sizes:
        data = pathological(shape, size)
        scanner = PlaceholderScanner(max_size=1024)
        if chunk:
            for i in range(0, len(data), chunk):
                scanner.feed(data[i : i + chunk])
        else:
            scanner.feed(data)
        scanner.close()
        per_byte.append(scanner.steps / len(data))
    # A constant per byte (a few bytes at a chunk end are looked at again), not one that
    # grows with the input.
    assert per_byte[1] <= 20
    assert per_byte[1] <= per_byte[0] * 1.25 + 0.1


@pytest.mark.xfail(
    strict=True,
    reason="known gap: foreign content is modelled for CDATA only; in <svg>, <style> is "
    "an SVG element whose content is tokenized (here a comment), not raw text",
)
def test_style_inside_svg_is_not_raw_text() -> None:
    data = b"<svg><style><!--</style></svg><rai-placeholder widget=x/>--></svg>"
    check(data, [data])
