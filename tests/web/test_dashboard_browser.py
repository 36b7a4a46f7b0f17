"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): open
the page, pause a task by clicking (the token asked once), see the state change;
screenshots (desktop and phone) are kept as test artifacts in ``artifacts/`` (or
``$TASK_SCHEDULER_ARTIFACT_DIR``).

Skipped when Chromium or Playwright is missing, unless
``TASK_SCHEDULER_REQUIRE_SERVICES=1`` (CI), where that is a failure."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.web.conftest import TOKEN, WebService, finished_runs

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("TASK_SCHEDULER_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]  # fmt: skip


def _missing(reason: str) -> None:
    if os.environ.get("TASK_SCHEDULER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (TASK_SCHEDULER_REQUIRE_SERVICES=1: .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def artifacts() -> Path:
    directory = Path(os.environ.get("TASK_SCHEDULER_ARTIFACT_DIR", ROOT / "artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_pause_a_task_by_clicking_and_see_it_paused(web: WebService, browser: Any, artifacts: Path) -> None:
    finished_runs(web, "hello")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    prompts: list[str] = []

    def answer(dialog: Any) -> None:
        prompts.append(dialog.message)
        dialog.accept(TOKEN)

    page.on("dialog", answer)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(web.url + "/")
    row = page.locator('tr[data-task="pausable"]')
    assert row.locator("td").first.inner_text().startswith("pausable")
    assert page.locator('tr[data-task="nightly"]').get_by_text("cron '0 3 * * *' (UTC)").is_visible()
    assert page.locator('tr[data-task="hello"] .badge').first.inner_text() in ("succeeded", "running")

    row.get_by_role("button", name="Pause").click()
    row = page.locator('tr[data-task="pausable"]')  # the page reloads after the change
    row.get_by_role("button", name="Resume").wait_for(timeout=15_000)
    assert row.locator(".next .badge").inner_text() == "paused"
    assert web.get("/api/tasks/pausable").json()["paused"] is True
    assert prompts == [prompts[0]] and "token" in prompts[0]  # asked once
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    row.get_by_role("button", name="Resume").click()  # the token is remembered: no second prompt
    page.locator('tr[data-task="pausable"]').get_by_role("button", name="Pause").wait_for(timeout=15_000)
    assert len(prompts) == 1 and web.get("/api/tasks/pausable").json()["paused"] is False

    page.locator('tr[data-task="hello"] a[href="/tasks/hello"]').click()
    page.get_by_role("heading", name="Hello").wait_for()
    page.locator("table.runs details summary").first.click()
    assert "hello from the job" in page.locator("table.runs details pre").first.inner_text()
    page.screenshot(path=str(artifacts / "dashboard-task.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_a_wrong_token_is_reported_and_forgotten(web: WebService, browser: Any) -> None:
    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept("not-the-token"))
    page.goto(web.url + "/")
    page.locator('tr[data-task="pausable"]').get_by_role("button", name="Pause").click()
    flash = page.locator("#flash.error")
    flash.wait_for(timeout=15_000)
    assert "wrong token" in flash.inner_text()
    assert page.evaluate("sessionStorage.getItem('task_scheduler_token')") is None
    assert web.get("/api/tasks/pausable").json()["paused"] is False
    page.close()


def test_readable_on_a_phone(web: WebService, browser: Any, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)  # fmt: skip
    page = context.new_page()
    page.goto(web.url + "/")
    # No sideways scrolling, and each task's cells are labelled (rows become cards).
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    label = page.evaluate("getComputedStyle(document.querySelector('tr[data-task=\"hello\"] td'), '::before').content")
    assert label == '"Task"'
    page.screenshot(path=str(artifacts / "dashboard-phone.png"), full_page=True)
    page.goto(web.url + "/tasks/hello")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    context.close()
