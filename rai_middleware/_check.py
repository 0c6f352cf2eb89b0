"""``python -m rai_middleware check``: the configuration read as the middleware reads it.

Three sources, as the entrances read them: the environment (``ReturningAIMiddleware`` and
``ReturningAIWSGIMiddleware`` built with no keywords), ``--settings`` (a Django settings
module: ``settings.RETURNING_AI`` and the system checks of ``rai_middleware.django.checks``)
and ``--app module:app`` (a Flask app: its ``RAI_*`` config keys). Every problem is
reported at once; ``--probe EMAIL_OR_ID`` then mints one real token. Errors (missing or
malformed settings, unknown ``RAI_*`` names, a failed probe) exit 1; warnings (a plain
``http://`` upstream, a short secret key) exit 0 unless ``--strict``.

Nothing printed contains a credential or a token: the messages name options, never their
secret values (``_config`` guarantees it for its own; the probe prints only the lifetime).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._config import (
    FLASK,
    KEYWORDS,
    STRICT_ENV,
    Review,
    Settings,
    review_settings,
)
from ._exceptions import ConfigurationError, TokenError
from ._identity import Identity
from ._options import OPTIONS
from ._sync_tokens import SyncTokenService

__all__ = ["Report", "check_django", "check_environment", "check_flask", "main", "probe"]

#: The ``RAI_*`` environment variables the package reads.
KNOWN_VARIABLES = frozenset({*(o.env for o in OPTIONS if o.env is not None), STRICT_ENV})


@dataclass
class Report:
    """What a check found: where the configuration came from, its settings (None when it
    has errors), and the errors, warnings and notes to print."""

    source: str
    settings: Settings | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, review: Review) -> None:
        self.settings = review.settings
        self.errors += review.errors
        self.warnings += review.warnings

    def failed(self, *, strict: bool) -> bool:
        return bool(self.errors) or (strict and bool(self.warnings))


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """An error for each ``RAI_*`` environment variable the package does not read."""
    known = sorted(KNOWN_VARIABLES)
    problems = []
    for name in sorted(n for n in environ if n.startswith("RAI_") and n not in KNOWN_VARIABLES):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else f"the variables are {', '.join(known)}"
        problems.append(
            f"unknown environment variable {name}: rai-middleware does not read it ({hint})"
        )
    return problems


def check_environment(environ: Mapping[str, str]) -> Report:
    """The middleware as built with no keyword arguments: the environment only."""
    report = Report("the environment (RAI_* variables)")
    report.errors += unknown_variables(environ)
    report.add(review_settings({}, environ, spelling=KEYWORDS))
    return report


def check_flask(target: str, environ: Mapping[str, str]) -> Report:
    """A Flask app's ``RAI_*`` config keys (and the environment for the credentials)."""
    report = Report(f"the Flask app {target} (app.config['RAI_...'])")
    report.errors += unknown_variables(environ)
    try:
        app = _load(target)
    except ConfigurationError as error:  # ReturningAI(app) at import found problems
        report.errors += error.problems
        return report
    config = getattr(app, "config", None)
    if not isinstance(config, Mapping):
        report.errors.append(f"{target} is not a Flask app (it has no config mapping)")
        return report
    options = {
        key.removeprefix("RAI_").lower(): value
        for key, value in config.items()
        if isinstance(key, str) and key.startswith("RAI_")
    }
    report.add(review_settings(options, environ, spelling=FLASK))
    return report


def check_django(settings_module: str, environ: Mapping[str, str]) -> Report:
    """Django's ``settings.RETURNING_AI`` and the order of ``MIDDLEWARE``: the system checks
    of ``rai_middleware.django.checks``, run whether or not the app is installed."""
    report = Report(f"the Django settings {settings_module} (RETURNING_AI['...'])")
    report.errors += unknown_variables(environ)
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    try:
        import django

        django.setup()
    except ImportError as error:  # no Django, or no such settings module
        raise SystemExit(f"--settings {settings_module}: {error}") from None
    from .django import checks

    review, messages = checks.review(environ)
    report.settings = review.settings
    for message in messages:
        line = f"{message.id}: {message.msg}" + (f" ({message.hint})" if message.hint else "")
        (report.errors if message.is_serious() else report.warnings).append(line)
    return report


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise SystemExit(f"--app wants module:attribute, such as myapp:app, got {target!r}")
    try:
        loaded: Any = importlib.import_module(module)
        for part in attribute.split("."):
            loaded = getattr(loaded, part)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"--app {target}: {error}") from None
    return loaded


