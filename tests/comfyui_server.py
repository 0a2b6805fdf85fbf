"""A real ComfyUI server (``main.py --cpu`` on loopback) for the server and browser tests.

It runs from a temporary base directory whose custom_nodes folder links the packs it is given
(by default this pack and the test-only pack of tiny models). The server process gets one
OpenMP thread: on 2 shared cores, OpenMP threads spin-wait whenever another job holds a core
(a 4-step sample measured 0.17 s quiet against 6.9 s contended), and the waits below are sized
for such a loaded machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DEFAULT_PACKS = {"learned_solvers_pack": ROOT, "ls_test_pack": TESTS / "comfyui_test_pack"}
# ComfyUI imports torchvision (and two core node files torchaudio, spandrel) at start-up only;
# the server gets the same placeholders as in-process tests
SITE = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import comfyui_env; comfyui_env.install_placeholders()\n"
START_TIMEOUT = 300
PROMPT_TIMEOUT = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``main.py --cpu`` from ``base``; ``packs`` maps custom-node folder names to the folders
    they link to (``{}``: core nodes only)."""

    def __init__(self, base: Path, packs: dict | None = None, comfyui: str | None = None):
        self.base, self.port = Path(base), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        comfyui = comfyui or os.environ["COMFYUI_PATH"]
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        for name, target in (DEFAULT_PACKS if packs is None else packs).items():
            (self.base / "custom_nodes" / name).symlink_to(target, target_is_directory=True)
        (self.base / "site").mkdir(exist_ok=True)
        (self.base / "site" / "sitecustomize.py").write_text(SITE)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(self.base / "site"), os.environ.get("PYTHONPATH", "")])}
        self.log = open(self.base / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
            cwd=comfyui, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("ComfyUI exited:\n" + self.log_text()[-3000:])
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not start in {START_TIMEOUT} s:\n" + self.log_text()[-3000:])

    def log_text(self) -> str:
        return (self.base / "server.log").read_text(errors="replace")

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path, body):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
            return json.loads(text) if text else None

    def run(self, prompt, timeout=PROMPT_TIMEOUT):
        """Queue ``prompt`` and wait for its history entry."""
        prompt_id = self.post("/prompt", {"prompt": prompt})["prompt_id"]
        return self.wait(prompt_id, timeout)

    def wait(self, prompt_id, timeout=PROMPT_TIMEOUT):
        """The history entry of ``prompt_id`` once it has succeeded or failed."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            status = history.get(prompt_id, {}).get("status", {})
            if status.get("completed") is not None or status.get("status_str") == "error":
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
