"""``python -m rai_middleware check``: each problem it reports, the exit status, the probe."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rai_middleware._check import describe, main, probe, unknown_variables
from rai_middleware._config import build_settings
from rai_middleware.testing import FakeReturningAI
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID, SECRET_KEY

pytestmark = pytest.mark.server  # the probe and the subprocesses

CREDENTIALS = {
    "RAI_COMMUNITY_ID": COMMUNITY_ID,
    "RAI_ACCESS_ID": ACCESS_ID,
    "RAI_ACCESS_KEY": ACCESS_KEY,
}
HEADER = "rai-middleware check: configuration from the environment (RAI_* variables)"
SUMMARY = [
    "  mode: access_key",
    f"  community_id: {COMMUNITY_ID}",
    "  credentials set: access_id, access_key (values never shown)",
    "  tokens minted at: https://api-v2.returning.ai/v2/api/widget-access-keys/token",
    "  the middleware answers: POST /_rai/embed-token",
]


def run(*argv: str, environ: dict[str, str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    status = main(["check", *argv], environ=environ, out=out)
    return status, out.getvalue().splitlines()


def test_a_complete_environment_passes_and_shows_no_secret() -> None:
    status, lines = run(environ={**CREDENTIALS, "RAI_SECRET_KEY": SECRET_KEY})
    assert (status, lines) == (0, [HEADER, *SUMMARY, "OK: 0 errors, 0 warnings"])


def test_every_missing_credential_is_an_error_at_once() -> None:
    status, lines = run(environ={})
    assert status == 1
    assert lines == [
        HEADER,
        "error: community_id is required in mode='access_key': pass community_id=... to the "
        "middleware or set the RAI_COMMUNITY_ID environment variable",
        "error: access_id is required in mode='access_key': pass access_id=... to the "
        "middleware or set the RAI_ACCESS_ID environment variable",
        "error: access_key is required in mode='access_key': pass access_key=... to the "
        "middleware or set the RAI_ACCESS_KEY environment variable",
        "FAILED: 3 errors, 0 warnings",
    ]


def test_an_unknown_variable_is_an_error_with_the_one_meant() -> None:
    status, lines = run(environ={**CREDENTIALS, "RAI_ACESS_KEY": "typo"})
    assert status == 1
    assert lines == [
        HEADER,
        *SUMMARY,
        "error: unknown environment variable RAI_ACESS_KEY: rai-middleware does not read it "
        "(did you mean RAI_ACCESS_KEY?)",
        "FAILED: 1 error, 0 warnings",
    ]


def test_an_unknown_variable_without_a_likely_one_lists_the_variables() -> None:
    [problem] = unknown_variables({"RAI_COLOUR": "blue", "OTHER": "x"})
    assert problem == (
        "unknown environment variable RAI_COLOUR: rai-middleware does not read it (the "
        "variables are RAI_ACCESS_ID, RAI_ACCESS_KEY, RAI_API_BASE_URL, RAI_COMMUNITY_ID, "
        "RAI_SECRET_KEY, RAI_STRICT, RAI_WIDGETS_BASE_URL, RAI_WIDGET_API_KEY)"
    )


def test_a_malformed_variable_is_an_error_naming_it() -> None:
    status, lines = run(environ={**CREDENTIALS, "RAI_API_BASE_URL": "ftp://x"})
    assert status == 1
    assert lines[1:] == [
        "error: the RAI_API_BASE_URL environment variable must be an absolute http(s) URL, "
        "got 'ftp://x'",
        "FAILED: 1 error, 0 warnings",
    ]


HTTP_WARNING = (
    "warning: api_base_url is a plain http:// URL (http://api.example): credentials and "
    "tokens would cross the network unencrypted; use https:// (loopback hosts are exempt)"
)
SHORT_KEY_WARNING = (
    "warning: secret_key is shorter than 32 bytes: it signs refresh tickets and keys the "
    "identity hashes; use e.g. secrets.token_hex(32)"
)


def test_warnings_exit_0_unless_strict() -> None:
    environ = {**CREDENTIALS, "RAI_API_BASE_URL": "http://api.example", "RAI_SECRET_KEY": "k"}
    status, lines = run(environ=environ)
    assert status == 0
    assert lines[-3:] == [HTTP_WARNING, SHORT_KEY_WARNING, "OK: 0 errors, 2 warnings"]
    assert "k" not in {line.rsplit(" ", 1)[-1] for line in lines}
    status, lines = run("--strict", environ=environ)
    assert (status, lines[-1]) == (1, "FAILED: 0 errors, 2 warnings (--strict)")
    status, lines = run(environ={**environ, "RAI_STRICT": "1"})
    assert (status, lines[-1]) == (1, "FAILED: 0 errors, 2 warnings (--strict)")


def test_a_loopback_http_upstream_is_no_warning() -> None:
    status, lines = run(environ={**CREDENTIALS, "RAI_API_BASE_URL": "http://127.0.0.1:9"})
    assert (status, lines[-1]) == (0, "OK: 0 errors, 0 warnings")


def test_no_secret_is_ever_printed() -> None:
    secrets = {
        "RAI_ACCESS_ID": "id-SECRET-0001",
        "RAI_ACCESS_KEY": "key-SECRET-0002",
        "RAI_SECRET_KEY": "sk-SECRET-0003",
        "RAI_WIDGET_API_KEY": "wk-SECRET-0004",
    }
    for extra in ({}, {"RAI_API_BASE_URL": "ftp://x"}, {"RAI_ACCES_KEY": "key-SECRET-0005"}):
        _, lines = run("--probe", "a@b.c", environ={"RAI_COMMUNITY_ID": "c", **secrets, **extra})
        assert "SECRET" not in "\n".join(lines)


# -- the probe -----------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[tuple[FakeReturningAI, str]]:
    service = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY, token_lifetime=900)
    with service.run_in_thread() as url:
        yield service, url


def test_the_probe_mints_one_token_and_prints_its_lifetime(
    fake: tuple[FakeReturningAI, str],
) -> None:
    service, url = fake
    status, lines = run(
        "--probe", "ada@example.com", environ={**CREDENTIALS, "RAI_API_BASE_URL": url}
    )
    assert status == 0
    assert service.calls == 1
    assert service.requests[0]["userIdentifiers"] == {"data-email": "ada@example.com"}
    probe = lines[-2]
    prefix = (
        f"probe: minted a token for data-email='ada@example.com' at "
        f"{url}/v2/api/widget-access-keys/token: it lives 900 s (15.0 min); round trip "
    )
    assert probe.startswith(prefix) and probe.endswith(" ms"), probe
    assert int(probe.removeprefix(prefix).removesuffix(" ms")) < 5000
    assert lines[-1] == "OK: 0 errors, 0 warnings"


def test_the_probe_sends_an_id_as_the_customer_id(fake: tuple[FakeReturningAI, str]) -> None:
    service, url = fake
    status, _ = run("--probe", "c-42", environ={**CREDENTIALS, "RAI_API_BASE_URL": url})
    assert status == 0
    assert service.requests[0]["userIdentifiers"] == {"data-customer-id": "c-42"}


def test_a_refused_probe_is_an_error(fake: tuple[FakeReturningAI, str]) -> None:
    service, url = fake
    environ = {**CREDENTIALS, "RAI_ACCESS_KEY": "wrong-key-SECRET", "RAI_API_BASE_URL": url}
    status, lines = run("--probe", "c-42", environ=environ)
    assert status == 1
    assert service.calls == 1
    assert lines[-2].startswith(
        "error: probe: minting a token for data-customer-id='c-42' failed: "
    )
    assert "401" in lines[-2]
    assert lines[-1] == "FAILED: 1 error, 0 warnings"
    assert "SECRET" not in "\n".join(lines)


def test_the_iframe_probe_needs_an_email(fake: tuple[FakeReturningAI, str]) -> None:
    service, url = fake
    environ = {
        "RAI_COMMUNITY_ID": COMMUNITY_ID,
        "RAI_WIDGET_API_KEY": "demo-widget-api-key",
        "RAI_WIDGETS_BASE_URL": url,
    }
    status, lines = run("--probe", "c-42", environ=environ)
    assert (status, lines[-2]) == (
        1,
        "error: probe: mode='iframe' needs data-email: give --probe an email address",
    )
    status, lines = run("--probe", "ada@example.com", environ=environ)
    assert status == 0, lines
    assert lines[-2].startswith(f"probe: minted a token for data-email='ada@example.com' at {url}")
    assert service.signin_calls == 1


def test_a_mode_without_tokens_has_nothing_to_probe() -> None:
    # mode="attributes" is a keyword only (no environment variable), so probe() directly.
    settings = build_settings({"mode": "attributes"}, environ={})
    assert probe(settings, "c-42") == (
        False,
        "mode='attributes' mints no tokens: there is nothing to probe",
    )
    assert describe(settings) == [
        "mode: attributes",
        "community_id: (none)",
        "credentials set: (none) (values never shown)",
        "tokens minted at: (none: this mode mints no tokens)",
    ]


def test_the_probe_is_not_run_on_a_configuration_with_errors() -> None:
    status, lines = run("--probe", "c-42", environ={})
    assert status == 1
    assert lines[-2:] == [
        "error: --probe: not run, the configuration has errors",
        "FAILED: 4 errors, 0 warnings",
    ]


# -- Flask and Django ----------------------------------------------------------------------


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_flask_config_keys_are_read_and_misspelt_ones_reported(modules: Path) -> None:
    pytest.importorskip("flask")
    (modules / "flask_site_a.py").write_text(
        textwrap.dedent(
            f"""
            from flask import Flask
            app = Flask(__name__)
            app.config.update(RAI_COMMUNITY_ID={COMMUNITY_ID!r}, RAI_ACCESS_ID="i",
                              RAI_ACCES_KEY="typo", RAI_TIMEOUT=0)
            """
        )
    )
    status, lines = run("--app", "flask_site_a:app", environ={})
    assert status == 1
    assert lines == [
        "rai-middleware check: configuration from the Flask app flask_site_a:app "
        "(app.config['RAI_...'])",
        "error: unknown option app.config['RAI_ACCES_KEY'] (did you mean "
        "app.config['RAI_ACCESS_KEY']?)",
        "error: app.config['RAI_TIMEOUT'] must be greater than 0, got 0",
        "error: app.config['RAI_ACCESS_KEY'] is required in mode='access_key': set "
        "app.config['RAI_ACCESS_KEY'] (or pass access_key=... to ReturningAI) or set the "
        "RAI_ACCESS_KEY environment variable",
        "FAILED: 3 errors, 0 warnings",
    ]


def test_a_flask_app_that_fails_at_import_reports_its_problems(modules: Path) -> None:
    pytest.importorskip("flask")
    (modules / "flask_site_b.py").write_text(
        textwrap.dedent(
            """
            from flask import Flask
            from rai_middleware.flask import ReturningAI
            app = Flask(__name__)
            app.config.update(RAI_COMMUNITY_ID="c", RAI_TIMEOUT=-1)
            ReturningAI(app)
            """
        )
    )
    status, lines = run("--app", "flask_site_b:app", environ={})
    assert status == 1
    assert lines[1] == "error: app.config['RAI_TIMEOUT'] must be greater than 0, got -1"
    assert lines[-1] == "FAILED: 3 errors, 0 warnings"


def test_app_must_be_a_flask_app_named_module_colon_attribute(modules: Path) -> None:
    (modules / "not_flask.py").write_text("app = object()\n")
    status, lines = run("--app", "not_flask:app", environ={})
    assert (status, lines[1]) == (
        1,
        "error: not_flask:app is not a Flask app (it has no config mapping)",
    )
    with pytest.raises(SystemExit, match="--app wants module:attribute"):
        run("--app", "not_flask", environ={})
    with pytest.raises(SystemExit, match="--app not_flask:nothing: module 'not_flask' has no"):
        run("--app", "not_flask:nothing", environ={})
    with pytest.raises(SystemExit, match="--app no_such_module:app: No module named"):
        run("--app", "no_such_module:app", environ={})


def python_m(*argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAI_")}
    root = str(Path(__file__).resolve().parent.parent)
    clean["PYTHONPATH"] = os.pathsep.join([str(cwd), root])
    return subprocess.run(
        [sys.executable, "-m", "rai_middleware", *argv],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_rai_middleware_check_runs_from_the_command_line(tmp_path: Path) -> None:
    done = python_m("check", env={"RAI_COMMUNITY_ID": "c"}, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == "FAILED: 2 errors, 0 warnings"
    done = python_m(env={}, cwd=tmp_path)
    assert done.returncode == 2
    assert "check" in done.stderr


def test_a_settings_module_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    done = python_m("check", "--settings", "no_such_settings", env={}, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "--settings no_such_settings: No module named 'no_such_settings'"
    )


def test_django_settings_run_the_system_checks(tmp_path: Path) -> None:
    pytest.importorskip("django")
    (tmp_path / "site_settings.py").write_text(
        textwrap.dedent(
            """
            SECRET_KEY = "x" * 50
            INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
            MIDDLEWARE = [
                "rai_middleware.django.ReturningAIMiddleware",
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "django.middleware.gzip.GZipMiddleware",
            ]
            RETURNING_AI = {"community_id": "c", "acces_key": "typo"}
            """
        )
    )
    done = python_m("check", "--settings", "site_settings", env={}, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "rai-middleware check: configuration from the Django settings site_settings "
        "(RETURNING_AI['...'])",
        "error: rai_middleware.E002: RETURNING_AI['access_id'] is required in "
        "mode='access_key': set it in settings.RETURNING_AI or set the RAI_ACCESS_ID "
        "environment variable (Set it in settings.RETURNING_AI, or in the environment "
        "variable named.)",
        "error: rai_middleware.E002: RETURNING_AI['access_key'] is required in "
        "mode='access_key': set it in settings.RETURNING_AI or set the RAI_ACCESS_KEY "
        "environment variable (Set it in settings.RETURNING_AI, or in the environment "
        "variable named.)",
        "error: rai_middleware.E004: unknown option RETURNING_AI['acces_key'] (did you mean "
        "RETURNING_AI['access_key']?)",
        "warning: rai_middleware.W001: rai_middleware.django.ReturningAIMiddleware is listed "
        "above AuthenticationMiddleware: request.user is not set when it runs, so every "
        "visitor is anonymous and no widget is signed in (Move "
        "'rai_middleware.django.ReturningAIMiddleware' below "
        "'django.contrib.auth.middleware.AuthenticationMiddleware' in MIDDLEWARE.)",
        "warning: rai_middleware.W002: GZipMiddleware is listed below "
        "rai_middleware.django.ReturningAIMiddleware: pages reach the middleware compressed, "
        "and each is decompressed and compressed again to be rewritten (Move "
        "'django.middleware.gzip.GZipMiddleware' above "
        "'rai_middleware.django.ReturningAIMiddleware' in MIDDLEWARE.)",
        "FAILED: 3 errors, 2 warnings",
    ]
