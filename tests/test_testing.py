"""Tests for rai_middleware.testing.FakeReturningAI, the offline stand-in for Returning.AI."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from typing import Any

import anyio
import httpx
import pytest

from rai_middleware._config import DEFAULT_IFRAME_SEGMENTS
from rai_middleware.testing import (
    _LOADER_SCRIPT,
    _SDK_SCRIPT,
    _WIDGET_PAGE,
    FakeReturningAI,
    InjectedDisconnect,
)
from tests.services import require

TOKEN_PATH = "/v2/api/widget-access-keys/token"
GOOD_BODY: dict[str, Any] = {
    "accessId": "demo-access-id",
    "accessKey": "demo-access-key",
    "userIdentifiers": {"data-customer-id": "c-42", "data-email": "ann@example.com"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def mint(fake: FakeReturningAI, body: Any = None, **client_kwargs: Any) -> httpx.Response:
    async with fake.client(**client_kwargs) as client:
        if body is None:
            body = GOOD_BODY
        return await client.post(TOKEN_PATH, json=body)


# -- token endpoint ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_mint_success_returns_signed_token_with_identifier_claims() -> None:
    fake = FakeReturningAI(clock=FixedClock(1_700_000_000.0))

    response = await mint(fake)

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert set(body["data"]) == {"embedToken", "expiresIn"}
    assert body["data"]["expiresIn"] == 900
    assert isinstance(body["data"]["expiresIn"], int)
    claims = fake.decode(body["data"]["embedToken"])
    jti = claims.pop("jti")
    assert isinstance(jti, str)
    assert len(jti) == 32
    int(jti, 16)
    assert claims == {
        "data-customer-id": "c-42",
        "data-email": "ann@example.com",
        "iat": 1_700_000_000,
        "exp": 1_700_000_900,
        "aid": "demo-access-id",
        "typ": "embed",
    }
    assert fake.calls == 1
    assert fake.requests == [GOOD_BODY]


@pytest.mark.anyio
async def test_minted_token_is_standard_compact_hs256_jwt() -> None:
    fake = FakeReturningAI()
    token = (await mint(fake)).json()["data"]["embedToken"]

    header_segment, _payload_segment, signature = token.split(".")
    assert "=" not in token
    padded = header_segment + "=" * (-len(header_segment) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded)) == {"alg": "HS256", "typ": "JWT"}
    assert len(base64.urlsafe_b64decode(signature + "=")) == 32


@pytest.mark.anyio
async def test_two_tokens_for_same_user_differ() -> None:
    fake = FakeReturningAI(clock=FixedClock(1_700_000_000.0))
    first = (await mint(fake)).json()["data"]["embedToken"]
    second = (await mint(fake)).json()["data"]["embedToken"]

    assert first != second
    assert fake.decode(first)["jti"] != fake.decode(second)["jti"]
    assert fake.calls == 2


@pytest.mark.anyio
async def test_token_lifetime_attribute_drives_exp_and_expires_in() -> None:
    fake = FakeReturningAI(clock=FixedClock(1000.0), token_lifetime=60)
    fake.token_lifetime = 1.5

    body = (await mint(fake)).json()

    assert body["data"]["expiresIn"] == 1.5
    claims = fake.decode(body["data"]["embedToken"])
    assert claims["iat"] == 1000
    assert claims["exp"] == 1001.5


@pytest.mark.anyio
async def test_custom_credentials_are_the_only_ones_accepted() -> None:
    fake = FakeReturningAI(access_id="id-1", access_key="key-1")
    body = {"accessId": "id-1", "accessKey": "key-1", "userIdentifiers": {"data-x": "1"}}

    assert (await mint(fake, body)).status_code == 200
    assert fake.decode((await mint(fake, body)).json()["data"]["embedToken"])["aid"] == "id-1"
    assert (await mint(fake, GOOD_BODY)).status_code == 401


@pytest.mark.anyio
@pytest.mark.parametrize(
    "change",
    [{"accessKey": "wrong-key"}, {"accessId": "wrong-id"}, {"accessKey": "dé-mo"}],
)
async def test_bad_credentials_answer_401_and_are_counted(change: dict[str, str]) -> None:
    fake = FakeReturningAI()

    response = await mint(fake, {**GOOD_BODY, **change})

    assert response.status_code == 401
    assert response.json() == {"success": False, "message": "Invalid access key"}
    assert fake.calls == 1
    assert fake.requests == [{**GOOD_BODY, **change}]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        "just a string",
        {"accessKey": "demo-access-key", "userIdentifiers": {"data-a": "1"}},
        {"accessId": "demo-access-id", "accessKey": 7, "userIdentifiers": {"data-a": "1"}},
        {"accessId": "demo-access-id", "accessKey": "demo-access-key"},
        {**GOOD_BODY, "userIdentifiers": ["data-a"]},
        {**GOOD_BODY, "userIdentifiers": {"customer-id": "c-42"}},
        {**GOOD_BODY, "userIdentifiers": {"data-": "c-42"}},
        {**GOOD_BODY, "userIdentifiers": {"data-customer-id": 42}},
    ],
    ids=[
        "array",
        "string",
        "no-access-id",
        "non-string-key",
        "no-identifiers",
        "identifiers-list",
        "key-without-data-prefix",
        "bare-data-prefix",
        "non-string-value",
    ],
)
async def test_bad_shape_answers_400(body: Any) -> None:
    fake = FakeReturningAI()

    response = await mint(fake, body)

    assert response.status_code == 400
    answer = response.json()
    assert answer["success"] is False
    assert isinstance(answer["message"], str)
    assert answer["message"]
    assert fake.calls == 1


@pytest.mark.anyio
async def test_invalid_json_answers_400_and_is_counted_but_not_logged() -> None:
    fake = FakeReturningAI()
    async with fake.client() as client:
        response = await client.post(
            TOKEN_PATH, content=b"{not json", headers={"content-type": "application/json"}
        )

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": "Request body must be valid JSON"}
    assert fake.calls == 1
    assert fake.requests == []


@pytest.mark.anyio
async def test_identifier_prefix_error_names_the_key() -> None:
    fake = FakeReturningAI()

    response = await mint(fake, {**GOOD_BODY, "userIdentifiers": {"customer-id": "c-42"}})

    assert response.json() == {
        "success": False,
        "message": "userIdentifiers key 'customer-id' must start with 'data-'",
    }


# -- fault injection ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fail_next_status_mode_answers_injected_status() -> None:
    fake = FakeReturningAI()
    fake.fail_next(status=503)

    response = await mint(fake)

    assert response.status_code == 503
    assert response.json() == {"success": False, "message": "Injected failure"}
    assert fake.calls == 1
    assert fake.requests == [GOOD_BODY]


@pytest.mark.anyio
async def test_fail_next_default_is_one_500() -> None:
    fake = FakeReturningAI()
    fake.fail_next()

    assert (await mint(fake)).status_code == 500
    assert (await mint(fake)).status_code == 200


@pytest.mark.anyio
async def test_garbage_mode_answers_html() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="garbage")

    response = await mint(fake)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.content == b"<html>not json"
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.anyio
async def test_missing_token_mode_answers_success_without_token() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="missing_token")

    response = await mint(fake)

    assert response.status_code == 200
    assert response.json() == {"success": True, "data": {}}


@pytest.mark.anyio
async def test_hang_mode_is_cut_by_client_timeout() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="hang")

    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        await mint(fake, timeout=0.2)
    elapsed = time.monotonic() - started

    assert 0.2 <= elapsed < 2
    assert fake.calls == 1
    assert (await mint(fake, timeout=0.2)).status_code == 200


@pytest.mark.anyio
async def test_recover_releases_a_hanging_request_with_504() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="hang")
    answers: list[httpx.Response] = []

    async with fake.client(timeout=10) as client, anyio.create_task_group() as tasks:

        async def call() -> None:
            answers.append(await client.post(TOKEN_PATH, json=GOOD_BODY))

        tasks.start_soon(call)
        with anyio.fail_after(5):
            while fake.calls == 0:
                await anyio.sleep(0.01)
        fake.recover()

    assert [a.status_code for a in answers] == [504]


@pytest.mark.anyio
async def test_disconnect_mode_surfaces_as_remote_protocol_error() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="disconnect")

    with pytest.raises(httpx.RemoteProtocolError):
        await mint(fake)

    assert fake.calls == 1
    assert (await mint(fake)).status_code == 200


@pytest.mark.anyio
async def test_disconnect_mode_raises_from_app_through_plain_asgi_transport() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="disconnect")

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="https://api-v2.returning.ai"
    ) as client:
        with pytest.raises(InjectedDisconnect):
            await client.post(TOKEN_PATH, json=GOOD_BODY)


@pytest.mark.anyio
async def test_fail_next_counts_down_then_recovers() -> None:
    fake = FakeReturningAI()
    fake.fail_next(3, status=502)

    statuses = [(await mint(fake)).status_code for _ in range(5)]

    assert statuses == [502, 502, 502, 200, 200]
    assert fake.calls == 5
    assert len(fake.requests) == 5


@pytest.mark.anyio
async def test_fail_next_calls_queue_in_order() -> None:
    fake = FakeReturningAI()
    fake.fail_next(status=503)
    fake.fail_next(2, mode="missing_token")
    fake.fail_next(0, status=400)

    answers = [(await mint(fake)) for _ in range(4)]

    assert [a.status_code for a in answers] == [503, 200, 200, 200]
    assert [a.json()["data"] for a in answers[1:3]] == [{}, {}]
    assert "embedToken" in answers[3].json()["data"]


@pytest.mark.anyio
async def test_fail_always_until_recover() -> None:
    fake = FakeReturningAI()
    fake.fail_always(status=429)

    statuses = [(await mint(fake)).status_code for _ in range(4)]
    fake.recover()
    after = (await mint(fake)).status_code

    assert statuses == [429, 429, 429, 429]
    assert after == 200
    assert fake.calls == 5


@pytest.mark.anyio
async def test_fail_next_takes_precedence_over_fail_always() -> None:
    fake = FakeReturningAI()
    fake.fail_always(status=500)
    fake.fail_next(mode="missing_token")

    first = await mint(fake)
    second = await mint(fake)

    assert (first.status_code, first.json()) == (200, {"success": True, "data": {}})
    assert second.status_code == 500


def test_fault_injection_rejects_bad_arguments() -> None:
    fake = FakeReturningAI()
    with pytest.raises(ValueError, match="unknown failure mode"):
        fake.fail_next(mode="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        fake.fail_always(status=99)
    with pytest.raises(ValueError, match="n must be"):
        fake.fail_next(-1)
    with pytest.raises(ValueError, match="latency"):
        FakeReturningAI(latency=-1)


@pytest.mark.anyio
async def test_reset_clears_counters_logs_and_failures() -> None:
    fake = FakeReturningAI()
    await mint(fake)
    fake.fail_always()
    fake.fail_next(mode="garbage")

    fake.reset()

    assert (fake.calls, fake.requests, fake.signin_calls, fake.signin_requests) == (0, [], 0, [])
    assert (await mint(fake)).status_code == 200
    assert fake.calls == 1


@pytest.mark.anyio
async def test_latency_delays_the_answer() -> None:
    fake = FakeReturningAI(latency=0.15)

    started = time.monotonic()
    response = await mint(fake)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed >= 0.15


@pytest.mark.anyio
async def test_latency_attribute_can_be_changed() -> None:
    fake = FakeReturningAI()
    fake.latency = 0.1

    started = time.monotonic()
    await mint(fake)

    assert time.monotonic() - started >= 0.1


# -- legacy sign-in -----------------------------------------------------------------------------


async def signin(
    fake: FakeReturningAI, headers: dict[str, str], community: str = "comm-1"
) -> httpx.Response:
    async with fake.client() as client:
        return await client.post(f"/widget/{community}/signin", headers=headers)


@pytest.mark.anyio
async def test_signin_success_returns_widget_token() -> None:
    fake = FakeReturningAI(clock=FixedClock(2000.0), token_lifetime=30)

    response = await signin(
        fake, {"returningai-api-key": "demo-widget-api-key", "email": "ann@example.com"}
    )

    assert response.status_code == 200
    assert set(response.json()) == {"token"}
    claims = fake.decode(response.json()["token"])
    assert isinstance(claims.pop("jti"), str)
    assert claims == {
        "email": "ann@example.com",
        "community": "comm-1",
        "iat": 2000,
        "exp": 2030,
        "typ": "widget",
    }
    assert fake.signin_calls == 1
    assert fake.signin_requests == [{"community": "comm-1", "email": "ann@example.com"}]
    assert fake.calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [{"email": "ann@example.com"}, {"returningai-api-key": "nope", "email": "ann@example.com"}],
)
async def test_signin_without_valid_api_key_is_unauthorized(headers: dict[str, str]) -> None:
    fake = FakeReturningAI()

    response = await signin(fake, headers)

    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert fake.signin_calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize("email", [None, "", "   "])
async def test_signin_without_email_is_bad_request(email: str | None) -> None:
    fake = FakeReturningAI(widget_api_key="wk")
    headers = {"returningai-api-key": "wk"}
    if email is not None:
        headers["email"] = email

    response = await signin(fake, headers)

    assert response.status_code == 400
    assert fake.signin_calls == 1
    assert fake.signin_requests == [{"community": "comm-1", "email": email or ""}]


@pytest.mark.anyio
async def test_signin_shares_the_failure_queue() -> None:
    fake = FakeReturningAI()
    fake.fail_next(status=503)
    fake.fail_next(mode="missing_token")
    headers = {"returningai-api-key": "demo-widget-api-key", "email": "ann@example.com"}

    first = await signin(fake, headers)
    second = await mint(fake)
    third = await signin(fake, headers)

    assert first.status_code == 503
    assert second.json() == {"success": True, "data": {}}
    assert "token" in third.json()
    assert (fake.calls, fake.signin_calls) == (1, 2)


# -- other endpoints ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sdk_script_is_served_as_javascript() -> None:
    fake = FakeReturningAI()
    async with fake.client() as client:
        response = await client.get("/sdk/rai-widget.iife.js")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    script = response.text
    assert "customElements.define" in script
    for tag in ("store", "channel", "milestone", "social", "currency", "referral", "custom"):
        assert f'"rai-{tag}-widget"' in script
    assert "ReturningAIWidget" in script
    assert "token_expired" in script


_DOM_SHIM = """
const events = [];
const registry = new Map();
const connected = [];
const timers = [];
let now = Date.now();
Date.now = () => now;
globalThis.setInterval = (fn, ms) => { timers.push({fn, ms}); return timers.length; };
function tick() { timers.forEach((t) => t.fn()); }
globalThis.window = globalThis;
class HTMLElement {
  constructor() { this.attrs = new Map(); this.isConnected = false; this.textContent = ""; }
  getAttribute(n) { return this.attrs.has(n) ? this.attrs.get(n) : null; }
  setAttribute(n, v) {
    const old = this.getAttribute(n);
    this.attrs.set(n, String(v));
    const observed = this.constructor.observedAttributes || [];
    if (observed.includes(n) && this.attributeChangedCallback) {
      this.attributeChangedCallback(n, old, String(v));
    }
  }
  dispatchEvent(e) { events.push({tag: this.tagName, type: e.type, detail: e.detail,
    bubbles: e.bubbles, composed: e.composed}); return true; }
}
globalThis.HTMLElement = HTMLElement;
globalThis.CustomEvent = class { constructor(type, init) { this.type = type;
  Object.assign(this, init); } };
