"""The HTML the benchmarks serve: one Jinja2 template, and pages pre-rendered from it.

The template is a shop category page of the usual shape (head with inline style and
script, navigation, a grid of product cards, a footer) with three widget spots. Each spot
is a ``<rai-placeholder>`` for the middleware, or, when ``embed_token`` is given, the
widget markup written by the app itself (the hand-written recipe of case 3).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jinja2

__all__ = [
    "CHUNK_SIZE",
    "PLACEHOLDER_TAG",
    "PageContext",
    "dense_page",
    "generate_page",
    "page_context",
    "render_page",
    "static_page",
    "template",
]

#: What the middleware looks for; the reference ``bytes.find`` searches for the same bytes.
PLACEHOLDER_TAG = b"<rai-placeholder"
#: Chunk size of the streamed page (case 1c) and of the chunked scan (case 2).
CHUNK_SIZE = 16 * 1024
#: Products on the template page: about 100 KB of HTML.
PAGE_PRODUCTS = 190

_TEMPLATE = """\
{%- macro widget(kind, fallback) -%}
{%- if embed_token -%}
<div id="returning-ai-widget-{{ kind }}"><rai-{{ kind }}-widget community-id="{{ community_id }}" \
embed-token="{{ embed_token }}"></rai-{{ kind }}-widget></div>
{%- elif placeholders -%}
<rai-placeholder widget="{{ kind }}">{{ fallback }}</rai-placeholder>
{%- else -%}
<div class="fallback">{{ fallback }}</div>
{%- endif -%}
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ category.title }} | {{ shop.name }}</title>
<link rel="stylesheet" href="/static/site.css?v={{ shop.version }}">
<link rel="canonical" href="https://{{ shop.domain }}/c/{{ category.slug }}">
<style>
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); }
  .card { border: 1px solid #e3e3e3; border-radius: .5rem; padding: .75rem; }
  .card > h3 { font-size: 1rem; margin: .5rem 0; }
  .badge { background: #ffe08a; padding: 0 .25rem; }
</style>
<script>
  window.dataLayer = window.dataLayer || [];
  function track(e) { if (e && e.length < 64) { window.dataLayer.push({event: e}); } }
</script>
</head>
<body class="category category-{{ category.slug }}">
<!-- header -->
<header class="site-header">
  <a class="logo" href="/">{{ shop.name }}</a>
  <nav><ul>
  {%- for item in categories %}
    <li{% if item.slug == category.slug %} class="active"{% endif %}>\
<a href="/c/{{ item.slug }}">{{ item.title }}</a></li>
  {%- endfor %}
  </ul></nav>
  <form action="/search" method="get"><input type="search" name="q" \
placeholder="Search {{ shop.name }}"></form>
  <span class="user">Hello, {{ user.name }}</span>
</header>
<main>
<aside class="rewards">
  <h2>Your rewards</h2>
  {{ widget("store", "Sign in to see the rewards store.") }}
</aside>
<section class="grid">
{%- for p in products %}
<article class="card" data-id="{{ p.id }}" data-sku="{{ p.sku }}">
{%- if dense %}<!-- card {{ p.id }} -->
<script type="application/ld+json">{"@type": "Product", "sku": "{{ p.sku }}"}</script>{% endif %}
  <a href="/p/{{ p.slug }}"><img src="/img/{{ p.id }}.jpg" alt="{{ p.name }}" \
width="240" height="240" loading="lazy"></a>
  <h3><a href="/p/{{ p.slug }}">{{ p.name }}</a></h3>
  <p class="price">{{ "%.2f"|format(p.price) }} {{ shop.currency }}\
{% if p.badge %} <span class="badge">{{ p.badge }}</span>{% endif %}</p>
  <p class="blurb">{{ p.blurb }}</p>
  <button type="button" class="add" onclick="track('add')">Add to cart</button>
</article>
{%- if loop.index == middle or (dense and loop.index is divisibleby 25) %}
{{ widget("channel", "Join the conversation.") }}
{%- endif %}
{%- endfor %}
</section>
</main>
<!-- footer -->
<footer>
  {{ widget("milestone", "Your next milestone appears here.") }}
  <p>&copy; {{ shop.year }} {{ shop.name }}. Prices include VAT.</p>
</footer>
{%- if embed_token %}
<script src="{{ sdk_url }}"></script>
{%- endif %}
</body>
</html>
"""

_ADJECTIVES = (
    "classic organic linen cotton merino travel compact everyday premium recycled "
    "lightweight waterproof handmade vintage modern slim wide soft warm bright"
)
_WORDS = _ADJECTIVES.split()
_NOUN_TEXT = "shirt jacket scarf bag bottle lamp mug notebook backpack sweater cap"
_NOUNS = _NOUN_TEXT.split()


@dataclass(frozen=True)
class PageContext:
    """Template variables shared by every render; products vary in number."""

    shop: dict[str, Any]
    user: dict[str, str]
    category: dict[str, str]
    categories: list[dict[str, str]]
    products: list[dict[str, Any]]


@functools.cache
def template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE)


def _products(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    products = []
    for number in range(count):
        name = f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
        products.append(
            {
                "id": 10_000 + number,
                "sku": f"SKU-{rng.randrange(16**6):06X}",
                "slug": name.lower().replace(" ", "-") + f"-{number}",
                "name": name,
                "price": rng.randrange(500, 20_000) / 100,
                "badge": rng.choice(("", "", "", "New", "Sale", "Last items")),
                "blurb": " ".join(rng.choice(_WORDS) for _ in range(12)) + ".",
            }
        )
    return products


@functools.cache
def page_context(products: int = PAGE_PRODUCTS) -> PageContext:
    titles = ["Outerwear", "Knitwear", "Bags", "Home", "Kitchen", "Stationery", "Sale"]
    categories = [{"slug": title.lower(), "title": title} for title in titles]
    return PageContext(
        shop={
            "name": "Example & Sons",
            "domain": "shop.example",
            "currency": "EUR",
            "version": "2024.06",
            "year": 2024,
        },
        user={"name": "Ada"},
        category=categories[1],
        categories=categories,
        products=_products(products),
    )


def _variables(
    context: PageContext,
    *,
    placeholders: bool,
    embed_token: str | None,
    dense: bool,
    community_id: str,
    sdk_url: str,
) -> dict[str, Any]:
    return {
        "shop": context.shop,
        "user": context.user,
        "category": context.category,
        "categories": context.categories,
        "products": context.products,
        "middle": len(context.products) // 2,
        "placeholders": placeholders,
        "embed_token": embed_token,
        "dense": dense,
        "community_id": community_id,
        "sdk_url": sdk_url,
    }


def render_page(
    context: PageContext,
    *,
    placeholders: bool = True,
    embed_token: str | None = None,
    dense: bool = False,
    community_id: str = "",
    sdk_url: str = "",
) -> str:
    """One render of the template, as a view does it on every request."""
    return template().render(
        _variables(
            context,
            placeholders=placeholders,
            embed_token=embed_token,
            dense=dense,
            community_id=community_id,
            sdk_url=sdk_url,
        )
    )


def generate_page(context: PageContext) -> Iterator[str]:
    """The page with placeholders, rendered piece by piece (Jinja2's ``generate``), as a
    streaming view does it."""
    return template().generate(
        _variables(
            context,
            placeholders=True,
            embed_token=None,
            dense=False,
            community_id="",
            sdk_url="",
        )
    )


def _sized(target: int, *, placeholders: bool, dense: bool) -> bytes:
    """A page rendered with as many products as it takes to weigh about ``target`` bytes."""
    base = len(render_page(page_context(0), placeholders=placeholders, dense=dense).encode())
    hundred = render_page(page_context(100), placeholders=placeholders, dense=dense).encode()
    per_product = (len(hundred) - base) / 100
    count = max(1, round((target - base) / per_product))
    return render_page(page_context(count), placeholders=placeholders, dense=dense).encode()


@functools.cache
def static_page(size: int) -> bytes:
    """A pre-rendered page of about ``size`` bytes with no placeholder (case 1d)."""
    page = _sized(size, placeholders=False, dense=False)
    assert PLACEHOLDER_TAG not in page.lower()
    return page


@functools.cache
def dense_page(size: int = 1024 * 1024) -> bytes:
    """A tag-dense page of about ``size`` bytes for the scanner (case 2): a comment and an
    inline script per card, a placeholder every 25 cards."""
    return _sized(size, placeholders=True, dense=True)
