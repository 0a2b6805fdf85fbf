"""Zero-correction base solvers against ComfyUI's own samplers, on the exact denoiser.

Needs a ComfyUI checkout in COMFYUI_PATH (skipped otherwise, with the reason).
"""

import contextlib

import pytest
import torch

from comfyui_env import import_comfyui

import_comfyui()

import comfy.k_diffusion.sampling as comfy_sampling  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402
from comfy.extra_samplers import uni_pc as comfy_uni_pc  # noqa: E402

from learned_solvers.learned_samplers import GaussianMixtureDenoiser, sample_learned  # noqa: E402


class _Config:
    def __init__(self, **settings):
        self.sampling_settings = settings


class EpsSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    pass


class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    pass


class HostModel:
    """The exact denoiser behind the attributes ComfyUI's samplers read from their model."""

    def __init__(self, sampling, denoiser):
        self.sampling, self.denoiser = sampling, denoiser
        patcher = type("Patcher", (), {"get_model_object": lambda _, name: sampling})()
        self.inner_model = type("Inner", (), {"model_patcher": patcher, "inner_model": self})()
        self.model_sampling = sampling

    def __call__(self, x, sigma, **kwargs):
        if isinstance(self.sampling, comfy.model_sampling.CONST):  # x = (1-t) x0 + t eps
            t = sigma.clamp(max=1 - 1e-7).reshape(-1, *([1] * (x.ndim - 1)))
            return self.denoiser(x / (1 - t), (t / (1 - t)).reshape(-1))
        return self.denoiser(x, sigma)