globalThis.customElements = {
  get: (t) => registry.get(t),
  define: (t, cls) => { if (registry.has(t)) throw new Error("dup " + t); registry.set(t, cls); },
};
globalThis.document = { querySelectorAll: () => connected };
function make(tag, token) {
  const el = new (registry.get(tag))();
  el.tagName = tag.toUpperCase();
  el.attrs.set("embed-token", token);
  el.isConnected = true;
  connected.push(el);
  el.connectedCallback();
  return el;
}
"""


def run_node(program: str) -> Any:
    result = subprocess.run(
        [require("node"), "-e", program], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(result.stdout)


def test_sdk_script_renders_claims_and_reports_expiry_under_node() -> None:
    fake = FakeReturningAI()
    fresh = fake.encode({"data-customer-id": "c-42", "exp": time.time() + 600})
    stale = fake.encode({"data-customer-id": "c-7", "exp": time.time() - 5})

    out = run_node(
        _DOM_SHIM
        + _SDK_SCRIPT
        # Loading twice throws, as a real bundle's second customElements.define does; it
        # adds no second timer.
        + "let second = null; try {"
        + _SDK_SCRIPT
        + "} catch (e) { second = e.message; }"
        + f"""
const a = make("rai-channel-widget", {json.dumps(fresh)});
const b = make("rai-store-widget", {json.dumps(stale)});
const first = [a.textContent, b.textContent, a.getAttribute("data-fake-state")];
a.setAttribute("embed-token", {json.dumps(stale)});
const afterChange = a.textContent;
window.ReturningAIWidget.reload();
tick();
console.log(JSON.stringify({{first, afterChange, events, tags: [...registry.keys()],
  timers: timers.map((t) => t.ms), second, runs: window.__fakeRaiSdkRuns}}));
