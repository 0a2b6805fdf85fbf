"""The example workflows' template thumbnails, drawn from the workflow files by ComfyUI's own page.

    COMFYUI_PATH=/path/to/ComfyUI python tests/workflow_thumbnails.py

Starts ComfyUI (``comfyui_server.Server``, the pack linked in, a tiny SD1.5 checkpoint so the
loader has a file), opens its page in headless Chromium (``CHROMIUM`` or ``chromium`` on PATH),
loads each ``example_workflows/*.json`` as a user would open it, fits the view to its nodes and
writes ``example_workflows/<name>.jpg`` (608 x 456, the size ComfyUI's template cards show).
``tests/workflow_thumbnails.json`` records the SHA-256 of each workflow file a thumbnail was
drawn from; ``tests/test_example_workflows.py`` fails when a workflow changed after its
thumbnail, so the pictures cannot drift from the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE.parent / "example_workflows"
RECORD = HERE / "workflow_thumbnails.json"  # not beside the workflows: ComfyUI serves every JSON there
SIZE = (608, 456)
VIEWPORT = {"width": 1520, "height": 1140}  # 2.5 x the thumbnail: node titles stay legible when shrunk


def workflow_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def draw(page, workflow: dict) -> bytes:
    """The page's canvas with ``workflow`` loaded and fitted, as a JPEG of ``SIZE``."""
    from PIL import Image

    page.evaluate("workflow => window.app.loadGraphData(workflow)", workflow)
    page.wait_for_timeout(1500)
    page.evaluate("""() => {
        const canvas = window.app.canvas, nodes = window.app.graph.nodes;
        const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1] - 40));
        const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
        const bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
        const width = canvas.canvas.width / window.devicePixelRatio, height = canvas.canvas.height / window.devicePixelRatio;
        const scale = 0.95 * Math.min(width / (right - left), height / (bottom - top));
        canvas.ds.scale = scale;
        canvas.ds.offset = [(width / scale - (right - left)) / 2 - left, (height / scale - (bottom - top)) / 2 - top];
        canvas.setDirty(true, true);
    }""")
    page.wait_for_timeout(800)
    shot = page.locator("#graph-canvas").screenshot(type="png")
    picture = Image.open(io.BytesIO(shot)).convert("RGB")
    picture.thumbnail((SIZE[0] * 4, SIZE[1] * 4))
    framed = Image.new("RGB", (picture.width, round(picture.width * SIZE[1] / SIZE[0])), (32, 32, 32))
    framed.paste(picture, (0, (framed.height - picture.height) // 2))
    out = io.BytesIO()
    framed.resize(SIZE, Image.LANCZOS).save(out, "JPEG", quality=85)
    return out.getvalue()


def main() -> int:
    if not os.environ.get("COMFYUI_PATH"):
        print("set COMFYUI_PATH to a ComfyUI checkout (tests/run.sh sets one up)", file=sys.stderr)
        return 2
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("no Chromium binary: set CHROMIUM or apt-get install chromium", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from playwright.sync_api import sync_playwright

    from comfyui_env import import_comfyui
    from comfyui_server import Server

    import_comfyui()
    from comfyui_models import write_tiny_sd15_checkpoint

    record = {}
    with tempfile.TemporaryDirectory() as base:
        (Path(base) / "models" / "checkpoints").mkdir(parents=True)
        write_tiny_sd15_checkpoint(Path(base) / "models" / "checkpoints" / "tiny_sd15.safetensors")
        server = Server(Path(base))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(server.url)
                page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
                page.wait_for_load_state("networkidle")
                for _ in range(5):  # a fresh user folder opens the templates dialog first
                    if not page.locator(".p-dialog").count():
                        break
                    page.keyboard.press("Escape")
                    page.wait_for_timeout(400)
                for path in sorted(WORKFLOWS.glob("*.json")):
                    (WORKFLOWS / f"{path.stem}.jpg").write_bytes(draw(page, json.loads(path.read_text())))
                    record[path.stem] = workflow_digest(path)
                    print(f"wrote {path.stem}.jpg")
                browser.close()
        finally:
            server.stop()
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