def make_case(family, dtype, steps=8, components=4):
    mixture = GaussianMixtureDenoiser.power_law(shape=(4, 8, 8), components=components, seed=0, dtype=dtype)
    if family == "eps":
        sampling = EpsSampling(_Config())
        sigmas = comfy.samplers.calculate_sigmas(sampling, "karras", steps)
    else:
        sampling = FlowSampling(_Config(shift=3.0, multiplier=1000))
        sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
    noise = torch.randn(4, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    x = sampling.noise_scaling(sigmas[0].to(dtype), noise, torch.zeros_like(noise), max_denoise=False)
    return HostModel(sampling, mixture), x, sigmas.to(dtype)


COMFY_SAMPLERS = {
    "euler": comfy_sampling.sample_euler,
    "dpmpp_2m": comfy_sampling.sample_dpmpp_2m,
    "ipndm": comfy_sampling.sample_ipndm,
}


# In float64 the methods agree to rounding on a 4-component mixture. In float32 a mixture's
# responsibilities amplify rounding: ComfyUI's own float32 run is 1e-5..2e-5 away from its
# float64 run there, so float32 is compared on one Gaussian, where rounding stays small.
PRECISIONS = [(torch.float64, 4, 1e-10), (torch.float32, 1, 1e-5)]


@pytest.mark.parametrize("dtype, components, tolerance", PRECISIONS)
@pytest.mark.parametrize("base", sorted(COMFY_SAMPLERS))
def test_eps_model_matches_comfyui(base, dtype, components, tolerance):
    model, x, sigmas = make_case("eps", dtype, components=components)
    expected = COMFY_SAMPLERS[base](model, x.clone(), sigmas, disable=True)
    ours = sample_learned(model, x.clone(), sigmas, base=base, disable=True)
    assert (ours - expected).abs().max() < tolerance


@pytest.mark.parametrize("dtype, components, tolerance", PRECISIONS)
@pytest.mark.parametrize("base", sorted(COMFY_SAMPLERS))
def test_flow_model_matches_comfyui(base, dtype, components, tolerance):
    """On flow models ComfyUI's dpmpp_2m and ipndm step in log t, i.e. our 've' reading of t;
    our default ('auto' -> 'flow') steps in the true half-log-SNR log((1-t)/t) instead."""
    model, x, sigmas = make_case("flow", dtype, components=components)
    assert float(sigmas[0]) == 1.0  # starts from pure noise, the flow edge case
    expected = COMFY_SAMPLERS[base](model, x.clone(), sigmas, disable=True)
    convention = "auto" if base == "euler" else "ve"
    ours = sample_learned(model, x.clone(), sigmas, base=base, convention=convention, disable=True)
    assert (ours - expected).abs().max() < tolerance
    exact_lambda = sample_learned(model, x.clone(), sigmas, base=base, disable=True)
    gap = (exact_lambda - expected).abs().max().item()
    print(f"\n{base} on a flow model, true half-log-SNR vs ComfyUI's log-t steps: max |diff| = {gap:.2e}")
    if base == "euler":
        assert gap < tolerance  # first order is the same in both readings
    else:
        assert gap > 1e-4


def reference_solution(model, x, sigmas):
    fine = torch.exp(torch.linspace(sigmas[0].log(), sigmas[-2].log(), 400, dtype=x.dtype))
    return sample_learned(model, x, torch.cat([fine, sigmas[-1:]]), base="dpmpp_3m", disable=True)


def test_dpmpp_3m_differs_from_comfyui_by_design():
    """ComfyUI's dpmpp_3m_sde(eta=0) halves the second-difference term, which makes it a
    second-order method; ours keeps the full weight. Shown here, and ours is the closer one to
    the ODE's solution once steps are small enough for the order to show (from about 48 steps
    on this problem; below that the halved term happens to damp better)."""
    model, x, sigmas = make_case("eps", torch.float64, steps=96)
    ours = sample_learned(model, x.clone(), sigmas, base="dpmpp_3m", disable=True)
    theirs = comfy_sampling.sample_dpmpp_3m_sde(model, x.clone(), sigmas, eta=0.0, disable=True)
    truth = reference_solution(model, x, sigmas)
    gap = (ours - theirs).abs().max().item()
    err_ours = (ours - truth).pow(2).mean().sqrt().item()
    err_theirs = (theirs - truth).pow(2).mean().sqrt().item()
    print(f"\ndpmpp_3m vs ComfyUI dpmpp_3m_sde(eta=0), 96 steps: max |diff| = {gap:.2e}; "
          f"RMSE to the ODE solution: ours {err_ours:.2e}, ComfyUI {err_theirs:.2e}")
    assert gap > 1e-6
    assert err_ours < err_theirs


@contextlib.contextmanager
def default_dtype(dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_matches_comfyui_except_for_the_final_step(variant):
    """ComfyUI's uni_pc replaces a final sigma of 0 by 0.001 and takes a UniPC step there; ours
    ends like every other solver with a denoising step to exactly 0. On a grid that does not end
    at 0 the two are the same method."""
    model, x, sigmas = make_case("eps", torch.float64)
    to_small_sigma = torch.cat([sigmas[:-1], sigmas.new_full((1,), 0.001)])
    with default_dtype(torch.float64):  # ComfyUI's UniPC builds its weights in the default dtype
        theirs = comfy_uni_pc.sample_unipc(model, x.clone(), to_small_sigma.clone(), extra_args={},
                                           variant=variant, disable=True)
        theirs_zero = comfy_uni_pc.sample_unipc(model, x.clone(), sigmas.clone(), extra_args={},
                                                variant=variant, disable=True)
    ours = sample_learned(model, x.clone(), to_small_sigma, base=f"unipc_{variant}", disable=True)
    assert (ours - theirs).abs().max() < 1e-10
    ours_zero = sample_learned(model, x.clone(), sigmas, base=f"unipc_{variant}", disable=True)
    gap = (ours_zero - theirs_zero).abs().max().item()
    print(f"\nunipc_{variant}, grid ending at 0: max |ours - ComfyUI| = {gap:.2e}")
    assert 1e-6 < gap < 1e-2


def test_true_half_log_snr_beats_log_t_steps_on_a_flow_model():
    """Why the flow reading is the default: at 8 steps DPM-Solver++ 2M with the true
    half-log-SNR lands closer to the ODE's solution than ComfyUI's log-t dpmpp_2m."""
    model, x, sigmas = make_case("flow", torch.float64, steps=9)
    sigmas = sigmas[:-1]  # compare at the last positive t, before the shared denoising step
    lam = torch.linspace(-8.0, float(-torch.logit(sigmas[-1])), 2000, dtype=torch.float64)
    fine = torch.cat([sigmas[:1], torch.sigmoid(-lam)])
    truth = sample_learned(model, x.clone(), fine, base="dpmpp_3m", disable=True)
    ours = sample_learned(model, x.clone(), sigmas, base="dpmpp_2m", disable=True)
    theirs = comfy_sampling.sample_dpmpp_2m(model, x.clone(), sigmas, disable=True)
    err_ours = (ours - truth).pow(2).mean().sqrt().item()
    err_theirs = (theirs - truth).pow(2).mean().sqrt().item()
    print(f"\nflow model, 8 steps, RMSE to the ODE solution: dpmpp_2m ours {err_ours:.4f}, ComfyUI {err_theirs:.4f}")
    assert err_ours < 0.5 * err_theirs