"""
    )

    # Without a DOM to draw the card in (no attachShadow here), a one-line summary.
    assert out["first"] == [
        "Channel widget: signed in as c-42",
        "Store widget: token expired",
        "ok",
    ]
    assert out["afterChange"] == "Channel widget: token expired"
    expired_event = {
        "tag": "RAI-STORE-WIDGET",
        "type": "rai-error",
        "detail": {"reason": "token_expired"},
        "bubbles": True,
        "composed": True,
    }
    assert out["events"][0] == expired_event
    # b on connect, a on attribute change; not again on reload() nor on the periodic check:
    # at most one rai-error per token value.
    assert [e["tag"] for e in out["events"]] == ["RAI-STORE-WIDGET", "RAI-CHANNEL-WIDGET"]
    assert {e["detail"]["reason"] for e in out["events"]} == {"token_expired"}
    assert len(out["tags"]) == 7
    assert out["timers"] == [500]
    assert out["second"] == "dup rai-store-widget"
    assert out["runs"] == 2


def test_sdk_script_notices_expiry_by_itself_once_per_token_under_node() -> None:
    fake = FakeReturningAI()
    soon = fake.encode({"data-email": "a@b.c", "exp": time.time() + 60})
    later = fake.encode({"data-email": "a@b.c", "exp": time.time() + 600})

    out = run_node(
        _DOM_SHIM
        + _SDK_SCRIPT
        + f"""
