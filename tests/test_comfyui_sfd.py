"""Distill Model (SFD) inside ComfyUI, on tiny models built through ComfyUI's own classes: the
LoRA it saves loads through the core LoRA loader and gives the node's MODEL, the user's MODEL
is untouched. Needs COMFYUI_PATH (skipped otherwise, with the reason)."""

import asyncio
from pathlib import Path

import pytest
import torch

from comfyui_env import import_comfyui

import_comfyui()

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402

from comfyui_models import tiny_conditioning, tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(cfg=3.0, nfe=2, rank=4, iterations=4, teacher_steps=8, samples=6, seed=0, learned_solver=False,
             validation=8)


@pytest.fixture(scope="module")
def pack():
    assert asyncio.run(comfy_nodes.load_custom_node(str(ROOT)))
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "learned_solvers", ([], set()))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(tmp_path / "loras")], set(folder_paths.supported_pt_extensions)))
    folder_paths.filename_list_cache.clear()
    return tmp_path


def run(node, **inputs):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return node.execute(**inputs)


def model_state(patcher):
    return ({k: v.clone() for k, v in patcher.model.state_dict().items()}, dict(patcher.patches),
            dict(patcher.object_patches), dict(patcher.weight_wrapper_patches))


def sample(model, sampler, sigmas, positive, negative, seed=3, shape=(1, 4, 8, 8)):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, noise, 3.0, sampler, sigmas, positive, negative,
                                          torch.zeros(shape), disable_pbar=True, seed=seed)


def test_sfd_node_saves_a_lora_the_core_loader_loads_and_leaves_the_model_alone(pack, models_dir):
    model = tiny_model("eps")
    positive, negative = tiny_conditioning()
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    before = model_state(model)
    network = model.model.diffusion_model
    out = run(pack["LSDistillModelSFD"], model=model, positive=positive, negative=negative, latent_image=latent,
              filename="tiny_sfd", **SMALL)
    patched, sampler, sigmas, plot = out.result
    assert plot.ndim == 4 and plot.shape[-1] == 3 and 0 <= float(plot.min()) and float(plot.max()) <= 1
    # the user's MODEL: same weights, patches and wrappers; no hook, no gradient left on it
    after = model_state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert all(not m._forward_hooks for m in network.modules())
    assert all(p.grad is None for p in network.parameters())
    assert patched is not model and patched.patches  # the LoRA sits on a clone
    # Euler at 2 steps on the model's discrete sigmas, where ComfyUI's lookup is exact
    assert isinstance(sampler, comfy.samplers.KSAMPLER) and len(sigmas) == 3 and float(sigmas[-1]) == 0
    table = model.get_model_object("model_sampling").sigmas.double()
    assert all((table - float(v)).abs().min() <= 1e-6 * float(v) for v in sigmas[:-1])
    lora_file = models_dir / "loras" / "tiny_sfd.safetensors"
    solver_file = models_dir / "learned_solvers" / "tiny_sfd.safetensors"
    assert lora_file.is_file() and solver_file.is_file()
    text = out.ui.value
    assert "SFD LoRA rank 4" in text and "teacher dpmpp_3m" in text and "model calls" in text
    # the metadata names what the LoRA is for
    import json

    from safetensors import safe_open

    with safe_open(str(lora_file), "pt") as handle:
        metadata = json.loads(handle.metadata()["learned_solvers_sfd"])
    assert metadata["nfe"] == 2 and metadata["sampler"] == "euler" and metadata["model"]["cfg"] == 3.0
    assert metadata["model"]["fingerprint"] and metadata["solver_file"] == "tiny_sfd.safetensors"
    assert metadata["grid"] == pytest.approx([float(v) for v in sigmas])

    # the core LoraLoaderModelOnly loads every key of it and gives the node's MODEL's samples
    folder_paths.filename_list_cache.clear()
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]()
    with torch.inference_mode():
        loaded = loader.load_lora_model_only(model, "tiny_sfd.safetensors", 1.0)[0]
    lora = comfy.utils.load_torch_file(str(lora_file), safe_load=True)
    assert len(loaded.patches) == len(lora) // 3  # down, up, alpha per adapted layer: none left out
    torch.testing.assert_close(sample(loaded, sampler, sigmas, positive, negative),
                               sample(patched, sampler, sigmas, positive, negative))


