"""The extension in a real Stable Diffusion WebUI Forge (``FORGE_PATH``: a ``../shared/webui/setup.sh``
build; skipped without one): its entries in the API's lists, txt2img, img2img and the hires pass
with them, the infotext, the coefficients really used, a file added while it runs, a broken file."""

from __future__ import annotations

import base64
import io
import shutil

import pytest

from webui_server import REFERENCE_EXTENSION, ROOT, ForgeServer, forge_path

from learned_solvers.hosts.webui.samplers import file_hash

FORGE = forge_path()
pytestmark = pytest.mark.skipif(FORGE is None or not (FORGE / "venv" / "bin" / "python").exists(),
                                reason="set FORGE_PATH to a Forge built by ../shared/webui/setup.sh DEST "
                                       "(tests/run.sh does) to run the WebUI tests")
PRESET = ROOT / "schedules" / "presets" / "test_unet_nfe4.safetensors"
LABEL = "Learned: preset/test_unet_nfe4"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("forge-data")
    folder = data / "models" / "learned_solvers"
    folder.mkdir(parents=True)
    (folder / "broken.safetensors").write_bytes(b"this is not a learned-solver file")
    forge = ForgeServer(FORGE, data, {"learned-solvers": ROOT, "learned-solvers-reference": REFERENCE_EXTENSION})
    yield forge
    forge.stop()


def labels(server):
    return ({item["label"] for item in server.get("/sdapi/v1/schedulers")},
            {item["name"] for item in server.get("/sdapi/v1/samplers")})


def test_the_preset_is_a_schedule_and_a_sampler_and_a_broken_file_is_skipped_with_its_reason(server):
    schedules, samplers = labels(server)
    assert LABEL in schedules and LABEL in samplers
    assert not any("broken" in name for name in schedules | samplers)
    log = server.log_text()
    assert "broken.safetensors: skipped" in log


def test_txt2img_with_the_learned_sampler_names_it_and_its_hash_in_the_infotext(server):
    _, info = server.txt2img(sampler_name=LABEL, scheduler="Automatic")
    # the API silently replaces names it does not know, so the infotext is the proof
    assert f'Sampler: "{LABEL}"' in info
    assert f'Schedule type: "{LABEL}"' in info  # Automatic is the sampler's own grid
    assert f'Learned solver: "{LABEL} [{file_hash(PRESET)}]"' in info


def test_the_learned_coefficients_are_used_exactly_as_the_package_samples(server):
    runs = {}
    for sampler in (LABEL, "Reference: package sampler", "Reference: plain base"):
        _, info = server.txt2img(sampler_name=sampler, scheduler=LABEL)
        assert f'Sampler: "{sampler}"' in info  # not silently replaced by another sampler
        runs[sampler] = server.last_latent()
    learned = runs[LABEL]
    assert learned["finite"] and learned["norm"] > 0 and learned["shape"] == [1, 4, 8, 8]
    # same model, noise, conditioning and grid: the package's own sampler gives the same latent
    assert learned["digest"] == runs["Reference: package sampler"]["digest"]
    # and the coefficients matter: the plain base solver on that grid lands elsewhere
    assert learned["digest"] != runs["Reference: plain base"]["digest"]
    assert abs(learned["norm"] - runs["Reference: plain base"]["norm"]) > 1e-4 * learned["norm"]


def test_png_info_brings_back_the_learned_entries_and_they_make_the_same_latent(server):
    image, _ = server.txt2img(sampler_name=LABEL, scheduler="Automatic", seed=7)
    first = server.last_latent()
    parameters = server.post("/sdapi/v1/png-info", {"image": image})["parameters"]
    assert parameters["Sampler"] == LABEL and parameters["Schedule type"] == LABEL
    assert parameters["Learned solver"].startswith(LABEL)
    server.txt2img(sampler_name=parameters["Sampler"], scheduler=parameters["Schedule type"],
                   seed=int(parameters["Seed"]), steps=int(parameters["Steps"]))
    assert server.last_latent()["digest"] == first["digest"]


