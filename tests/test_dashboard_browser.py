"""The real server, `msnl dashboard`, loaded page by page in headless Chromium (Playwright).

Skips with a reason where Debian's chromium isn't installed (`apt-get install chromium`; CI
installs it). Screenshots go to $MSNL_SCREENSHOTS when set (docs/ holds the committed ones),
else into the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from storage import open_results
from storage.report import RunReport
from storage.synthetic import write_synthetic_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGES = {"overview": "Cohort overview", "endpoints": "Endpoints", "patient": "Patient view"}

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: install Debian's `chromium` to run the browser test")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = write_synthetic_store(tmp_path_factory.mktemp("browser") / "store.zarr", 16, seed=5, pending_share=0.1, failed_share=0.1,
                                  reoriented_share=0.2)
    status = open_results(store).status.to_dataframe().reset_index()
    done, pending = ([(r.subject, *r.interval.split("->")) for r in status[status.status == state].itertuples()]
                     for state in ("ok", "pending"))
    RunReport(store, done).finish(done=len(done))
    RunReport(store, pending)  # a run still going: the overview lists it as not finished
    port = _free_port()
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "dashboard", str(store), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        log.seek(0)
        pytest.fail(f"the dashboard did not start: {log.read()}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _outside_address() -> str | None:
    """This machine's address on its outward interface (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))
        except OSError:
            return None
        return s.getsockname()[0]


def test_the_server_binds_to_localhost_only(server):
    port = int(server.rsplit(":", 1)[1])
    address = _outside_address()
    if address is None or address.startswith("127."):
        pytest.skip("this machine has no non-loopback address to try")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((address, port)) != 0, f"the dashboard answers on {address}:{port}"
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("page", list(PAGES))
def test_each_page_renders_without_an_error(server, page, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("MSNL_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            view = browser.new_page(viewport={"width": 1400, "height": 3000})  # Streamlit scrolls inside the page: a tall view shows it all
            view.goto(f"{server}/?page={page}", wait_until="networkidle")
            view.get_by_role("heading", name=PAGES[page]).wait_for(timeout=60_000)
            view.wait_for_timeout(2500)  # the figures arrive after the heading
            view.screenshot(path=str(shots / f"dashboard-{page}.png"), full_page=True)
            errors = view.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
            assert errors.count() == 0, errors.first.inner_text()
            assert "Traceback" not in view.content()
            if page == "endpoints":
                assert view.get_by_text("rate ratio", exact=False).count() > 0
            if page == "patient":
                assert view.locator("[data-testid='stImage'] img").count() >= 2
        finally:
            browser.close()
