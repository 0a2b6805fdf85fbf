"""The pack inside a real ComfyUI process: V3 registration and its SAMPLER through KSAMPLER.

Needs a ComfyUI checkout in COMFYUI_PATH (skipped otherwise, with the reason).
"""

import asyncio
from pathlib import Path

import torch

from comfyui_env import import_comfyui

import_comfyui()

import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402
import nodes as comfy_nodes  # noqa: E402  (ComfyUI's own nodes module)

from learned_solvers.learned_samplers import GaussianMixtureDenoiser, sample_learned  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    pass


class Guider:
    """Stands where CFGGuider stands for KSAMPLER: callable, with inner_model and model_patcher."""

    def __init__(self, sampling, denoiser):
        self.denoiser = denoiser
        self.inner_model = type("BaseModel", (), {"model_sampling": sampling})()
        self.model_patcher = type("Patcher", (), {"get_model_object": lambda _, name: sampling})()
        self.calls = 0

    def __call__(self, x, sigma, model_options=None, seed=None):
        self.calls += 1
        t = sigma.clamp(max=1 - 1e-7).reshape(-1, *([1] * (x.ndim - 1)))
        return self.denoiser(x / (1 - t), (t / (1 - t)).reshape(-1))


def load_pack():
    assert asyncio.run(comfy_nodes.load_custom_node(str(ROOT)))
    return comfy_nodes.NODE_CLASS_MAPPINGS


def test_pack_registers_its_v3_nodes():
    mappings = load_pack()
    node = mappings["LSSolverFamilySampler"]
    assert list(node.RETURN_TYPES) == ["SAMPLER"]
    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS["LSSolverFamilySampler"] == "Solver Family Sampler"


def test_solver_family_sampler_runs_through_ksampler_on_a_flow_model():
    node = load_pack()["LSSolverFamilySampler"]
    sampler = node.execute(base="dpmpp_2m", corrector="default", convention="auto").result[0]
    assert isinstance(sampler, comfy.samplers.KSAMPLER)

    class Config:
        sampling_settings = {"shift": 3.0, "multiplier": 1000}

    sampling = FlowSampling(Config())
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", 6)
    mixture = GaussianMixtureDenoiser.power_law(shape=(4, 8, 8), components=3, seed=1)
    guider = Guider(sampling, mixture)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latent = torch.zeros_like(noise)
    previews = []
    out = sampler.sample(guider, sigmas, {}, lambda i, denoised, x, total: previews.append(i), noise, latent)

    direct_model = lambda x, sigma: guider(x, sigma)  # noqa: E731
    direct = sample_learned(direct_model, noise.clone(), sigmas, base="dpmpp_2m", convention="flow", disable=True)
    torch.testing.assert_close(out, direct)
    assert guider.calls == 2 * 6 and previews == list(range(6))
