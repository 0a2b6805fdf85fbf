"""A real Stable Diffusion WebUI Forge server (API only, CPU, loopback) for the WebUI tests.

``FORGE_PATH`` names a Forge built by ``../shared/webui/setup.sh DEST`` (DEST/src, DEST/venv,
DEST/models/Stable-diffusion with its random-weight SD1.5-family checkpoint). The server runs
with its own ``--data-dir``, a temporary folder whose ``extensions/`` links the extensions it
is given and whose ``models/learned_solvers`` the test fills, so the Forge install is never
written to. Start flags are ``start_server.sh``'s. The server gets one OpenMP thread (on 2
shared cores spinning OpenMP threads slow everything else down).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
REFERENCE_EXTENSION = TESTS / "webui_reference_extension"
START_TIMEOUT = 300
REQUEST_TIMEOUT = 600


def forge_path() -> Path | None:
    value = os.environ.get("FORGE_PATH")
    return Path(value) if value else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ForgeServer:
    """Forge from ``forge`` (a setup.sh DEST) with ``data`` as its data folder and ``extensions``
    (folder name -> folder) linked into ``data/extensions``; ui: also build the web page (else
    the API alone, as ``start_server.sh`` runs it)."""

    def __init__(self, forge: Path, data: Path, extensions: dict, ui: bool = False):
        self.forge, self.data, self.port = Path(forge), Path(data), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.data / "extensions").mkdir(parents=True, exist_ok=True)
        (self.data / "models" / "learned_solvers").mkdir(parents=True, exist_ok=True)
        for name, target in extensions.items():
            (self.data / "extensions" / name).symlink_to(target, target_is_directory=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LEARNED_SOLVERS_ROOT": str(ROOT)}
        env.pop("PYTHONPATH", None)  # Forge's venv, not the test's packages
        self.log_path = self.data / "server.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(self.forge / "venv" / "bin" / "python"), "launch.py", "--skip-prepare-environment",
             "--skip-torch-cuda-test", "--always-cpu", *([] if ui else ["--nowebui"]), "--api", "--server-name", "127.0.0.1",
             "--port", str(self.port), "--no-download-sd-model", "--data-dir", str(self.data),
             "--ckpt-dir", str(self.forge / "models" / "Stable-diffusion"), "--disable-console-progressbars"],
            cwd=self.forge / "src", env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("Forge exited:\n" + self.log_text()[-4000:])
            try:
                self.get("/sdapi/v1/samplers", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"Forge did not answer in {START_TIMEOUT} s:\n" + self.log_text()[-4000:])

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = REQUEST_TIMEOUT):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT):
        request = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def txt2img(self, **fields) -> tuple:
        """(the first image's base64 PNG, its infotext) of a txt2img request."""
        return self.generate("txt2img", **fields)

    def generate(self, mode: str, **fields) -> tuple:
        """(the first image's base64 PNG, its infotext) of a ``mode`` ("txt2img", "img2img") request.

        Emphasis is off: with the random-weight CLIP, Forge's "Original" emphasis rescales the
        prompt's embedding by a ratio of two means near 0 and the conditioning becomes NaN (and
        with it every latent)."""
        body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "cfg_scale": 5, "seed": 1,
                "save_images": False, "override_settings": {"emphasis": "None"}, **fields}
        result = self.post(f"/sdapi/v1/{mode}", body)
        return result["images"][0], json.loads(result["info"])["infotexts"][0]

    def last_latent(self) -> dict:
        """The last sampling run's latent (sha256, norm, finite, shape), recorded by the reference
        extension (``webui_reference_extension``)."""
        return self.get("/learned-solvers-reference/v1/last")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
