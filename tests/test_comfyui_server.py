"""The pack in a real ComfyUI server (``main.py --cpu`` on loopback), driven over HTTP.

Needs COMFYUI_PATH (skipped otherwise, with the reason). The server runs from a temporary base
directory whose custom_nodes folder links this pack and a test-only pack of tiny models.
"""

import json
import os
import time

import pytest

from comfyui_env import SKIP_REASON

if not os.environ.get("COMFYUI_PATH"):
    pytest.skip(SKIP_REASON, allow_module_level=True)

from comfyui_server import Server  # noqa: E402

NODES = ["LSDistillSampler", "LSDistillModelSFD", "LSLearnedSampler", "LSLearnedSigmas", "LSLoadLearnedSolver",
         "LSSaveLearnedSolver", "LSPullLearnedSolver", "LSSolverFamilySampler"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("comfyui"))
    yield server
    server.stop()


def distill_prompt(kind, filename, iterations=20, nfe="4"):
    return {
        "1": {"class_type": "LSTestTinyModel", "inputs": {"kind": kind}},
        "2": {"class_type": "LSTestTinyConditioning", "inputs": {}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "LSDistillSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "latent_image": ["3", 0], "cfg": 3.0,
            "nfe": nfe, "method": "auto", "base": "dpmpp_2m", "teacher_steps": 16, "samples": 8,
            "iterations": iterations, "seed": 0, "filename": filename}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "6": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1],
                                                    "cfg": 3.0}},
        "7": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["5", 0], "guider": ["6", 0],
                                                                "sampler": ["4", 1], "sigmas": ["4", 2],
                                                                "latent_image": ["3", 0]}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"latents/{kind}"}},
        "9": {"class_type": "LSTestSigmasAsText", "inputs": {"sigmas": ["4", 2]}},
    }


def load_prompt(kind, filename):
    return {
        "1": {"class_type": "LSTestTinyModel", "inputs": {"kind": kind}},
        "2": {"class_type": "LSLoadLearnedSolver", "inputs": {"solver_name": filename}},
        "3": {"class_type": "LSLearnedSigmas", "inputs": {"model": ["1", 0], "learned_solver": ["2", 0], "steps": 4,
                                                          "denoise": 1.0}},
        "4": {"class_type": "LSTestSigmasAsText", "inputs": {"sigmas": ["3", 0]}},
    }


def ensure_fitted(server, kind):
    """The file name of a solver fitted on the tiny ``kind`` model (the distill test's, or a new one)."""
    name = f"server_{kind}.safetensors"
    if not (server.base / "models" / "learned_solvers" / name).is_file():
        entry = server.run(distill_prompt(kind, f"server_{kind}"))
        assert entry["status"]["status_str"] == "success", entry["status"]
    return name


def test_object_info_lists_every_node_with_its_inputs(server):
    info = server.get("/object_info")
    for node in NODES:
        assert node in info, node
    distill = info["LSDistillSampler"]["input"]["required"]
    for name in ("model", "positive", "negative", "latent_image", "cfg", "nfe", "method", "base", "teacher_steps",
                 "samples", "iterations", "seed", "filename"):
        assert name in distill, name
    assert info["LSDistillSampler"]["input"]["optional"]["memory"][1]["options"] == ["auto", "model calls", "blocks"]
    assert info["LSDistillSampler"]["output"] == ["LEARNED_SOLVER", "SAMPLER", "SIGMAS", "IMAGE"]


def test_example_workflows_are_served_as_templates(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates["learned_solvers_pack"]) == ["distill_then_sample", "load_shared_solver_then_sample"]


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_distill_then_sample_then_load_back(server, kind):
    entry = server.run(distill_prompt(kind, f"server_{kind}"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    fitted = json.loads(entry["outputs"]["9"]["text"][0])
    assert len(fitted) == 5 and fitted[-1] == 0
    assert (server.base / "models" / "learned_solvers" / f"server_{kind}.safetensors").is_file()
    assert list((server.base / "output" / "latents").glob(f"{kind}*.latent"))

    entry = server.run(load_prompt(kind, f"server_{kind}.safetensors"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert json.loads(entry["outputs"]["4"]["text"][0]) == fitted


def test_cancel_mid_distill_leaves_no_file_and_the_next_prompt_runs(server):
    prompt_id = server.post("/prompt", {"prompt": distill_prompt("eps", "cancelled", iterations=5000)})["prompt_id"]
    deadline = time.time() + 300
    while time.time() < deadline and not server.get("/queue")["queue_running"]:
        time.sleep(0.2)
    time.sleep(3)  # into the teacher or the fit
    server.post("/interrupt", {})
    entry = server.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert not list((server.base / "models" / "learned_solvers").glob("cancelled*"))
    entry = server.run(distill_prompt("eps", "after"))
    assert entry["status"]["status_str"] == "success", entry["status"]


@pytest.mark.parametrize("kind, message", [
    ("nan", "NaN"),
    ("oom", "Distill Sampler ran out of GPU memory. Set memory to 'blocks'"),
])
def test_a_failing_fit_shows_a_clear_error_writes_nothing_and_the_server_keeps_running(server, kind, message):
    entry = server.run(distill_prompt(kind, f"failed_{kind}", iterations=5))
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "LSDistillSampler"
    assert message in error["exception_message"], error["exception_message"]
    assert not list((server.base / "models" / "learned_solvers").glob(f"failed_{kind}*"))
    entry = server.run(load_prompt("eps", ensure_fitted(server, "eps")))
    assert entry["status"]["status_str"] == "success", entry["status"]


def test_a_file_for_another_model_family_is_refused_in_the_error_dialog(server):
    entry = server.run(load_prompt("eps", ensure_fitted(server, "flow")))
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "LSLearnedSigmas"
    assert "fitted for a flow model" in error["exception_message"], error["exception_message"]


def test_a_prompt_list_is_encoded_fitted_on_and_reported_through_the_prompt_route(server):
    from comfyui_env import import_comfyui

    import_comfyui()
    from comfyui_models import write_tiny_sd15_checkpoint

    from learned_solvers.schedules import load_learned_solver

    checkpoints = server.base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_tiny_sd15_checkpoint(checkpoints / "tiny_sd15.safetensors")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a lighthouse"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "LSDistillSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "cfg": 5.0,
            "nfe": "4", "method": "auto", "base": "dpmpp_2m", "teacher_steps": 8, "samples": 4, "iterations": 4,
            "seed": 0, "filename": "several_prompts", "validation": 4, "clip": ["1", 1],
            "prompt_list": "a harbour at dawn\na portrait of a sailor"}},
    }
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = "".join(entry["outputs"]["5"]["text"])
    assert "on the 2 prompts it was fitted on" in text and "on the 1 prompt it never saw" in text
    solver = load_learned_solver(str(server.base / "models" / "learned_solvers" / "several_prompts.safetensors"))
    assert solver.provenance["prompts"] == {"count": 3, "training": 2, "held_out": 1}
    assert "harbour" not in json.dumps(solver.provenance)