const a = make("rai-social-widget", {json.dumps(soon)});
const b = make("rai-custom-widget", "not-a-token");
const states = [a.getAttribute("data-fake-state")];
tick();
states.push(a.getAttribute("data-fake-state"), events.length);
now += 120 * 1000;  // the first token runs out
tick(); tick(); tick();
states.push(a.getAttribute("data-fake-state"), events.length);
a.setAttribute("embed-token", {json.dumps(later)});  // what the page's refresh script does
window.ReturningAIWidget.reload();
states.push(a.getAttribute("data-fake-state"), events.length);
now += 1200 * 1000;
tick(); tick();
states.push(a.getAttribute("data-fake-state"), events.length);
console.log(JSON.stringify({{states, reasons: events.map((e) => e.detail.reason)}}));
"""
    )

    assert out["states"] == ["ok", "ok", 1, "expired", 2, "ok", 2, "expired", 3]
    assert out["reasons"] == ["invalid_token", "token_expired", "token_expired"]


_LOADER_SHIM = """
const made = [];
const containers = {"returning-ai-widget-1": {children: [],
  appendChild(child) { this.children.push(child); }}};
function script(data) {
  return {dataset: data, attrs: {}, setAttribute(n, v) { this.attrs[n] = String(v); }};
}
globalThis.document = {
  currentScript: null,
  getElementById: (id) => containers[id] || null,
  createElement: (tag) => {
    const el = {tag, attrs: {}, setAttribute(n, v) { this.attrs[n] = String(v); }};
    made.push(el);
    return el;
  },
};
function load(data) {
  const s = script(data);
  document.currentScript = s;
  eval(LOADER);
  return s.attrs["data-fake-state"];
}
"""


def test_loader_frames_the_widget_page_with_the_identity_under_node() -> None:
    base = {
        "widgetId": "w 1/2",
        "widgetType": "store",
        "container": "returning-ai-widget-1",
        "widgetUrl": "https://widgets.test/store-widget/",
        "email": "ann+x@example.com",
        "customerId": "c&42",
    }
    out = run_node(
        f"const LOADER = {json.dumps(_LOADER_SCRIPT)};\n"
        + _LOADER_SHIM
        + f"""
