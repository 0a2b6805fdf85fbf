"""The pack in ComfyUI's real web page (its own frontend package), driven in headless Chromium.

What a user sees: the page loads with no console error the pack causes (against the same page
without the pack), both example workflows load from the templates dialog (the pack's category,
a thumbnail each, no missing-node dialog), every node is in the node library under its category
with its display name, the distill-then-sample workflow queued with the Run button runs to the
end (the Distill node's progress bar moves, its plot, the Compare Samplers sheet and the
sampled image show), and a saved
learned solver is in a KSampler's scheduler list after a reload.

Needs COMFYUI_PATH, Playwright's Python package and a Chromium binary (``CHROMIUM``, else
``chromium`` on PATH); skipped with the reason otherwise. Screenshots of each state are written
under the test's temporary folder and their paths printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from comfyui_env import SKIP_REASON

if not os.environ.get("COMFYUI_PATH"):
    pytest.skip(SKIP_REASON, allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("Playwright is not installed (pip install playwright); the browser test drives ComfyUI's page "
                "with it", allow_module_level=True)
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no Chromium binary (set CHROMIUM, or apt-get install chromium)", allow_module_level=True)

from comfyui_env import import_comfyui  # noqa: E402
from comfyui_server import PROMPT_TIMEOUT, ROOT, Server  # noqa: E402

WORKFLOWS = ROOT / "example_workflows"
PACK = "learned_solvers_pack"
CATEGORY = ["sampling", "custom_sampling", "learned"]
CHECKPOINT = "tiny_sd15.safetensors"
USER_FILES = ["ckpt_name", "solver_name"]  # combo widgets whose workflow value names a file of the user's
# Console errors that come from the test machine, not from any page code: no network beyond
# loopback (the page asks api.comfy.org for release notes) and optional files a fresh user
# folder does not have.
MACHINE_ERRORS = re.compile(r"Failed to load resource: net::ERR_NAME_NOT_RESOLVED")
OPTIONAL_FILES = re.compile(r"/(user\.css|favicon\.ico)$|/api/userdata[/?]")


class Page:
    """A Chromium page on a ComfyUI server that keeps every console error and failed request."""

    def __init__(self, browser, server: Server, shots: Path):
        self.server, self.shots = server, shots
        self.page = browser.new_page(viewport={"width": 2400, "height": 1300})
        self.errors = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("response", self._response)

    def _console(self, message):
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text.split("\n")[0])

    def _response(self, response):
        path = response.url.split(self.server.url, 1)[-1]
        if response.status >= 400 and not OPTIONAL_FILES.search(path.split("#")[0]):
            self.errors.append(f"HTTP {response.status} {path}")

    def open(self):
        self.page.goto(self.server.url)
        self.page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
        self.page.wait_for_load_state("networkidle")
        return self

    def errors_since(self, count: int) -> list:
        return [e for e in self.errors[count:] if not MACHINE_ERRORS.search(e)]

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path

    def close_dialogs(self):
        for _ in range(3):
            if not self.page.locator(".p-dialog").count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def open_templates(self):
        """The templates dialog, on the pack's own category; returns the dialog."""
        dialog = self.page.locator(".p-dialog").filter(has_text="Template")
        if not dialog.count():
            self.close_dialogs()
            self.page.locator(".side-bar-button").filter(has_text="Templates").click()
        dialog.wait_for()
        dialog.get_by_text(PACK, exact=True).first.click()
        return dialog

    def evaluate(self, script, arg=None):
        return self.page.evaluate(script, arg)


def normalised(errors, server):
    return {e.replace(server.url, "").replace(str(server.port), "PORT") for e in errors}


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def baseline_errors(tmp_path_factory, browser, shots):
    """Console errors of the same page with core nodes only."""
    server = Server(tmp_path_factory.mktemp("comfyui_core"), packs={})
    try:
        page = Page(browser, server, shots).open()
        page.page.wait_for_timeout(2000)
        page.shot("0_page_without_the_pack")
        yield normalised(page.errors_since(0), server)
        page.page.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui_browser")
    import_comfyui()
    from comfyui_models import write_tiny_sd15_checkpoint

    (base / "models" / "checkpoints").mkdir(parents=True)
    write_tiny_sd15_checkpoint(base / "models" / "checkpoints" / CHECKPOINT)
    server = Server(base)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(browser, server, shots):
    page = Page(browser, server, shots).open()
    yield page
    page.page.close()


