"""The prepared GPU check cannot rot: its one command finishes within its budget on the CPU with the
tiny test model, writing its JSON and table, and its dry run on the meta device prints every
model's row, marked as estimated. Needs COMFYUI_PATH (skipped otherwise, with the reason)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_env import SKIP_REASON

if not os.environ.get("COMFYUI_PATH"):
    pytest.skip(SKIP_REASON, allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_finishes_within_its_budget_on_the_cpu_and_writes_its_outputs(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--models", "tiny", "--budget-s", "60"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    tiny = record["results"]["tiny"]
    assert set(tiny["distill"]["phases"]) == {"teacher", "floor", "fit", "selection"}
    assert all(phase["seconds"] > 0 and phase["calls"] for phase in tiny["distill"]["phases"].values())
    assert tiny["distill"]["projected_full_s"] > 0 and tiny["sfd"]["per_iteration_s"] > 0
    assert "| tiny | distill" in (tmp_path / "gpu_check.md").read_text()


def test_the_dry_run_on_the_meta_device_prints_all_three_models_as_estimates(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "meta", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("sd15", "sdxl", "flux"):
        assert f"| {name} | distill, estimated |" in done.stdout