def test_a_learned_schedule_under_a_builtin_sampler_is_named_too(server):
    _, info = server.txt2img(sampler_name="Euler", scheduler=LABEL)
    assert "Sampler: Euler" in info and f'Schedule type: "{LABEL}"' in info and "Learned solver:" in info


def test_img2img_and_the_hires_pass_take_the_tail_of_the_learned_grid(server):
    image, _ = server.txt2img(sampler_name=LABEL, scheduler="Automatic")
    init, info = server.generate("img2img", init_images=[image], denoising_strength=0.5, seed=2,
                                 sampler_name=LABEL, scheduler="Automatic")
    assert f'Sampler: "{LABEL}"' in info and "Denoising strength: 0.5" in info
    assert server.last_latent()["finite"] and _png_size(init) == (64, 64)
    _, hires = server.txt2img(sampler_name=LABEL, scheduler="Automatic", enable_hr=True, hr_scale=1.5,
                              hr_upscaler="Latent", denoising_strength=0.5, hr_second_pass_steps=4,
                              hr_additional_modules=["Use same choices"])  # Forge's API fails without it
    assert "Hires upscale: 1.5" in hires and f'Sampler: "{LABEL}"' in hires
    assert server.last_latent()["shape"] == [1, 4, 12, 12]
    # a tail of a fitted grid gets the tail of its coefficients, never the plain-solver fallback
    assert "sampling with the plain" not in server.log_text()


def test_a_file_saved_while_webui_runs_appears_after_a_refresh(server):
    folder = server.data / "models" / "learned_solvers"
    shutil.copy(PRESET, folder / "my portraits.safetensors")
    answer = server.post("/learned-solvers/v1/refresh")
    assert "Learned: my_portraits" in answer["added"]
    schedules, samplers = labels(server)
    assert "Learned: my_portraits" in schedules and "Learned: my_portraits" in samplers
    _, info = server.txt2img(sampler_name="Learned: my_portraits", scheduler="Automatic")
    assert 'Sampler: "Learned: my_portraits"' in info


def _png_size(encoded: str) -> tuple:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(encoded))).size


# A fit small enough for 2 CPU cores: the route's defaults are the Distill node's.
TINY_FIT = {"prompt": "a cat", "width": 64, "height": 64, "cfg_scale": 5, "nfe": "3", "samples": 2, "validation": 2,
            "iterations": 2, "teacher_steps": 4, "override_settings": {"emphasis": "None"}}


def test_the_distill_route_fits_the_loaded_checkpoint_saves_a_file_and_lists_it_without_a_restart(server):
    from learned_solvers.schedules.files import load_learned_solver

    _, before_info = server.txt2img(sampler_name="Euler", scheduler="karras")
    before = server.last_latent()
    answer = server.post("/learned-solvers/v1/distill", {**TINY_FIT, "name": "fitted here"})
    solver = load_learned_solver(answer["file"])
    assert solver.nfes == [3] and solver.convention == "ve"
    assert answer["label"] == "Learned: fitted_here" and answer["added"] == ["Learned: fitted_here"]
    assert "best built-in pair" in answer["summary"] and "model calls" in answer["summary"]
    schedules, samplers = labels(server)
    assert answer["label"] in schedules and answer["label"] in samplers
    _, info = server.txt2img(sampler_name=answer["label"], scheduler="Automatic", steps=3)
    assert f'Sampler: "{answer["label"]}"' in info and server.last_latent()["finite"]
    # the loaded model is as it was: the same request gives the same latent as before the fit
    server.txt2img(sampler_name="Euler", scheduler="karras")
    assert server.last_latent()["digest"] == before["digest"]