def test_the_page_loads_with_no_console_error_from_the_pack(page, server, baseline_errors):
    page.page.wait_for_timeout(2000)
    page.shot("1_page_with_the_pack")
    assert normalised(page.errors_since(0), server) <= baseline_errors


def test_every_node_is_in_the_node_library_under_its_category(page, server):
    page.close_dialogs()
    page.page.locator(".side-bar-button").filter(has_text="Nodes").click()
    tree = page.page.locator(".p-tree")
    folder = None
    for name in CATEGORY:
        scope = tree if folder is None else folder
        folder = scope.locator("li.p-tree-node").filter(
            has=page.page.locator(":scope > .p-tree-node-content", has_text=re.compile(rf"^\s*{name}\s*\d*\s*$")))
        folder.first.locator(":scope > .p-tree-node-content").click()
        folder = folder.first
    page.page.wait_for_timeout(500)
    page.shot("2_node_library")
    listed = folder.locator(":scope > .p-tree-node-children").inner_text()
    info = server.get("/object_info")
    ours = {name: node for name, node in info.items() if name.startswith("LS") and not name.startswith("LSTest")}
    assert len(ours) == 9
    for name, node in ours.items():
        assert node["category"] == "/".join(CATEGORY), name
        assert node["display_name"] in listed, (node["display_name"], listed)
    page.page.locator(".side-bar-button").filter(has_text="Nodes").click()


@pytest.mark.parametrize("workflow", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_an_example_workflow_loads_from_the_templates_dialog(page, workflow):
    before = len(page.errors)
    dialog = page.open_templates()
    card = dialog.locator(f"[data-testid='template-workflow-{workflow}']")
    thumbnail = card.locator("img")
    thumbnail.first.wait_for()
    page.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.first.element_handle(),
                                timeout=30_000)
    page.shot(f"3_templates_{workflow}")
    card.click()
    expected = sorted(n["type"] for n in json.loads((WORKFLOWS / f"{workflow}.json").read_text())["nodes"])
    page.page.wait_for_function("n => window.app.graph.nodes.length === n", arg=len(expected), timeout=30_000)
    page.page.wait_for_timeout(1000)
    page.shot(f"4_loaded_{workflow}")
    assert sorted(page.evaluate("window.app.graph.nodes.map(n => n.type)")) == expected
    assert not page.evaluate("window.app.graph.nodes.filter(n => n.has_errors).map(n => n.type)")
    # each widget got its own value: a list value that is not among its options means the
    # workflow's values are shifted against the page's widgets (files the user picks aside)
    assert page.evaluate("""files => window.app.graph.nodes.flatMap(n => (n.widgets ?? [])
        .filter(w => Array.isArray(w.options?.values) && !files.includes(w.name) && !w.options.values.includes(w.value))
        .map(w => `${n.type}.${w.name} = ${w.value}`))""", USER_FILES) == []
    dialogs = page.page.locator(".p-dialog")
    assert not dialogs.filter(has_text=re.compile("missing", re.I)).count(), dialogs.all_inner_texts()
    assert page.errors_since(before) == []


def set_widgets(page, node_type, values: dict):
    """Set widget values of the graph's ``node_type`` node as a user does (each widget's own
    callback runs), refusing a name the node does not have."""
    missing = page.evaluate("""([type, values]) => {
        const node = window.app.graph.nodes.find(n => n.type === type);
        const missing = [];
        for (const [name, value] of Object.entries(values)) {
            const widget = node.widgets.find(w => w.name === name);
            if (!widget) { missing.push(name); continue; }
            widget.value = value;
            widget.callback?.(value, window.app.canvas, node);
        }
        window.app.graph.setDirtyCanvas(true, true);
        return missing;
    }""", [node_type, values])
    assert not missing, f"{node_type} has no widget {missing}"