const base = {json.dumps(base)};
const states = [
  load(base),
  load({{...base, container: "missing"}}),
  load({{...base, widgetUrl: "javascript:alert(1)//"}}),
  load({{...base, widgetId: ""}}),
  load({{...base, email: "", customerId: ""}}),
];
document.currentScript = null;
eval(LOADER);
const frames = containers["returning-ai-widget-1"].children;
console.log(JSON.stringify({{states, made: made.length,
  frames: frames.map((f) => ({{src: f.src, title: f.title, attrs: f.attrs}}))}}));
"""
    )

    assert out["states"] == ["loaded", "misconfigured", "misconfigured", "misconfigured", "loaded"]
    assert out["made"] == 2
    assert out["frames"] == [
        {
            "src": "https://widgets.test/store-widget/w%201%2F2"
            "?email=ann%2Bx%40example.com&customerId=c%2642",
            "title": "Fake Returning.AI store widget",
            "attrs": {"allow": "clipboard-write", "data-widget-type": "store"},
        },
        {
            "src": "https://widgets.test/store-widget/w%201%2F2",
            "title": "Fake Returning.AI store widget",
            "attrs": {"allow": "clipboard-write", "data-widget-type": "store"},
        },
    ]


def _widget_page_script(token: str = "") -> str:
    """The page's scripts, in order, as the fake serves them (``token``: as the proxy mode's
    route puts it into ``window.__WIDGET_INIT__``)."""
    page = _WIDGET_PAGE.replace("__HEIGHT__", "480")
    page = page.replace('token: ""', f"token: {json.dumps(token)}", 1)
    return "\n".join(re.findall(r"<script>(.*?)</script>", page, re.DOTALL))


_WIDGET_SHIM = """
const posted = [];
const listeners = [];
const timers = [];
let now = Date.now();
Date.now = () => now;
const parent = {postMessage: (data, target) => posted.push({data, target})};
globalThis.window = {
  parent,
  addEventListener: (type, fn) => { if (type === "message") listeners.push(fn); },
};
globalThis.setInterval = (fn) => timers.push(fn);
globalThis.location = {search: SEARCH, pathname: "/store-widget/w%201"};
const status = {textContent: ""};
const parts = {};  // the card around the status line (presentation)
function part(id) {
  return parts[id] || (parts[id] = {textContent: "", hidden: true, className: "", style: {}});
}
globalThis.document = {
  body: {dataset: {...BODY_DATA}},
  getElementById: (id) => (id === "status" ? status : part(id)),
};
function deliver(data, source) { listeners.forEach((fn) => fn({data, source})); }
function tick() { timers.forEach((fn) => fn()); }
function snapshot() {
  return {...document.body.dataset, text: status.textContent, posted: posted.length,
    left: part("left").textContent, renewed: part("renewed").hidden ? "" :
    part("renewed").textContent.split(" at ")[0]};
}
"""


def _run_widget_page(search: str, steps: str, token: str = "") -> Any:
    # The body's data-* attributes as the page's HTML sets them.
    body_tag = re.search(r"<body([^>]*)>", _WIDGET_PAGE)
    assert body_tag is not None
    body_data = {
        re.sub(r"-([a-z])", lambda m: m.group(1).upper(), name): value
        for name, value in re.findall(r'data-([a-z-]+)="([^"]*)"', body_tag.group(1))
    }
    result = run_node(
        f"const SEARCH = {json.dumps(search)};\n"
        f"const BODY_DATA = {json.dumps(body_data)};\n"
        + _WIDGET_SHIM
        + _widget_page_script(token)
        + "\nconst out = [];\n"
        + steps
        + "\nconsole.log(JSON.stringify({out, posted}));"
    )
    # Height updates apart from the token requests.
    posted = result["posted"]
    result["posted"] = [p for p in posted if p["data"].get("type") != "WIDGET_HEIGHT_UPDATE"]
    result["heights"] = [p for p in posted if p["data"].get("type") == "WIDGET_HEIGHT_UPDATE"]
    return result


def test_widget_page_asks_its_parent_and_asks_again_after_expiry_under_node() -> None:
    fake = FakeReturningAI()
    first = fake.encode({"email": "ann@example.com", "exp": time.time() + 60})
    second = fake.encode({"email": "ann@example.com", "exp": time.time() + 600})
    steps = f"""
