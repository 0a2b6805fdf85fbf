"""The solver is differentiable end to end: grid, every coefficient, under autocast."""

import pytest
import torch

from learned_solvers.learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, StepCorrections, sample_learned


def small_mixture(dims=3, components=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dims, generator=gen, dtype=torch.float64)
    variances = 0.2 + torch.rand(components, dims, generator=gen, dtype=torch.float64)
    return GaussianMixtureDenoiser(means, variances)


def start(sigma_max, dims=3, batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return sigma_max * torch.randn(batch, dims, generator=gen, dtype=torch.float64)


GRIDS = {
    "ve_to_zero": ("ve", torch.tensor([14.6, 3.0, 0.9, 0.25, 0.0], dtype=torch.float64)),
    "ve_to_sigma_min": ("ve", torch.tensor([14.6, 3.0, 0.9, 0.25, 0.03], dtype=torch.float64)),
    "flow_from_one": ("flow", torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0], dtype=torch.float64)),
}


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("base", BASE_SOLVERS)
def test_gradcheck_with_respect_to_the_grid(base, grid_name):
    convention, sigmas = GRIDS[grid_name]
    model = small_mixture()
    x = start(1.0 if convention == "flow" else float(sigmas[0]))
    interior = sigmas[1:-1].clone().requires_grad_(True)

    def final_sample(inner):
        grid = torch.cat([sigmas[:1], inner, sigmas[-1:]])
        return sample_learned(model, x, grid, base=base, convention=convention, disable=True)

    assert torch.autograd.gradcheck(final_sample, (interior,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("base", BASE_SOLVERS)
def test_gradcheck_with_respect_to_every_coefficient(base):
    convention, sigmas = GRIDS["ve_to_zero"]
    model = small_mixture()
    x = start(float(sigmas[0]))
    steps = len(sigmas) - 1
    gen = torch.Generator().manual_seed(2)

    def small(*shape):
        return (0.1 * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_(True)

    coefficients = (small(steps, 3), small(steps), small(steps), small(steps))

    def final_sample(d_corrections, step_scales, corrector_corrections, eval_offsets):
        return sample_learned(
            model, x, sigmas, base=base, convention=convention, disable=True, corrector=True,
            corrections=StepCorrections(d_corrections=d_corrections, step_scales=step_scales,
                                        corrector_corrections=corrector_corrections, eval_offsets=eval_offsets))

    assert torch.autograd.gradcheck(final_sample, coefficients, eps=1e-6, atol=1e-5)


def test_every_coefficient_moves_the_result():
    """Each correction family is live: a nonzero value changes the sample."""
    convention, sigmas = GRIDS["ve_to_zero"]
    model, x = small_mixture(), start(float(sigmas[0]))
    steps = len(sigmas) - 1
    plain = sample_learned(model, x, sigmas, base="dpmpp_2m", disable=True)
    for name, value in [("d_corrections", torch.full((steps, 2), 0.1, dtype=torch.float64)),
                        ("step_scales", torch.full((steps,), 0.1, dtype=torch.float64)),
                        ("corrector_corrections", torch.full((steps,), 0.1, dtype=torch.float64)),
                        ("eval_offsets", torch.full((steps,), 0.1, dtype=torch.float64))]:
        moved = sample_learned(model, x, sigmas, base="dpmpp_2m", disable=True,
                               corrections=StepCorrections(**{name: value}))
        assert (moved - plain).abs().max() > 1e-4, name


def test_zero_corrections_are_exactly_the_base_solver():
    convention, sigmas = GRIDS["ve_to_zero"]
    model, x = small_mixture(), start(float(sigmas[0]))
    steps = len(sigmas) - 1
    zeros = torch.zeros(steps, dtype=torch.float64)
    for base in BASE_SOLVERS:
        plain = sample_learned(model, x, sigmas, base=base, disable=True)
        corrections = StepCorrections(d_corrections=torch.zeros(steps, 4, dtype=torch.float64), step_scales=zeros,
                                      eval_offsets=zeros,
                                      corrector_corrections=zeros if base.startswith("unipc") else None)
        zeroed = sample_learned(model, x, sigmas, base=base, disable=True, corrections=corrections)
        torch.testing.assert_close(zeroed, plain, rtol=0, atol=1e-12)


class TinyNet(torch.nn.Module):
    """A small eps network, so autocast has matmuls to lower."""

    def __init__(self, dims=8):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(dims + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, dims))

    def forward(self, x, sigma):
        return self.layers(torch.cat([x, sigma.log().unsqueeze(-1).to(x.dtype)], dim=-1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradients_flow_under_autocast_model_calls(dtype):
    torch.manual_seed(0)
    net = TinyNet()
    model = lambda x, sigma: x - sigma[:, None] * net(x, sigma)  # noqa: E731 - eps-model wrapper
    sigmas = torch.tensor([14.6, 3.0, 0.9, 0.25, 0.0])
    interior = sigmas[1:-1].clone().requires_grad_(True)
    corrections = torch.zeros(4, 2, requires_grad=True)
    x = 14.6 * torch.randn(4, 8)
    with torch.autocast("cpu", dtype=dtype):
        out = sample_learned(model, x, torch.cat([sigmas[:1], interior, sigmas[-1:]]),
                             base="dpmpp_3m", corrections=StepCorrections(d_corrections=corrections), disable=True)
    assert out.dtype == torch.float32
    out.pow(2).mean().backward()
    for grad in (interior.grad, corrections.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
