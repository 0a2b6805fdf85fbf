"""The Distill Sampler and learned-solver nodes inside ComfyUI, on tiny models built through
ComfyUI's own classes. Needs COMFYUI_PATH (skipped otherwise, with the reason)."""

import asyncio
from pathlib import Path

import pytest
import torch

from comfyui_env import import_comfyui

import_comfyui()

import comfy.model_management  # noqa: E402
import comfy.samplers  # noqa: E402
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402

from comfyui_models import tiny_conditioning, tiny_model  # noqa: E402
from helpers import hub_cache  # noqa: E402
from learned_solvers.schedules import read_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(cfg=3.0, nfe="3, 4", method="auto", base="dpmpp_2m", teacher_steps=12, samples=6, iterations=6,
             seed=0)


@pytest.fixture(scope="module")
def pack():
    assert asyncio.run(comfy_nodes.load_custom_node(str(ROOT)))
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(autouse=True)
def few_validation_seeds(pack, monkeypatch):
    """The node's fits here hold out 8 seeds, not the default 64: what these tests check does not
    depend on the count, and the teacher and validation runs are most of their time."""
    execute = pack["LSDistillSampler"].execute.__func__  # the node's own default for its optional input
    names = execute.__code__.co_varnames[:execute.__code__.co_argcount]
    defaults = list(execute.__defaults__)
    defaults[names.index("validation") - (len(names) - len(defaults))] = 8
    monkeypatch.setattr(execute, "__defaults__", tuple(defaults))


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "learned_solvers", ([], set()))
    folder_paths.filename_list_cache.clear()
    return tmp_path / "learned_solvers"


def run(node, **inputs):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return node.execute(**inputs)


def model_state(patcher):
    return ({k: v.clone() for k, v in patcher.model.state_dict().items()}, dict(patcher.patches),
            dict(patcher.object_patches), dict(patcher.weight_wrapper_patches))


@pytest.mark.parametrize("kind, memory", [("eps", "auto"), ("flow", "auto"), ("flux", "blocks")])
def test_distill_node_fits_saves_and_leaves_the_model_alone(pack, models_dir, kind, memory):
    model = tiny_model(kind)
    positive, negative = tiny_conditioning(kind=kind)
    latent = {"samples": torch.zeros(1, 16 if kind == "flux" else 4, 8, 8)}
    before = model_state(model)
    network = model.model.diffusion_model
    tensors = list(network.parameters()) + list(network.buffers())
    out = run(pack["LSDistillSampler"], model=model, positive=positive, negative=negative, latent_image=latent,
              filename="tiny", memory=memory, **SMALL)
    solver, sampler, sigmas, plot = out.result
    assert solver.nfes == [3, 4] and solver.convention == ("ve" if kind == "eps" else "flow")
    assert solver.provenance["memory"] == ("blocks" if memory == "blocks" else "model calls")
    assert [m for m in network.modules() if "forward" in vars(m)] == []  # block checkpointing is undone
    after = list(network.parameters()) + list(network.buffers())  # copies made for autograd are gone again
    assert len(after) == len(tensors) and all(a is b for a, b in zip(after, tensors))
    # weights are constants of the fit: no gradient was computed for them, none is left on the user's model
    assert all(p.grad is None for p in network.parameters())
    assert isinstance(sampler, comfy.samplers.KSAMPLER)
    assert len(sigmas) == 4 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    assert plot.ndim == 4 and plot.shape[-1] == 3 and 0 <= float(plot.min()) and float(plot.max()) <= 1
    for nfe in solver.nfes:
        fit = solver.fits[nfe]
        assert fit.held_out_rmse <= fit.base_held_out_rmse
    if kind == "eps":  # moved onto the model's discrete sigmas, where ComfyUI's timestep lookup is exact
        table = model.get_model_object("model_sampling").sigmas.double()
        for value in solver.sigmas(4)[:-1]:
            assert (table - value).abs().min() <= 1e-6 * value
    after = model_state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    leftovers = [n for n, m in model.model.named_modules() if getattr(m, "weight_function", None)
                 or getattr(m, "bias_function", None)]
    assert leftovers == []
    saved = sorted(p.name for p in models_dir.iterdir())
    assert saved == ["tiny.safetensors"]
    # the teacher's residual, and what each NFE was measured against, are in the text and the file
    text = out.ui.value
    assert "teacher: unipc_bh2" in text and "residual" in text and "best built-in pair" in text
    assert "estimated error at most" in text and "set by what this NFE can reach" in text
    metadata = read_metadata(str(models_dir / "tiny.safetensors"))
    assert float(metadata["teacher_residual"]) == solver.provenance["teacher"]["residual"]
    # the floor is one of ComfyUI's own schedulers for this model, or one of the package's built-ins
    known = set(comfy.samplers.SCHEDULER_NAMES) | {"time-uniform", "ays", "beta"}
    assert all(fit.floor["schedule"] in known for fit in solver.fits.values())

    # the file loads back through Load Learned Solver and gives the same sigmas
    folder_paths.filename_list_cache.clear()
    loaded = run(pack["LSLoadLearnedSolver"], solver_name="tiny.safetensors").result[0]
    for nfe in solver.nfes:
        assert torch.equal(loaded.sigmas(nfe), solver.sigmas(nfe))
    learned_sigmas = run(pack["LSLearnedSigmas"], model=model, learned_solver=loaded, steps=4, denoise=1.0).result[0]
    torch.testing.assert_close(learned_sigmas, solver.sigmas(4).float())
    tail = run(pack["LSLearnedSigmas"], model=model, learned_solver=loaded, steps=2, denoise=0.5).result[0]
    torch.testing.assert_close(tail, solver.sigmas(4)[-3:].float())

    # and it became a KSampler scheduler
    name = "learned: tiny"
    assert name in comfy.samplers.SCHEDULER_NAMES
    sampling = model.get_model_object("model_sampling")
    torch.testing.assert_close(comfy.samplers.calculate_sigmas(sampling, name, 4), solver.sigmas(4).float())