out.push(snapshot());
tick();  // no token yet: ask again
deliver({{type: "RETURNINGAI_WIDGET_TOKEN", value: "x"}}, {{}});  // not from the parent
deliver({{type: "RETURNINGAI_WIDGET_TOKEN"}}, parent);  // no value
deliver("RETURNINGAI_WIDGET_TOKEN", parent);
out.push(snapshot());
deliver({{type: "RETURNINGAI_WIDGET_TOKEN", value: {json.dumps(first)}}}, parent);
tick();  // a live token: no request
out.push(snapshot());
now += 120 * 1000;
tick();
out.push(snapshot());
deliver({{type: "RETURNINGAI_WIDGET_TOKEN", value: {json.dumps(second)}}}, parent);
out.push(snapshot());
deliver({{type: "RETURNINGAI_WIDGET_TOKEN", value: "garbage"}}, parent);
out.push(snapshot());
"""
    result = _run_widget_page("", steps)
    out = result["out"]

    request = {"data": {"type": "RETURNINGAI_WIDGET_REQUEST_TOKEN"}, "target": "*"}
    assert result["posted"] == [request] * 3
    assert out[0]["widget"] == "store-widget/w 1"
    assert [(o["state"], o["requests"], o["received"]) for o in out] == [
        ("waiting", "1", "0"),
        ("waiting", "2", "0"),
        ("ok", "2", "1"),
        ("expired", "3", "1"),
        ("ok", "3", "2"),
        ("invalid", "3", "3"),
    ]
    assert out[2]["token"] == first
    assert out[2]["email"] == "ann@example.com"
    assert out[2]["text"] == "Signed in as ann@example.com"
    # The countdown, m:ss of the time left (node starts a moment after the token is made).
    assert re.fullmatch(r"Token expires in (1:00|0:5\d)", out[2]["left"]), out[2]["left"]
    assert (out[2]["renewed"], out[2].get("renewals")) == ("", None)
    assert out[3]["text"] == "Token expired: asking the page for a new one"
    assert out[3]["left"] == "Token expired"
    # A valid token replacing another one is a renewal, shown on the card.
    assert (out[4]["renewed"], out[4]["renewals"]) == ("\u2713 Token renewed", "1")
    assert re.fullmatch(r"Token expires in (8:00|7:5\d)", out[4]["left"]), out[4]["left"]
    assert out[4]["token"] == second


def test_widget_page_with_the_token_in_its_init_object_asks_nobody_under_node() -> None:
    fake = FakeReturningAI()
    token = fake.encode({"email": "ann@example.com", "exp": time.time() + 600})
    result = _run_widget_page("", "tick(); out.push(snapshot());", token=token)

    assert result["posted"] == []  # no token request: the page came with one
    height = {"data": {"type": "WIDGET_HEIGHT_UPDATE", "payload": {"height": 480}}, "target": "*"}
    assert result["heights"] == [height]
    (state,) = result["out"]
    assert (state["state"], state["source"], state["token"], state["text"]) == (
        "ok",
        "init",
        token,
        "Signed in as ann@example.com",
    )


def test_widget_page_legacy_request_and_loader_identity_under_node() -> None:
    legacy = _run_widget_page("?legacy=1", "out.push(snapshot());")
    assert legacy["posted"] == [{"data": {"type": "RETURNINGAI_WIDGET_TOKEN"}, "target": "*"}]

    identified = _run_widget_page(
        "?email=ann%40example.com&customerId=c-42", "tick(); out.push(snapshot());"
    )
    assert identified["posted"] == []
    (state,) = identified["out"]
    assert (state["state"], state["email"], state["customerId"], state["text"]) == (
        "identified",
        "ann@example.com",
        "c-42",
        "Signed in as ann@example.com",
    )


@pytest.mark.anyio
@pytest.mark.parametrize("segment", list(DEFAULT_IFRAME_SEGMENTS.values()))
async def test_widget_pages_are_served_for_every_default_segment(segment: str) -> None:
    fake = FakeReturningAI()
    async with fake.client() as client:
        response = await client.get(f"/{segment}/some-widget?legacy=1")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    # The third-party page: frameable, and no policy of its own in the way.
    for header in ("content-security-policy", "x-frame-options"):
        assert header not in response.headers
    page = response.text
    assert page == _WIDGET_PAGE.replace("__HEIGHT__", "480")
    assert 'window.__WIDGET_INIT__ = { token: "", color: "light" };' in page
    assert "some-widget" not in page  # nothing from the request is echoed
    assert 'postMessage({type: REQUEST}, "*")' in page
    assert "event.source !== window.parent" in page
    assert (fake.calls, fake.signin_calls) == (0, 0)


@pytest.mark.anyio
async def test_widget_pages_only_under_known_segments() -> None:
    fake = FakeReturningAI(widget_segments=["my-store", "my-store"])
    assert fake.widget_segments == ("my-store",)
    async with fake.client() as client:
        assert (await client.get("/my-store/1")).status_code == 200
        assert (await client.get("/store-widget/1")).status_code == 404
        assert (await client.get("/my-store/1/extra")).status_code == 404
        assert (await client.post("/my-store/1")).status_code == 405
        # The SDK and the loader are not mistaken for widget pages.
        assert (await client.get("/sdk/rai-widget.iife.js")).text == _SDK_SCRIPT


@pytest.mark.parametrize("segment", ["", "a/b", "../x", "-x", 3])
def test_widget_segments_must_be_path_segments(segment: Any) -> None:
    with pytest.raises(ValueError, match="widget segment"):
        FakeReturningAI(widget_segments=[segment])


@pytest.mark.anyio
async def test_loader_script_is_served_as_javascript() -> None:
    fake = FakeReturningAI()
    async with fake.client() as client:
        response = await client.get("/widget-loader.js")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert response.text == _LOADER_SCRIPT
    assert "document.currentScript" in response.text


@pytest.mark.anyio
async def test_healthz() -> None:
    fake = FakeReturningAI()
    async with fake.client() as client:
        response = await client.get("/healthz")

    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert fake.calls == 0


@pytest.mark.anyio
async def test_client_base_url_is_overridable() -> None:
    fake = FakeReturningAI()
    async with fake.client() as client:
        assert str(client.base_url) == "https://api-v2.returning.ai"
    async with fake.client(base_url="http://fake.test", timeout=3) as client:
        assert str(client.base_url) == "http://fake.test"
        assert client.timeout.read == 3
        assert (await client.get("/healthz")).json() == {"ok": True}


# -- secrets and tokens -------------------------------------------------------------------------


def test_repr_hides_secrets() -> None:
    fake = FakeReturningAI(
        access_id="visible-id",
        access_key="s3cret-access-key",
        widget_api_key="s3cret-widget-key",
        signing_key=b"s3cret-signing-key",
    )

    text = repr(fake)

    assert text == "FakeReturningAI(access_id='visible-id', calls=0, signin_calls=0)"
    for secret in ("s3cret-access-key", "s3cret-widget-key", "s3cret-signing-key"):
        assert secret not in text
        assert secret not in str(fake)


def test_repr_default_secrets_not_shown() -> None:
    text = repr(FakeReturningAI())
    assert "demo-access-key" not in text
    assert "demo-widget-api-key" not in text
    assert "fake-returning-ai-signing-key" not in text


def test_encode_decode_round_trip() -> None:
    fake = FakeReturningAI()
    claims = {"data-name": "Zoë", "exp": 1, "nested": {"a": [1, 2]}}
    assert fake.decode(fake.encode(claims)) == claims


def _tamper_payload(fake: FakeReturningAI, token: str) -> str:
    header, _, signature = token.split(".")
    forged = fake.encode({"data-customer-id": "admin"}).split(".")[1]
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda fake, t: _tamper_payload(fake, t),
        lambda fake, t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda fake, t: FakeReturningAI(signing_key=b"other").encode(fake.decode(t)),
        lambda fake, t: t.rsplit(".", 1)[0],
        lambda fake, t: t + ".extra",
        lambda fake, t: "",
        lambda fake, t: "a.b.c",
        lambda fake, t: t.replace(".", ".é", 1),
    ],
    ids=[
        "swapped-payload",
        "altered-signature",
        "other-key",
        "two-segments",
        "four-segments",
        "empty",
        "junk",
        "non-ascii",
    ],
)
def test_decode_rejects_tampered_or_malformed_token(tamper: Any) -> None:
    fake = FakeReturningAI()
    token = fake.encode({"data-customer-id": "c-42", "exp": 1})

    with pytest.raises(ValueError):
        fake.decode(tamper(fake, token))


def test_decode_rejects_signed_garbage_segments() -> None:
    fake = FakeReturningAI()
    header = fake.encode({}).split(".")[0]
    payload = "bm90IGpzb24"  # base64url("not json")
    forged = f"{header}.{payload}.{fake._signature(header, payload)}"

    with pytest.raises(ValueError, match="malformed token"):
        fake.decode(forged)


def test_decode_does_not_check_expiry() -> None:
    fake = FakeReturningAI()
    assert fake.decode(fake.encode({"exp": 0})) == {"exp": 0}


# -- real socket --------------------------------------------------------------------------------


@pytest.mark.server
def test_run_in_thread_serves_over_a_real_socket() -> None:
    fake = FakeReturningAI()

    with fake.run_in_thread() as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        port = int(base_url.rsplit(":", 1)[1])
        assert port > 0
        with httpx.Client(base_url=base_url, timeout=5) as client:
            health = client.get("/healthz")
            minted = client.post(TOKEN_PATH, json=GOOD_BODY)

    assert (health.status_code, health.json()) == (200, {"ok": True})
    assert minted.status_code == 200
    assert fake.decode(minted.json()["data"]["embedToken"])["data-customer-id"] == "c-42"
    assert fake.calls == 1
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=2) as client:
        client.get(f"{base_url}/healthz")


@pytest.mark.server
def test_run_in_thread_disconnect_drops_the_connection() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="disconnect")

    with fake.run_in_thread() as base_url, httpx.Client(base_url=base_url, timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(TOKEN_PATH, json=GOOD_BODY)
        assert client.post(TOKEN_PATH, json=GOOD_BODY).status_code == 200


@pytest.mark.server
def test_run_in_thread_shuts_down_despite_a_hanging_request() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="hang")

    started = time.monotonic()
    with (
        fake.run_in_thread() as base_url,
        httpx.Client(base_url=base_url, timeout=0.3) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(TOKEN_PATH, json=GOOD_BODY)

    assert time.monotonic() - started < 4


@pytest.mark.server
def test_run_in_thread_exit_releases_a_request_still_hanging() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="hang")
    outcome: list[object] = []

    def call(base_url: str) -> None:
        try:
            outcome.append(httpx.post(f"{base_url}{TOKEN_PATH}", json=GOOD_BODY, timeout=30))
        except httpx.HTTPError as exc:  # pragma: no cover - reported by the assertion below
            outcome.append(exc)

    started = time.monotonic()
    with fake.run_in_thread() as base_url:
        caller = threading.Thread(target=call, args=(base_url,))
        caller.start()
        deadline = time.monotonic() + 5
        while fake.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    caller.join(timeout=10)

    assert time.monotonic() - started < 4
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.Response)
    assert outcome[0].status_code == 504


# -- sync transport and failures per identity ------------------------------------------------


def test_sync_client_mints_like_the_async_one() -> None:
    fake = FakeReturningAI()
    with fake.sync_client() as client:
        answer = client.post(TOKEN_PATH, json=GOOD_BODY)
        # A streamed (iterator) request body is read and forwarded too.
        streamed = client.post(TOKEN_PATH, content=iter([json.dumps(GOOD_BODY).encode()]))
    assert answer.status_code == streamed.status_code == 200
    assert fake.decode(answer.json()["data"]["embedToken"])["data-customer-id"] == "c-42"
    assert fake.calls == 2
    assert fake.requests == [GOOD_BODY, GOOD_BODY]
    fake.close()


def test_closing_the_sync_transport_ends_a_request_stuck_in_a_hang() -> None:
    fake = FakeReturningAI()
    fake.fail_next(mode="hang")
    transport = fake.sync_transport()
    client = httpx.Client(transport=transport, base_url=fake.base_url, timeout=None)
    errors: list[BaseException] = []

    def post() -> None:
        try:
            client.post(TOKEN_PATH, json=GOOD_BODY)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 10
    while fake.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.calls == 1
    fake.close()  # closes the transport: its loop cancels the hanging request
    thread.join(timeout=10)
    assert [type(e) for e in errors] == [httpx.ReadError]
    assert str(errors[0]) == "FakeReturningAI transport closed"
    with pytest.raises(RuntimeError, match="sync transport is closed"):
        client.get("/healthz")
    transport.close()  # again: nothing to do


@pytest.mark.parametrize("identity", [{}, {"data-customer-id": 42}, ["data-email"], {3: "x"}])
def test_identity_must_be_a_mapping_of_strings(identity: Any) -> None:
    fake = FakeReturningAI()
    with pytest.raises(ValueError, match="identity must be a non-empty mapping"):
        fake.fail_next(identity=identity)
    with pytest.raises(ValueError, match="identity must be a non-empty mapping"):
        fake.fail_always(identity=identity)
    with pytest.raises(ValueError, match="identity must be a non-empty mapping"):
        fake.recover(identity=identity)


@pytest.mark.anyio
async def test_failures_per_identity_replace_queue_and_recover() -> None:
    fake = FakeReturningAI()
    ann = {"data-customer-id": "c-42"}
    bob_body = {**GOOD_BODY, "userIdentifiers": {"data-customer-id": "bob"}}
    fake.fail_always(status=500, identity=ann)
    fake.fail_always(status=403, identity=ann)  # replaces the one for the same identity
    fake.fail_always(status=429)  # for everyone else
    fake.fail_next(status=502, identity=ann)  # queued: first
    fake.fail_next(0, status=504, identity=ann)  # nothing queued
    assert (await mint(fake)).status_code == 502
    assert (await mint(fake)).status_code == 403
    assert (await mint(fake, bob_body)).status_code == 429
    assert (await mint(fake, {"not": "identifiers"})).status_code == 429
    fake.fail_next(status=503, identity={"data-customer-id": "bob"})
    fake.recover(identity=ann)
    assert (await mint(fake)).status_code == 429  # ann's own are gone, the one for all stays
    assert (await mint(fake, bob_body)).status_code == 503  # bob's queued one stays
    fake.recover()
    assert (await mint(fake)).status_code == 200
    assert fake.calls == 7


@pytest.mark.anyio
async def test_signin_failures_match_the_email_as_data_email() -> None:
    fake = FakeReturningAI()
    fake.fail_always(status=503, identity={"data-email": "bob@example.com"})

    async def signin(email: str) -> int:
        headers = {"returningai-api-key": "demo-widget-api-key", "email": email}
        async with fake.client() as client:
            return (await client.post("/widget/c1/signin", headers=headers)).status_code

    assert await signin("ann@example.com") == 200
    assert await signin("bob@example.com") == 503
