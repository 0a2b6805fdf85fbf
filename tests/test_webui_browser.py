"""The Learned Solvers tab in Forge's real web page, driven in headless Chromium: a user opens
the tab, fills in a prompt and a short fit, presses Fit, sees the progress text while it runs,
then the grid picture and the comparison table, the file is saved, and txt2img's Sampling
method menu offers it without a reload.

Needs FORGE_PATH (a ``../shared/webui/setup.sh`` build), Playwright's Python package and a
Chromium binary (``CHROMIUM``, else ``chromium`` on PATH); skipped with the reason otherwise. A
screenshot of the finished tab is written under the test's temporary folder (``-s`` prints it).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from webui_server import ROOT, ForgeServer, forge_path

FORGE = forge_path()
if FORGE is None or not (FORGE / "venv" / "bin" / "python").exists():
    pytest.skip("set FORGE_PATH to a Forge built by ../shared/webui/setup.sh DEST (tests/run.sh does) to run the "
                "WebUI browser test", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("Playwright is not installed (pip install playwright); the browser test drives Forge's page with it",
                allow_module_level=True)
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no Chromium binary (set CHROMIUM, or apt-get install chromium)", allow_module_level=True)

FIELDS = {"Prompt": "a cat", "Width": "64", "Height": "64", "NFE (steps; several as 4, 6)": "3",
          "Training samples": "2", "Validation samples": "2", "Iterations": "2", "Teacher steps": "4",
          "File name (in models/learned_solvers)": "from the tab"}


def page_errors_without_the_extension(playwright, folder) -> set:
    """The script errors of Forge's own page with no extension (the empty assets folder leaves
    some of its scripts undefined): what the extension's page is compared against."""
    server = ForgeServer(FORGE, folder, {}, ui=True)
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors = set()
        page.on("pageerror", lambda error: errors.add(str(error)))
        page.goto(server.url, timeout=180_000)
        page.get_by_role("tab", name="Txt2img").wait_for(timeout=180_000)
        page.wait_for_timeout(2000)
        browser.close()
        return errors
    finally:
        server.stop()


def test_a_fit_from_the_tab_shows_progress_picture_and_table_saves_the_file_and_puts_it_in_the_menus(tmp_path):
    # the page needs the assets folder a WebUI install clones (empty is enough; see webui_server)
    (FORGE / "src" / "repositories" / "stable-diffusion-webui-assets").mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        forge_errors = page_errors_without_the_extension(playwright, tmp_path / "forge-alone")
    server = ForgeServer(FORGE, tmp_path / "forge-ui", {"learned-solvers": ROOT}, ui=True)
    try:
        # the random-weight CLIP gives NaN conditioning under Forge's default emphasis (webui_server)
        server.post("/sdapi/v1/options", {"emphasis": "None"})
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url, timeout=180_000)
            page.get_by_role("tab", name="Learned Solvers").click(timeout=180_000)
            tab = page.locator("#tab_learned_solvers")
            for label, value in FIELDS.items():
                tab.get_by_label(label, exact=True).first.fill(value)
            tab.get_by_role("button", name="Fit for the loaded checkpoint").click()
            summary = tab.get_by_label("Against the built-in solvers and schedules")
            seen, deadline = set(), time.time() + 600
            while time.time() < deadline:
                text = summary.input_value()
                seen.add(text.split(",")[0].split(" ")[0] if text else "")
                if "saved" in text or "not fitted" in text or "interrupted" in text:
                    break
                time.sleep(0.5)
            text = summary.input_value()
            page.screenshot(path=str(tmp_path / "learned_solvers_tab.png"), full_page=True)
            print("screenshot:", tmp_path / "learned_solvers_tab.png")
            picture = tab.locator("img").count()
            # without a reload, txt2img's Sampling method menu offers the new file
            page.get_by_role("tab", name="Txt2img").click()
            page.locator("#txt2img_sampling input").click()
            offered = page.get_by_role("option", name="Learned: from_the_tab").count()
            page.screenshot(path=str(tmp_path / "txt2img_menu.png"))
            browser.close()
    finally:
        server.stop()
    assert "saved" in text and "Learned: from_the_tab" in text and "best built-in pair" in text, text
    assert seen & {"teacher", "fitting"}, seen  # the progress text showed while it ran
    assert picture >= 1 and (tmp_path / "forge-ui" / "models" / "learned_solvers" / "from the tab.safetensors").exists()
    assert offered >= 1
    assert not set(errors) - forge_errors, errors  # no script error the extension's page adds