class FakeClip:
    """A CLIP for the tiny models: each prompt's text gives its own conditioning (seeded by the text)."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        return tiny_conditioning(seed=sum(map(ord, text)))[0]


def test_each_sample_runs_with_its_own_prompt():
    from learned_solvers.hosts.comfyui.fitting import run_guided

    model = tiny_model("eps")
    positive, negative = tiny_conditioning()
    other = tiny_conditioning(seed=5)[0]
    x = 3.0 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((4,), 3.0)

    def denoise(**kwargs):
        return lambda denoiser, device: denoiser(x.to(device), sigma.to(device), **kwargs).cpu()

    mixed = run_guided(model, positive, negative, 3.0, (4, 8, 8), 0, denoise(prompt=torch.tensor([0, 1, 1, 0])),
                       more_prompts=[other])
    alone = run_guided(model, positive, negative, 3.0, (4, 8, 8), 0, denoise())
    with_other = run_guided(model, other, negative, 3.0, (4, 8, 8), 0, denoise())
    assert not torch.allclose(alone, with_other)
    torch.testing.assert_close(mixed, torch.stack([alone[0], with_other[1], with_other[2], alone[3]]))


def test_a_prompt_list_fits_on_every_prompt_and_reports_the_unseen_ones(pack, models_dir):
    model = tiny_model("eps")
    positive, negative = tiny_conditioning()
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = run(pack["LSDistillSampler"], model=model, positive=positive, negative=negative, latent_image=latent,
              filename="several", clip=FakeClip(), prompt_list="a red fox\n\n  a blue whale  \n",
              **{**SMALL, "nfe": "4"})
    solver = out.result[0]
    assert solver.provenance["prompts"] == {"count": 3, "training": 2, "held_out": 1}
    text = out.ui.value
    assert "on the 2 prompts it was fitted on" in text and "on the 1 prompt it never saw" in text
    metadata = read_metadata(str(models_dir / "several.safetensors"))
    assert '"held_out": 1' in metadata["provenance"] and "fox" not in str(metadata)
    with pytest.raises(ValueError, match="needs a CLIP"):
        run(pack["LSDistillSampler"], model=model, positive=positive, negative=negative, latent_image=latent,
            filename="", prompt_list="a red fox", **SMALL)


def test_learned_sampler_samples_through_the_core_sampling_path(pack, models_dir):
    import comfy.sample

    model = tiny_model("eps")
    positive, negative = tiny_conditioning()
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    solver = run(pack["LSDistillSampler"], model=model, positive=positive, negative=negative, latent_image=latent,
                 filename="", **SMALL).result[0]
    assert not models_dir.exists() or list(models_dir.iterdir()) == []  # empty name: nothing saved
    sampler = run(pack["LSLearnedSampler"], learned_solver=solver).result[0]
    sigmas = run(pack["LSLearnedSigmas"], model=model, learned_solver=solver, steps=4, denoise=1.0).result[0]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = comfy.sample.sample_custom(model, noise, 3.0, sampler, sigmas, positive, negative, latent["samples"],
                                         disable_pbar=True, seed=3)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_a_flow_file_on_an_eps_model_is_refused_clearly(pack, models_dir):
    flow = tiny_model("flow")
    positive, negative = tiny_conditioning()
    solver = run(pack["LSDistillSampler"], model=flow, positive=positive, negative=negative,
                 latent_image={"samples": torch.zeros(1, 4, 8, 8)}, filename="",
                 **{**SMALL, "nfe": "3", "method": "dode"}).result[0]
    with pytest.raises(ValueError, match="fitted for a flow model"):
        run(pack["LSLearnedSigmas"], model=tiny_model("eps"), learned_solver=solver, steps=3, denoise=1.0)


@pytest.mark.parametrize("fitted_on, used_on, message", [("flow", "eps", "fitted for a flow model"),
                                                         ("eps", "flow", "fitted for an eps/v-prediction model")])
def test_a_ksampler_learned_scheduler_refuses_a_file_for_the_other_kind_of_model(pack, models_dir, fitted_on,
                                                                                 used_on, message):
    """The KSampler entry gives sigmas through the same function as Learned Sigmas, so it refuses
    what the node refuses (it used to remap a VE grid onto a flow model's range)."""
    positive, negative = tiny_conditioning()
    run(pack["LSDistillSampler"], model=tiny_model(fitted_on), positive=positive, negative=negative,
        latent_image={"samples": torch.zeros(1, 4, 8, 8)}, filename=f"for_{fitted_on}",
        **{**SMALL, "nfe": "3", "method": "dode"})
    sampling = tiny_model(used_on).get_model_object("model_sampling")
    with pytest.raises(ValueError, match=message):
        comfy.samplers.calculate_sigmas(sampling, f"learned: for_{fitted_on}", 3)
    own = tiny_model(fitted_on).get_model_object("model_sampling")
    assert len(comfy.samplers.calculate_sigmas(own, f"learned: for_{fitted_on}", 3)) == 4


def test_cancel_mid_distill_leaves_no_file(pack, models_dir, monkeypatch):
    calls = []

    def interrupt_after_a_few():
        calls.append(1)
        if len(calls) > 3:
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt_after_a_few)
    model = tiny_model("eps")
    positive, negative = tiny_conditioning()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(pack["LSDistillSampler"], model=model, positive=positive, negative=negative,
            latent_image={"samples": torch.zeros(1, 4, 8, 8)}, filename="cancelled", **SMALL)
    assert not models_dir.exists() or list(models_dir.iterdir()) == []
    leftovers = [n for n, m in model.model.named_modules() if getattr(m, "weight_function", None)]
    assert leftovers == []


