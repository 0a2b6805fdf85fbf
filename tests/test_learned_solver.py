"""What the nodes ask of a learned solver: schedules for steps/denoise/another model, and the
options a sampler picks from the sigmas it is handed."""

import pytest
import torch

from learned_solvers.distill import FittedSteps, LearnedSolver, grid_coordinate
from learned_solvers.learned_samplers import GaussianMixtureDenoiser, sample_learned
from learned_solvers.schedules import karras

RANGE = (0.0291675, 14.6146412)


def fitted(nfe, seed):
    gen = torch.Generator().manual_seed(seed)
    sigmas = karras(nfe, *RANGE, final_zero=True)
    sigmas[1:-2] *= 1 + 0.1 * torch.rand(nfe - 2, generator=gen, dtype=torch.float64)
    sigmas = sigmas.sort(descending=True).values
    return FittedSteps(sigmas=sigmas, coordinate=grid_coordinate(sigmas, RANGE, "ve"), method="s4s",
                       d_corrections=0.05 * torch.randn(nfe, 3, generator=gen, dtype=torch.float64),
                       eval_offsets=0.02 * torch.randn(nfe, generator=gen, dtype=torch.float64))


@pytest.fixture()
def solver():
    return LearnedSolver(base="dpmpp_2m", convention="ve", corrector=False, method="s4s", sigma_range=RANGE,
                         fits={4: fitted(4, 0), 8: fitted(8, 1)})


def test_fitted_steps_give_the_fitted_grid(solver):
    sigmas, notes = solver.schedule(8)
    assert torch.equal(sigmas, solver.fits[8].sigmas) and notes == []


def test_denoise_returns_the_tail_of_the_longer_grid_and_its_coefficients(solver):
    sigmas, notes = solver.schedule(4, denoise=0.5)
    assert notes == [] and torch.equal(sigmas, solver.fits[8].sigmas[-5:])
    # 4 steps are fitted too, but this grid is the 8-step tail: the tail's coefficients apply
    options, notes = solver.options_for(sigmas)
    assert notes == []
    assert torch.equal(options["corrections"].d_corrections, solver.fits[4].d_corrections)  # exact NFE match wins
    tail, _ = solver.schedule(3, denoise=3 / 8)
    options, notes = solver.options_for(tail)
    assert notes == [] and torch.equal(options["corrections"].d_corrections, solver.fits[8].d_corrections[5:])


def test_unfitted_steps_are_interpolated_with_a_warning(solver):
    sigmas, notes = solver.schedule(6)
    assert len(sigmas) == 7 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    assert sigmas[0] == pytest.approx(RANGE[1])
    assert len(notes) == 1 and "interpolated" in notes[0]
    options, notes = solver.options_for(sigmas)
    assert "d_corrections" not in options and "plain dpmpp_2m" in notes[0]


def test_another_models_range_is_remapped_with_a_warning(solver):
    other = (0.05, 10.0)
    sigmas, notes = solver.schedule(4, sigma_range=other)
    assert sigmas[0] == pytest.approx(10.0) and sigmas[-1] == 0 and sigmas[-2] >= 0.05 * (1 - 1e-9)
    assert any("remapped" in note for note in notes)
    torch.testing.assert_close(grid_coordinate(sigmas[:-1], other, "ve"), solver.fits[4].coordinate[:-1])


def test_k_sampler_matches_sample_learned_with_the_fit(solver):
    model = GaussianMixtureDenoiser.power_law(shape=(2, 8, 8), components=3, seed=0)
    x = 14.6 * torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    heard = []
    out = solver.k_sampler(warn=heard.append)(model, x, solver.fits[4].sigmas, disable=True)
    expected = sample_learned(model, x, solver.fits[4].sigmas, base="dpmpp_2m", convention="ve",
                              corrector=False, corrections=solver.fits[4].corrections())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert heard == []
    solver.k_sampler(warn=heard.append)(model, x, karras(5, *RANGE, final_zero=True), disable=True)
    assert len(heard) == 1


def test_bad_requests_name_the_fix(solver):
    with pytest.raises(ValueError, match="denoise"):
        solver.schedule(4, denoise=0)
    with pytest.raises(ValueError, match="steps"):
        solver.schedule(0)