def test_the_lora_comfyui_merges_computes_what_the_fit_trained(pack, models_dir):
    """The adapters as the fit runs them (hooks) and as ComfyUI merges the file into the weights
    give the same denoiser: non-zero adapters on an SD1.5-architecture UNet and on Flux."""
    from learned_solvers.distill.lora import LoraAdapters

    for kind in ("eps", "flux"):
        model = tiny_model(kind)
        network = model.model.diffusion_model
        adapters = LoraAdapters(network, 4, seed=1)
        with torch.no_grad():
            for up in adapters.up:
                up.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(up)))
        patched = comfy.sd.load_lora_for_models(model, None, adapters.file_tensors(), 1.0, 0)[0]
        assert len(patched.patches) == len(adapters.names)
        channels = 16 if kind == "flux" else 4
        x = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(0))
        positive, _ = tiny_conditioning(kind=kind)
        cond = positive[0][0].expand(2, -1, -1)
        extra = {"y": positive[0][1]["pooled_output"].expand(2, -1), "guidance": torch.full((2,), 3.5)} \
            if kind == "flux" else {}
        timestep = torch.full((2,), 0.5 if kind == "flux" else 500.0)
        comfy.model_management.load_models_gpu([patched], force_full_load=True)
        with torch.no_grad():
            merged = patched.model.diffusion_model(x, timestep, context=cond, **extra)
        comfy.model_management.unload_all_models()
        with torch.no_grad():
            plain = network(x, timestep, context=cond, **extra)
            with adapters.attached():
                hooked = network(x, timestep, context=cond, **extra)
        assert not torch.allclose(hooked, plain, atol=1e-4)
        torch.testing.assert_close(hooked, merged, atol=2e-4, rtol=1e-3)


def test_cancel_mid_sfd_leaves_no_file_and_no_hook(pack, models_dir, monkeypatch):
    calls = []

    def interrupt_after_a_few():
        calls.append(1)
        if len(calls) > 3:
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt_after_a_few)
    model = tiny_model("eps")
    positive, negative = tiny_conditioning()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(pack["LSDistillModelSFD"], model=model, positive=positive, negative=negative,
            latent_image={"samples": torch.zeros(1, 4, 8, 8)}, filename="cancelled", **SMALL)
    assert not (models_dir / "loras").exists() or list((models_dir / "loras").iterdir()) == []
    assert all(not m._forward_hooks for m in model.model.diffusion_model.modules())


def test_sfd_with_a_learned_solver_on_top_on_a_flow_model(pack, models_dir):
    from learned_solvers.hosts.comfyui.fitting import distill_network_model

    model = tiny_model("flow")
    positive, negative = tiny_conditioning()
    with torch.inference_mode():
        result = distill_network_model(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, 3.0, nfe=2,
                                       rank=4, iterations=4, samples=6, validation=8, teacher_steps=8,
                                       with_solver=True, solver={"samples": 4, "validation": 4, "iterations": 2,
                                                                 "teacher_steps": 8})
    combined = result.with_solver
    assert combined.convention == "flow" and combined.nfes == [2]
    assert "learned solver on the distilled network" in result.summary()
    assert combined.provenance["distilled_network"]["lora_rank"] == 4
    # the memory plan's samples per gradient pass (8 at once would hold 17.6 GB on SD1.5 at 512²)
    assert result.provenance["micro_batch"] == 2 and result.provenance["batch_size"] == 8
    assert all(not m._forward_hooks for m in model.model.diffusion_model.modules())