def test_pull_node_takes_a_file_from_the_hub_cache_and_refuses_a_hostile_one(pack, models_dir, tmp_path,
                                                                          monkeypatch):
    from learned_solvers.distill import NoiseLevels, distill
    from learned_solvers.learned_samplers import GaussianMixtureDenoiser
    from learned_solvers.schedules import save_learned_solver

    mixture = GaussianMixtureDenoiser.power_law(shape=(2, 4, 4), components=2, seed=0)
    fitted = distill(mixture, (2, 4, 4), levels=NoiseLevels(0.03, 14.6, convention="ve"), nfe=[3],
                     method="dode", samples=4, validation=2, teacher_steps=8)
    good = open(save_learned_solver(fitted, tmp_path / "mix3"), "rb").read()
    cache = hub_cache(tmp_path / "hub", "someone/solvers",
                      {"mix3.safetensors": good, "evil.safetensors": b"\x80\x04 not a safetensors file"})
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache)
    solver = run(pack["LSPullLearnedSolver"], repo_id="someone/solvers", filename="mix3.safetensors",
                 offline=True).result[0]
    assert solver.nfes == [3] and (models_dir / "mix3.safetensors").is_file()
    assert "learned: mix3" in comfy.samplers.SCHEDULER_NAMES
    with pytest.raises(ValueError, match="evil.safetensors"):
        run(pack["LSPullLearnedSolver"], repo_id="someone/solvers", filename="evil.safetensors", offline=True)
    assert not (models_dir / "evil.safetensors").exists()