def test_the_distill_route_fits_on_a_prompt_list_and_reports_the_prompts_it_never_saw(server):
    from learned_solvers.schedules.files import load_learned_solver

    answer = server.post("/learned-solvers/v1/distill", {**TINY_FIT, "validation": 4, "name": "several prompts",
                                                         "prompt_list": "a harbour at dawn\na portrait of a sailor"})
    assert "on the 2 prompts it was fitted on" in answer["summary"] and "on the 1 prompt it never saw" in answer["summary"]
    solver = load_learned_solver(answer["file"])
    assert solver.provenance["prompts"] == {"count": 3, "training": 2, "held_out": 1}
    assert "harbour" not in str(solver.provenance)


def test_a_fit_with_every_block_recomputed_runs_on_forges_unet(server):
    import json

    from learned_solvers.schedules.files import read_metadata

    answer = server.post("/learned-solvers/v1/distill", {**TINY_FIT, "iterations": 1, "memory": "blocks",
                                                         "base": "dpmpp_2m", "name": "blocks"})
    provenance = json.loads(read_metadata(answer["file"])["provenance"])
    assert provenance["memory"] == "blocks" and answer["label"] == "Learned: blocks"


def test_an_interrupted_fit_saves_nothing_and_webui_goes_on(server):
    import threading
    import time
    import urllib.error

    folder = server.data / "models" / "learned_solvers"
    files_before = sorted(folder.rglob("*.safetensors"))
    outcome = {}

    def fit():
        try:
            outcome["answer"] = server.post("/learned-solvers/v1/distill", {**TINY_FIT, "iterations": 400,
                                                                            "name": "interrupted"})
        except urllib.error.HTTPError as err:
            outcome["status"], outcome["detail"] = err.code, err.read().decode()

    thread = threading.Thread(target=fit)
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline:  # into this fit's gradient steps (an earlier fit's text stays after it ends)
        progress = server.get("/sdapi/v1/progress")
        if progress["state"]["job"] == "learned_solvers_distill" and "fitting" in str(progress["textinfo"]):
            break
        time.sleep(0.5)
    assert "left" in progress["textinfo"] and progress["state"]["job"] == "learned_solvers_distill"
    server.post("/sdapi/v1/interrupt")
    thread.join(300)
    assert outcome.get("status") == 409 and "nothing was saved" in outcome["detail"]
    assert sorted(folder.rglob("*.safetensors")) == files_before
    _, info = server.txt2img(sampler_name=LABEL, scheduler="Automatic")
    assert f'Sampler: "{LABEL}"' in info and server.last_latent()["finite"]


def test_a_bad_distill_request_is_refused_with_what_to_change(server):
    import urllib.error

    for body, words in (({"nfe": "1"}, "between 2"), ({"width": 65}, "multiple of 8"), ({"stepz": 3}, "unknown field"),
                        ({"iterations": 0}, "at least 1")):
        with pytest.raises(urllib.error.HTTPError) as caught:
            server.post("/learned-solvers/v1/distill", {**TINY_FIT, **body})
        assert caught.value.code == 422 and words in caught.value.read().decode()


def test_the_learned_solvers_tab_is_on_the_web_page_with_the_distill_options(tmp_path):
    # the page needs the assets repository a WebUI install clones; setup.sh leaves it out and an
    # empty folder is all the page needs
    (FORGE / "src" / "repositories" / "stable-diffusion-webui-assets").mkdir(parents=True, exist_ok=True)
    forge = ForgeServer(FORGE, tmp_path / "forge-ui", {"learned-solvers": ROOT}, ui=True)
    try:
        components = [c.get("props", {}) for c in forge.get("/config")["components"]]
    finally:
        forge.stop()
    tabs = [props.get("label") for props in components if props.get("label") == "Learned Solvers"]
    labels = {props.get("label") for props in components}
    assert tabs and {"Prompt", "More prompts (one per line)", "Negative prompt", "CFG scale", "NFE (steps; several as 4, 6)", "Method",
                     "Iterations", "Teacher steps", "Learned grid against the built-ins"} <= labels
    assert any(props.get("value") == "Fit for the loaded checkpoint" for props in components)
