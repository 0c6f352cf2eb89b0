"""Take the screenshot of the demo shown in the README and the docs (docs/images/demo.png).

Run it from the repository root::

    pip install -e ".[demo,test]"        # uvicorn, and playwright (no browser download)
    python -m examples.screenshot         # needs Chromium: apt-get install chromium

It starts the offline demo (``examples/demo.py``, against ``FakeReturningAI``) with short-lived
tokens, signs in with the form in headless Chromium, waits until a token has been renewed
without a reload, and saves the page. ``--mode`` picks another auth mode, ``--output`` another
file, ``--token-ttl`` the tokens' lifetime (the wait lasts about that long). ``CHROMIUM`` names
another Chromium build than ``/usr/bin/chromium``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from examples.demo import MODES, build_app
from rai_middleware.testing import FakeReturningAI

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["capture", "main", "serve"]

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "images" / "demo.png"
EMAIL = "ada@example.com"
NAME = "Ada Lovelace"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1, in a thread; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SystemExit(f"Chromium not found at {path}: apt-get install chromium, or set CHROMIUM")
    return path


def renewed(page: Page) -> bool:
    """True once some widget of the page shows a renewed token: an SDK element (Access Key
    mode) or a framed widget page (cross-origin: each frame is asked in its own context)."""
    from playwright.sync_api import Error as PlaywrightError

    if page.locator("[data-fake-renewals]").count():
        return True
    for frame in page.frames[1:]:
        with contextlib.suppress(PlaywrightError):  # a frame that navigated or went away
            if frame.evaluate("Number(document.body.dataset.renewals || 0)") > 0:
                return True
    return False


def wait_for_renewal(page: Page, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not renewed(page):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no widget showed a renewed token within {timeout:g} s")
        page.wait_for_timeout(250)


def capture(
    output: Path = OUTPUT,
    *,
    mode: str = "access_key",
    token_ttl: float = 20.0,
    browser: Browser | None = None,
) -> Path:
    """Run the demo, sign in, wait for a renewal (modes with tokens), save a screenshot.

    ``browser`` is a Playwright Chromium to use; by default one is launched (and closed).
    """
    with contextlib.ExitStack() as stack:
        if browser is None:
            from playwright.sync_api import sync_playwright

            playwright = stack.enter_context(sync_playwright())
            browser = playwright.chromium.launch(
                executable_path=chromium_path(), args=LAUNCH_ARGS, headless=True
            )
            stack.callback(browser.close)
        fake_url = stack.enter_context(FakeReturningAI(token_lifetime=token_ttl).run_in_thread())
        url = stack.enter_context(
            serve(build_app(mode=mode, api_base_url=fake_url, token_ttl=token_ttl))
        )
        page = browser.new_page(viewport={"width": 960, "height": 760})
        stack.callback(page.close)  # before the servers stop: no idle connection to wait for
        page.goto(f"{url}/login")
        page.get_by_label("Email").fill(EMAIL)
        page.get_by_label("Name").fill(NAME)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/")
        if mode != "attributes":  # the only mode without a token to renew
            wait_for_renewal(page, token_ttl + 30)
            page.wait_for_timeout(1200)  # into the "renewed" flash, the countdown running
        else:
            page.wait_for_timeout(1500)
        output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(output), full_page=True)
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot the rai-middleware demo.")
    parser.add_argument("--mode", choices=MODES, default=MODES[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--token-ttl", type=float, default=20.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    saved = capture(args.output, mode=args.mode, token_ttl=args.token_ttl)
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
