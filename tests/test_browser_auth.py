"""Sign-in in a real browser: a real OpenID Connect provider (oidc-provider-mock, started
here on loopback), `symile-clinical app` served on a configuration that needs sign-in (it
answers to a network name, `--allow-host ward.example`, and has an allow-list), and
Debian's chromium driven through Playwright.

Proves: nothing of the app before sign-in, its pages after; a user outside the allow-list
refused; the audit file holding exactly the views made; the security headers on every
response of the app and no Content-Security-Policy violation in the page.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _app_run import free_port, make_runs, start_server, stop_server, wait_healthy

from app.web.audit import read_audit
from symile_clinical.formats.dataset_dir import DatasetDir

pytestmark = [
    pytest.mark.browser,
    # Authlib's own deprecations, raised inside oidc-provider-mock.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:oidc_provider_mock.*"),
]

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 90_000  # a shared 2-core CPU under load
ALICE = "alice@ward.example"
MALLORY = "mallory@elsewhere.example"
SECURITY_HEADERS = ("content-security-policy", "x-frame-options", "referrer-policy")


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The identity provider's base URL (its users sign in by typing their e-mail)."""
    from oidc_provider_mock import run_server_in_thread

    # The provider speaks plain HTTP on loopback; Authlib refuses that unless told.
    previous = os.environ.get("AUTHLIB_INSECURE_TRANSPORT")
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    try:
        with run_server_in_thread() as server:
            yield f"http://localhost:{server.server_port}"
    finally:
        if previous is None:
            os.environ.pop("AUTHLIB_INSECURE_TRANSPORT", None)
        else:
            os.environ["AUTHLIB_INSECURE_TRANSPORT"] = previous


@pytest.fixture(scope="module")
def served(provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The app needing sign-in: its URL, data, run and audit folder."""
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs it (apt-get)")
    root = tmp_path_factory.mktemp("browser_auth")
    data, run, _ = make_runs(root)
    port = free_port()
    secrets_file = root / "secrets.toml"
    secrets_file.write_text(
        "[auth]\n"
        f'redirect_uri = "http://localhost:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "symile-clinical"\n'
        'client_secret = "test-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
    )
    audit = root / "audit"
    command = [sys.executable, "-m", "symile_clinical", "app", "--run", str(run)]
    command += [
        "--port",
        str(port),
        "--allow-host",
        "ward.example",
        "--allow-user",
        "@ward.example",
    ]
    command += ["--secrets", str(secrets_file), "--audit-dir", str(audit)]
    env = {**os.environ, "AUTHLIB_INSECURE_TRANSPORT": "1", "HOME": str(root)}
    process = start_server(command, root / "server.log", cwd=root, env=env)
    url = f"http://localhost:{port}"
    try:
        wait_healthy(url, process, timeout_s=300)
        yield {"url": url, "data": data, "run": run, "audit": audit}
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


class Watched:
    """A browser context whose responses from the app and CSP violations are kept."""

    def __init__(self, browser, app_url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.responses = []
        self.violations = []
        self.page = self.context.new_page()
        self.page.on(
            "response", lambda r: self.responses.append(r) if r.url.startswith(app_url) else None
        )
        self.page.on(
            "console",
            lambda m: (
                self.violations.append(m.text) if "Content Security Policy" in m.text else None
            ),
        )

    def sign_in(self, email: str) -> None:
        """Press the app's Sign in button and sign in at the provider as `email`."""
        self.page.get_by_role("button", name="Sign in").click(timeout=WAIT_MS)
        self.page.locator('input[name="sub"]').fill(email, timeout=WAIT_MS)
        self.page.get_by_role("button", name="Authorize").click()

    def check_headers(self) -> int:
        """Assert the security headers on every app response seen; how many were seen."""
        for response in self.responses:
            headers = response.all_headers()
            for name in SECURITY_HEADERS:
                assert name in headers, f"{name} missing on {response.url}"
            assert "frame-ancestors 'none'" in headers["content-security-policy"], response.url
            assert headers["x-content-type-options"] == "nosniff", response.url
        return len(self.responses)

    def close(self) -> None:
        self.context.close()


def body_text(page) -> str:
    return page.locator("body").inner_text()


def test_nothing_before_sign_in_pages_after_and_every_view_audited(
    served: dict, browser, tmp_path: Path
) -> None:
    url, run = served["url"], served["run"]
    manifest = DatasetDir(served["data"]).manifest("test")
    first_admission = f"subject {manifest['subject_id'].iloc[0]}"

    alice = Watched(browser, url)
    page = alice.page
    # Before sign-in: the sign-in button and nothing of the app, on every page's address.
    for path in ("", "/by_upload", "/report"):
        page.goto(url + path)
        page.get_by_role("button", name="Sign in").wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1500)  # let any content that would come arrive
        text = body_text(page)
        for secret in ("Query by", "Evaluation report", first_admission, run.name, "score"):
            assert secret not in text, (path, secret)
    page.screenshot(path=tmp_path / "01-sign-in.png", full_page=True)
    assert read_audit(served["audit"]) == []  # nothing was viewed

    alice.sign_in(ALICE)
    page.get_by_text("True CXR rank:").first.wait_for(timeout=WAIT_MS)
    # The 4 result thumbnails (data: URIs) drawn under the Content-Security-Policy.
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stImageContainer"] img')]
            .filter(img => img.complete && img.naturalWidth > 0).length >= 4""",
        timeout=WAIT_MS,
    )
    assert first_admission in body_text(page)
    assert page.get_by_text(f"Signed in as {ALICE}").count() == 1
    page.screenshot(path=tmp_path / "02-signed-in.png", full_page=True)
    page.get_by_role("link", name="Evaluation report").click()
    page.get_by_text("No evaluation report for the run").first.wait_for(timeout=WAIT_MS)
    assert "/tmp" not in body_text(page)  # runs by name, never server paths
    page.screenshot(path=tmp_path / "03-report.png", full_page=True)
    assert alice.check_headers() > 10
    assert alice.violations == []
    alice.close()

    mallory = Watched(browser, url)
    mallory.page.goto(url)
    mallory.sign_in(MALLORY)
    mallory.page.get_by_text("Access refused").first.wait_for(timeout=WAIT_MS)
    mallory.page.wait_for_timeout(1500)
    text = body_text(mallory.page)
    assert MALLORY in text and first_admission not in text and "Query by" not in text
    mallory.page.screenshot(path=tmp_path / "04-refused.png", full_page=True)
    mallory.check_headers()
    mallory.close()

    records = read_audit(served["audit"])
    assert [(r["user"], r["event"], r["page"]) for r in records] == [
        (ALICE, "view", "by_admission"),
        (ALICE, "view", "report"),
        (MALLORY, "refused", "refused"),
    ]
    view = records[0]
    assert view["admission"] == {
        "subject_id": int(manifest["subject_id"].iloc[0]),
        "hadm_id": int(manifest["hadm_id"].iloc[0]),
    }
    assert len(view["candidates"]["Symile"]) == 4 and len(view["candidates"]["CLIP"]) == 4
    assert records[0]["session"] == records[1]["session"] != records[2]["session"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