@pytest.mark.parametrize("kind", ["eps", "flux"])
def test_block_checkpointing_of_real_networks_gives_the_same_gradient(kind):
    """Flux's double blocks update their text input in place; the recomputation must still see
    the original values (the gradient with respect to the state matches the unblocked one)."""
    from learned_solvers.distill import checkpointed_blocks, checkpointed_model
    from learned_solvers.hosts.comfyui.fitting import _constant_weights

    patcher = tiny_model(kind).clone()
    positive, _ = tiny_conditioning(kind=kind)
    conditioning = {"c_crossattn": positive[0][0]}
    if kind == "flux":
        conditioning.update(y=positive[0][1]["pooled_output"], guidance=torch.tensor([3.5]))
    _constant_weights(patcher)
    patcher.patch_model()
    network = patcher.model

    def gradient():
        x = torch.randn(1, 16 if kind == "flux" else 4, 8, 8, generator=torch.Generator().manual_seed(0))
        x.requires_grad_(True)
        sigma = torch.tensor([0.8 if kind == "flux" else 3.0])
        call = checkpointed_model(lambda x, s: network.apply_model(x, s, **conditioning))
        out = call(call(x, sigma), sigma * 0.5)
        return torch.autograd.grad(out.pow(2).mean(), x)[0]

    try:
        plain = gradient()
        with checkpointed_blocks(network.diffusion_model):
            blocked = gradient()
    finally:
        patcher.unpatch_model()
    torch.testing.assert_close(blocked, plain)


def test_compare_node_shows_the_teacher_the_learned_solver_and_the_built_ins(pack, models_dir):
    model = tiny_model("eps")
    positive, negative = tiny_conditioning(kind="eps")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    solver = run(pack["LSDistillSampler"], model=model, positive=positive, negative=negative, latent_image=latent,
                 filename="", **{**SMALL, "nfe": "4"}).result[0]
    before = model_state(model)
    out = run(pack["LSCompareSamplers"], model=model, positive=positive, negative=negative, latent_image=latent,
              cfg=3.0, nfe=4, seeds=6, shown=3, built_ins_shown=2, seed=5, learned_solver=solver)
    picture, table, sampler, sigmas = out.result
    # teacher, the learned solver and two built-in rows; three seeds each
    assert picture.ndim == 4 and picture.shape[-1] == 3 and picture.shape[1] > 4 * 8
    lines = table.splitlines()
    assert "residual" in lines[0] and "learned (" in table and "karras" in table and "<- winner" in table
    # every base solver x every ComfyUI scheduler for this model that gives 4 distinct steps, and the learned one
    assert sum(" + " in line for line in lines[2:]) >= 6 * 8
    assert isinstance(sampler, comfy.samplers.KSAMPLER)
    assert len(sigmas) == 5 and sigmas[-1] == 0
    winner = lines[2].split()[0]
    assert winner in table
    after = model_state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
