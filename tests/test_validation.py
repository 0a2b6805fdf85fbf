"""Bad input fails early with a ValueError that names the fix."""

import math

import pytest
import torch

from learned_solvers.learned_samplers import GaussianMixtureDenoiser, StepCorrections, sample_learned

MODEL = GaussianMixtureDenoiser(torch.zeros(1, 4), torch.ones(1, 4))
X = torch.randn(2, 4)
GOOD = torch.tensor([10.0, 2.0, 0.5, 0.0])


def run(sigmas=GOOD, model=MODEL, **options):
    return sample_learned(model, X, sigmas, disable=True, **options)


@pytest.mark.parametrize(
    "sigmas, match",
    [
        (torch.tensor([10.0, 2.0, 2.0, 0.0]), "strictly decreasing"),
        (torch.tensor([0.5, 2.0, 10.0, 0.0]), "strictly decreasing"),
        (torch.tensor([10.0, math.nan, 0.5, 0.0]), "finite"),
        (torch.tensor([10.0, math.inf, 0.5, 0.0]), "finite"),
        (torch.tensor([10.0, 2.0, -0.5]), "negative"),
        (torch.tensor([10.0]), "NFE = 0"),
        (torch.tensor([]), "NFE = 0"),
        (torch.ones(2, 3), "1-D"),
    ],
)
def test_bad_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        run(sigmas)


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("d_corrections", torch.zeros(4, 2), r"shape \(4, 2\).*3 steps"),
        ("d_corrections", torch.zeros(3, 5), "1 to 4"),
        ("d_corrections", torch.zeros(3), r"\[3, K\]"),
        ("step_scales", torch.zeros(2), r"must be \[3\]"),
        ("corrector_corrections", torch.zeros(3, 1), r"must be \[3\]"),
        ("eval_offsets", torch.zeros(4), r"must be \[3\]"),
        ("step_scales", torch.tensor([0.0, math.nan, 0.0]), "NaN"),
    ],
)
def test_coefficients_that_do_not_match_the_grid(name, value, match):
    with pytest.raises(ValueError, match=match):
        run(corrections=StepCorrections(**{name: value}))


def test_unknown_base_convention_and_order():
    with pytest.raises(ValueError, match="choose one of euler"):
        run(base="heun")
    with pytest.raises(ValueError, match="'ve'.*'flow'"):
        run(convention="vp")
    with pytest.raises(ValueError, match="max_order"):
        run(max_order=0)


def test_flow_sigmas_above_one():
    with pytest.raises(ValueError, match="flow time"):
        run(torch.tensor([14.6, 1.0, 0.0]), convention="flow")


def test_model_with_the_wrong_output_shape():
    with pytest.raises(ValueError, match="must return the denoised"):
        run(model=lambda x, sigma: x[:, :2])


def test_lists_are_accepted_as_sigmas():
    out = run([10.0, 2.0, 0.5, 0.0])
    torch.testing.assert_close(out, run(GOOD))
