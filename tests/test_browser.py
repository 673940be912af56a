"""The app in a real browser: `symile-clinical app` (which execs `streamlit run`) on a free
port, Debian's chromium driven through Playwright.

Picks an admission and sees the k result images render, uploads a WFDB pair and a labs
CSV and sees results, uploads a bad file and sees the error. Screenshots of each step are
saved under the test's tmp_path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _app_run import free_port, labs_csv, make_runs, wait_healthy, write_wfdb

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
K = 10
WAIT_MS = 90_000  # a shared 2-core CPU under load


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs it (apt-get)")
    root = tmp_path_factory.mktemp("browser")
    _, run, _ = make_runs(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "streamlit.log").open("wb")
    process = subprocess.Popen(
        # `symile-clinical app` execs `streamlit run app/web/streamlit_app.py -- --run RUN`.
        [sys.executable, "-m", "symile_clinical", "app", "--run", str(run), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # The server loads the run before it answers: minutes on a busy 2-core machine.
        wait_healthy(url, process, timeout_s=300)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


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


def result_images(page):
    """Rendered result thumbnails: st.image blocks whose caption carries a score."""
    return page.locator('[data-testid="stImageContainer"]').filter(has_text="score")


def wait_for_results(page, count: int) -> None:
    page.wait_for_function(
        """n => [...document.querySelectorAll('[data-testid="stImageContainer"]')]
            .filter(e => e.innerText.includes('score'))
            .filter(e => { const img = e.querySelector('img');
                           return img && img.complete && img.naturalWidth > 0; })
            .length === n""",
        arg=count,
        timeout=WAIT_MS,
    )


def test_pick_an_admission_and_see_k_images(server: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    page.get_by_text("Query by admission").first.wait_for(timeout=WAIT_MS)
    page.get_by_text("True CXR rank:").first.wait_for(timeout=WAIT_MS)
    page.screenshot(path=tmp_path / "01-admission.png", full_page=True)
    # Another admission, from the selectbox's list.
    page.locator('[data-testid="stSelectbox"]').first.click()
    page.get_by_role("option").nth(2).click()
    page.get_by_text("The whole index").first.click()
    wait_for_results(page, K)
    assert result_images(page).count() == K
    assert result_images(page).filter(has_text="[TRUE CXR]").count() <= 1
    page.screenshot(path=tmp_path / "02-whole-index.png", full_page=True)
    assert page.get_by_text("Symile vs CLIP").count() == 1
    page.close()


def test_upload_a_record_and_labs_then_a_bad_file(server: str, browser, tmp_path: Path) -> None:
    hea, dat = write_wfdb(tmp_path / "record")
    csv = tmp_path / "labs.csv"
    csv.write_bytes(labs_csv([("50000", "4.2"), ("Lab 3", "7")]))
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/by_upload")
    page.get_by_text("Upload an ECG record").first.wait_for(timeout=WAIT_MS)
    inputs = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    # One upload at a time: each triggers a rerun, and the page settles before the next.
    inputs.nth(0).set_input_files([hea, dat])
    wait_for_results(page, K)
    page.screenshot(path=tmp_path / "03-upload-ecg.png", full_page=True)
    inputs.nth(1).set_input_files(csv)
    page.get_by_text("2 lab values read").first.wait_for(timeout=WAIT_MS)
    wait_for_results(page, K)
    assert page.get_by_text("ECG refused").count() == 0
    page.screenshot(path=tmp_path / "04-upload-labs.png", full_page=True)

    inputs.nth(0).set_input_files(bad)
    page.get_by_text("ECG refused").first.wait_for(timeout=WAIT_MS)
    assert page.get_by_text("wrong file type").count() >= 1
    page.screenshot(path=tmp_path / "05-bad-file.png", full_page=True)
    # The app keeps working: the navigation still serves the other pages.
    page.goto(server)
    page.get_by_text("True CXR rank:").first.wait_for(timeout=WAIT_MS)
    page.close()