def describe(settings: Settings) -> list[str]:
    """What the settings amount to, without a secret: the mode, where tokens come from,
    which credentials are set."""
    secrets = [o.name for o in OPTIONS if o.secret and o.name != "secret_key"]
    given = [name for name in secrets if getattr(settings, name) is not None]
    lines = [
        f"mode: {settings.mode}",
        f"community_id: {settings.community_id or '(none)'}",
        f"credentials set: {', '.join(given) or '(none)'} (values never shown)",
        f"tokens minted at: {settings.token_url or '(none: this mode mints no tokens)'}",
    ]
    if settings.refresh_path:
        lines.append(f"the middleware answers: POST {settings.refresh_path}")
    return lines


def probe(
    settings: Settings, who: str, *, clock: Callable[[], float] = time.perf_counter
) -> tuple[bool, str]:
    """Mint one real token for ``who`` (an email if it has an ``@``, else a customer id):
    (True, its lifetime and the round trip) or (False, why not). The token is not shown."""
    if settings.token_url is None:
        return False, f"mode={settings.mode!r} mints no tokens: there is nothing to probe"
    field_name = "data-email" if "@" in who else "data-customer-id"
    identity = Identity.create({field_name: who}, settings.secret_key.reveal().encode())
    lacking = settings.auth.missing_identifier(identity)
    if lacking is not None:
        return False, f"mode={settings.mode!r} needs {lacking}: give --probe an email address"
    service = SyncTokenService(settings)
    started = clock()
    try:
        token = service.get(identity)
    except TokenError as error:
        return False, f"minting a token for {field_name}={who!r} failed: {error}"
    finally:
        service.close()
    took = clock() - started
    lifetime = token.expires_at - token.issued_at
    return True, (
        f"minted a token for {field_name}={who!r} at {settings.token_url}: it lives "
        f"{lifetime:.0f} s ({lifetime / 60:.1f} min); round trip {took * 1000:.0f} ms"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rai_middleware",
        description="Tools for rai-middleware, the Returning.AI widget middleware.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="check the configuration as the middleware reads it",
        description="Report every configuration problem at once (exit 1 on errors; "
        "warnings exit 0 unless --strict). Reads the environment, or a Django settings "
        "module (--settings), or a Flask app (--app).",
    )
    source = check.add_mutually_exclusive_group()
    source.add_argument("--settings", metavar="MODULE", help="a Django settings module")
    source.add_argument("--app", metavar="MODULE:APP", help="a Flask app, such as myapp:app")
    check.add_argument(
        "--probe",
        metavar="EMAIL_OR_ID",
        help="mint one real token for this visitor and print its lifetime and round trip",
    )
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too (as RAI_STRICT=1 does)"
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the command line; the exit status."""
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    stream = out or sys.stdout
    # The messages are printed here; the token service's own log lines would repeat them.
    package_logger = logging.getLogger("rai_middleware")
    if not any(isinstance(h, logging.NullHandler) for h in package_logger.handlers):
        package_logger.addHandler(logging.NullHandler())
    if args.settings:
        report = check_django(args.settings, env)
    elif args.app:
        sys.path.insert(0, os.getcwd())  # as `flask --app` finds the app
        report = check_flask(args.app, env)
    else:
        report = check_environment(env)
    strict = args.strict or env.get(STRICT_ENV, "").strip() == "1"
    print(f"rai-middleware check: configuration from {report.source}", file=stream)
    if report.settings is not None:
        for line in describe(report.settings):
            print(f"  {line}", file=stream)
    for error in report.errors:
        print(f"error: {error}", file=stream)
    for warning in report.warnings:
        print(f"warning: {warning}", file=stream)
    if args.probe:
        if report.settings is None:
            report.errors.append("--probe: not run, the configuration has errors")
            print("error: --probe: not run, the configuration has errors", file=stream)
        else:
            ok, text = probe(report.settings, args.probe)
            print(f"{'probe' if ok else 'error: probe'}: {text}", file=stream)
            if not ok:
                report.errors.append(text)
    counts = f"{_plural(len(report.errors), 'error')}, {_plural(len(report.warnings), 'warning')}"
    verdict = "FAILED" if report.failed(strict=strict) else "OK"
    print(
        f"{verdict}: {counts}" + (" (--strict)" if strict and report.warnings else ""), file=stream
    )
    return 1 if report.failed(strict=strict) else 0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