def test_distill_then_sample_runs_from_the_run_button(page, server):
    page.open_templates().locator("[data-testid='template-workflow-distill_then_sample']").click()
    page.page.wait_for_function("window.app.graph.nodes.some(n => n.type === 'LSDistillSampler')")
    before = len(page.errors)
    # what a user on a small machine picks: their checkpoint, a small latent, a short fit from one
    # base solver (every base x schedule is scored in the in-process tests) and a small comparison
    set_widgets(page, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT})
    set_widgets(page, "EmptyLatentImage", {"width": 64, "height": 64})
    set_widgets(page, "LSDistillSampler", {"base": "dpmpp_2m", "teacher_steps": 16, "samples": 8,
                                           "iterations": 30, "validation": 16})
    set_widgets(page, "LSCompareSamplers", {"seeds": 2, "shown": 2})
    distill_id = page.evaluate("window.app.graph.nodes.find(n => n.type === 'LSDistillSampler').id")
    page.evaluate("""id => { window.__progress = []; window.__progressTimer = setInterval(() => {
        const p = window.app.graph.getNodeById(id).progress;
        if (p !== undefined && window.__progress[window.__progress.length - 1] !== p) window.__progress.push(p);
    }, 100); }""", distill_id)
    page.page.get_by_role("button", name="Run", exact=True).first.click()

    deadline = time.time() + PROMPT_TIMEOUT
    shot_mid_run = False
    while time.time() < deadline:
        queue = server.get("/queue")
        progress = page.evaluate("window.__progress")
        if not shot_mid_run and progress and max(progress) >= 0.3:
            page.shot("5_distill_running")
            shot_mid_run = True
        if not queue["queue_running"] and not queue["queue_pending"] and server.get("/history"):
            break
        time.sleep(0.5)
    else:
        raise TimeoutError(f"the workflow did not finish in {PROMPT_TIMEOUT} s")
    (entry,) = server.get("/history").values()
    assert entry["status"]["status_str"] == "success", entry["status"]
    # the template's prompt list (the positive and two lines): fitted on two, checked on the third
    distill_text = "".join(entry["outputs"][str(distill_id)]["text"])
    assert "on the 2 prompts it was fitted on" in distill_text and "on the 1 prompt it never saw" in distill_text
    progress = page.evaluate("clearInterval(window.__progressTimer), window.__progress")
    assert len(progress) >= 3 and 0 <= min(progress) < max(progress) <= 1, progress

    # the Distill node's plot, the comparison of the samplers, and the sampled image
    page.page.wait_for_function("""() => {
        const nodes = window.app.graph.nodes.filter(n => n.type === 'PreviewImage' || n.type === 'SaveImage');
        return nodes.length === 3 && nodes.every(node => {
            const src = window.app.nodeOutputs?.[node.id]?.images?.[0]?.filename;
            return src && node.imgs?.length && node.imgs[0].complete && node.imgs[0].naturalWidth > 0;
        });
    }""", timeout=60_000)
    # the comparison sheet: teacher, the learned solver and three built-ins, two seeds each
    compare_id = page.evaluate("window.app.graph.nodes.find(n => n.type === 'LSCompareSamplers').id")
    (compare_output,) = [out for node_id, out in entry["outputs"].items() if node_id == str(compare_id)]
    assert "<- winner" in "".join(compare_output["text"]) and "learned (" in "".join(compare_output["text"])
    page.page.wait_for_timeout(500)
    page.shot("6_distill_finished")
    assert (server.base / "models" / "learned_solvers" / "sd15_cfg7_nfe4.safetensors").is_file()
    assert page.errors_since(before) == []


def test_a_saved_solver_is_a_ksampler_scheduler_after_a_reload(page, server):
    assert (server.base / "models" / "learned_solvers" / "sd15_cfg7_nfe4.safetensors").is_file()
    page.page.reload()
    page.page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
    page.close_dialogs()
    before = len(page.errors)
    options = page.evaluate("""() => {
        window.app.graph.clear();
        const node = window.LiteGraph.createNode('KSampler');
        node.pos = [200, 200];
        window.app.graph.add(node);
        const widget = node.widgets.find(w => w.name === 'scheduler');
        widget.value = 'learned: sd15_cfg7_nfe4';
        window.app.graph.setDirtyCanvas(true, true);
        return widget.options.values;
    }""")
    page.page.wait_for_timeout(500)
    page.shot("7_ksampler_learned_scheduler")
    assert "learned: sd15_cfg7_nfe4" in options, options
    assert page.errors_since(before) == []
